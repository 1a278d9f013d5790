// Scoring and reward formulas against hand-computed cases (reference §6.3–§6.5).
#include "runtime/rewards.hpp"

#include <algorithm>
#include <cmath>
#include <random>

#include <gtest/gtest.h>

using namespace alephd::rewards;

namespace {

constexpr double day = 86400;

double amount_of(const epoch_result& r, const std::string& pool, const std::string& recipient) {
  double sum = 0;
  for (auto& p : r.payouts)
    if (p.pool == pool && p.recipient == recipient)
      sum += p.amount;
  return sum;
}

double unallocated(const epoch_result& r, const std::string& pool) {
  double sum = 0;
  for (auto& p : r.payouts)
    if (p.pool == pool && p.role == "unallocated")
      sum += p.amount;
  return sum;
}

} // namespace

TEST(score, multiplier_thresholds) {
  EXPECT_DOUBLE_EQ(score_multiplier(0.19), 0);
  EXPECT_DOUBLE_EQ(score_multiplier(0.2), 0);
  EXPECT_DOUBLE_EQ(score_multiplier(0.5), 0.5);
  EXPECT_DOUBLE_EQ(score_multiplier(0.8), 1);
  EXPECT_DOUBLE_EQ(score_multiplier(0.81), 1);
  EXPECT_NEAR(score_multiplier(0.65), 0.75, 1e-12);
  EXPECT_DOUBLE_EQ(score_multiplier(-3), 0);
  EXPECT_DOUBLE_EQ(score_multiplier(7), 1);
}

TEST(score, latency_terms) {
  EXPECT_DOUBLE_EQ(latency_score(1.0, 2.0), 0.5);
  EXPECT_DOUBLE_EQ(latency_score(0.0, 2.5), 1.0);
  EXPECT_DOUBLE_EQ(latency_score(3.0, 2.0), 0);
  EXPECT_DOUBLE_EQ(latency_score(std::nullopt, 4.0), 0); // 100 s
  EXPECT_DOUBLE_EQ(latency_score(1.0, 0), 0);
}

TEST(score, percentile_interpolates) {
  EXPECT_FALSE(percentile({}, 0.5));
  EXPECT_DOUBLE_EQ(*percentile({4, 1, 3, 2}, 0.25), 1.75);
  EXPECT_DOUBLE_EQ(*percentile({4, 1, 3, 2}, 0.95), 3.85);
  EXPECT_DOUBLE_EQ(*percentile({7}, 0.95), 7);
  EXPECT_DOUBLE_EQ(*percentile({1, 2}, 0), 1);
  EXPECT_DOUBLE_EQ(*percentile({1, 2}, 1), 2);
}

TEST(score, decentralization_squares_the_other_share) {
  EXPECT_NEAR(decentralization(1, 10), 0.81, 1e-12);
  EXPECT_DOUBLE_EQ(decentralization(10, 10), 0);
  EXPECT_DOUBLE_EQ(decentralization(1, 1), 0);
  EXPECT_DOUBLE_EQ(decentralization(0, 0), 0);
  EXPECT_DOUBLE_EQ(decentralization(2, 4), 0.25);
}

TEST(score, version_share_and_missing_rule) {
  auto probes = [](std::vector<std::string> versions) {
    std::vector<crn_probe> out;
    for (auto& v : versions)
      out.push_back(crn_probe{0, 0.1, 0.1, 0.1, v});
    return out;
  };
  std::vector<std::string> ok{"0.1.0"};
  EXPECT_DOUBLE_EQ(version_score(probes({"0.1.0", "0.1.0"}), ok), 1);
  EXPECT_DOUBLE_EQ(version_score(probes({"0.1.0", "0.1.0", "0.1.0", "0.1.0", "0.0.9"}), ok), 0.8);
  // 1 missing against 5 others: not more than a fifth, counts as not valid.
  EXPECT_NEAR(version_score(probes({"", "0.1.0", "0.1.0", "0.1.0", "0.1.0", "0.1.0"}), ok),
              5.0 / 6, 1e-12);
  // 2 missing against 4 others: more than a fifth, the score is 0.
  EXPECT_DOUBLE_EQ(version_score(probes({"", "", "0.1.0", "0.1.0", "0.1.0", "0.1.0"}), ok), 0);
  EXPECT_DOUBLE_EQ(version_score({}, ok), 0);
}

