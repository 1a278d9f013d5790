#include "actors/scheduler.hpp"

#include <caf/all.hpp>
#include <spdlog/spdlog.h>

#include "messages/aleph_message.hpp"

namespace alephd {

namespace {

using self_ptr = scheduler_actor::stateful_pointer<scheduler_state>;

void place(self_ptr self, const std::string& hash);

void release(self_ptr self, scheduled_workload& w) {
  auto& st = self->state;
  if (auto i = st.crns.find(w.crn_id); i != st.crns.end()) {
    i->second.used_vcpus -= std::min<uint64_t>(i->second.used_vcpus, w.alloc.vcpus);
    i->second.used_memory_mib -= std::min(i->second.used_memory_mib, w.alloc.memory_mib);
  }
  w.crn_id.clear();
}

void arm_retry(self_ptr self) {
  if (self->state.retry_armed)
    return;
  self->state.retry_armed = true;
  self->delayed_send(self, self->state.cfg.retry, atom::tick_v);
}

void place(self_ptr self, const std::string& hash) {
  auto& st = self->state;
  auto wi = st.workloads.find(hash);
  if (wi == st.workloads.end() || wi->second.state != "pending")
    return;
  auto& w = wi->second;
  crn_slot* best = nullptr;
  for (auto& [id, c] : st.crns) {
    if (c.state != link_state::linked || w.refused_by.count(id) > 0)
      continue;
    auto vcpu_cap = static_cast<uint64_t>(c.info.vcpus * st.cfg.vcpu_overcommit);
    if (c.used_vcpus + w.alloc.vcpus > vcpu_cap
        || c.used_memory_mib + w.alloc.memory_mib > c.info.memory_mib)
      continue;
    if (best == nullptr
        || c.info.memory_mib - c.used_memory_mib > best->info.memory_mib - best->used_memory_mib)
      best = &c;
  }
  if (best == nullptr) {
    w.detail = "no linked CRN has enough free memory and vCPUs";
    arm_retry(self);
    return;
  }
  w.alloc.epoch += 1;
  w.crn_id = best->info.id;
  w.state = "allocating";
  w.detail.clear();
  best->used_vcpus += w.alloc.vcpus;
  best->used_memory_mib += w.alloc.memory_mib;
  auto epoch = w.alloc.epoch;
  auto crn_id = w.crn_id;
  spdlog::info("scheduler: placing {} on CRN {} (epoch {})", hash, crn_id, epoch);
  self->request(best->link, st.cfg.allocate_timeout, atom::allocate_v, w.alloc)
    .then(
      [=](const allocation_ack& ack) {
        auto i = self->state.workloads.find(hash);
        if (i == self->state.workloads.end() || i->second.alloc.epoch != epoch)
          return; // superseded
        auto& w = i->second;
        if (ack.accepted) {
          w.state = "allocated";
          return;
        }
        spdlog::warn("scheduler: CRN {} refused {}: {}", crn_id, hash, ack.reason);
        release(self, w);
        w.refused_by.insert(crn_id);
        w.state = "pending";
        w.detail = ack.reason;
        place(self, hash);
      },
      [=](caf::error& err) {
        auto i = self->state.workloads.find(hash);
        if (i == self->state.workloads.end() || i->second.alloc.epoch != epoch)
          return;
        spdlog::warn("scheduler: allocating {} on CRN {} failed: {}", hash, crn_id, describe(err));
        release(self, i->second);
        i->second.state = "pending";
        i->second.detail = "allocation failed: " + describe(err);
        arm_retry(self);
      });
}

} // namespace

scheduler_actor::behavior_type
scheduler(scheduler_actor::stateful_pointer<scheduler_state> self, scheduler_config cfg) {
  self->state.cfg = std::move(cfg);
  return {
    [=](atom::published, const stored_message& msg) {
      auto& st = self->state;
      if (msg.origin != st.cfg.ccn_id || (msg.type != "PROGRAM" && msg.type != "INSTANCE"))
        return; // the CCN that accepted a workload places it
      if (st.workloads.count(msg.item_hash) > 0)
        return;
      auto parsed = aleph::parse_message(std::string_view{msg.json});
      if (!parsed.ok())
        return;
      auto spec = aleph::workload_of(*parsed.msg);
      if (!spec || !spec->persistent)
        return; // on-demand programs start on the first call, on any CRN
      scheduled_workload w;
      w.alloc.item_hash = msg.item_hash;
      w.alloc.kind = msg.type == "INSTANCE" ? "instance" : "program";
      w.alloc.vcpus = spec->vcpus;
      w.alloc.memory_mib = spec->memory_mib;
      w.alloc.disk_mib = spec->disk_mib;
      w.alloc.message_json = msg.json;
      st.workloads.emplace(msg.item_hash, std::move(w));
      place(self, msg.item_hash);
    },
    [=](atom::node, const crn_info& info, link_state state, const ccn_link_actor& link) {
      auto& st = self->state;
      auto& c = st.crns[info.id];
      c.info = info;
      c.state = state;
      c.link = link;
      if (state == link_state::linked) {
        for (auto& [hash, w] : st.workloads)
          if (w.state == "pending")
            place(self, hash);
        return;
      }
      if (state == link_state::down || state == link_state::unlinked) {
        std::vector<std::string> moved;
        for (auto& [hash, w] : st.workloads)
          if (w.crn_id == info.id) {
            release(self, w);
            w.state = "pending";
            w.detail = "its CRN " + info.id + " is " + to_string(state);
            w.refused_by.clear();
            moved.push_back(hash);
          }
        for (auto& hash : moved)
          place(self, hash);
      }
    },
    [=](atom::list) {
      std::vector<placement> out;
      for (auto& [hash, w] : self->state.workloads)
        out.push_back(placement{hash, w.alloc.kind, w.crn_id, w.alloc.epoch, w.state, w.detail});
      return out;
    },
    [=](atom::tick) {
      auto& st = self->state;
      st.retry_armed = false;
      for (auto& [hash, w] : st.workloads) {
        if (w.state == "pending") {
          w.refused_by.clear();
          place(self, hash);
        }
      }
    },
  };
}

} // namespace alephd
