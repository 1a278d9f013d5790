// CCN: the durable message log. Appends are committed in groups: every append
// that arrives while a commit runs shares the next transaction (and its fsync).
// A commit of N appends, during which M more arrived, shows N + M writers at
// work: the next commit waits until that many are pending, but never longer
// than two commits take (2 ms at most). Clients that were just answered join the
// same transaction, instead of the writers settling into two halves that
// commit in turn (each commit costs about the same whatever its size).
// A lone writer (N = 1, M = 0) never waits.
//
// With a write-ahead log (message_store_wal, the node's default) a commit is one
// append and sync to the log (runtime/message_wal.hpp); the appends are answered
// and published then, and indexed into LMDB by a writer of their own, many
// groups to a transaction. Until indexed they are kept in memory: `get` finds
// them there, and `list` and `inventory` wait until every append answered
// before them is indexed. At start, what the log holds is indexed first.
// In a node the log is written and synced on a thread of its own: the store
// keeps taking appends meanwhile, and they make the next group as soon as the
// sync is done (no waiting for company: the sync is what they wait for).
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <caf/typed_response_promise.hpp>

#include "actors/interfaces.hpp"
#include "runtime/lmdb.hpp"

namespace alephd {

class message_wal;
struct message_wal_state;

/// How message_store_wal indexes what it logged into LMDB.
enum class index_mode {
  thread, ///< on a thread of its own, and the log is synced on another (nodes)
  now,    ///< inline, at once (CAF's deterministic scheduler in tests)
  held,   ///< only when the store gets (flush, 0, 5): tests of an index that lags behind
}; // the log, its writer into LMDB, and the appends not yet indexed

/// An append waiting for its commit, answered through its request's promise or its reply.
struct pending_append {
  stored_message msg;
  caf::typed_response_promise<append_result> rp;
  append_reply reply;
  bool answered = false; ///< only the first answer counts (a stalled write is answered early)
  void deliver(const append_result& r) {
    if (std::exchange(answered, true))
      return;
    if (reply)
      reply.deliver(r);
    else
      rp.deliver(r);
  }
  void deliver(const caf::error& e) {
    if (std::exchange(answered, true))
      return;
    if (reply)
      reply.deliver(e);
    else
      rp.deliver(e);
  }
};

struct message_store_state {
  static inline const char* name = "message_store";
  std::shared_ptr<lmdb::env> env;
  MDB_dbi by_hash = 0; ///< item_hash -> record
  MDB_dbi by_seq = 0;  ///< big-endian sequence -> item_hash
  uint64_t next_seq = 1;
  bool group_commit = true;
  bool flush_scheduled = false; ///< an immediate flush is in the mailbox
  bool linger_armed = false;    ///< a delayed flush is on the clock
  uint64_t round = 0;           ///< bumps at every commit; stale flushes are ignored
  size_t last_batch = 0;        ///< appends in the previous commit
  size_t target = 1;            ///< writers seen at work: commit at once when this many pend
  bool counting = false;        ///< appends queued during the last commit are being counted
  size_t arrived = 0;           ///< ... this many so far
  caf::timespan last_commit{0}; ///< how long the previous commit took
  caf::timespan log_stall_timeout{std::chrono::seconds(30)}; ///< see default_log_stall_timeout
  std::vector<pending_append> pending;
  std::vector<message_listener_actor> listeners;
  uint64_t commits = 0; ///< group commits made durable (for tests and metrics)
  std::shared_ptr<message_wal_state> wal; ///< null: appends commit straight to LMDB
  uint64_t indexed = 0; ///< batches from the log written into LMDB (for tests)
};

/// `group_commit = false` commits every append on its own (the benchmark's baseline).
message_store_actor::behavior_type
message_store(message_store_actor::stateful_pointer<message_store_state> self,
              std::shared_ptr<lmdb::env> env, bool group_commit);

/// Indexes into LMDB what `wal` held when it was opened (appends acknowledged before the node
/// stopped), then empties it; the error, or "" when done. When LMDB is full the records stay
/// in `wal.recovered()` (and "" is returned): message_store_wal serves them from memory and
/// indexes them once there is room. message_store_wal calls it too.
std::string message_store_recover(lmdb::env& env, message_wal& wal);

/// Group commit through the write-ahead log `wal` (opened by the caller; its records are
/// indexed into LMDB before the first append is taken).
message_store_actor::behavior_type
message_store_wal(message_store_actor::stateful_pointer<message_store_state> self,
                  std::shared_ptr<lmdb::env> env, std::shared_ptr<message_wal> wal, index_mode mode);

/// How long a write to the log may take (index_mode::thread) before the appends waiting for it,
/// and those arriving until it is done, are answered ec::unavailable (a disk that hangs must
/// not hang the clients). The write, if it ever ends, still counts: its messages are kept.
inline constexpr caf::timespan default_log_stall_timeout = std::chrono::seconds(30);

/// message_store_wal with another stall timeout (tests).
message_store_actor::behavior_type
message_store_wal_stalling_after(message_store_actor::stateful_pointer<message_store_state> self,
                                 std::shared_ptr<lmdb::env> env, std::shared_ptr<message_wal> wal,
                                 index_mode mode, caf::timespan stall_timeout);

} // namespace alephd