TEST(score, crn_total_by_hand) {
  std::vector<crn_probe> probes(4, crn_probe{0, 0.5, 0.5, 1.0, "0.1.0"});
  auto s = score_crn(probes, {"0.1.0"}, 0.81);
  EXPECT_DOUBLE_EQ(s.base_p25, 0.75);
  EXPECT_DOUBLE_EQ(s.base_p95, 0.75);
  EXPECT_DOUBLE_EQ(s.diag_p25, 0.8);
  EXPECT_DOUBLE_EQ(s.full_p25, 0.75);
  EXPECT_NEAR(s.performance, 0.7621991222319221, 1e-12);
  EXPECT_DOUBLE_EQ(s.version, 1);
  EXPECT_NEAR(s.total, 0.8730401607210988, 1e-12);
  EXPECT_DOUBLE_EQ(s.multiplier, 1);
  EXPECT_DOUBLE_EQ(s.decentralization, 0.81);
  EXPECT_EQ(s.samples, 4u);
}

TEST(score, missing_full_check_zeroes_performance) {
  std::vector<crn_probe> probes(3, crn_probe{0, 0.1, 0.1, std::nullopt, "0.1.0"});
  auto s = score_crn(probes, {"0.1.0"}, 1);
  EXPECT_DOUBLE_EQ(s.full_p25, 0);
  EXPECT_DOUBLE_EQ(s.total, 0);
  EXPECT_DOUBLE_EQ(s.multiplier, 0);
  EXPECT_DOUBLE_EQ(score_crn({}, {"0.1.0"}, 1).total, 0);
}

TEST(score, slow_base_p95_lowers_the_score) {
  // 19 fast probes and one at 1.9 s: p95 of base lands between them.
  std::vector<crn_probe> probes(19, crn_probe{0, 0.2, 0.25, 0.4, "v"});
  probes.push_back(crn_probe{0, 1.9, 0.25, 0.4, "v"});
  auto s = score_crn(probes, {"v"}, 0);
  // p95 position 18.05: 0.2 + (1.9 − 0.2) × 0.05 = 0.285 s → 1 − 0.285/2
  EXPECT_NEAR(s.base_p95, 1 - 0.285 / 2, 1e-12);
  EXPECT_DOUBLE_EQ(s.base_p25, 0.9);
}

TEST(legacy, linkage_by_scoring_crns) {
  EXPECT_DOUBLE_EQ(linkage(0, 5), 0.7);
  EXPECT_NEAR(linkage(1, 5), 0.8, 1e-12);
  EXPECT_NEAR(linkage(2, 5), 0.9, 1e-12);
  EXPECT_DOUBLE_EQ(linkage(3, 5), 1.0);
  EXPECT_DOUBLE_EQ(linkage(4, 5), 1.0);
  EXPECT_NEAR(linkage(2, 1), 0.8, 1e-12);
}

namespace {

std::vector<ccn_input> two_ccns() {
  return {
    ccn_input{"ccn-a", true, 0.9, {"c1", "c2", "c3", "c4"}, {{"s1", 600000}, {"s2", 200000}}},
    ccn_input{"ccn-b", true, 0.5, {}, {{"s3", 200000}}},
    ccn_input{"ccn-c", false, 1.0, {"c5"}, {{"s4", 1000000}}},
  };
}

std::vector<crn_input> five_crns() {
  return {
    crn_input{"c1", 0.9, 1.0},
    crn_input{"c2", 0.1, 1.0}, // below 0.2: not scoring
    crn_input{"c3", 0.5, 0.25},
    crn_input{"c4", 0.8, 0.0},
    crn_input{"c5", 1.0, 1.0}, // linked to an inactive CCN
  };
}

} // namespace

