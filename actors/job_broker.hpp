// CRN: admission control and the table of executions. Admission follows
// aleph-vm PR #928: two memory buckets without overcommit (programs get
// `program_reserved_mib`; instances get the rest minus `host_reserved_mib`),
// vCPUs up to cores × `vcpu_overcommit`, and disk. Each admitted execution
// gets a vm_supervisor; executions that ended are kept (bounded) for the
// executions list and their logs.
#pragma once

#include <deque>
#include <map>
#include <memory>

#include "actors/interfaces.hpp"

namespace alephd {

struct execution_env;
struct execution_record;

struct job_broker_config {
  std::string crn_id;
  uint32_t cores = 1;
  uint64_t memory_mib = 0; ///< physical memory
  uint64_t disk_mib = 0;   ///< free disk for volumes
  uint64_t host_reserved_mib = 2048;
  uint64_t program_reserved_mib = 8192;
  double vcpu_overcommit = 4.0;
  size_t max_finished = 200; ///< ended executions kept for the list and logs
  std::shared_ptr<const execution_env> env;
  /// Executions the previous CRN process left (their records): a supervisor each once the link
  /// is there, which re-adopts a live sandbox or VM, or starts a persistent workload afresh.
  struct resumed {
    allocation alloc;
    bool persistent = false;
  };
  std::vector<resumed> resume;
};

struct execution_entry {
  allocation alloc;
  vm_supervisor_actor supervisor;
  bool stopped = false; ///< stopping or gone; holds no capacity
  bool persistent = false; ///< allocated by a CCN (else started by an on-demand call)
  /// Resumed after a CRN restart and not yet confirmed by the CCN (which may have placed it
  /// elsewhere meanwhile).
  bool unconfirmed = false;
};

struct finished_execution {
  execution_info info;
  std::vector<log_line> logs;
};

/// An on-demand start waiting for its program message.
struct pending_run {
  std::vector<caf::typed_response_promise<execution_info>> waiters;
};

struct job_broker_state {
  static inline const char* name = "job_broker";
  job_broker_config cfg;
  ccn_link_actor link;
  bool draining = false;
  std::map<std::string, execution_entry> executions;
  std::map<std::string, pending_run> pending;
  std::deque<finished_execution> finished;
  uint64_t next_event = 0;
  std::map<uint64_t, caf::typed_response_promise<uint16_t>> events; ///< events in flight
};

/// Why `a` does not fit next to the executions in `running` that are not stopped (the entry
/// for `a` itself is ignored), or an empty string when it does.
std::string admission_refusal(const job_broker_config& cfg,
                              const std::map<std::string, execution_entry>& running,
                              const allocation& a);

job_broker_actor::behavior_type
job_broker(job_broker_actor::stateful_pointer<job_broker_state> self, job_broker_config cfg);

} // namespace alephd
