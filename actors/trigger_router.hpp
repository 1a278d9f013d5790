// CCN: message-triggered programs (PROGRAM `on.message`). A PROGRAM whose
// `content.on.message` is a non-empty array of filter objects subscribes the
// program (by item_hash); a FORGET naming it unsubscribes it. Subscriptions are
// durable (LMDB database "triggers") and loaded at start, so, unlike aleph-vm's
// in-memory reactor, a CCN restart keeps them.
//
// Which messages trigger: only those this CCN accepted from a client
// (`origin == ccn_id`). Every CCN of a peer mesh learns every message, and the
// one that accepted it dispatches, so a program runs once per message and not
// once per CCN. Subscriptions are taken from every PROGRAM, replicated or not.
//
// Matching rule. A message triggers a program when it matches at least one of
// the program's filter objects; once per (message, program) however many
// filters match. The message is its JSON document: the top-level fields
// (`sender`, `channel`, `type`, `chain`, `item_hash`, `item_type`, `time`,
// extras such as `confirmed`, …) plus `content`, the signed content object
// (item_content parsed when present, else the `content` field).
// - A filter object matches when every one of its keys is present in the
//   message and satisfies the filter's value. `{}` matches every message.
// - An object value matches a message value that is an object matching it by
//   this same rule (so `{"content": {"ref": "…"}}` tests `content.ref` only).
// - An array value matches when the message value equals the whole array or
//   satisfies any of its elements (`{"sender": ["0xA", "0xB"]}`).
// - Any other value matches an equal JSON value (numbers compare by value,
//   strings exactly, case included). A missing field never matches, not even
//   a null filter value.
// - A PROGRAM never triggers itself; PROGRAM and FORGET messages otherwise
//   trigger like any other message (after the subscription changes they make).
//
// Forgetting: a FORGET unsubscribes a listed program only when its sender or
// content.address is the program's sender or content.address.
//
// Dispatch (at least once within a bound): a triggered run goes to a linked CRN
// (round-robin over the linked CRNs, in id order) as `run(program, message)`
// with `run_timeout`. A 2xx status is done. An error or any other status is
// retried, `retry` later, on a linked CRN that has not failed it yet (or, when
// every linked CRN has, on the next one in turn), up to `max_attempts` runs;
// then it is dropped with a warning. Runs waiting for a retry or, while no CRN
// is linked, for a CRN, queue up to `max_pending` runs and `max_pending_bytes`
// of message JSON (the oldest is dropped, with a warning, when it is full) and
// go out when a CRN links. Runs in flight (at most one `run_timeout` each) are
// not counted. Queued runs are in memory only: a restart loses them.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <set>
#include <string>

#include <caf/actor_clock.hpp>
#include <nlohmann/json.hpp>

#include "actors/interfaces.hpp"
#include "runtime/lmdb.hpp"

namespace alephd {

struct trigger_router_config {
  std::string ccn_id;               ///< this CCN: only messages it accepted trigger programs
  std::shared_ptr<lmdb::env> env;   ///< where subscriptions persist; none = in memory only
  std::chrono::milliseconds retry{2000};       ///< wait before retrying a failed run
  uint32_t max_attempts = 3;                   ///< runs tried per (message, program)
  std::chrono::milliseconds run_timeout{30000}; ///< for one run on a CRN
  size_t max_pending = 10000;                  ///< runs queued for a CRN or a retry
  size_t max_pending_bytes = size_t{256} << 20; ///< their messages' JSON, in bytes
};

/// A subscribed program.
struct trigger_subscription {
  std::string program; ///< the PROGRAM's item_hash
  std::string sender;  ///< the PROGRAM's sender
  std::string address; ///< the PROGRAM's content.address
  nlohmann::ordered_json filters = nlohmann::ordered_json::array(); ///< filter objects
};

/// One triggered run of a program, queued or on its way to a CRN.
struct trigger_dispatch {
  std::string program;
  std::shared_ptr<const stored_message> event; ///< shared by the runs it triggered
  uint32_t attempts = 0;       ///< runs sent so far
  std::set<std::string> tried; ///< CRNs that failed it
  caf::actor_clock::time_point not_before{}; ///< back-off after a failure
};

/// A CRN as announced by the registry.
struct trigger_crn {
  link_state state = link_state::unlinked;
  ccn_link_actor link;
};

struct trigger_router_state {
  static inline const char* name = "trigger_router";
  trigger_router_config cfg;
  std::map<std::string, trigger_subscription> subscriptions;
  std::map<std::string, trigger_crn> crns;
  std::string cursor; ///< the CRN that got the last run (round-robin)
  std::deque<trigger_dispatch> pending;
  size_t pending_bytes = 0; ///< message JSON held by `pending`
  bool tick_armed = false;
  MDB_dbi db = 0;
  // Counters, for tests and metrics.
  uint64_t in_flight = 0;
  uint64_t succeeded = 0;
  uint64_t dropped = 0;
};

/// True when the message document matches the filter object (the rule above).
bool trigger_matches(const nlohmann::ordered_json& message, const nlohmann::ordered_json& filter);

trigger_router_actor::behavior_type
trigger_router(trigger_router_actor::stateful_pointer<trigger_router_state> self,
               trigger_router_config cfg);

} // namespace alephd