TEST(legacy, one_day_by_hand) {
  auto r = legacy_epoch(7, day, two_ccns(), five_crns());
  EXPECT_EQ(r.epoch, 7u);
  // CCNs: 15,000 / 2 active; A: 3 scoring CRNs → linkage 1, score 0.9 → ×1.
  // B: no CRN → 0.7, score 0.5 → ×0.5.
  EXPECT_DOUBLE_EQ(r.pools.at("legacy-ccn"), 15000);
  EXPECT_NEAR(amount_of(r, "legacy-ccn", "ccn-a"), 7500, 1e-9);
  EXPECT_NEAR(amount_of(r, "legacy-ccn", "ccn-b"), 2625, 1e-9);
  EXPECT_NEAR(amount_of(r, "legacy-ccn", "ccn-c"), 0, 1e-12);
  EXPECT_NEAR(unallocated(r, "legacy-ccn"), 4875, 1e-9);
  // CRNs: (250 + 1250 × dec) / 30 per day × multiplier.
  EXPECT_NEAR(amount_of(r, "legacy-crn", "c1"), 50, 1e-9);
  EXPECT_NEAR(amount_of(r, "legacy-crn", "c2"), 0, 1e-12);
  EXPECT_NEAR(amount_of(r, "legacy-crn", "c3"), 562.5 / 30 * 0.5, 1e-9);
  EXPECT_NEAR(amount_of(r, "legacy-crn", "c4"), 250.0 / 30, 1e-9);
  EXPECT_NEAR(amount_of(r, "legacy-crn", "c5"), 0, 1e-12);
  // Stakers: (log10 2 + 1)/3 × 15,000 = 6505.15; stakes on active CCNs total 1 M.
  EXPECT_NEAR(r.pools.at("legacy-stakers"), 6505.149978319906, 1e-9);
  EXPECT_NEAR(amount_of(r, "legacy-stakers", "s1"), 3903.0899869919435, 1e-9);
  EXPECT_NEAR(amount_of(r, "legacy-stakers", "s2"), 1301.0299956639813, 1e-9);
  EXPECT_NEAR(amount_of(r, "legacy-stakers", "s3"), 455.3604984823934, 1e-9);
  EXPECT_NEAR(amount_of(r, "legacy-stakers", "s4"), 0, 1e-12);
  EXPECT_NEAR(unallocated(r, "legacy-stakers"), 845.6694971815878, 1e-9);
}

TEST(legacy, scales_with_the_epoch_length) {
  auto d = legacy_epoch(1, day, two_ccns(), five_crns());
  auto h = legacy_epoch(1, 3600, two_ccns(), five_crns());
  EXPECT_NEAR(h.received("ccn-a") * 24, d.received("ccn-a"), 1e-9);
  EXPECT_NEAR(h.received("c1") * 24, d.received("c1"), 1e-9);
  EXPECT_NEAR(h.received("s1") * 24, d.received("s1"), 1e-9);
}

TEST(legacy, only_the_first_max_paid_scoring_crns_are_paid) {
  ccn_input ccn{"ccn", true, 1.0, {}, {}};
  std::vector<crn_input> crns;
  for (int i = 0; i < 7; ++i) {
    crns.push_back(crn_input{"c" + std::to_string(i), i == 1 ? 0.0 : 1.0, 0});
    ccn.linked_crns.push_back(crns.back().id);
  }
  auto r = legacy_epoch(1, day * 30, {ccn}, crns);
  // c1 does not score; c0, c2, c3, c4, c5 are the first five that do; c6 is not paid.
  for (auto id : {"c0", "c2", "c3", "c4", "c5"})
    EXPECT_NEAR(amount_of(r, "legacy-crn", id), 250, 1e-9) << id;
  EXPECT_DOUBLE_EQ(amount_of(r, "legacy-crn", "c1"), 0);
  EXPECT_DOUBLE_EQ(amount_of(r, "legacy-crn", "c6"), 0);
  EXPECT_NEAR(r.pools.at("legacy-crn"), 1250, 1e-9);
}

TEST(legacy, zero_to_four_scoring_crns_set_the_ccn_share) {
  for (std::size_t n = 0; n <= 4; ++n) {
    ccn_input ccn{"ccn", true, 1.0, {}, {{"s", 1}}};
    std::vector<crn_input> crns;
    for (std::size_t i = 0; i < n; ++i) {
      crns.push_back(crn_input{"c" + std::to_string(i), 0.9, 0});
      ccn.linked_crns.push_back(crns.back().id);
    }
    auto r = legacy_epoch(1, day, {ccn}, crns);
    double expected = 15000 * std::min(1.0, 0.7 + 0.1 * static_cast<double>(n));
    EXPECT_NEAR(amount_of(r, "legacy-ccn", "ccn"), expected, 1e-9) << n;
    // One active CCN: staker pool (log10 1 + 1)/3 × 15,000 = 5,000, same modifier.
    EXPECT_NEAR(amount_of(r, "legacy-stakers", "s"), 5000 * expected / 15000, 1e-9) << n;
  }
}

