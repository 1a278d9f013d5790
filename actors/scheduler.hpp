// CCN: places persistent PROGRAMs and INSTANCEs accepted by this CCN on its
// linked CRNs (enough free memory and vCPUs; most free memory first), and
// places them again, with a higher epoch, when their CRN goes down.
#pragma once

#include <map>
#include <set>

#include "actors/interfaces.hpp"

namespace alephd {

struct scheduler_config {
  std::string ccn_id;
  double vcpu_overcommit = 4.0;
  std::chrono::milliseconds retry{2000};
  std::chrono::milliseconds allocate_timeout{10000};
};

struct crn_slot {
  crn_info info;
  link_state state = link_state::unlinked;
  ccn_link_actor link;
  uint64_t used_vcpus = 0;
  uint64_t used_memory_mib = 0;
};

struct scheduled_workload {
  allocation alloc;
  std::string crn_id;
  std::string state = "pending"; ///< pending, allocating, allocated
  std::string detail;
  std::set<std::string> refused_by;
};

struct scheduler_state {
  static inline const char* name = "scheduler";
  scheduler_config cfg;
  std::map<std::string, crn_slot> crns;
  std::map<std::string, scheduled_workload> workloads;
  bool retry_armed = false;
};

scheduler_actor::behavior_type
scheduler(scheduler_actor::stateful_pointer<scheduler_state> self, scheduler_config cfg);

} // namespace alephd
