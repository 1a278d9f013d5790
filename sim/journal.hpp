// What a simulation run records, shared by both modes of `alephd sim`: its events, the
// invariants checked and violated, and the pieces of the report made from them.
#pragma once

#include <filesystem>
#include <signal.h>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "sim/options.hpp"

namespace alephd::sim {

struct event {
  double t = 0;
  std::string kind; ///< fault, heal, start, observe, violation
  std::string what;
  std::string node;
  std::string detail;
};

struct violation {
  std::string invariant;
  double t = 0;
  std::string detail;
  std::set<std::string> nodes; ///< nodes it involves
};

/// A program whose CRN died or froze, awaiting its move to another CRN (the invariant
/// `reschedule-deadline` checks that it happens in time).
struct pending_reschedule {
  std::string program;
  std::string crn; ///< where it ran when its CRN died
  double died = 0;
  std::string cause = "kill"; ///< kill or pause
};

/// What a run ended with, for whoever runs it (and may run it again with fewer faults).
struct run_outcome {
  int code = 0; ///< the exit code of sim::run()
  std::vector<event> events;
  std::vector<violation> violations;
  std::vector<std::size_t> faults_started; ///< numbers of the scheduled faults injected (or skipped as moot)
  nlohmann::json report; ///< the JSON report (null when the cluster did not come up)
};

/// The cluster's shape and the run's settings, as the reports show them.
nlohmann::json config_json(const config& c);

nlohmann::json to_json(const event& e);
nlohmann::json to_json(const std::vector<event>& events);
nlohmann::json to_json(const std::vector<violation>& violations);

/// Counts one check of `invariant` in `checks` ({"checked", "failed", "last"} per invariant).
void count_check(nlohmann::json& checks, const std::string& invariant, bool ok, const std::string& detail);

/// p50, p99 and count of reschedule latencies (the "latency_s" of each entry).
nlohmann::json latency_summary(const std::vector<nlohmann::json>& reschedules);

/// Prints a violation, the seed and how to repeat it (`repeat`), and the events that show it up
/// to the moment it was seen: its faults and heals (of the nodes it involves only, unless
/// `every_fault`), under `heading`.
void print_history(const std::vector<event>& events, const violation& v, uint64_t seed, const std::string& repeat,
                   const std::string& heading, bool every_fault);

/// The events print_history() shows, as JSON.
nlohmann::json history_json(const std::vector<event>& events, const violation& v, bool every_fault);

/// An aleph message of `type` with `content` inline, signed by the wallet `secret` (`sender`).
nlohmann::json signed_message(const std::string& sender, const std::string& secret, const std::string& type,
                              const nlohmann::json& content);

/// The run's work directory: `wanted` (made if missing), else a fresh one under `base`; `made`
/// says whether it is a fresh one (removed after a passing run). Empty or a one-line error.
std::string make_work_dir(const std::string& wanted, const std::filesystem::path& base,
                          std::filesystem::path& dir, bool& made);

/// While it lives, SIGINT and SIGTERM call `handler`; the handlers before come back after.
class interrupt_handler {
public:
  explicit interrupt_handler(void (*handler)(int));
  ~interrupt_handler();
  interrupt_handler(const interrupt_handler&) = delete;
  interrupt_handler& operator=(const interrupt_handler&) = delete;

private:
  struct sigaction old_int_ {};
  struct sigaction old_term_ {};
};

/// At the end of a run: removes the work dir (`remove`), or says where it stays and what it holds.
void close_work_dir(const std::filesystem::path& dir, bool remove, const std::string& holds);

} // namespace alephd::sim
