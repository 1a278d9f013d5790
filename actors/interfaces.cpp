#include "actors/interfaces.hpp"

#include <caf/actor_system_config.hpp>
#include <caf/message.hpp>

namespace alephd {

void add_message_types(caf::actor_system_config& cfg) {
  cfg.add_message_types<caf::id_block::alephd>();
  cfg.add_error_category(caf::atom("alephd"),
                         [](uint8_t code, caf::atom_value, const caf::message& ctx) {
                           return describe(make_error(static_cast<ec>(code),
                                                      ctx.match_elements<std::string>()
                                                        ? ctx.get_as<std::string>(0)
                                                        : std::string{}));
                         });
  cfg.add_message_type<message_listener_actor>("alephd::message_listener_actor");
  cfg.add_message_type<file_listener_actor>("alephd::file_listener_actor");
  cfg.add_message_type<message_store_actor>("alephd::message_store_actor");
  cfg.add_message_type<trigger_router_actor>("alephd::trigger_router_actor");
  cfg.add_message_type<content_store_actor>("alephd::content_store_actor");
  cfg.add_message_type<ccn_link_actor>("alephd::ccn_link_actor");
  cfg.add_message_type<node_listener_actor>("alephd::node_listener_actor");
  cfg.add_message_type<crn_registry_actor>("alephd::crn_registry_actor");
  cfg.add_message_type<scheduler_actor>("alephd::scheduler_actor");
  cfg.add_message_type<ccn_peer_actor>("alephd::ccn_peer_actor");
  cfg.add_message_type<ccn_node_actor>("alephd::ccn_node_actor");
  cfg.add_message_type<vm_supervisor_actor>("alephd::vm_supervisor_actor");
  cfg.add_message_type<job_broker_actor>("alephd::job_broker_actor");
}

bool is(const caf::error& err, ec code) {
  if (!err)
    return false;
  return err.category() == caf::atom("alephd") && err.code() == static_cast<uint8_t>(code);
}

} // namespace alephd
