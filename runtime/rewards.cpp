#include "runtime/rewards.hpp"

#include <algorithm>
#include <cmath>
#include <set>
#include <tuple>

#include <nlohmann/json.hpp>

namespace alephd::rewards {

double score_multiplier(double score) {
  score = std::clamp(score, 0.0, 1.0);
  if (score < 0.2)
    return 0;
  if (score >= 0.8)
    return 1;
  return (score - 0.2) / 0.6;
}

double latency_score(std::optional<double> latency_s, double scale_s) {
  double l = latency_s ? *latency_s : missing_latency_s;
  if (!(scale_s > 0) || std::isnan(l))
    return 0;
  return std::max(0.0, 1.0 - l / scale_s);
}

std::optional<double> percentile(std::vector<double> values, double q) {
  if (values.empty())
    return std::nullopt;
  std::sort(values.begin(), values.end());
  q = std::clamp(q, 0.0, 1.0);
  double pos = q * static_cast<double>(values.size() - 1);
  auto lo = static_cast<std::size_t>(std::floor(pos));
  auto hi = static_cast<std::size_t>(std::ceil(pos));
  double frac = pos - static_cast<double>(lo);
  return values[lo] + (values[hi] - values[lo]) * frac;
}

double decentralization(std::size_t same_asn, std::size_t total) {
  if (total == 0)
    return 0;
  double share = static_cast<double>(std::min(same_asn, total)) / static_cast<double>(total);
  return (1 - share) * (1 - share);
}

double version_score(const std::vector<crn_probe>& probes,
                     const std::vector<std::string>& accepted) {
  if (probes.empty())
    return 0;
  std::size_t missing = 0, valid = 0;
  for (auto& p : probes) {
    if (p.version.empty())
      ++missing;
    else if (std::find(accepted.begin(), accepted.end(), p.version) != accepted.end())
      ++valid;
  }
  std::size_t others = probes.size() - missing;
  if (static_cast<double>(missing) > static_cast<double>(others) / 5)
    return 0;
  return static_cast<double>(valid) / static_cast<double>(probes.size());
}

namespace {

/// Latency values of one term, a missing one counting as 100 s.
std::vector<double> latencies(const std::vector<crn_probe>& probes,
                              std::optional<double> crn_probe::*field) {
  std::vector<double> out;
  out.reserve(probes.size());
  for (auto& p : probes)
    out.push_back((p.*field) ? *(p.*field) : missing_latency_s);
  return out;
}

} // namespace

crn_score score_crn(const std::vector<crn_probe>& probes,
                    const std::vector<std::string>& accepted_versions,
                    double decentralization_value, const latency_scales& scales) {
  crn_score s;
  s.samples = probes.size();
  s.decentralization = decentralization_value;
  if (probes.empty())
    return s;
  auto base = latencies(probes, &crn_probe::base_s);
  auto diag = latencies(probes, &crn_probe::diag_s);
  auto full = latencies(probes, &crn_probe::full_s);
  s.base_p25 = latency_score(percentile(base, 0.25), scales.base);
  s.base_p95 = latency_score(percentile(base, 0.95), scales.base);
  s.diag_p25 = latency_score(percentile(diag, 0.25), scales.diag);
  s.full_p25 = latency_score(percentile(full, 0.25), scales.full);
  s.performance = std::pow(s.base_p25 * s.base_p95 * s.diag_p25 * s.full_p25, 0.25);
  s.version = version_score(probes, accepted_versions);
  s.total = std::clamp(std::sqrt(s.performance * s.version), 0.0, 1.0);
  s.multiplier = score_multiplier(s.total);
  return s;
}

double linkage(std::size_t scoring_crns, std::size_t max_paid) {
  return std::min(1.0, 0.7 + 0.1 * static_cast<double>(std::min(scoring_crns, max_paid)));
}

double epoch_result::paid(const std::string& pool) const {
  double sum = 0;
  for (auto& p : payouts)
    if (p.pool == pool)
      sum += p.amount;
  return sum;
}

double epoch_result::received(const std::string& recipient) const {
  double sum = 0;
  for (auto& p : payouts)
    if (p.recipient == recipient && p.role != "unallocated")
      sum += p.amount;
  return sum;
}

namespace {

/// Payouts summed per (pool, role, recipient), emitted in that key order.
class ledger_of_payouts {
public:
  void add(const std::string& pool, const std::string& role, const std::string& recipient,
           double amount) {
    if (amount <= 0)
      return;
    sums_[{pool, role, recipient}] += amount;
  }

