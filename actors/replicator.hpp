// CCN: replicated file storage. Every STORE of a file is recorded (file hash -> the STOREs that
// name it, durable in LMDB); the CCN that accepted the STORE keeps `replicas` copies of the file
// on different linked CRNs, places a new copy when a CRN holding one goes down, re-asserts the
// duty when a CRN comes back (a restarted CRN forgets its pins), and on FORGET of the last STORE
// naming a file drops it from its CRNs and from this CCN's own store. It also serves as the
// content store's file source: a file this CCN lost is fetched back from a CRN holding it.
#pragma once

#include <map>
#include <memory>
#include <set>
#include <string>

#include "actors/interfaces.hpp"
#include "actors/scheduler.hpp"
#include "runtime/lmdb.hpp"

namespace alephd {

struct replicator_config {
  std::string ccn_id;
  /// Copies kept on CRNs of a STORE that does not say (`content.replicas`, 0..16).
  uint32_t default_replicas = 2;
  std::chrono::milliseconds retry{2000};
  /// A CRN gets this long to fetch a replica.
  std::chrono::milliseconds fetch_timeout{3600 * 1000};
  std::chrono::milliseconds refusal_pause{60000};
  std::shared_ptr<lmdb::env> env; ///< none: in memory only
};

struct refusal {
  caf::actor_clock::time_point until;
  uint32_t in_a_row = 0; ///< passing failures in a row
};

struct replica_set {
  std::set<std::string> stores;  ///< STORE messages naming the file
  std::string owner;             ///< content.address of the first STORE
  uint32_t wanted = 0;           ///< copies on CRNs (0: not placed by this CCN)
  std::set<std::string> holders; ///< CRNs that confirmed a copy
  std::set<std::string> pending; ///< CRNs fetching one
  /// CRNs that could not take one, and until when they are left alone: `refusal_pause` after
  /// a refusal (no room, too large); after a passing failure (the CRN was between two CCNs, or
  /// did not answer) `retry`, doubled at each one in a row up to `refusal_pause`. Cleared when
  /// the CRN takes the copy or links again, or `refusal_pause` after the rest ends.
  std::map<std::string, refusal> refused;
};

struct replicator_state {
  static inline const char* name = "replicator";
  replicator_config cfg;
  content_store_actor files;
  std::map<std::string, crn_slot> crns;
  std::map<std::string, replica_set> sets; ///< by file hash
  bool retry_armed = false;
  MDB_dbi db = 0;
};

replicator_actor::behavior_type
replicator(replicator_actor::stateful_pointer<replicator_state> self, replicator_config cfg,
           content_store_actor files);

} // namespace alephd
