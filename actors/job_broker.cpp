#include "actors/job_broker.hpp"

#include <caf/all.hpp>
#include <spdlog/spdlog.h>

#include "actors/vm_supervisor.hpp"

namespace alephd {

std::string admission_refusal(const job_broker_config& cfg,
                              const std::map<std::string, execution_entry>& running,
                              const allocation& a) {
  uint64_t vcpus = a.vcpus, program_mem = 0, instance_mem = 0, disk = a.disk_mib;
  for (auto& [hash, e] : running) {
    if (e.stopped || hash == a.item_hash)
      continue;
    vcpus += e.alloc.vcpus;
    disk += e.alloc.disk_mib;
    (e.alloc.kind == "instance" ? instance_mem : program_mem) += e.alloc.memory_mib;
  }
  auto reserved = cfg.host_reserved_mib + cfg.program_reserved_mib;
  uint64_t instance_bucket = cfg.memory_mib > reserved ? cfg.memory_mib - reserved : 0;
  uint64_t program_bucket = std::min(cfg.program_reserved_mib, cfg.memory_mib);
  if (a.kind == "instance" && instance_mem + a.memory_mib > instance_bucket)
    return "Insufficient capacity: instance memory " + std::to_string(instance_mem + a.memory_mib)
           + " MiB > " + std::to_string(instance_bucket) + " MiB";
  if (a.kind != "instance" && program_mem + a.memory_mib > program_bucket)
    return "Insufficient capacity: program memory " + std::to_string(program_mem + a.memory_mib)
           + " MiB > " + std::to_string(program_bucket) + " MiB";
  auto vcpu_cap = static_cast<uint64_t>(cfg.cores * cfg.vcpu_overcommit);
  if (vcpus > vcpu_cap)
    return "Insufficient capacity: " + std::to_string(vcpus) + " vCPUs > "
           + std::to_string(vcpu_cap);
  if (disk > cfg.disk_mib)
    return "Insufficient capacity: disk " + std::to_string(disk) + " MiB > "
           + std::to_string(cfg.disk_mib) + " MiB";
  return {};
}

job_broker_actor::behavior_type
job_broker(job_broker_actor::stateful_pointer<job_broker_state> self, job_broker_config cfg) {
  self->state.cfg = std::move(cfg);
  self->set_down_handler([=](caf::down_msg& dm) {
    auto& ex = self->state.executions;
    for (auto i = ex.begin(); i != ex.end(); ++i)
      if (i->second.supervisor.address() == dm.source) {
        spdlog::warn("job_broker: supervisor of {} ended: {}", i->first, caf::to_string(dm.reason));
        ex.erase(i);
        return;
      }
  });
  return {
    [=](atom::allocate, const allocation& a) -> caf::result<allocation_ack> {
      auto& st = self->state;
      allocation_ack ack{a.item_hash, a.epoch, st.cfg.crn_id, true, {}};
      auto i = st.executions.find(a.item_hash);
      if (i != st.executions.end() && a.epoch < i->second.alloc.epoch) {
        ack.accepted = false;
        ack.reason = "stale allocation epoch";
        return ack;
      }
      if (i != st.executions.end() && !i->second.stopped) {
        // Already here and alive: a newer epoch just updates it.
        i->second.alloc.epoch = a.epoch;
        caf::anon_send(i->second.supervisor, atom::allocate_v, a);
        return ack;
      }
      if (auto why = admission_refusal(st.cfg, st.executions, a); !why.empty()) {
        spdlog::warn("job_broker: refused {}: {}", a.item_hash, why);
        ack.accepted = false;
        ack.reason = why;
        return ack;
      }
      if (i != st.executions.end()) {
        // A stopped execution allocated again: a fresh supervisor takes its place.
        self->demonitor(i->second.supervisor.address());
        caf::anon_send_exit(i->second.supervisor, caf::exit_reason::user_shutdown);
        st.executions.erase(i);
      }
      auto sup = self->spawn<caf::monitored>(vm_supervisor, a);
      st.executions.emplace(a.item_hash, execution_entry{a, sup, false});
      return ack;
    },
    [=](atom::list) -> caf::result<std::vector<execution_info>> {
      auto rp = self->make_response_promise<std::vector<execution_info>>();
      auto& ex = self->state.executions;
      if (ex.empty()) {
        rp.deliver(std::vector<execution_info>{});
        return rp;
      }
      auto out = std::make_shared<std::vector<execution_info>>();
      auto left = std::make_shared<size_t>(ex.size());
      for (auto& [hash, e] : ex)
        self->request(e.supervisor, std::chrono::seconds(5), atom::get_v)
          .then(
            [=](const execution_info& info) mutable {
              out->push_back(info);
              if (--*left == 0)
                rp.deliver(*out);
            },
            [=](caf::error&) mutable {
              if (--*left == 0)
                rp.deliver(*out);
            });
      return rp;
    },
    [=](atom::stop, const std::string& hash) -> caf::result<execution_info> {
      auto& ex = self->state.executions;
      auto i = ex.find(hash);
      if (i == ex.end())
        return make_error(ec::not_found, "no execution " + hash);
      auto rp = self->make_response_promise<execution_info>();
      auto sup = i->second.supervisor;
      self->request(sup, std::chrono::seconds(60), atom::stop_v)
        .then(
          [=](const execution_info& info) mutable {
            auto j = self->state.executions.find(hash);
            if (j != self->state.executions.end() && j->second.supervisor == sup)
              j->second.stopped = true;
            rp.deliver(info);
          },
          [=](caf::error& err) mutable { rp.deliver(std::move(err)); });
      return rp;
    },
  };
}

} // namespace alephd
