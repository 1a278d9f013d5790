// The shortest history of a violation: a failing run is run again with fewer of its faults until
// no fault can go without the violation going too (delta debugging, Zeller's ddmin, over the
// faults the run injected). Pure: the caller says how to run and what counts as failing again.
#pragma once

#include <chrono>
#include <cstddef>
#include <functional>
#include <vector>

namespace alephd::sim {

struct shrink_limits {
  std::size_t runs = 30;
  std::chrono::steady_clock::duration time = std::chrono::minutes{10};
};

/// One re-run: interrupted (stop), or whether it failed the same way again, and then the faults
/// it injected before it failed (a subset of those it was given).
struct trial {
  bool stopped = false;
  bool failed = false;
  std::vector<std::size_t> used;
};

struct shrink_result {
  std::vector<std::size_t> faults; ///< the smallest set found that still fails
  std::size_t runs = 0;           ///< re-runs made
  bool minimal = false;           ///< no single fault of `faults` can go (1-minimal)
  bool stopped = false;           ///< a run was interrupted
};

/// Tries subsets of `faults` (a run with them failed) with `run`. The empty set is tried first;
/// then, as ddmin, the complements of ever smaller chunks of the current set; a failing run
/// makes the faults it used the current set. A set is run once (its answer is remembered). The
/// limits are checked before each run starts (a run under way is not cut short); when one is
/// reached, the smallest failing set so far.
shrink_result shrink(const std::vector<std::size_t>& faults,
                     const std::function<trial(const std::vector<std::size_t>&)>& run, shrink_limits limits);

} // namespace alephd::sim
