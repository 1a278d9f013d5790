#include "actors/vm_supervisor.hpp"

#include <chrono>

#include <caf/all.hpp>
#include <spdlog/spdlog.h>

#include "runtime/wall_clock.hpp"

namespace alephd {

namespace {

using self_ptr = vm_supervisor_actor::stateful_pointer<vm_supervisor_state>;

// The behavior of a stopped execution: it can be read, stopping again is a
// no-op, and a new allocation is a request in the wrong phase.
vm_supervisor_actor::behavior_type stopped(self_ptr self) {
  return {
    [=](atom::get) { return self->state.info; },
    [=](atom::allocate, const allocation&) -> caf::result<execution_info> {
      return make_error(ec::wrong_phase, "execution " + self->state.info.item_hash + " is "
                                           + self->state.info.phase);
    },
    [=](atom::stop) { return self->state.info; },
  };
}

} // namespace

vm_supervisor_actor::behavior_type
vm_supervisor(vm_supervisor_actor::stateful_pointer<vm_supervisor_state> self, allocation a) {
  auto& info = self->state.info;
  info.item_hash = a.item_hash;
  info.kind = a.kind;
  info.epoch = a.epoch;
  info.persistent = true;
  info.vcpus = a.vcpus;
  info.memory_mib = a.memory_mib;
  info.disk_mib = a.disk_mib;
  info.defined_at = unix_seconds();
  info.phase = "preparing";
  info.preparing_at = info.defined_at;
  info.detail = "accepted; waiting for an executor (sandbox and microVM executors are not built yet)";
  spdlog::info("vm_supervisor: {} {} epoch {} is {}", info.kind, info.item_hash, info.epoch,
               info.phase);
  return {
    [=](atom::get) { return self->state.info; },
    [=](atom::allocate, const allocation& next) -> caf::result<execution_info> {
      auto& info = self->state.info;
      if (next.epoch < info.epoch)
        return make_error(ec::wrong_phase, "allocation epoch " + std::to_string(next.epoch)
                                             + " is older than " + std::to_string(info.epoch));
      info.epoch = next.epoch;
      return info;
    },
    [=](atom::stop) {
      auto& info = self->state.info;
      info.phase = "stopping";
      info.stopping_at = unix_seconds();
      // Nothing was started yet, so stopping is immediate; cleanup is safe in any phase.
      info.phase = "stopped";
      info.stopped_at = unix_seconds();
      info.detail = "stopped";
      self->become(stopped(self));
      return info;
    },
  };
}

} // namespace alephd
