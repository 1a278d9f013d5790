// CCN: the registry of CRNs. At most `max_linked` are linked; the rest wait and
// the longest-waiting is promoted when a slot frees. A CRN is down when its
// link actor dies (process killed) or when it misses heartbeats for
// `failure_timeout` (process frozen).
// Entries are durable: after a CCN restart every known CRN shows as `down`
// until it registers again, and the slots of the CRNs that were linked are
// kept for them for `reserve_grace`, so that a restart does not reshuffle
// which CRNs are linked.
// Identity: a CRN signs its enrollment and heartbeats with its ed25519 node key and its id is
// the hash of that key; a bad signature, a replayed or stale enrollment, or a second process
// claiming the id of a CRN whose link is alive is refused (ec::refused).
#pragma once

#include <chrono>
#include <map>
#include <memory>
#include <vector>

#include "actors/interfaces.hpp"
#include "runtime/lmdb.hpp"

namespace alephd {

struct crn_registry_config {
  std::string ccn_id;
  uint32_t max_linked = 3;
  std::chrono::milliseconds heartbeat{1000};
  std::chrono::milliseconds failure_timeout{5000};
  std::chrono::milliseconds reserve_grace{35000};
  std::shared_ptr<lmdb::env> env; ///< where entries persist; none = in memory only
  /// Check node keys and signatures; off only in unit tests of the slot logic.
  bool verify_identity = true;
  /// An enrollment signed further than this from the CCN's clock is refused.
  std::chrono::milliseconds max_clock_skew{300000};
};

struct crn_entry {
  crn_info info;
  ccn_link_actor link;
  link_state state = link_state::unlinked;
  double registered = 0;     ///< wall clock, for display
  double last_heartbeat = 0; ///< wall clock, for display
  caf::actor_clock::time_point last_seen; ///< actor clock, for failure detection
  uint64_t wait_order = 0;   ///< smaller = waiting longer
  bool reserved = false;     ///< was linked before a CCN restart; its slot waits for it
  uint64_t session = 0;      ///< signing time (unix ms) of its last accepted enrollment
  uint64_t last_seq = 0;     ///< highest heartbeat seq accepted in that session
};

struct crn_registry_state {
  static inline const char* name = "crn_registry";
  crn_registry_config cfg;
  std::map<std::string, crn_entry> crns;
  uint64_t next_order = 0;
  std::vector<node_listener_actor> listeners;
  caf::actor_clock::time_point started;
  MDB_dbi db = 0;
};

crn_registry_actor::behavior_type
crn_registry(crn_registry_actor::stateful_pointer<crn_registry_state> self,
             crn_registry_config cfg);

} // namespace alephd
