// Scoring and ALEPH reward formulas (reference/aleph-crn.md §6.3–§6.5), as
// pure functions of their inputs: the CCN's epoch distribution, `alephd
// rewards --epoch N` and the tests all call these, so the same inputs always
// give the same figures. Amounts are ALEPH as doubles; every pool's payouts
// plus its `unallocated` line add up to the pool.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace alephd::rewards {

// -- scores (§6.3) ------------------------------------------------------------

/// A missing latency counts as this many seconds (aleph-scoring).
inline constexpr double missing_latency_s = 100.0;

/// 0 below 0.2, linear from 0 at 0.2 to 1 at 0.8, 1 from 0.8 on; the score is
/// clamped to [0, 1] first.
double score_multiplier(double score);

/// max(0, 1 − latency / scale); a missing latency counts as 100 s.
double latency_score(std::optional<double> latency_s, double scale_s);

/// Linear-interpolated percentile (SQL percentile_cont), q in [0, 1];
/// nullopt for no values.
std::optional<double> percentile(std::vector<double> values, double q);

/// (1 − nodes sharing this node's ASN / all nodes)², where the count includes
/// the node itself; 0 for no nodes.
double decentralization(std::size_t same_asn, std::size_t total);

/// One probe of a CRN by the CCN's prober.
struct crn_probe {
  double time = 0;
  std::optional<double> base_s; ///< GET /about/login (401 expected)
  std::optional<double> diag_s; ///< a diagnostic program through /vm/{ref}
  std::optional<double> full_s; ///< the full check
  std::string version;          ///< from the Server header; empty when missing
};

/// Latency scales (seconds) of the CRN performance terms.
struct latency_scales {
  double base = 2.0;
  double diag = 2.5;
  double full = 4.0;
};

struct crn_score {
  std::size_t samples = 0;
  double base_p25 = 0, base_p95 = 0, diag_p25 = 0, full_p25 = 0; ///< latency scores
  double performance = 0;
  double version = 0;
  double total = 0;
  double decentralization = 0;
  double multiplier = 0;
};

/// Share of probes whose version is one of `accepted`; 0 when the probes
/// without a version are more than a fifth of the others, or no probes.
double version_score(const std::vector<crn_probe>& probes,
                     const std::vector<std::string>& accepted);

/// performance = (base p25 × base p95 × diag p25 × full p25)^¼ of the latency
/// scores; total = √(performance × version); multiplier from total. A missing
/// latency in a probe counts as 100 s; no probes at all scores 0.
crn_score score_crn(const std::vector<crn_probe>& probes,
                    const std::vector<std::string>& accepted_versions,
                    double decentralization_value, const latency_scales& scales = {});

// -- distribution (§6.4, §6.5) --------------------------------------------------

struct ccn_input {
  std::string id;
  bool active = true;
  double score = 0; ///< total score
  /// Its linked CRNs, in link order (the first `max_paid` scoring ones are paid).
  std::vector<std::string> linked_crns;
  /// staker address -> ALEPH staked on this CCN
  std::map<std::string, double> stakes;
  /// Another CCN computes its own legacy share and its stakers' (it knows its CRNs): here they
  /// are booked as unallocated, "computed by ccn <id>".
  bool remote = false;
};

struct crn_input {
  std::string id;
  double score = 0; ///< total score
  double decentralization = 0;
};

/// Metered use of one execution during the epoch (summed from the ledger).
struct usage_input {
  std::string crn;
  std::string item_hash;
  std::string product = "program"; ///< program, persistent_program, instance
  double compute_unit_hours = 0;   ///< wall hours × compute units reserved
  double storage_gib_hours = 0;    ///< pinned storage, GiB × hours
};

struct params {
  // legacy
  double ccn_daily = 15000;
  double stakers_daily_base = 15000;
  double crn_monthly_base = 250;
  double crn_monthly_variable = 1250;
  double days_per_month = 30;
  std::size_t max_paid = 5;
  // usage: ALEPH per compute-unit hour (reference §2.6, payg column)
  std::map<std::string, double> cu_hour_price{
    {"program", 0.011}, {"persistent_program", 0.055}, {"instance", 0.055}};
  double storage_gib_hour_price = 0.0001; ///< ours: the reference names no storage price
  std::string fund = "dev-fund";
};

struct payout {
  std::string pool;      ///< legacy-ccn, legacy-crn, legacy-stakers, usage-execution, usage-storage
  std::string role;      ///< ccn, crn, staker, fund, unallocated
  std::string recipient; ///< node id or address; the reason for `unallocated`
  double amount = 0;
  bool operator==(const payout&) const = default;
};

struct epoch_result {
  uint64_t epoch = 0;
  double seconds = 0;
  std::map<std::string, double> pools; ///< pool -> ALEPH to distribute this epoch
  std::vector<payout> payouts;         ///< in a fixed order
  /// Sum of the payouts of `pool` (unallocated included).
  double paid(const std::string& pool) const;
  /// Sum of what `recipient` receives over every pool.
  double received(const std::string& recipient) const;
};

/// linkage = 0.7 + 0.1 × min(scoring linked CRNs, max_paid), at most 1.
double linkage(std::size_t scoring_crns, std::size_t max_paid);

/// The legacy (availability) model over an epoch of `seconds`: CCN pool,
/// CRN rewards (not a pool: its "pool" figure is what was earned) and the
/// staker pool. Unknown CRN ids in `linked_crns` count as score 0.
epoch_result legacy_epoch(uint64_t epoch, double seconds, const std::vector<ccn_input>& ccns,
                          const std::vector<crn_input>& crns, const params& p = {});

/// The usage model: execution revenue 60 % CRN / 15 % its CCN / 20 % that
/// CCN's stakers / 5 % fund; storage 75 % active CCNs by score / 20 % stakers /
/// 5 % fund. A share without a recipient goes to `unallocated`.
epoch_result usage_epoch(uint64_t epoch, double seconds, const std::vector<ccn_input>& ccns,
                         const std::vector<usage_input>& usage, const params& p = {});

/// JSON text of a result with keys and payouts in a fixed order (what the CCN
/// stores and `alephd rewards` compares).
std::string to_json(const epoch_result& r);

} // namespace alephd::rewards
