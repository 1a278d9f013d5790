// CCN: the prober. Every `interval` it probes each CRN linked here (or linked
// and now down) over HTTP as aleph-scoring does — GET /about/login (401
// expected), a diagnostic program through /vm/{ref}, the full check
// /status/check/fastapi, and the version from the Server header of GET / —
// keeps the probes of the scoring `window` in LMDB (database "probes"), and
// scores each CRN from them (runtime/rewards.hpp, reference §6.3).
// Without a diagnostic program configured, the base latency stands in for it.
#pragma once

#include <chrono>
#include <deque>
#include <functional>
#include <map>
#include <memory>

#include "actors/interfaces.hpp"
#include "runtime/rewards.hpp"

namespace alephd {

namespace lmdb {
class env;
}

struct prober_config {
  std::shared_ptr<lmdb::env> env;
  std::chrono::milliseconds interval{60000};
  std::chrono::milliseconds timeout{10000}; ///< per request
  std::chrono::seconds window{86400};       ///< probes older than this no longer count
  std::string diagnostic_ref;               ///< item hash of a program served on /vm/{ref}
  std::vector<std::string> accepted_versions;
  rewards::latency_scales scales;
  /// Probes one CRN (blocking); empty: over HTTP. Tests plug in their own.
  std::function<rewards::crn_probe(const crn_info&)> probe;
  /// Probes run on a thread of their own; tests on the deterministic scheduler turn this off.
  bool threaded = true;
};

struct prober_state {
  static inline const char* name = "prober";
  prober_config cfg;
  unsigned db = 0;
  std::map<std::string, crn_info> nodes; ///< linked here, or linked and now down
  std::map<std::string, std::deque<rewards::crn_probe>> probes;
  bool busy = false;
  uint64_t rounds = 0;
};

/// The probe record as stored, and back.
std::string encode_probe(const rewards::crn_probe& p);
std::optional<rewards::crn_probe> decode_probe(std::string_view text);

/// One probe of `crn` over HTTP (see above).
rewards::crn_probe http_probe(const crn_info& crn, const std::string& diagnostic_ref,
                              std::chrono::milliseconds timeout);

prober_actor::behavior_type prober(prober_actor::stateful_pointer<prober_state> self,
                                   prober_config cfg);

} // namespace alephd
