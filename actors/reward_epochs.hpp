// CCN: reward epochs. When an epoch (`epoch_seconds`, aligned on the Unix
// epoch) ends, it gathers the CRN scores from the prober, its linked CRNs from
// the registry, its peer CCNs, the stakes from config, and the usage-book
// entries received since the last epoch; computes both reward models
// (runtime/rewards.hpp) and stores inputs and results (runtime/reward_epoch.hpp).
#pragma once

#include <chrono>
#include <functional>
#include <memory>

#include "actors/interfaces.hpp"
#include "runtime/reward_epoch.hpp"

namespace alephd {

namespace lmdb {
class env;
}

struct reward_epochs_config {
  std::string ccn_id;
  std::string ccn_name;
  std::shared_ptr<lmdb::env> env;
  std::chrono::seconds epoch_seconds{86400};
  std::chrono::milliseconds check{1000}; ///< how often to look whether an epoch ended
  rewards::params params;
  std::vector<stake_entry> stakes;
  /// Wall-clock Unix seconds (tests move their own).
  std::function<double()> now;
  crn_registry_actor registry;
  prober_actor prober;
  ccn_peer_actor peer;
};

struct reward_epochs_state {
  static inline const char* name = "reward_epochs";
  reward_epochs_config cfg;
  uint64_t last = 0;      ///< the last epoch computed (or the one before the first start)
  bool busy = false;
  double retry_at = 0;    ///< after a failure, not before this (Unix seconds)
  uint64_t computed = 0;  ///< epochs computed by this actor
};

reward_epochs_actor::behavior_type
reward_epochs(reward_epochs_actor::stateful_pointer<reward_epochs_state> self,
              reward_epochs_config cfg);

} // namespace alephd
