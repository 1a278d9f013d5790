// Options of `alephd sim` (config/sim.ini, --group.name=value) and the fault schedule they
// determine; shared by the multi-process simulator (sim.cpp) and the in-process one
// (in_process.cpp).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace alephd::sim {

using ms = std::chrono::milliseconds;

struct config {
  // [cluster]
  uint32_t ccns = 3;
  uint32_t crns_per_ccn = 3;
  uint32_t extra_crns = 0;
  uint32_t max_linked = 3;
  uint32_t replicas = 2;
  ms heartbeat{250};
  ms failure_timeout{1500};
  uint64_t epoch_seconds = 10;
  ms sample_interval{1000};
  uint64_t ccn_disk_mib = 256; ///< the tmpfs of a CCN's data dir when disk-full faults run
  // [run]
  uint64_t seed = 1;
  ms duration{60000};
  ms converge_timeout{30000};
  ms reschedule_deadline{20000};
  ms poll{250};
  std::string scenario; ///< a named fault schedule; empty = drawn from faults.kinds
  /// Re-runs a failing run may take to find the fewest faults that still break the same
  /// invariant; -1 = the mode's default (30 in-process, 8 as processes).
  int64_t minimise_runs = -1;
  ms minimise_time{600000}; ///< and the wall time they may take
  // [workload]
  double messages_per_s = 4;
  double uploads_per_s = 0.5;
  double calls_per_s = 1;
  uint64_t upload_bytes = 4096;
  uint32_t persistent = 2;
  uint32_t on_demand = 1;
  uint32_t instances = 0;
  // [faults]
  ms fault_interval{6000};
  std::vector<std::string> kinds{"crn-kill", "ccn-kill", "host-kill", "crn-pause", "ccn-pause", "partition", "slow-link", "restart"};
  ms down_time{3000};
  ms pause_time{3000};
  ms partition_time{4000};
  ms slow_delay{200};
  /// The numbers (from 1, as --plan shows them) of the scheduled faults to inject, the others
  /// skipped at their times; unset = every one.
  std::optional<std::vector<std::size_t>> only_faults;
  // command line only
  std::string report;
  std::string html;
  std::string dir;
  bool keep = false;
  bool plan_only = false;
  bool in_process = false; ///< --in-process: one actor system on the deterministic scheduler
  bool rerun = false;      ///< a minimiser's re-run: no progress lines, nothing written or kept
};

/// Every fault kind either simulator knows.
extern const std::vector<std::string> all_kinds;

struct option {
  const char* name;
  const char* help;
  std::function<std::string(config&, const std::string&)> set; // "" or an error
};

/// The options table (names, help, parsers).
const std::vector<option>& options();

/// Reads --config first, then every other argument over it; "" or a one-line error.
std::string parse_args(const std::vector<std::string>& args, config& c);

/// The nodes of a cluster in the order the simulators start them: the CCNs, then each CCN's
/// CRNs, then the extra CRNs.
std::vector<std::string> node_names(const config& c);

struct planned_fault {
  std::string kind;
  std::size_t target = 0; ///< a node index; for host-kill, the index of a persistent program
};

/// The fault schedule: a function of the seed and the cluster's shape only.
std::vector<planned_fault> plan_faults(const config& c);

std::string describe(const config& c, const planned_fault& f);

/// Whether fault `number` (from 1) of the schedule is injected (faults.only).
bool selected(const config& c, std::size_t number);

/// "3,7", or "none" for no fault: the value of faults.only that selects `numbers`.
std::string fault_list(const std::vector<std::size_t>& numbers);

} // namespace alephd::sim
