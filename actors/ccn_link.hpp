// CRN: the link to a CCN. Connects, registers, sends heartbeats, and when the
// CCN is gone (process killed: its registry's down_msg; frozen: no heartbeat
// answer for `failure_timeout`) reconnects with jittered exponential back-off,
// moving on to the next CCN of its list.
#pragma once

#include <functional>
#include <map>
#include <random>
#include <string_view>

#include "actors/interfaces.hpp"

namespace alephd {

struct ccn_link_config {
  crn_info info; ///< `id` and `public_key` from the node key that `sign` uses
  /// Signs with the CRN's node key (ed25519): its enrollments and heartbeats.
  std::function<std::string(std::string_view)> sign;
  std::vector<std::string> endpoints;  ///< "host:port" node ports of CCNs, in order of preference
  std::vector<ccn_node_actor> direct;  ///< in-process CCNs (dev, tests)
  std::chrono::milliseconds heartbeat{1000};
  std::chrono::milliseconds failure_timeout{5000};
  std::chrono::milliseconds backoff_initial{200};
  std::chrono::milliseconds backoff_max{30000};
  /// The CRN's file cache, where replicas the CCN asks for are kept.
  content_store_actor files;
  /// The CRN's reward ledger: entries the CCN has not acknowledged are shipped to it.
  reward_ledger_actor ledger;
  uint32_t ship_batch = 256;
  /// Linked to another CCN than the first of `endpoints`, the link tries the first one again
  /// this often and moves back to it when it answers (0 = 4 × failure_timeout).
  std::chrono::milliseconds failback{0};
  /// Where the link notes the CCN that last received ledger entries ("id endpoint"), so that a
  /// restarted CRN asks that CCN what it holds before shipping to another one. Empty = none.
  std::string shipped_to_file;
  /// Where the link keeps the CCNs it registered with ("id endpoint" lines), so that a restarted
  /// CRN still asks them what became of the workloads they placed on it. Empty = not kept.
  std::string met_file;
};

enum class link_phase { disconnected, connecting, registered };

struct ccn_link_state {
  static inline const char* name = "ccn_link";
  ccn_link_config cfg;
  job_broker_actor broker;
  link_phase phase = link_phase::disconnected;
  size_t endpoint_index = 0;
  crn_registry_actor registry;
  ccn_node_actor node; ///< the CCN's entry actor while registered (for fetches)
  link_info info;
  std::chrono::milliseconds backoff{0};
  caf::actor_clock::time_point last_ack;
  uint64_t seq = 0;
  uint64_t session = 0; ///< signing time (unix ms) of the current enrollment
  uint64_t generation = 0; ///< bumps on every (re)connect; stale callbacks compare it
  bool shipping = false;   ///< a batch of ledger entries is on its way
  bool probing_home = false; ///< a connection to the first CCN is being tried
  /// A batch whose answer was lost went to this CCN (id, endpoint): it may hold those entries,
  /// so before shipping them to another CCN the link asks it what it holds.
  std::string doubt_ccn;
  std::string doubt_endpoint;
  /// Allocations that arrived after the placement list was asked for at registration: the
  /// list may predate them, so they count as confirmed.
  std::vector<placement> fresh;
  bool listing = false;
  std::string shipped_to; ///< the CCN noted in cfg.shipped_to_file
  caf::actor_clock::time_point last_home_try;
  /// Every CCN this link registered with (id -> endpoint name): workloads they placed here while
  /// linked to them keep running after the link moved, until they say they moved them.
  std::map<std::string, std::string> met;
  caf::actor_clock::time_point last_owner_check;
  uint64_t allocations = 0; ///< allocations received (an owner's answer older than one is dropped)
  std::mt19937_64 rng;
};

ccn_link_actor::behavior_type ccn_link(ccn_link_actor::stateful_pointer<ccn_link_state> self,
                                       ccn_link_config cfg, job_broker_actor broker);

} // namespace alephd
