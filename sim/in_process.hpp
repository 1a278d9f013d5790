// `alephd sim --in-process`: the same CCN and CRN actors as the real processes (message store,
// registry, scheduler, peers, usage book; link, job broker, supervisors, cache, reward ledger) in
// one actor system on CAF's deterministic scheduler, in virtual time. Programs run in an executor
// that never blocks; nodes reach each other through in-process handles. A seed replays exactly:
// the same schedule, the same events, the same trace digest.
#pragma once

#include "sim/journal.hpp"
#include "sim/options.hpp"

namespace alephd::sim {

/// Runs the simulation in this process; exit codes as sim::run(). `out` (if given) gets the
/// events, violations and faults of the run; its history is the caller's to print.
int run_in_process(const config& c, run_outcome* out = nullptr);

} // namespace alephd::sim
