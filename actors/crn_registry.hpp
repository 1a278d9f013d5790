// CCN: the registry of CRNs. At most `max_linked` are linked; the rest wait and
// the longest-waiting is promoted when a slot frees. A CRN is down when its
// link actor dies (process killed) or when it misses heartbeats for
// `failure_timeout` (process frozen).
#pragma once

#include <chrono>
#include <map>
#include <vector>

#include "actors/interfaces.hpp"

namespace alephd {

struct crn_registry_config {
  std::string ccn_id;
  uint32_t max_linked = 3;
  std::chrono::milliseconds heartbeat{1000};
  std::chrono::milliseconds failure_timeout{5000};
};

struct crn_entry {
  crn_info info;
  ccn_link_actor link;
  link_state state = link_state::unlinked;
  double registered = 0;     ///< wall clock, for display
  double last_heartbeat = 0; ///< wall clock, for display
  caf::actor_clock::time_point last_seen; ///< actor clock, for failure detection
  uint64_t wait_order = 0;   ///< smaller = waiting longer
};

struct crn_registry_state {
  static inline const char* name = "crn_registry";
  crn_registry_config cfg;
  std::map<std::string, crn_entry> crns;
  uint64_t next_order = 0;
  std::vector<node_listener_actor> listeners;
};

crn_registry_actor::behavior_type
crn_registry(crn_registry_actor::stateful_pointer<crn_registry_state> self,
             crn_registry_config cfg);

} // namespace alephd
