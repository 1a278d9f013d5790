// The shortest history of a violation (sim/minimise.hpp): delta debugging over a failing run's
// faults, with runs played by predicates whose answer is known.
#include <algorithm>
#include <random>
#include <set>
#include <vector>

#include <gtest/gtest.h>

#include "sim/minimise.hpp"

namespace {

using alephd::sim::shrink;
using alephd::sim::shrink_limits;
using alephd::sim::trial;
using faults = std::vector<std::size_t>;

faults one_to(std::size_t n) {
  faults out;
  for (std::size_t i = 1; i <= n; ++i)
    out.push_back(i);
  return out;
}

bool contains_all(const faults& set, const faults& needed) {
  return std::all_of(needed.begin(), needed.end(),
                     [&](auto n) { return std::find(set.begin(), set.end(), n) != set.end(); });
}

// A run that fails when it has every fault of one of `causes`, and used every fault it was given.
struct fake_cluster {
  explicit fake_cluster(std::vector<faults> c = {}) : causes(std::move(c)) {}
  std::vector<faults> causes;
  std::vector<faults> tried;
  trial operator()(const faults& subset) {
    tried.push_back(subset);
    trial t;
    t.failed = std::any_of(causes.begin(), causes.end(), [&](auto& c) { return contains_all(subset, c); });
    t.used = subset;
    return t;
  }
};

} // namespace

TEST(sim_minimise, two_faults_that_break_it_together_are_what_is_left_of_ten) {
  fake_cluster run{std::vector<faults>{{3, 7}}};
  auto r = shrink(one_to(10), std::ref(run), shrink_limits{});
  EXPECT_EQ(r.faults, (faults{3, 7}));
  EXPECT_TRUE(r.minimal);
  EXPECT_FALSE(r.stopped);
  EXPECT_EQ(r.runs, run.tried.size());
  EXPECT_TRUE(run.tried.front().empty()) << "no fault at all is tried first";
  EXPECT_EQ(std::set<faults>(run.tried.begin(), run.tried.end()).size(), run.tried.size()) << "no set runs twice";
  EXPECT_LE(r.runs, 20u);
}

TEST(sim_minimise, a_violation_without_faults_has_an_empty_history_after_one_run) {
  fake_cluster run{std::vector<faults>{{}}};
  auto r = shrink(one_to(6), std::ref(run), shrink_limits{});
  EXPECT_TRUE(r.faults.empty());
  EXPECT_TRUE(r.minimal);
  EXPECT_EQ(r.runs, 1u);
}

TEST(sim_minimise, a_run_that_fails_before_its_later_faults_drops_them) {
  // The violation comes with fault 2, before faults 3..8 are injected.
  std::size_t runs = 0;
  auto r = shrink(one_to(8), [&](const faults& subset) {
    ++runs;
    trial t;
    t.failed = contains_all(subset, {2});
    for (auto n : subset)
      if (!t.failed || n <= 2)
        t.used.push_back(n);
    return t;
  }, shrink_limits{});
  EXPECT_EQ(r.faults, (faults{2}));
  EXPECT_TRUE(r.minimal);
  EXPECT_LE(runs, 4u) << "the first failing half already ends at fault 2";
}

TEST(sim_minimise, the_run_limit_leaves_a_smaller_failing_set_not_called_minimal) {
  fake_cluster run{std::vector<faults>{{5}}};
  auto r = shrink(one_to(16), std::ref(run), shrink_limits{3, std::chrono::minutes{1}});
  EXPECT_EQ(r.runs, 3u);
  EXPECT_FALSE(r.minimal);
  EXPECT_EQ(r.faults, (faults{1, 2, 3, 4, 5, 6, 7, 8})) << "none, 9-16 hold; 1-8 fails";
}

TEST(sim_minimise, the_time_limit_stops_before_any_run) {
  fake_cluster run{std::vector<faults>{{5}}};
  auto r = shrink(one_to(4), std::ref(run), shrink_limits{30, std::chrono::seconds{0}});
  EXPECT_EQ(r.runs, 0u);
  EXPECT_FALSE(r.minimal);
  EXPECT_EQ(r.faults, one_to(4));
}

TEST(sim_minimise, an_interrupted_run_stops_with_the_best_set_so_far) {
  std::size_t runs = 0;
  auto r = shrink(one_to(8), [&](const faults& subset) {
    trial t;
    t.stopped = ++runs == 3;
    t.failed = contains_all(subset, {6});
    t.used = subset;
    return t;
  }, shrink_limits{});
  EXPECT_TRUE(r.stopped);
  EXPECT_FALSE(r.minimal);
  EXPECT_EQ(r.runs, 3u);
  EXPECT_EQ(r.faults, (faults{5, 6, 7, 8})) << "none held, 5-8 failed, then the interruption";
}

// Any monotone failure (it fails with every superset of a cause): what is left fails, and no
// single fault of it can go.
TEST(sim_minimise, what_is_left_fails_and_no_single_fault_can_go) {
  std::mt19937 rng{42};
  for (int round = 0; round < 200; ++round) {
    auto n = 1 + rng() % 24;
    fake_cluster run;
    auto k = 1 + rng() % 3;
    for (std::size_t c = 0; c < k; ++c) {
      faults cause;
      for (std::size_t i = 1; i <= n; ++i)
        if (rng() % 5 == 0)
          cause.push_back(i);
      run.causes.push_back(cause);
    }
    auto all = one_to(n);
    if (!run(all).failed)
      continue;
    auto r = shrink(all, std::ref(run), shrink_limits{1000, std::chrono::minutes{1}});
    ASSERT_TRUE(r.minimal) << round;
    ASSERT_TRUE(run(r.faults).failed) << round;
    for (std::size_t i = 0; i < r.faults.size(); ++i) {
      auto less = r.faults;
      less.erase(less.begin() + static_cast<std::ptrdiff_t>(i));
      ASSERT_FALSE(run(less).failed) << "round " << round << ": fault " << r.faults[i] << " could go";
    }
  }
}
