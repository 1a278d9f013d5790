// One reward epoch on a CCN: what went in (topology, scores, stakes, prices,
// and for each CRN the range of its usage-book entries counted), what came
// out (both models of runtime/rewards.hpp), stored in LMDB (database
// "rewards", by epoch) so that `alephd rewards --epoch N` can recompute it
// from the usage book and compare. A CRN's entries count in the epoch during
// which the CCN received them: each one exactly once, however late it came.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "runtime/rewards.hpp"

namespace alephd {

namespace lmdb {
class env;
}

struct stake_entry {
  std::string ccn; ///< the staked CCN's id or name
  std::string address;
  double amount = 0;
};

/// Parses "ccn:address:amount[,…]"; false with `err` naming the bad item.
bool parse_stakes(const std::string& text, std::vector<stake_entry>& out, std::string& err);

struct epoch_input {
  uint64_t epoch = 0;
  double start = 0; ///< unix seconds
  double end = 0;
  std::vector<rewards::ccn_input> ccns;
  std::vector<rewards::crn_input> crns;
  /// CRN id -> (last seq counted before, last seq counted in this epoch]
  std::map<std::string, std::pair<uint64_t, uint64_t>> ranges;
  rewards::params params;
};

struct epoch_record {
  epoch_input input;
  std::string legacy; ///< rewards::to_json of the legacy model
  std::string usage;  ///< … of the usage model
};

std::string encode_epoch(const epoch_record& r);
std::optional<epoch_record> decode_epoch(std::string_view text);

/// Compute units of a reservation: max(vcpus, ⌈memory / 2 GiB⌉), at least 1.
double compute_units(uint32_t vcpus, uint64_t memory_mib);

/// Sums the usage book's entries held in `ranges` per (CRN, execution, product) (a CRN that
/// failed over between CCNs has gaps: those entries are counted by the CCN that got them);
/// false with `err` when an entry is unreadable.
bool collect_usage(lmdb::env& env, const std::map<std::string, std::pair<uint64_t, uint64_t>>& ranges,
                   std::vector<rewards::usage_input>& out, std::string& err);

/// For each CRN in the usage book or in `after`: (`after`[node] or 0, its highest seq], the
/// entries an epoch computed now counts; a CRN without new entries gets an empty range, which
/// keeps its place for the next epoch.
std::map<std::string, std::pair<uint64_t, uint64_t>>
usage_ranges(lmdb::env& env, const std::map<std::string, uint64_t>& after);

/// Both models for `in` and its usage.
epoch_record compute_epoch(const epoch_input& in, const std::vector<rewards::usage_input>& usage);

/// The stored epochs (database "rewards"), and one of them.
std::vector<uint64_t> stored_epochs(lmdb::env& env);
std::optional<epoch_record> load_epoch(lmdb::env& env, uint64_t epoch);
bool store_epoch(lmdb::env& env, const epoch_record& r, std::string& err);

/// Recomputes a stored epoch from the usage book; empty when it matches what was stored,
/// else a one-line difference.
std::string verify_epoch(lmdb::env& env, uint64_t epoch);

} // namespace alephd
