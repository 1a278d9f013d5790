// `alephd sim`: a local cluster of real alephd processes (N CCNs × 3 CRNs, plus extra CRNs that
// start waiting) on loopback, a workload, faults on a seeded schedule, invariant checks after
// each fault and at the end, and a JSON and an HTML report. See config/sim.ini for the options.
#pragma once

#include <string>
#include <vector>

namespace alephd::sim {

/// Runs the simulation; `self` is the alephd executable to launch. Returns the exit code:
/// 0 every invariant held, 1 one was violated (the seed and the events that show it are
/// printed), 2 bad usage or configuration (one line on stderr), 3 the cluster did not come up.
int run(const std::vector<std::string>& args, const std::string& self);

/// The --help text of `alephd sim`.
std::string help();

} // namespace alephd::sim
