#include "sim/minimise.hpp"

#include <algorithm>
#include <map>
#include <optional>

namespace alephd::sim {

shrink_result shrink(const std::vector<std::size_t>& faults,
                     const std::function<trial(const std::vector<std::size_t>&)>& run, shrink_limits limits) {
  shrink_result out;
  out.faults = faults;
  auto deadline = std::chrono::steady_clock::now() + limits.time;
  // One more run, unless a limit is reached or a run was interrupted: nullopt then. A failing
  // run's faults become the current set.
  std::map<std::vector<std::size_t>, trial> seen; // a set tried before is not run again
  auto attempt = [&](const std::vector<std::size_t>& subset) -> std::optional<bool> {
    trial t;
    if (auto i = seen.find(subset); i != seen.end()) {
      t = i->second;
    } else {
      if (out.stopped || out.runs >= limits.runs || std::chrono::steady_clock::now() >= deadline)
        return std::nullopt;
      ++out.runs;
      t = run(subset);
      if (!t.stopped)
        seen.emplace(subset, t);
    }
    if (t.stopped) {
      out.stopped = true;
      return std::nullopt;
    }
    if (t.failed) {
      // Only faults it was given (a run cannot inject others).
      std::vector<std::size_t> used;
      for (auto n : t.used)
        if (std::find(subset.begin(), subset.end(), n) != subset.end())
          used.push_back(n);
      out.faults = std::move(used);
    }
    return t.failed;
  };
  if (out.faults.empty()) {
    out.minimal = true;
    return out;
  }
  // A violation that needs no fault at all has the shortest history of all.
  if (auto r = attempt({}); !r) {
    return out;
  } else if (*r) {
    out.minimal = true;
    return out;
  }
  if (out.faults.size() == 1) {
    out.minimal = true;
    return out;
  }
  std::size_t n = 2; // chunks the current set is cut into
  while (true) {
    auto& f = out.faults;
    std::size_t size = f.size();
    bool reduced = false;
    for (std::size_t i = 0; i < n; ++i) {
      // Chunk i covers [begin, end); its complement is tried (with n = 2: each half alone).
      std::size_t begin = i * size / n, end = (i + 1) * size / n;
      std::vector<std::size_t> rest(f.begin(), f.begin() + static_cast<std::ptrdiff_t>(begin));
      rest.insert(rest.end(), f.begin() + static_cast<std::ptrdiff_t>(end), f.end());
      auto r = attempt(rest);
      if (!r)
        return out;
      if (*r) {
        n = std::max<std::size_t>(n - 1, 2);
        reduced = true;
        break;
      }
    }
    if (out.faults.size() <= 1) {
      out.minimal = true; // and the empty set did not fail
      return out;
    }
    if (reduced) {
      n = std::min(n, out.faults.size());
      continue;
    }
    if (n >= size) {
      out.minimal = true; // no single fault can go
      return out;
    }
    n = std::min(2 * n, size);
  }
}

} // namespace alephd::sim