TEST(legacy, a_ccn_without_stakers_and_no_active_ccn) {
  ccn_input lone{"ccn", true, 1.0, {}, {}};
  auto r = legacy_epoch(1, day, {lone}, {});
  EXPECT_NEAR(r.pools.at("legacy-stakers"), 5000, 1e-9);
  EXPECT_NEAR(unallocated(r, "legacy-stakers"), 5000, 1e-9);
  for (auto& p : r.payouts) {
    if (p.pool == "legacy-stakers") {
      EXPECT_EQ(p.recipient, "no stakers");
    }
  }

  lone.active = false;
  auto none = legacy_epoch(1, day, {lone}, {});
  EXPECT_NEAR(unallocated(none, "legacy-ccn"), 15000, 1e-9);
  EXPECT_DOUBLE_EQ(none.pools.at("legacy-stakers"), 0);
  EXPECT_DOUBLE_EQ(none.received("ccn"), 0);
}

TEST(legacy, a_remote_ccn_computes_its_own_share) {
  std::vector<ccn_input> ccns{
    ccn_input{"me", true, 1.0, {"c1", "c2", "c3"}, {{"s1", 100}}, false},
    ccn_input{"peer", true, 1.0, {}, {{"s2", 300}}, true},
  };
  std::vector<crn_input> crns{{"c1", 1, 0}, {"c2", 1, 0}, {"c3", 1, 0}};
  auto r = legacy_epoch(1, day, ccns, crns);
  EXPECT_NEAR(amount_of(r, "legacy-ccn", "me"), 7500, 1e-9);
  EXPECT_NEAR(amount_of(r, "legacy-ccn", "computed by ccn peer"), 7500, 1e-9);
  EXPECT_DOUBLE_EQ(amount_of(r, "legacy-ccn", "peer"), 0);
  double pool = (std::log10(2.0) + 1) / 3 * 15000;
  EXPECT_NEAR(amount_of(r, "legacy-stakers", "s1"), pool * 0.25, 1e-9);
  EXPECT_NEAR(amount_of(r, "legacy-stakers", "computed by ccn peer"), pool * 0.75, 1e-9);
  EXPECT_DOUBLE_EQ(amount_of(r, "legacy-stakers", "s2"), 0);
  EXPECT_NEAR(unallocated(r, "legacy-ccn"), 7500, 1e-9);
  for (auto& [name, total] : r.pools)
    EXPECT_NEAR(r.paid(name), total, 1e-9) << name;
}

TEST(usage, execution_split_by_hand) {
  auto ccns = two_ccns();
  std::vector<usage_input> usage{
    usage_input{"c1", "h1", "program", 10, 0},  // 10 CU-h × 0.011 = 0.11
    usage_input{"cx", "h2", "instance", 2, 0},  // unlinked CRN: 2 × 0.055 = 0.11
  };
  auto r = usage_epoch(3, day, ccns, usage);
  EXPECT_NEAR(r.pools.at("usage-execution"), 0.22, 1e-12);
  EXPECT_NEAR(amount_of(r, "usage-execution", "c1"), 0.066, 1e-12);
  EXPECT_NEAR(amount_of(r, "usage-execution", "ccn-a"), 0.0165, 1e-12);
  EXPECT_NEAR(amount_of(r, "usage-execution", "s1"), 0.0165, 1e-12);
  EXPECT_NEAR(amount_of(r, "usage-execution", "s2"), 0.0055, 1e-12);
  EXPECT_NEAR(amount_of(r, "usage-execution", "cx"), 0.066, 1e-12);
  EXPECT_NEAR(amount_of(r, "usage-execution", "dev-fund"), 0.011, 1e-12);
  // cx has no CCN: its 15 % + 20 % are unallocated.
  EXPECT_NEAR(unallocated(r, "usage-execution"), 0.0385, 1e-12);
}

