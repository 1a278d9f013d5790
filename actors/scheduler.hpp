// CCN: places persistent PROGRAMs and INSTANCEs accepted by this CCN on its
// linked CRNs (enough free memory and vCPUs; most free memory first), and
// places them again, with a higher epoch, when their CRN goes down.
// Placements are durable: after a restart the scheduler re-confirms each one
// (same epoch) when its CRN registers again, and places it anew (higher epoch)
// when the CRN has not come back within `orphan_grace`.
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <set>

#include "actors/interfaces.hpp"
#include "runtime/lmdb.hpp"

namespace alephd {

struct scheduler_config {
  std::string ccn_id;
  double vcpu_overcommit = 4.0;
  std::chrono::milliseconds retry{2000};
  std::chrono::milliseconds allocate_timeout{10000};
  std::chrono::milliseconds orphan_grace{10000};
  std::shared_ptr<lmdb::env> env; ///< where placements persist; none = in memory only
};

struct crn_slot {
  crn_info info;
  link_state state = link_state::unlinked;
  ccn_link_actor link;
};

struct scheduled_workload {
  allocation alloc;
  std::string crn_id;
  std::string state = "pending"; ///< pending, allocating, allocated
  std::string detail;
  std::set<std::string> refused_by;
  /// Since when its CRN is not linked (restored placements wait `orphan_grace` for it).
  std::optional<caf::actor_clock::time_point> orphaned_since;
};

struct scheduler_state {
  static inline const char* name = "scheduler";
  scheduler_config cfg;
  std::map<std::string, crn_slot> crns;
  std::map<std::string, scheduled_workload> workloads;
  bool retry_armed = false;
  MDB_dbi db = 0;
};

scheduler_actor::behavior_type
scheduler(scheduler_actor::stateful_pointer<scheduler_state> self, scheduler_config cfg);

} // namespace alephd
