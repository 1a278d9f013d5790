#include <caf/all.hpp>

#include "actors/ccn_node.hpp"

namespace alephd {

ccn_node_actor::behavior_type ccn_node(ccn_node_actor::pointer, std::string ccn_id,
                                       crn_registry_actor registry, ccn_peer_actor peer) {
  return {
    [=](atom::hello) {
      return caf::make_result(registry, caf::actor_cast<caf::actor>(peer), ccn_id);
    },
  };
}

} // namespace alephd
