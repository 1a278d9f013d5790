#include "actors/reward_ledger.hpp"

#include <caf/all.hpp>
#include <spdlog/spdlog.h>

#include "runtime/ledger.hpp"

namespace alephd {

void reward_ledger_state::commit() {
  if (waiting.empty() || !store)
    return;
  std::string err;
  if (!store->append(waiting, err)) {
    // Kept for the next commit: a full disk may clear.
    spdlog::error("reward_ledger: cannot write {} samples: {}", waiting.size(), err);
    return;
  }
  ++commits;
  waiting.clear();
}

reward_ledger_actor::behavior_type
reward_ledger(reward_ledger_actor::stateful_pointer<reward_ledger_state> self,
              std::shared_ptr<ledger_store> store, reward_ledger_config cfg) {
  auto& st = self->state;
  st.cfg = std::move(cfg);
  st.store = std::move(store);
  if (!st.store) {
    self->quit(make_error(ec::invalid, "reward_ledger: no ledger store"));
    return reward_ledger_actor::behavior_type::make_empty_behavior();
  }
  st.acked = st.store->acked();
  return {
    [=](atom::sample, usage_entry& e) {
      auto& st = self->state;
      e.node = st.cfg.node;
      st.waiting.push_back(std::move(e));
      if (st.waiting.size() >= st.cfg.batch)
        st.commit();
      if (!st.waiting.empty() && !st.flush_armed) { // what is left, or what failed to commit
        st.flush_armed = true;
        self->delayed_send(self, st.cfg.commit_delay, atom::flush_v);
      }
    },
    [=](atom::flush) {
      auto& st = self->state;
      st.flush_armed = false;
      st.commit();
      if (!st.waiting.empty()) { // the write failed: try again later
        st.flush_armed = true;
        self->delayed_send(self, std::chrono::seconds(5), atom::flush_v);
      }
    },
    [=](atom::get, uint32_t max) {
      auto& st = self->state;
      return st.store->read(st.acked, max);
    },
    [=](atom::list, uint64_t after, uint32_t max) { return self->state.store->read(after, max); },
    [=](atom::confirm, uint64_t seq) {
      auto& st = self->state;
      if (seq <= st.acked)
        return;
      if (seq > st.store->last_seq()) {
        spdlog::warn("reward_ledger: the CCN acknowledged seq {} but the ledger ends at {}", seq,
                     st.store->last_seq());
        return;
      }
      std::string err;
      if (st.store->set_acked(seq, err))
        st.acked = seq;
      else
        spdlog::error("reward_ledger: {}", err);
    },
    [=](atom::status) {
      auto& st = self->state;
      return caf::make_result(st.store->last_seq(), st.acked);
    },
  };
}

} // namespace alephd
