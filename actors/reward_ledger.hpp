// CRN: the reward ledger. Executions send metering samples; the ledger numbers
// and hash-chains them and writes them to <data-dir>/ledger in group commits
// (one LMDB transaction, one fsync, for every sample that arrived within
// `commit_delay` or up to `batch` of them). The ccn_link ships what the CCN
// has not acknowledged yet. Samples still waiting are written when the actor
// ends; a kill -9 loses at most those of the last `commit_delay`.
#pragma once

#include <chrono>
#include <memory>
#include <vector>

#include "actors/interfaces.hpp"

namespace alephd {

class ledger_store;

struct reward_ledger_config {
  std::string node; ///< this CRN's id, written into every entry
  std::chrono::milliseconds commit_delay{100};
  std::size_t batch = 512;
};

struct reward_ledger_state {
  static inline const char* name = "reward_ledger";
  reward_ledger_config cfg;
  std::shared_ptr<ledger_store> store;
  std::vector<usage_entry> waiting;
  bool flush_armed = false;
  uint64_t acked = 0;
  uint64_t commits = 0;

  /// Writes the waiting samples (logs and keeps them on failure).
  void commit();

  reward_ledger_state() = default;
  reward_ledger_state(const reward_ledger_state&) = delete;
  reward_ledger_state& operator=(const reward_ledger_state&) = delete;
  ~reward_ledger_state() { commit(); }
};

reward_ledger_actor::behavior_type
reward_ledger(reward_ledger_actor::stateful_pointer<reward_ledger_state> self,
              std::shared_ptr<ledger_store> store, reward_ledger_config cfg);

} // namespace alephd
