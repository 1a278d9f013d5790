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

struct append_reply::state {
  function fn;
  bool answered = false;
  explicit state(function f) : fn(std::move(f)) {}
  state(const state&) = delete;
  state& operator=(const state&) = delete;
  ~state() {
    if (answered || !fn)
      return;
    try {
      auto err = make_error(ec::unavailable, "the message store is not running");
      fn(nullptr, &err);
    } catch (...) {
      // Nothing sensible is left to do with a failure while unwinding.
    }
  }
};

append_reply::append_reply(function f) : state_(std::make_shared<state>(std::move(f))) {}

void append_reply::deliver(const append_result& r) const {
  if (state_ && state_->fn && !state_->answered) {
    state_->answered = true;
    state_->fn(&r, nullptr);
  }
}

void append_reply::deliver(const caf::error& e) const {
  if (state_ && state_->fn && !state_->answered) {
    state_->answered = true;
    state_->fn(nullptr, &e);
  }
}

bool is(const caf::error& err, ec code) {
  if (!err)
    return false;
  return err.category() == caf::atom("alephd") && err.code() == static_cast<uint8_t>(code);
}

} // namespace alephd
