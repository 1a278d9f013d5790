// CRN: one execution's life, in explicit phases:
//   preparing → booting → running → stopping → stopped | failed.
// Preparing fetches the program's code through the CCN link into the CRN's
// code cache (sha256-checked); booting starts an executor (the bubblewrap
// sandbox) on a thread of its own; running publishes the execution in the
// execution table, where `/vm/{ref}` calls reach it without an actor hop.
// An on-demand execution stops after `reuse_timeout` without calls or when its
// program exits; a persistent one is restarted with jittered exponential
// back-off until it fails `crash_loop_failures` times within
// `crash_loop_window`, and is then `failed`. When an execution ends for good,
// the supervisor sends its final state and logs to the job_broker and quits.
#pragma once

#include <chrono>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <random>

#include "actors/interfaces.hpp"
#include "runtime/execution_table.hpp"
#include "runtime/guest_protocol.hpp"

namespace alephd {

class sandbox_pool;
class execution_records;
struct execution_record;

/// What an executor needs to know to start one execution.
struct executor_request {
  std::string item_hash;
  std::string run_dir; ///< per-execution host directory (socket, logs)
  uint64_t memory_mib = 128;
  uint32_t vcpus = 1;
  bool internet = false;
  std::string kind;   ///< program or instance
  std::string rootfs; ///< instances: the base image in the cache
  uint64_t overlay_mib = 0;
};

/// Settings shared by every supervisor of a CRN.
struct execution_env {
  std::string data_dir;     ///< the CRN's data dir: cache/ and executions/ live here
  std::string guest_binary; ///< the static alephd-guest
  std::string bwrap = "/usr/bin/bwrap";
  std::string microvm_kernel; ///< the kernel for instances (scripts/build-microvm-assets)
  std::string microvm_initrd; ///< the initramfs with the guest agent
  std::chrono::milliseconds reuse_timeout{3600 * 1000};
  std::chrono::milliseconds tick{1000};
  std::chrono::milliseconds stop_grace{6000};
  /// An instance booting its disk's init gets longer to power off: its guest agent waits up to
  /// `instance_halt_grace` for it, within half of this (see microvm::stop).
  /// (The agent's step also waits up to 1 s for the last output and syncs: 18 s of 22.5.)
  std::chrono::milliseconds instance_stop_grace{45000};
  std::chrono::seconds instance_halt_grace{18};
  std::chrono::milliseconds fetch_timeout{60000};
  /// The CRN's file cache (code, volumes, rootfs images).
  content_store_actor files;
  /// A download may take this long in all (stalls are cut much sooner by the cache).
  std::chrono::milliseconds download_timeout{6 * 3600 * 1000};
  std::chrono::milliseconds restart_initial{1000};
  std::chrono::milliseconds restart_max{60000};
  uint32_t crash_loop_failures = 5;
  std::chrono::milliseconds crash_loop_window{600 * 1000};
  uint32_t pids_max = 512;
  bool cgroups = true;
  std::string cgroup_root = "alephd"; ///< parent group name for this CRN's executions
  std::shared_ptr<execution_table> table;
  /// Pre-started sandboxes for programs (execution.prealloc); null for none.
  std::shared_ptr<sandbox_pool> pool;
  /// > 0: sandboxes and microVMs outlive a CRN that dies for this long, and a restarted CRN
  /// re-adopts them from `records` (execution.adopt-window); 0: they die with it.
  std::chrono::seconds adopt_window{0};
  /// How long a re-adopted sandbox's agent has to come back after a restart.
  std::chrono::milliseconds adopt_timeout{10000};
  /// Durable records of running sandboxes (null: none are kept).
  std::shared_ptr<execution_records> records;
  /// Where metering samples go (null: no metering), and how often per execution.
  reward_ledger_actor ledger;
  std::chrono::milliseconds sample_interval{60000};
  /// Makes the executor; empty = a bubblewrap sandbox (tests plug in others).
  std::function<std::shared_ptr<executor>(const executor_request&)> make_executor;
  /// Blocking executor calls run on a thread of their own; tests on the deterministic
  /// scheduler turn this off (with an executor that never blocks).
  bool threaded_host = true;
};

/// The configure frame for a PROGRAM message whose code bytes are `code`; empty error or why
/// the program cannot run here.
std::string program_configure(const std::string& message_json, std::string code,
                              guest::configure& out, std::chrono::milliseconds& timeout);

/// Metering of the current run since its last sample.
struct execution_meter {
  bool on = false;
  int64_t since_ms = 0; ///< actor clock (ms)
  executor_usage base;  ///< the executor's counters at the start of the sample
  uint64_t requests = 0, bytes_in = 0, bytes_out = 0; ///< the call counters then
  uint64_t mem_sum = 0;
  uint32_t mem_samples = 0;
  uint64_t mem_peak = 0;
};

struct vm_supervisor_state {
  static inline const char* name = "vm_supervisor";
  execution_info info;
  allocation alloc;
  std::shared_ptr<const execution_env> env;
  ccn_link_actor link;
  job_broker_actor broker; ///< gets the final report
  std::optional<guest::configure> cfg;
  std::chrono::milliseconds request_timeout{1000};
  bool internet = false;
  std::string code_dir;     ///< programs in a zip: the unpacked code, mounted at /opt/code
  std::vector<std::string> mount_args; ///< bwrap arguments for the volumes
  std::string rootfs;       ///< instances: the cached base image
  std::string downloading;  ///< what is being downloaded ("code <hash>"), for the status
  std::vector<std::string> files; ///< cached files this execution pins (for its record)
  uint64_t pinned_bytes = 0;      ///< their size (metered as storage)
  execution_meter meter;
  uint64_t overlay_mib = 0; ///< instances: rootfs.size_mib
  uint64_t run = 0; ///< bumps with every executor started; stale callbacks compare it
  std::shared_ptr<executor> exec;
  caf::actor host; ///< the detached actor that makes the executor's blocking calls
  std::shared_ptr<live_execution> live;
  std::vector<caf::typed_response_promise<execution_info>> waiters; ///< run and reboot
  /// Stops asked while it was already stopping; answered with the final state.
  std::vector<caf::typed_response_promise<execution_info>> stop_waiters;
  bool stop_after = false; ///< a stop arrived during a reboot or an exit: do not start again
  bool detached = false;   ///< left running for the next CRN process: its record stays
  bool adoptable = false;  ///< the current sandbox or VM can outlive the CRN (it has a record)
  int record_pid = 0;      ///< the pid in the record this supervisor wrote (or took over)
  double adopted_started_at = 0; ///< when a re-adopted sandbox first started
  /// Every run's output and the CRN's own notes, with their followers (stream_logs).
  std::shared_ptr<log_feed> feed = std::make_shared<log_feed>();
  std::deque<caf::actor_clock::time_point> failures;
  std::chrono::milliseconds backoff{0};
  std::mt19937_64 rng;

  vm_supervisor_state() = default;
  vm_supervisor_state(const vm_supervisor_state&) = delete;
  vm_supervisor_state& operator=(const vm_supervisor_state&) = delete;
  /// However the supervisor ends, its execution leaves the HTTP table (the executor itself is
  /// stopped by whoever drops its last reference).
  ~vm_supervisor_state() {
    if (live && env && env->table)
      env->table->remove(info.item_hash, live.get());
    if (env && env->table)
      env->table->remove_feed(info.item_hash, feed.get());
    feed->close();
  }
};

/// `broker` receives {atom::exited, execution_info, std::vector<log_line>} when it ends.
vm_supervisor_actor::behavior_type
vm_supervisor(vm_supervisor_actor::stateful_pointer<vm_supervisor_state> self, allocation a,
              bool persistent, std::shared_ptr<const execution_env> env, ccn_link_actor link,
              job_broker_actor broker);

} // namespace alephd
