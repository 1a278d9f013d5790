// CRN: admission control and the table of executions. Admission follows
// aleph-vm PR #928: two memory buckets without overcommit (programs get
// `program_reserved_mib`; instances get the rest minus `host_reserved_mib`),
// vCPUs up to cores × `vcpu_overcommit`, and disk.
#pragma once

#include <map>

#include "actors/interfaces.hpp"

namespace alephd {

struct job_broker_config {
  std::string crn_id;
  uint32_t cores = 1;
  uint64_t memory_mib = 0; ///< physical memory
  uint64_t disk_mib = 0;   ///< free disk for volumes
  uint64_t host_reserved_mib = 2048;
  uint64_t program_reserved_mib = 8192;
  double vcpu_overcommit = 4.0;
};

struct execution_entry {
  allocation alloc;
  vm_supervisor_actor supervisor;
  bool stopped = false; ///< kept for listing; holds no capacity
};

struct job_broker_state {
  static inline const char* name = "job_broker";
  job_broker_config cfg;
  std::map<std::string, execution_entry> executions;
};

/// Why `a` does not fit next to the executions in `running` that are not stopped (the entry
/// for `a` itself is ignored), or an empty string when it does.
std::string admission_refusal(const job_broker_config& cfg,
                              const std::map<std::string, execution_entry>& running,
                              const allocation& a);

job_broker_actor::behavior_type
job_broker(job_broker_actor::stateful_pointer<job_broker_state> self, job_broker_config cfg);

} // namespace alephd
