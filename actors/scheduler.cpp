#include "actors/scheduler.hpp"

#include <caf/all.hpp>
#include <spdlog/spdlog.h>

#include "actors/job_broker.hpp"
#include "messages/aleph_message.hpp"
#include "messages/codec.hpp"

namespace alephd {

namespace {

using scheduler_pointer = scheduler_actor::stateful_pointer<scheduler_state>;

void place(scheduler_pointer self, const std::string& hash);

bool holds_resources(const scheduled_workload& w) {
  return !w.crn_id.empty() && (w.state == "allocating" || w.state == "allocated");
}

// The workloads placed on `crn_id`, as the CRN's job_broker would count them.
std::map<std::string, execution_entry> placed_on(const scheduler_state& st, const std::string& crn_id) {
  std::map<std::string, execution_entry> out;
  for (auto& [hash, w] : st.workloads)
    if (w.crn_id == crn_id && holds_resources(w))
      out.emplace(hash, execution_entry{w.alloc, vm_supervisor_actor{}, false});
  return out;
}

uint64_t used_memory(const std::map<std::string, execution_entry>& placed) {
  uint64_t n = 0;
  for (auto& [hash, e] : placed)
    n += e.alloc.memory_mib;
  return n;
}

void persist(scheduler_pointer self, const scheduled_workload& w) {
  auto& st = self->state;
  if (!st.cfg.env)
    return;
  int rc = lmdb::put_committed(*st.cfg.env, st.db, w.alloc.item_hash,
                               codec::encode(w.alloc, w.crn_id, w.state));
  if (rc != 0)
    spdlog::error("scheduler: cannot persist placement of {}: {}", w.alloc.item_hash,
                  lmdb::error_text(rc));
}

void arm_retry(scheduler_pointer self) {
  if (self->state.retry_armed)
    return;
  self->state.retry_armed = true;
  self->delayed_send(self, self->state.cfg.retry, atom::tick_v);
}

void make_pending(scheduler_pointer self, scheduled_workload& w, std::string why) {
  w.crn_id.clear();
  w.state = "pending";
  w.detail = std::move(why);
  w.orphaned_since.reset();
  persist(self, w);
}

// Sends (or re-sends) the workload's allocation to the CRN it is placed on.
void send_allocation(scheduler_pointer self, const std::string& hash, const ccn_link_actor& link) {
  auto& w = self->state.workloads.at(hash);
  auto epoch = w.alloc.epoch;
  auto crn_id = w.crn_id;
  self->request(link, self->state.cfg.allocate_timeout, atom::allocate_v, w.alloc)
    .then(
      [=](const allocation_ack& ack) {
        auto i = self->state.workloads.find(hash);
        if (i == self->state.workloads.end() || i->second.alloc.epoch != epoch
            || i->second.crn_id != crn_id)
          return; // superseded
        auto& w = i->second;
        if (ack.accepted) {
          w.state = "allocated";
          w.detail.clear();
          persist(self, w);
          return;
        }
        spdlog::warn("scheduler: CRN {} refused {}: {}", crn_id, hash, ack.reason);
        w.refused_by.insert(crn_id);
        make_pending(self, w, ack.reason);
        place(self, hash);
      },
      [=](caf::error& err) {
        auto i = self->state.workloads.find(hash);
        if (i == self->state.workloads.end() || i->second.alloc.epoch != epoch
            || i->second.crn_id != crn_id)
          return;
        spdlog::warn("scheduler: allocating {} on CRN {} failed: {}", hash, crn_id, describe(err));
        // Skip this CRN until the next retry round, as if it had refused.
        i->second.refused_by.insert(crn_id);
        make_pending(self, i->second, "allocation failed: " + describe(err));
        arm_retry(self);
      });
}

void place(scheduler_pointer self, const std::string& hash) {
  auto& st = self->state;
  auto wi = st.workloads.find(hash);
  if (wi == st.workloads.end() || wi->second.state != "pending")
    return;
  auto& w = wi->second;
  crn_slot* best = nullptr;
  uint64_t best_free = 0;
  std::string refusal;
  for (auto& [id, c] : st.crns) {
    if (c.state != link_state::linked || w.refused_by.count(id) > 0)
      continue;
    // The same admission rule as the CRN's job_broker, so that a placement is not refused.
    job_broker_config capacity;
    capacity.cores = c.info.vcpus;
    capacity.memory_mib = c.info.memory_mib;
    capacity.disk_mib = c.info.disk_mib;
    capacity.vcpu_overcommit = st.cfg.vcpu_overcommit;
    auto placed = placed_on(st, id);
    if (auto why = admission_refusal(capacity, placed, w.alloc); !why.empty()) {
      refusal = why;
      continue;
    }
    auto used = used_memory(placed);
    auto free = c.info.memory_mib > used ? c.info.memory_mib - used : 0;
    if (best == nullptr || free > best_free) {
      best = &c;
      best_free = free;
    }
  }
  if (best == nullptr) {
    w.detail = refusal.empty() ? "no linked CRN" : refusal + " (on every linked CRN)";
    arm_retry(self);
    return;
  }
  w.alloc.epoch += 1;
  w.alloc.owner = st.cfg.ccn_id;
  w.crn_id = best->info.id;
  w.state = "allocating";
  w.detail.clear();
  persist(self, w);
  spdlog::info("scheduler: placing {} on CRN {} (epoch {})", hash, w.crn_id, w.alloc.epoch);
  send_allocation(self, hash, best->link);
}

void restore(scheduler_pointer self) {
  auto& st = self->state;
  std::string err;
  if (!st.cfg.env->open_db("placements", st.db, err)) {
    spdlog::error("scheduler: {}; placements will not survive a restart", err);
    st.cfg.env.reset();
    return;
  }
  lmdb::txn t{*st.cfg.env, false};
  auto now = self->clock().now();
  t.for_each(st.db, false, [&](std::string_view, std::string_view v) {
    scheduled_workload w;
    if (!codec::decode(v, w.alloc, w.crn_id, w.state))
      return true;
    w.alloc.owner = st.cfg.ccn_id; // records of older versions name no owner
    if (w.state == "allocating")
      w.state = "allocated"; // unknown outcome: confirm with the CRN when it is back
    if (!w.crn_id.empty())
      w.orphaned_since = now;
    st.workloads.emplace(w.alloc.item_hash, std::move(w));
    return true;
  });
  if (!st.workloads.empty()) {
    spdlog::info("scheduler: restored {} placements", st.workloads.size());
    arm_retry(self);
  }
}

} // namespace

scheduler_actor::behavior_type
scheduler(scheduler_actor::stateful_pointer<scheduler_state> self, scheduler_config cfg) {
  self->state.cfg = std::move(cfg);
  if (self->state.cfg.env)
    restore(self);
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
      persist(self, st.workloads.at(msg.item_hash));
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
          if (w.crn_id == info.id && w.orphaned_since) {
            // A placement from before our restart: confirm it (same epoch).
            w.orphaned_since.reset();
            send_allocation(self, hash, link);
          }
        for (auto& [hash, w] : st.workloads)
          if (w.state == "pending")
            place(self, hash);
        return;
      }
      if (state == link_state::down || state == link_state::unlinked) {
        std::vector<std::string> moved;
        for (auto& [hash, w] : st.workloads)
          if (w.crn_id == info.id && w.state != "failed") {
            w.refused_by.clear();
            make_pending(self, w, "its CRN " + info.id + " is " + to_string(state));
            moved.push_back(hash);
          }
        for (auto& hash : moved)
          place(self, hash);
      }
    },
    [=](atom::exited, const std::string& crn_id, const execution_info& info) {
      auto& st = self->state;
      auto i = st.workloads.find(info.item_hash);
      if (i == st.workloads.end() || i->second.crn_id != crn_id
          || i->second.alloc.epoch != info.epoch || info.phase != "failed")
        return; // stale: placed elsewhere or again since
      i->second.state = "failed";
      i->second.detail = "failed on CRN " + crn_id + ": " + info.detail;
      spdlog::warn("scheduler: {} {}", info.item_hash, i->second.detail);
      persist(self, i->second);
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
      auto now = self->clock().now();
      for (auto& [hash, w] : st.workloads) {
        if (w.orphaned_since) {
          if (now - *w.orphaned_since < st.cfg.orphan_grace) {
            arm_retry(self);
            continue;
          }
          make_pending(self, w, "its CRN did not come back after the CCN restarted");
        }
        if (w.state == "pending") {
          w.refused_by.clear();
          place(self, hash);
        }
      }
    },
  };
}

} // namespace alephd