TEST(usage, ccn_without_stakers_leaves_their_share_unallocated) {
  std::vector<ccn_input> ccns{ccn_input{"ccn", true, 1.0, {"c1"}, {}}};
  auto r = usage_epoch(1, day, ccns, {usage_input{"c1", "h", "persistent_program", 1, 0}});
  EXPECT_NEAR(amount_of(r, "usage-execution", "ccn"), 0.055 * 0.15, 1e-12);
  EXPECT_NEAR(unallocated(r, "usage-execution"), 0.055 * 0.20, 1e-12);
}

TEST(usage, storage_split_by_score_and_stake) {
  auto r = usage_epoch(1, day, two_ccns(), {usage_input{"c1", "h", "program", 0, 1000}});
  EXPECT_NEAR(r.pools.at("usage-storage"), 0.1, 1e-12);
  EXPECT_NEAR(amount_of(r, "usage-storage", "ccn-a"), 0.075 * 0.9 / 1.4, 1e-12);
  EXPECT_NEAR(amount_of(r, "usage-storage", "ccn-b"), 0.075 * 0.5 / 1.4, 1e-12);
  EXPECT_DOUBLE_EQ(amount_of(r, "usage-storage", "ccn-c"), 0); // inactive
  EXPECT_NEAR(amount_of(r, "usage-storage", "s1"), 0.012, 1e-12);
  EXPECT_NEAR(amount_of(r, "usage-storage", "s2"), 0.004, 1e-12);
  EXPECT_NEAR(amount_of(r, "usage-storage", "s3"), 0.004, 1e-12);
  EXPECT_DOUBLE_EQ(amount_of(r, "usage-storage", "s4"), 0);
  EXPECT_NEAR(amount_of(r, "usage-storage", "dev-fund"), 0.005, 1e-12);
  EXPECT_NEAR(unallocated(r, "usage-storage"), 0, 1e-12);
}

// Random networks: every pool is paid out exactly (unallocated included),
// nothing is negative, and the input order does not change a single figure.
TEST(invariants, pools_sum_and_order_does_not_matter) {
  std::mt19937_64 rng{20261206};
  std::uniform_real_distribution<double> unit{0, 1};
  for (int round = 0; round < 200; ++round) {
    std::vector<ccn_input> ccns;
    std::vector<crn_input> crns;
    std::vector<usage_input> usage;
    auto n_ccn = 1 + rng() % 6;
    for (std::size_t i = 0; i < n_ccn; ++i) {
      ccn_input c{"ccn" + std::to_string(i), unit(rng) < 0.8, unit(rng) * 1.2 - 0.1, {}, {}};
      c.remote = i > 0 && unit(rng) < 0.3;
      auto n_crn = rng() % 8;
      for (std::size_t k = 0; k < n_crn; ++k) {
        auto id = "crn" + std::to_string(i) + "-" + std::to_string(k);
        c.linked_crns.push_back(id);
        crns.push_back(crn_input{id, unit(rng), unit(rng)});
        usage.push_back(usage_input{id, "h" + std::to_string(k),
                                    k % 3 == 0 ? "program" : k % 3 == 1 ? "instance" : "persistent_program",
                                    unit(rng) * 100, unit(rng) * 500});
      }
      auto n_stakers = rng() % 4;
      for (std::size_t s = 0; s < n_stakers; ++s)
        c.stakes["st" + std::to_string(rng() % 5)] = unit(rng) * 1e6;
      ccns.push_back(std::move(c));
    }
    usage.push_back(usage_input{"orphan", "x", "program", 3, 3});
    double seconds = 3600 + unit(rng) * day;
    auto legacy = legacy_epoch(round, seconds, ccns, crns);
    auto use = usage_epoch(round, seconds, ccns, usage);
    for (auto* r : {&legacy, &use}) {
      for (auto& [pool, total] : r->pools)
        EXPECT_NEAR(r->paid(pool), total, 1e-9 * std::max(1.0, total)) << pool << " round " << round;
      for (auto& p : r->payouts)
        EXPECT_GT(p.amount, 0) << p.pool << " " << p.recipient;
    }
    std::shuffle(ccns.begin(), ccns.end(), rng);
    std::shuffle(crns.begin(), crns.end(), rng);
    std::shuffle(usage.begin(), usage.end(), rng);
    EXPECT_EQ(to_json(legacy_epoch(round, seconds, ccns, crns)), to_json(legacy));
    EXPECT_EQ(to_json(usage_epoch(round, seconds, ccns, usage)), to_json(use));
  }
}