  /// Books what `pool` did not pay out as unallocated, with `why`.
  void close(const std::string& pool, double total, const std::string& why) {
    double paid = 0;
    for (auto& [key, amount] : sums_)
      if (std::get<0>(key) == pool)
        paid += amount;
    double rest = total - paid;
    // Float sums may leave dust either side of zero; never book a negative line.
    if (rest > 1e-9 * std::max(1.0, total))
      sums_[{pool, "unallocated", why}] += rest;
  }

  std::vector<payout> take() const {
    std::vector<payout> out;
    out.reserve(sums_.size());
    for (auto& [key, amount] : sums_)
      out.push_back(payout{std::get<0>(key), std::get<1>(key), std::get<2>(key), amount});
    return out;
  }

private:
  std::map<std::tuple<std::string, std::string, std::string>, double> sums_;
};

/// Inputs in id order, so that float sums run in the same order every time.
std::vector<ccn_input> sorted(std::vector<ccn_input> ccns) {
  std::sort(ccns.begin(), ccns.end(), [](auto& a, auto& b) { return a.id < b.id; });
  return ccns;
}

} // namespace

epoch_result legacy_epoch(uint64_t epoch, double seconds, const std::vector<ccn_input>& ccn_list,
                          const std::vector<crn_input>& crns, const params& p) {
  epoch_result r;
  r.epoch = epoch;
  r.seconds = seconds;
  double days = std::max(0.0, seconds) / 86400.0;
  auto ccns = sorted(ccn_list);
  std::map<std::string, const crn_input*> crn_by_id;
  for (auto& c : crns)
    crn_by_id.emplace(c.id, &c);
  auto crn_multiplier = [&](const std::string& id) {
    auto i = crn_by_id.find(id);
    return i == crn_by_id.end() ? 0.0 : score_multiplier(i->second->score);
  };

  std::size_t active = 0;
  for (auto& c : ccns)
    active += c.active ? 1 : 0;

  // Per active CCN: which of its CRNs score, in link order, and its modifier.
  std::map<std::string, double> modifier;
  std::map<std::string, std::vector<std::string>> paid_crns;
  std::set<std::string> seen;
  for (auto& c : ccns) {
    if (!c.active)
      continue;
    std::vector<std::string> scoring;
    for (auto& id : c.linked_crns)
      if (crn_multiplier(id) > 0 && !seen.count(id))
        scoring.push_back(id);
    if (scoring.size() > p.max_paid)
      scoring.resize(p.max_paid);
    for (auto& id : scoring)
      seen.insert(id);
    modifier[c.id] = linkage(scoring.size(), p.max_paid) * score_multiplier(c.score);
    paid_crns[c.id] = std::move(scoring);
  }

  ledger_of_payouts out;
  // CCN operators.
  double ccn_pool = p.ccn_daily * days;
  r.pools["legacy-ccn"] = ccn_pool;
  if (active > 0)
    for (auto& c : ccns) {
      if (!c.active)
        continue;
      if (c.remote)
        out.add("legacy-ccn", "unallocated", "computed by ccn " + c.id, ccn_pool / static_cast<double>(active));
      else
        out.add("legacy-ccn", "ccn", c.id, ccn_pool / static_cast<double>(active) * modifier[c.id]);
    }
  out.close("legacy-ccn", ccn_pool, active == 0 ? "no active ccn" : "score or linkage below 1");

  // CRN operators: per node, not a pool; the "pool" is what they earned.
  double crn_total = 0;
  for (auto& c : ccns) {
    if (!c.active || c.remote)
      continue;
    for (auto& id : paid_crns[c.id]) {
      auto* crn = crn_by_id.at(id);
      double amount = (p.crn_monthly_base + p.crn_monthly_variable * crn->decentralization) *
                      (days / p.days_per_month) * score_multiplier(crn->score);
      out.add("legacy-crn", "crn", id, amount);
      crn_total += amount;
    }
  }
  r.pools["legacy-crn"] = crn_total;

  // Stakers of active CCNs, by stake, times their CCN's modifier.
  double staker_pool =
    active == 0 ? 0.0 : (std::log10(static_cast<double>(active)) + 1) / 3 * p.stakers_daily_base * days;
  r.pools["legacy-stakers"] = staker_pool;
  double staked = 0;
  for (auto& c : ccns)
    if (c.active)
      for (auto& [addr, stake] : c.stakes)
        staked += std::max(0.0, stake);
  if (staked > 0)
    for (auto& c : ccns) {
      if (!c.active)
        continue;
      double share = 0;
      for (auto& [addr, stake] : c.stakes) {
        if (c.remote)
          share += std::max(0.0, stake) / staked * staker_pool;
        else
          out.add("legacy-stakers", "staker", addr,
                  std::max(0.0, stake) / staked * staker_pool * modifier[c.id]);
      }
      if (c.remote)
        out.add("legacy-stakers", "unallocated", "computed by ccn " + c.id, share);
    }
  out.close("legacy-stakers", staker_pool,
            staked > 0 ? "score or linkage below 1" : "no stakers");

  r.payouts = out.take();
  return r;
}

epoch_result usage_epoch(uint64_t epoch, double seconds, const std::vector<ccn_input>& ccn_list,
                         const std::vector<usage_input>& usage_list, const params& p) {
  epoch_result r;
  r.epoch = epoch;
  r.seconds = seconds;
  auto ccns = sorted(ccn_list);
  auto usage = usage_list;
  std::sort(usage.begin(), usage.end(), [](auto& a, auto& b) {
    return std::tie(a.crn, a.item_hash, a.product) < std::tie(b.crn, b.item_hash, b.product);
  });
  std::map<std::string, const ccn_input*> ccn_of_crn;
  for (auto& c : ccns)
    for (auto& id : c.linked_crns)
      ccn_of_crn.emplace(id, &c);

  ledger_of_payouts out;
  // Execution revenue.
  double exec_total = 0;
  for (auto& u : usage) {
    auto price = p.cu_hour_price.find(u.product);
    if (price == p.cu_hour_price.end())
      price = p.cu_hour_price.find("program");
    double revenue = price == p.cu_hour_price.end()
                       ? 0.0
                       : std::max(0.0, u.compute_unit_hours) * price->second;
    if (revenue <= 0)
      continue;
    exec_total += revenue;
    out.add("usage-execution", "crn", u.crn, revenue * 0.60);
    out.add("usage-execution", "fund", p.fund, revenue * 0.05);
    auto link = ccn_of_crn.find(u.crn);
    if (link == ccn_of_crn.end() || !link->second->active)
      continue; // its CCN's and stakers' shares stay unallocated
    auto& ccn = *link->second;
    out.add("usage-execution", "ccn", ccn.id, revenue * 0.15);
    double staked = 0;
    for (auto& [addr, stake] : ccn.stakes)
      staked += std::max(0.0, stake);
    if (staked > 0)
      for (auto& [addr, stake] : ccn.stakes)
        out.add("usage-execution", "staker", addr, revenue * 0.20 * std::max(0.0, stake) / staked);
  }
  r.pools["usage-execution"] = exec_total;
  out.close("usage-execution", exec_total, "crn without an active ccn, or ccn without stakers");

  // Storage revenue.
  double storage_total = 0;
  for (auto& u : usage)
    storage_total += std::max(0.0, u.storage_gib_hours) * p.storage_gib_hour_price;
  r.pools["usage-storage"] = storage_total;
  if (storage_total > 0) {
    double weight = 0, staked = 0;
    for (auto& c : ccns) {
      if (!c.active)
        continue;
      weight += std::clamp(c.score, 0.0, 1.0);
      for (auto& [addr, stake] : c.stakes)
        staked += std::max(0.0, stake);
    }
    for (auto& c : ccns) {
      if (!c.active)
        continue;
      if (weight > 0)
        out.add("usage-storage", "ccn", c.id,
                storage_total * 0.75 * std::clamp(c.score, 0.0, 1.0) / weight);
      if (staked > 0)
        for (auto& [addr, stake] : c.stakes)
          out.add("usage-storage", "staker", addr,
                  storage_total * 0.20 * std::max(0.0, stake) / staked);
    }
    out.add("usage-storage", "fund", p.fund, storage_total * 0.05);
  }
  out.close("usage-storage", storage_total, "no scoring active ccn, or no stakers");

  r.payouts = out.take();
  return r;
}

std::string to_json(const epoch_result& r) {
  nlohmann::json j;
  j["epoch"] = r.epoch;
  j["seconds"] = r.seconds;
  j["pools"] = r.pools;
  auto& list = j["payouts"] = nlohmann::json::array();
  for (auto& p : r.payouts)
    list.push_back({{"pool", p.pool}, {"role", p.role}, {"recipient", p.recipient}, {"amount", p.amount}});
  // Ids come from other nodes: bytes that are not UTF-8 are replaced, never thrown on.
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

} // namespace alephd::rewards
