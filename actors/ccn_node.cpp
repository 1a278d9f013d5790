#include <caf/all.hpp>

#include "actors/ccn_peer.hpp"

namespace alephd {

ccn_node_actor::behavior_type ccn_node(ccn_node_actor::pointer, std::string ccn_id,
                                       crn_registry_actor registry, ccn_peer_actor peer) {
  return {
    [=](atom::hello) {
      return caf::make_result(registry, caf::actor_cast<caf::actor>(peer), ccn_id);
    },
  };
}

bool split_endpoint(const std::string& s, std::string& host, uint16_t& port) {
  auto colon = s.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == s.size())
    return false;
  host = s.substr(0, colon);
  auto p = s.substr(colon + 1);
  if (p.size() > 5 || p.find_first_not_of("0123456789") != std::string::npos)
    return false;
  auto v = std::stoul(p);
  if (v == 0 || v > 65535)
    return false;
  port = static_cast<uint16_t>(v);
  return true;
}

} // namespace alephd
