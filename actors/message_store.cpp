#include "actors/message_store.hpp"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <limits>
#include <mutex>
#include <optional>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include <caf/all.hpp>
#include <spdlog/spdlog.h>

#include "messages/codec.hpp"
#include "runtime/message_wal.hpp"

namespace alephd {

namespace {

using message_store_pointer = message_store_actor::stateful_pointer<message_store_state>;

// A burst of thousands of posts must not make the next ones wait for as many.
constexpr size_t max_target = 256;

// Why a flush message was sent.
enum flush_kind : uint64_t {
  flush_now = 0,    // `target` appends pend
  flush_linger = 1, // the wait for more is over
  flush_count = 2,  // behind every append that arrived during the last commit
  flush_indexed = 3, // the index writer finished its batch; the round carries LMDB's code
  flush_retry = 4,   // index again after a failure
  flush_release = 5, // index_mode::held: index the batch handed over now (tests)
  flush_logged = 6,  // the log writer finished its group
  flush_index = 7,   // the index's wait for a bigger batch is over
  flush_stall = 8,   // time to see whether the log writer's group takes too long
};

// The highest sequence number in `by_seq` (0 when there is none).
uint64_t last_seq(const lmdb::txn& t, MDB_dbi by_seq) {
  uint64_t last = 0;
  t.for_each(by_seq, true, [&](std::string_view k, std::string_view) {
    last = lmdb::from_be64(k);
    return false;
  });
  return last;
}

// Writes appends from the log into LMDB in one transaction: the record under its hash (kept
// when the hash is known already) and the hash under its sequence number. A sequence number
// taken already by another message (a log left behind while the node ran without it) gets the
// next free one instead. 0 or LMDB's code.
int index_entries(lmdb::env& env, MDB_dbi by_hash, MDB_dbi by_seq, const wal_entry* begin,
                  const wal_entry* end) {
  lmdb::txn t{env, true};
  int rc = t.status();
  for (auto* e = begin; e != end && rc == 0; ++e) {
    rc = t.put(by_hash, e->hash, e->record, MDB_NOOVERWRITE);
    if (rc == MDB_KEYEXIST) {
      rc = 0;
      continue;
    }
    if (rc != 0)
      break;
    rc = t.put(by_seq, lmdb::be64(e->seq), e->hash, MDB_NOOVERWRITE);
    if (rc == MDB_KEYEXIST) {
      auto next = last_seq(t, by_seq) + 1;
      spdlog::warn("message_store: sequence number {} of {} is taken; indexed as {}", e->seq, e->hash, next);
      rc = t.put(by_seq, lmdb::be64(next), e->hash);
    }
  }
  if (rc == 0)
    rc = t.commit();
  return rc;
}

// Batches handed to the index writer, and the transactions of a recovery, hold at most this
// many entries: LMDB's write lock, which other actors share, is held for a bounded time.
constexpr size_t max_index_batch = 2048;

// In a node, a batch for the index writer waits until it has this many entries, or for
// index_linger (see start_indexing).
constexpr size_t index_batch_target = 512;
constexpr auto index_linger = std::chrono::milliseconds{10};

// Indexes `entries` in transactions of at most max_index_batch; 0 or the first failure's code.
int index_all(lmdb::env& env, MDB_dbi by_hash, MDB_dbi by_seq, const std::vector<wal_entry>& entries) {
  for (size_t i = 0; i < entries.size(); i += max_index_batch) {
    auto n = std::min(max_index_batch, entries.size() - i);
    if (int rc = index_entries(env, by_hash, by_seq, entries.data() + i, entries.data() + i + n); rc != 0)
      return rc;
  }
  return 0;
}

bool full_disk(int rc) {
  return rc == MDB_MAP_FULL || rc == ENOSPC || rc == EDQUOT;
}

uint64_t code_to_round(int rc) {
  return static_cast<uint64_t>(static_cast<int64_t>(rc));
}

int round_to_code(uint64_t round) {
  return static_cast<int>(static_cast<int64_t>(round));
}

} // namespace

// Indexes batches from the log into LMDB, one at a time, on a thread of its own (or inline, for
// the deterministic scheduler; or when the store is told to, for tests of an index that lags),
// and tells the store with (flush, LMDB code, flush_indexed).
class index_writer {
public:
  using batch_ptr = std::shared_ptr<const std::vector<wal_entry>>;

  index_writer(std::shared_ptr<lmdb::env> env, MDB_dbi by_hash, MDB_dbi by_seq,
               caf::actor_control_block* store, index_mode mode)
    : env_(std::move(env)), by_hash_(by_hash), by_seq_(by_seq), store_(store), mode_(mode) {
    if (mode == index_mode::thread)
      thread_ = std::thread{[this] { run(); }};
  }

  ~index_writer() {
    if (!thread_.joinable())
      return;
    {
      std::lock_guard<std::mutex> guard{mtx_};
      stop_ = true;
    }
    cv_.notify_one();
    thread_.join(); // at most the transaction under way: what it did not write is in the log
  }

  index_writer(const index_writer&) = delete;
  index_writer& operator=(const index_writer&) = delete;

  /// The store hands over one batch at a time and waits for its report.
  void submit(batch_ptr batch) {
    if (mode_ == index_mode::held) {
      held_ = std::move(batch);
      return;
    }
    if (!thread_.joinable()) {
      report(index(*batch));
      return;
    }
    {
      std::lock_guard<std::mutex> guard{mtx_};
      job_ = std::move(batch);
    }
    cv_.notify_one();
  }

  /// index_mode::held: indexes the batch handed over (if any) now.
  void release() {
    if (auto batch = std::move(held_))
      report(index(*batch));
  }

private:
  int index(const std::vector<wal_entry>& batch) {
    return index_entries(*env_, by_hash_, by_seq_, batch.data(), batch.data() + batch.size());
  }

  void run() {
    for (;;) {
      batch_ptr batch;
      {
        std::unique_lock<std::mutex> lock{mtx_};
        cv_.wait(lock, [this] { return stop_ || job_ != nullptr; });
        if (stop_)
          return;
        batch = std::move(job_);
      }
      report(index(*batch));
    }
  }

  void report(int rc) {
    // A weak handle: the store owns this writer, and must not be kept alive by it.
    if (auto strong = store_.lock())
      caf::anon_send(caf::actor_cast<message_store_actor>(strong), atom::flush_v, code_to_round(rc),
                     uint64_t{flush_indexed});
  }

  std::shared_ptr<lmdb::env> env_;
  MDB_dbi by_hash_;
  MDB_dbi by_seq_;
  caf::weak_actor_ptr store_;
  index_mode mode_;
  batch_ptr held_;
  std::mutex mtx_;
  std::condition_variable cv_;
  batch_ptr job_;
  bool stop_ = false;
  std::thread thread_;
};

// Writes and syncs groups of appends to the log on a thread of its own (index_mode::thread),
// so that the store takes the next appends meanwhile; tells the store with (flush, 0,
// flush_logged). One group at a time: the store touches the log only while none is under way.
class log_writer {
public:
  struct outcome {
    std::vector<wal_entry> entries;
    bool ok = false;
    std::string err;
  };

  log_writer(std::shared_ptr<message_wal> log, caf::actor_control_block* store)
    : shared_(std::make_shared<shared>()) {
    shared_->log = std::move(log);
    shared_->store = store;
    thread_ = std::thread{[s = shared_] { run(*s); }};
  }

  ~log_writer() {
    bool hung = false;
    {
      std::lock_guard<std::mutex> guard{shared_->mtx};
      shared_->stop = true;
      hung = shared_->busy; // only left so by a store that gave up waiting (see wait_until)
    }
    shared_->cv.notify_all();
    if (hung)
      thread_.detach(); // it owns what it uses, and ends if the write ever does
    else
      thread_.join();
  }

  log_writer(const log_writer&) = delete;
  log_writer& operator=(const log_writer&) = delete;

  void submit(std::vector<wal_entry> entries) {
    {
      std::lock_guard<std::mutex> guard{shared_->mtx};
      shared_->job.entries = std::move(entries);
      shared_->job.ok = false;
      shared_->job.err.clear();
      shared_->busy = true;
    }
    shared_->cv.notify_all();
  }

  /// The outcome of the group submitted last, once it is written (at once after flush_logged),
  /// or nothing if it is still under way at `deadline` (only a stopping store waits).
  std::optional<outcome> wait_until(std::chrono::steady_clock::time_point deadline) {
    std::unique_lock<std::mutex> lock{shared_->mtx};
    if (!shared_->done_cv.wait_until(lock, deadline, [this] { return !shared_->busy; }))
      return std::nullopt;
    return std::move(shared_->job);
  }

private:
  struct shared {
    std::shared_ptr<message_wal> log;
    caf::weak_actor_ptr store; // weak: the store owns this writer
    std::mutex mtx;
    std::condition_variable cv;
    std::condition_variable done_cv;
    outcome job;
    bool busy = false;    // a group was submitted and is not written yet
    bool written = false; // ... and the thread took it
    bool stop = false;
  };

  static void run(shared& s) {
    std::unique_lock<std::mutex> lock{s.mtx};
    for (;;) {
      s.cv.wait(lock, [&] { return s.stop || (s.busy && !s.written); });
      if (s.stop)
        return;
      s.written = true;
      lock.unlock();
      // s.job is this thread's until busy is cleared below.
      std::string err;
      bool ok = s.log->append(s.job.entries, err);
      lock.lock();
      s.job.ok = ok;
      s.job.err = std::move(err);
      s.busy = false;
      s.written = false;
      s.done_cv.notify_all();
      lock.unlock();
      if (auto strong = s.store.lock())
        caf::anon_send(caf::actor_cast<message_store_actor>(strong), atom::flush_v, uint64_t{0},
                       uint64_t{flush_logged});
      lock.lock();
    }
  }

  std::shared_ptr<shared> shared_;
  std::thread thread_;
};

struct message_wal_state {
  struct held {
    stored_message msg;
    uint64_t seq = 0;
    int segment = 0;
  };
  /// A list or inventory that waits until every append logged up to `seq` is indexed; the
  /// function answers it (with the error when given one).
  struct deferred_read {
    uint64_t seq = 0;
    std::function<void(const caf::error*)> answer;
  };

  std::shared_ptr<message_wal> log;
  std::unique_ptr<index_writer> writer;
  /// The group being written (index_mode::thread): its appends, what each is, and when its
  /// commit started.
  struct group {
    std::vector<pending_append> batch;
    std::vector<char> kinds;
    caf::actor_clock::time_point started;
  };
  std::unique_ptr<log_writer> logger; ///< null: the log is written inline
  bool logging = false;               ///< a group is with the logger
  caf::actor_clock::time_point logging_since; ///< ... since then
  bool stall_check_armed = false;     ///< a flush_stall is on the clock
  bool stalled = false; ///< the group took too long: appends are refused until it is done
  bool stopping = false;              ///< the store is stopping: wait for the logger
  group writing;
  std::unordered_map<std::string, held> overlay; ///< logged, not yet indexed
  std::deque<std::string> order;                 ///< the overlay's hashes, oldest first
  std::vector<wal_entry> queued;                 ///< logged, not yet handed to the writer
  index_writer::batch_ptr in_flight;             ///< handed to the writer, not yet reported
  size_t unindexed[2] = {0, 0};                  ///< overlay entries in each log segment
  std::vector<deferred_read> reads;
  bool paused = false; ///< the log holds what LMDB (full at start) could not take: not written until indexed
  std::string index_error; ///< why the writer's last batch failed ("" when it did not)
  ec index_code = ec::storage_failure; ///< ... as an error code (no_space for a full disk)
  bool retry_armed = false;
  bool index_linger_armed = false; ///< a flush_index is on the clock
};

namespace {

// Once committed (or failed): whatever arrived while the commit blocked the actor is in the
// mailbox before this message, and is counted on its way (see `target`).
void count_arrivals(message_store_pointer self) {
  auto& st = self->state;
  if (!st.group_commit)
    return;
  st.counting = true;
  st.arrived = 0;
  self->send(self, atom::flush_v, st.round, uint64_t{flush_count});
}

void publish(message_store_pointer self, stored_message msg) {
  auto& st = self->state;
  if (st.listeners.empty())
    return;
  // One message shared by every listener's mailbox (they only read it).
  auto m = caf::make_message(atom::published_v, std::move(msg));
  for (auto& l : st.listeners)
    caf::anon_send(caf::actor_cast<caf::actor>(l), m);
}

// Hands what the log holds beyond the index to the writer, unless it is busy (or failing). In a
// node (with the log writer) a small batch waits up to index_linger for more, unless a read
// waits for it: an LMDB commit costs two syncs whatever its size, and they compete with the
// log's, which acknowledged writers wait for.
void start_indexing(message_store_pointer self, bool now = false) {
  auto& w = *self->state.wal;
  if (w.in_flight || w.queued.empty() || w.retry_armed)
    return;
  if (w.logger && !now && w.queued.size() < index_batch_target && w.reads.empty() && !w.paused) {
    if (!w.index_linger_armed) {
      w.index_linger_armed = true;
      self->delayed_send(self, index_linger, atom::flush_v, uint64_t{0}, uint64_t{flush_index});
    }
    return;
  }
  if (w.queued.size() <= max_index_batch) {
    w.in_flight = std::make_shared<const std::vector<wal_entry>>(std::move(w.queued));
    w.queued.clear();
  } else {
    auto cut = w.queued.begin() + static_cast<std::ptrdiff_t>(max_index_batch);
    w.in_flight = std::make_shared<const std::vector<wal_entry>>(std::make_move_iterator(w.queued.begin()),
                                                                 std::make_move_iterator(cut));
    w.queued.erase(w.queued.begin(), cut);
  }
  w.writer->submit(w.in_flight);
}

// Answers the lists and inventories whose appends are all indexed now (or fails them all
// while indexing fails: they would show less than was acknowledged).
void answer_reads(message_store_pointer self) {
  auto& w = *self->state.wal;
  if (w.reads.empty())
    return;
  auto oldest = w.order.empty() ? std::numeric_limits<uint64_t>::max() : w.overlay.at(w.order.front()).seq;
  auto reads = std::move(w.reads);
  w.reads.clear();
  auto failure = make_error(w.index_code, w.index_error);
  for (auto& r : reads) {
    if (r.seq < oldest)
      r.answer(nullptr);
    else if (!w.index_error.empty())
      r.answer(&failure);
    else
      w.reads.push_back(std::move(r));
  }
}

enum entry_kind : char { fresh, known, repeated };

// A group made durable in the log: answers it, publishes its new messages, and keeps them in
// memory until the index writer has them in LMDB.
void logged(message_store_pointer self, std::vector<pending_append>& batch,
            const std::vector<char>& kinds, std::vector<wal_entry>& entries,
            caf::actor_clock::time_point started) {
  auto& st = self->state;
  auto& w = *st.wal;
  ++st.commits;
  st.last_commit = self->clock().now() - started;
  if (!w.logger)
    count_arrivals(self);
  int segment = w.log->active();
  size_t k = 0;
  for (size_t i = 0; i < batch.size(); ++i) {
    auto& p = batch[i];
    if (kinds[i] != fresh) {
      p.deliver(append_result{p.msg.item_hash, "processed", true});
      continue;
    }
    auto& e = entries[k++];
    p.deliver(append_result{p.msg.item_hash, "processed", false});
    publish(self, p.msg);
    w.order.push_back(e.hash);
    ++w.unindexed[segment];
    w.overlay.emplace(e.hash, message_wal_state::held{std::move(p.msg), e.seq, segment});
  }
  w.queued.insert(w.queued.end(), std::make_move_iterator(entries.begin()),
                  std::make_move_iterator(entries.end()));
  start_indexing(self);
}

enum class log_outcome {
  answered,  // durable in the log (or all duplicates), and answered
  writing,   // with the log writer: finish_logging() answers it
  fallback,  // to be committed straight into LMDB
};

// Group commit through the log. Falls back to LMDB for a group too big for a segment, when both
// segments hold unindexed appends, or when the log failed.
log_outcome log_commit(message_store_pointer self, std::vector<pending_append>& batch,
                       caf::actor_clock::time_point started) {
  auto& st = self->state;
  auto& w = *st.wal;
  if (w.log->failed() || w.paused)
    return log_outcome::fallback;
  std::vector<char> kinds(batch.size(), fresh);
  std::vector<wal_entry> entries;
  uint64_t bytes = 0;
  auto seq = st.next_seq;
  {
    lmdb::txn t{*st.env, false};
    if (t.status() != 0)
      return log_outcome::fallback;
    std::unordered_set<std::string_view> in_batch;
    for (size_t i = 0; i < batch.size(); ++i) {
      auto& msg = batch[i].msg;
      if (w.overlay.count(msg.item_hash) != 0 || t.get(st.by_hash, msg.item_hash))
        kinds[i] = known;
      else if (!in_batch.insert(msg.item_hash).second)
        kinds[i] = repeated; // answered with the first copy's commit, as a duplicate
      else {
        entries.push_back(wal_entry{seq++, msg.item_hash, codec::encode(msg)});
        bytes += message_wal::footprint(entries.back());
      }
    }
  }
  if (!entries.empty()) {
    if (bytes > w.log->capacity())
      return log_outcome::fallback;
    std::string err;
    if (!w.log->fits(bytes)) {
      if (w.unindexed[1 - w.log->active()] != 0)
        return log_outcome::fallback; // the index is a whole segment behind
      if (!w.log->rotate(err)) {
        spdlog::error("message_store: {}; committing straight to LMDB from now on", err);
        return log_outcome::fallback;
      }
    }
    // Taken even if the append fails: its records may be on disk, and come back at the next start.
    st.next_seq = seq;
    if (w.logger) {
      w.writing = message_wal_state::group{std::move(batch), std::move(kinds), started};
      w.logging = true;
      w.logging_since = started;
      w.logger->submit(std::move(entries));
      if (!w.stall_check_armed) {
        w.stall_check_armed = true;
        self->delayed_send(self, st.log_stall_timeout, atom::flush_v, uint64_t{0}, uint64_t{flush_stall});
      }
      return log_outcome::writing;
    }
    if (!w.log->append(entries, err)) {
      spdlog::error("message_store: {}; committing straight to LMDB from now on", err);
      return log_outcome::fallback;
    }
  }
  logged(self, batch, kinds, entries, started);
  return log_outcome::answered;
}

// The writer reported on its batch.
void on_indexed(message_store_pointer self, int rc) {
  auto& st = self->state;
  auto& w = *st.wal;
  auto batch = std::move(w.in_flight);
  w.in_flight = nullptr;
  if (!batch)
    return;
  if (rc == 0) {
    ++st.indexed;
    for (auto& e : *batch) {
      auto it = w.overlay.find(e.hash);
      --w.unindexed[it->second.segment];
      w.overlay.erase(it);
      w.order.pop_front(); // batches are indexed in the order they were logged
    }
    w.index_error.clear();
    if (w.paused && w.overlay.empty()) {
      // What the log held at start is in LMDB now: the log can start over.
      std::string err;
      if (w.log->reset(err)) {
        w.paused = false;
        w.unindexed[0] = w.unindexed[1] = 0;
        spdlog::info("message_store: the write-ahead log is indexed; using it again");
      } else {
        spdlog::error("message_store: {}; committing straight to LMDB from now on", err);
      }
    }
    start_indexing(self);
    answer_reads(self);
    return;
  }
  // Kept in memory (and in the log) and tried again in a second: an operator may free space.
  w.index_error = "cannot index messages into LMDB: " + lmdb::error_text(rc);
  w.index_code = full_disk(rc) ? ec::no_space : ec::storage_failure;
  spdlog::error("message_store: {} ({} waiting); trying again in 1 s", w.index_error, w.overlay.size());
  w.queued.insert(w.queued.begin(), batch->begin(), batch->end());
  answer_reads(self);
  w.retry_armed = true;
  self->delayed_send(self, std::chrono::seconds(1), atom::flush_v, uint64_t{0}, uint64_t{flush_retry});
}

// Commits `batch` in one LMDB transaction and answers it.
void lmdb_commit(message_store_pointer self, std::vector<pending_append>& batch,
                 caf::actor_clock::time_point started) {
  auto& st = self->state;
  lmdb::txn t{*st.env, true};
  int rc = t.status();
  auto seq = st.next_seq;
  // Known hashes are found here (MDB_NOOVERWRITE) rather than by a read per append.
  std::vector<bool> duplicate(batch.size(), false);
  std::vector<bool> stored_before(batch.size(), false); // durable already, whatever this commit does
  std::unordered_set<std::string_view> in_batch;
  for (size_t i = 0; i < batch.size() && rc == 0; ++i) {
    auto& msg = batch[i].msg;
    if (st.wal && st.wal->overlay.count(msg.item_hash) != 0) { // logged, not yet indexed
      duplicate[i] = stored_before[i] = true;
      continue;
    }
    rc = t.put(st.by_hash, msg.item_hash, codec::encode(msg), MDB_NOOVERWRITE);
    if (rc == MDB_KEYEXIST) {
      duplicate[i] = true;
      stored_before[i] = in_batch.count(msg.item_hash) == 0;
      rc = 0;
      continue;
    }
    in_batch.insert(msg.item_hash);
    if (rc == 0)
      rc = t.put(st.by_seq, lmdb::be64(seq), msg.item_hash, MDB_NOOVERWRITE);
    if (rc == MDB_KEYEXIST) { // never expected: numbers are handed out here only
      seq = last_seq(t, st.by_seq) + 1;
      spdlog::warn("message_store: sequence number taken; {} gets {}", msg.item_hash, seq);
      rc = t.put(st.by_seq, lmdb::be64(seq), msg.item_hash);
    }
    ++seq;
  }
  if (rc == 0)
    rc = t.commit();
  if (rc != 0) {
    count_arrivals(self); // before the answers: a quick retry is not one more writer
    spdlog::error("message_store: commit of {} messages failed: {}", batch.size(),
                  lmdb::error_text(rc));
    // A full disk (or LMDB map) is the operator's to fix, and the sender's to retry: 507.
    bool full = rc == MDB_MAP_FULL || rc == ENOSPC || rc == EDQUOT;
    for (size_t i = 0; i < batch.size(); ++i) {
      auto& p = batch[i];
      if (stored_before[i])
        p.deliver(append_result{p.msg.item_hash, "processed", true}); // it was on disk before
      else if (full)
        p.deliver(make_error(ec::no_space, "the node's storage is full: cannot store message: " + lmdb::error_text(rc)));
      else
        p.deliver(make_error(ec::storage_failure, "cannot store message: " + lmdb::error_text(rc)));
    }
    return;
  }
  st.next_seq = seq;
  ++st.commits;
  st.last_commit = self->clock().now() - started;
  count_arrivals(self);
  for (size_t i = 0; i < batch.size(); ++i) {
    auto& p = batch[i];
    p.deliver(append_result{p.msg.item_hash, "processed", duplicate[i]});
    if (!duplicate[i])
      publish(self, std::move(p.msg)); // not needed here any more
  }
}

caf::error stall_error(message_store_pointer self);

// The log writer is done with its group: answers it, or commits it straight into LMDB when the
// log failed. A stopping store waits for the group, as long as the stall timeout allows; past
// it, the group is answered unavailable and the writer is left to end on its own.
void finish_logging(message_store_pointer self) {
  auto& st = self->state;
  auto& w = *st.wal;
  if (!w.logging)
    return;
  auto deadline = w.stopping ? w.logging_since + st.log_stall_timeout
                             : std::chrono::steady_clock::time_point::max();
  auto done = w.logger->wait_until(deadline);
  if (!done) {
    if (!w.stalled)
      spdlog::error("message_store: stopping with a write to the write-ahead log under way for {} ms",
                    std::chrono::duration_cast<std::chrono::milliseconds>(self->clock().now() - w.logging_since).count());
    auto err = stall_error(self);
    for (auto& p : w.writing.batch)
      p.deliver(err);
    w.stalled = true; // appends behind it are refused; the log is not touched again
    return;
  }
  auto out = std::move(*done);
  w.logging = false;
  if (w.stalled) {
    w.stalled = false;
    spdlog::warn("message_store: the write-ahead log's write ended after {} ms; taking appends again",
                 std::chrono::duration_cast<std::chrono::milliseconds>(self->clock().now() - w.logging_since).count());
  }
  auto group = std::move(w.writing);
  w.writing = {};
  if (!out.ok) {
    spdlog::error("message_store: {}; committing straight to LMDB from now on", out.err);
    lmdb_commit(self, group.batch, group.started);
    return;
  }
  logged(self, group.batch, group.kinds, out.entries, group.started);
}

void commit_pending(message_store_pointer self) {
  auto& st = self->state;
  st.flush_scheduled = false;
  st.linger_armed = false;
  ++st.round;
  if (st.pending.empty())
    return;
  if (st.wal && st.wal->logging) {
    if (!st.wal->stopping)
      return; // these make the next group, when the log writer is done
    finish_logging(self);
    if (st.wal->logging) { // hung: these cannot be stored either
      auto err = stall_error(self);
      for (auto& p : st.pending)
        p.deliver(err);
      st.pending.clear();
      return;
    }
  }
  // The actor clock: steady time in a node, virtual time on the deterministic scheduler (where a
  // commit takes no time, so the linger below does not depend on how fast this machine is).
  auto started = self->clock().now();
  auto batch = std::move(st.pending);
  st.pending.clear();
  st.last_batch = batch.size();
  if (st.wal) {
    auto outcome = log_commit(self, batch, started);
    if (outcome == log_outcome::writing && st.wal->stopping)
      finish_logging(self);
    if (outcome != log_outcome::fallback)
      return;
  }
  lmdb_commit(self, batch, started);
}

// Commits at once when `target` appends pend (appends already in the mailbox land before the
// flush and join the transaction); else waits for more, at most twice as long as the last commit
// took (writers just answered need about that to send again: their next appends are parsed and
// checked first), and never more than 2 ms.
void schedule_flush(message_store_pointer self) {
  auto& st = self->state;
  if (st.wal && st.wal->logger) {
    // The log writer's sync is the wait: a group goes as soon as it is free (appends already
    // in the mailbox join it first).
    if (!st.wal->logging && !st.flush_scheduled) {
      st.flush_scheduled = true;
      self->send(self, atom::flush_v, st.round, uint64_t{flush_now});
    }
    return;
  }
  if (st.pending.size() >= st.target) {
    if (!st.flush_scheduled) {
      st.flush_scheduled = true;
      self->send(self, atom::flush_v, st.round, uint64_t{flush_now});
    }
  } else if (!st.linger_armed) {
    st.linger_armed = true;
    auto wait = std::clamp<caf::timespan>(2 * st.last_commit, std::chrono::microseconds{50},
                                          std::chrono::milliseconds{2});
    self->delayed_send(self, wait, atom::flush_v, st.round, uint64_t{flush_linger});
  }
}

} // namespace

namespace {

caf::expected<message_page> list_now(message_store_pointer self, const message_query& q) {
  auto& st = self->state;
  message_page page;
  page.page = q.page == 0 ? 1 : q.page;
  page.per_page = q.per_page == 0 ? 20 : q.per_page;
  uint64_t skip = uint64_t{page.page - 1} * page.per_page;
  const bool filtered = !q.type.empty() || !q.addresses.empty();
  lmdb::txn t{*st.env, false};
  if (!filtered)
    page.total = t.count(st.by_seq); // no need to look at the records
  uint64_t matched = 0;
  int rc = t.for_each(st.by_seq, true, [&](std::string_view, std::string_view hash) {
    bool in_page = matched >= skip && page.messages.size() < page.per_page;
    if (!filtered && !in_page) {
      ++matched;
      return matched < skip + page.per_page; // skip without decoding; stop after the page
    }
    auto v = t.get(st.by_hash, hash);
    stored_message m;
    if (!v || !codec::decode(*v, m))
      return true;
    if (!q.type.empty() && m.type != q.type)
      return true;
    if (!q.addresses.empty()
        && std::find(q.addresses.begin(), q.addresses.end(), m.sender) == q.addresses.end())
      return true;
    if (in_page)
      page.messages.push_back(std::move(m));
    ++matched;
    return filtered || matched < skip + page.per_page;
  });
  if (filtered)
    page.total = matched;
  if (rc != 0)
    return make_error(ec::storage_failure, lmdb::error_text(rc));
  return page;
}

std::vector<std::string> inventory_now(message_store_pointer self) {
  auto& st = self->state;
  std::vector<std::string> out;
  lmdb::txn t{*st.env, false};
  t.for_each(st.by_hash, false, [&](std::string_view k, std::string_view) {
    out.emplace_back(k);
    return true;
  });
  return out;
}

// A read over the whole index: at once when every acknowledged append is indexed, else when
// those acknowledged so far are (`run` makes the answer).
template <class T, class F>
caf::result<T> when_indexed(message_store_pointer self, F run) {
  auto& st = self->state;
  if (!st.wal || st.wal->overlay.empty())
    return run();
  auto& w = *st.wal;
  if (!w.index_error.empty())
    return make_error(w.index_code, w.index_error);
  auto rp = self->make_response_promise<T>();
  w.reads.push_back({w.overlay.at(w.order.back()).seq, [rp, run](const caf::error* err) mutable {
                       if (err != nullptr) {
                         rp.deliver(*err);
                         return;
                       }
                       if (auto x = run())
                         rp.deliver(std::move(*x));
                       else
                         rp.deliver(x.error());
                     }});
  start_indexing(self); // at once: a reader waits
  return rp;
}

caf::error stall_error(message_store_pointer self) {
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(self->state.log_stall_timeout).count();
  auto limit = ms % 1000 == 0 ? std::to_string(ms / 1000) + " s" : std::to_string(ms) + " ms";
  return make_error(ec::unavailable, "the node's disk has not finished a write in " + limit
                                       + "; the message may not be stored: try again later");
}

// The stall check is due: a group with the log writer for longer than log_stall_timeout gets
// its answers now (its write may still end; what it wrote is kept), and so does everything
// waiting behind it, until the write ends.
void check_stall(message_store_pointer self) {
  auto& st = self->state;
  auto& w = *st.wal;
  w.stall_check_armed = false;
  if (!w.logging)
    return;
  auto waited = self->clock().now() - w.logging_since;
  if (waited < st.log_stall_timeout) {
    w.stall_check_armed = true;
    self->delayed_send(self, st.log_stall_timeout - waited, atom::flush_v, uint64_t{0}, uint64_t{flush_stall});
    return;
  }
  if (!w.stalled)
    spdlog::error("message_store: a write to the write-ahead log has not ended in {} ms; refusing appends "
                  "until it does",
                  std::chrono::duration_cast<std::chrono::milliseconds>(waited).count());
  w.stalled = true;
  auto err = stall_error(self);
  for (auto& p : w.writing.batch)
    p.deliver(err);
  for (auto& p : st.pending)
    p.deliver(err);
  st.pending.clear();
}

// A duplicate, even of a pending append, is answered only after the commit that makes the
// first copy durable (MDB_NOOVERWRITE finds it within the same transaction).
void take_append(message_store_pointer self, pending_append p) {
  auto& st = self->state;
  if (st.wal && st.wal->stalled) {
    p.deliver(stall_error(self));
    return;
  }
  st.pending.push_back(std::move(p));
  if (st.counting)
    ++st.arrived;
  if (!st.group_commit)
    commit_pending(self);
  else
    schedule_flush(self);
}

message_store_actor::behavior_type
make_store(message_store_pointer self, std::shared_ptr<lmdb::env> env, bool group_commit,
           std::shared_ptr<message_wal> log, index_mode mode) {
  auto& st = self->state;
  st.env = std::move(env);
  st.group_commit = group_commit;
  std::string err;
  if (!st.env->open_db("messages", st.by_hash, err) || !st.env->open_db("messages_seq", st.by_seq, err)) {
    spdlog::error("message_store: {}", err);
    self->quit(make_error(ec::storage_failure, err));
    return message_store_actor::behavior_type::make_empty_behavior();
  }
  if (log) {
    if (err = message_store_recover(*st.env, *log); !err.empty()) {
      spdlog::error("message_store: {}", err);
      self->quit(make_error(ec::storage_failure, err));
      return message_store_actor::behavior_type::make_empty_behavior();
    }
    st.wal = std::make_shared<message_wal_state>();
    st.wal->log = std::move(log);
    st.wal->writer = std::make_unique<index_writer>(st.env, st.by_hash, st.by_seq, self->ctrl(), mode);
    if (mode == index_mode::thread)
      st.wal->logger = std::make_unique<log_writer>(st.wal->log, self->ctrl());
  }
  {
    lmdb::txn t{*st.env, false};
    st.next_seq = last_seq(t, st.by_seq) + 1;
  }
  if (st.wal && !st.wal->log->recovered().empty()) {
    // LMDB is full: the log's messages are served from memory and indexed once there is room.
    // They are numbered after everything in LMDB (their logged numbers may be taken), and the
    // log is not written until they are indexed.
    auto& w = *st.wal;
    auto entries = w.log->take_recovered();
    w.paused = true;
    spdlog::error("message_store: LMDB is full; {} messages from the write-ahead log are served "
                  "from memory until they can be indexed", entries.size());
    for (auto& e : entries) {
      stored_message m;
      if (!codec::decode(e.record, m)) {
        spdlog::error("message_store: the write-ahead log's record of {} is unreadable", e.hash);
        continue;
      }
      e.seq = st.next_seq;
      if (!w.overlay.emplace(e.hash, message_wal_state::held{std::move(m), e.seq, 0}).second)
        continue;
      ++st.next_seq;
      w.order.push_back(e.hash);
      ++w.unindexed[0];
      w.queued.push_back(std::move(e));
    }
    start_indexing(self);
  }
  // Appends already answered "pending" must not be dropped at shutdown: commit them first.
  self->set_exit_handler([=](caf::exit_msg& em) {
    if (auto& w = self->state.wal) {
      w->stopping = true;
      finish_logging(self);
    }
    commit_pending(self);
    if (auto& w = self->state.wal) {
      auto stopping = make_error(ec::storage_failure, "the message store is stopping");
      for (auto& r : w->reads)
        r.answer(&stopping);
      w->reads.clear();
    }
    self->quit(em.reason);
  });
  return {
    [=](atom::append, stored_message& msg) -> caf::result<append_result> {
      auto rp = self->make_response_promise<append_result>();
      take_append(self, pending_append{std::move(msg), rp, {}});
      return rp;
    },
    [=](atom::append, stored_message& msg, append_reply& reply) {
      take_append(self, pending_append{std::move(msg), {}, std::move(reply)});
    },
    [=](atom::flush, uint64_t round, uint64_t kind) {
      auto& st = self->state;
      if (kind == flush_indexed) {
        on_indexed(self, round_to_code(round));
        return;
      }
      if (kind == flush_release) {
        if (st.wal)
          st.wal->writer->release();
        return;
      }
      if (kind == flush_logged) {
        if (st.wal)
          finish_logging(self);
        if (!st.pending.empty())
          commit_pending(self); // what arrived during the sync
        return;
      }
      if (kind == flush_stall) {
        if (st.wal)
          check_stall(self);
        return;
      }
      if (kind == flush_index) {
        if (st.wal) {
          st.wal->index_linger_armed = false;
          start_indexing(self, true);
        }
        return;
      }
      if (kind == flush_retry) {
        st.wal->retry_armed = false;
        start_indexing(self);
        return;
      }
      if (kind == flush_count) {
        st.counting = false;
        st.target = std::clamp<size_t>(st.last_batch + st.arrived, 1, max_target);
        if (!st.pending.empty())
          schedule_flush(self);
        return;
      }
      if (round != st.round)
        return; // a commit came first
      if (kind == flush_now) {
        st.flush_scheduled = false;
        if (!(st.wal && st.wal->logger) && st.pending.size() < st.target) { // the writers seen at work are more than these
          schedule_flush(self);
          return;
        }
      }
      commit_pending(self);
    },
    [=](atom::get, const std::string& hash) -> caf::result<stored_message> {
      auto& st = self->state;
      if (st.wal) {
        if (auto it = st.wal->overlay.find(hash); it != st.wal->overlay.end())
          return it->second.msg;
      }
      lmdb::txn t{*st.env, false};
      auto v = t.get(st.by_hash, hash);
      if (!v)
        return make_error(ec::not_found, "message " + hash + " not found");
      stored_message m;
      if (!codec::decode(*v, m))
        return make_error(ec::storage_failure, "message " + hash + " is unreadable");
      return m;
    },
    [=](atom::list, const message_query& q) -> caf::result<message_page> {
      return when_indexed<message_page>(self, [self, q] { return list_now(self, q); });
    },
    [=](atom::inventory) -> caf::result<std::vector<std::string>> {
      return when_indexed<std::vector<std::string>>(
        self, [self]() -> caf::expected<std::vector<std::string>> { return inventory_now(self); });
    },
    [=](atom::subscribe, message_listener_actor& l) {
      self->state.listeners.push_back(std::move(l));
    },
  };
}

} // namespace

std::string message_store_recover(lmdb::env& env, message_wal& wal) {
  std::string err;
  if (auto& entries = wal.recovered(); !entries.empty()) {
    MDB_dbi by_hash = 0, by_seq = 0;
    if (!env.open_db("messages", by_hash, err) || !env.open_db("messages_seq", by_seq, err))
      return err;
    int rc = index_all(env, by_hash, by_seq, entries);
    if (full_disk(rc)) {
      spdlog::error("message_store: cannot index the write-ahead log into LMDB: {}", lmdb::error_text(rc));
      return ""; // kept in the log; message_store_wal serves them from memory
    }
    if (rc != 0)
      return "cannot index the write-ahead log into LMDB: " + lmdb::error_text(rc);
    spdlog::info("message_store: indexed {} messages from the write-ahead log", entries.size());
    wal.take_recovered();
  }
  wal.reset(err);
  return err;
}

message_store_actor::behavior_type
message_store(message_store_actor::stateful_pointer<message_store_state> self,
              std::shared_ptr<lmdb::env> env, bool group_commit) {
  return make_store(self, std::move(env), group_commit, nullptr, index_mode::now);
}

message_store_actor::behavior_type
message_store_wal(message_store_actor::stateful_pointer<message_store_state> self,
                  std::shared_ptr<lmdb::env> env, std::shared_ptr<message_wal> wal, index_mode mode) {
  self->state.log_stall_timeout = default_log_stall_timeout;
  return make_store(self, std::move(env), true, std::move(wal), mode);
}

message_store_actor::behavior_type
message_store_wal_stalling_after(message_store_actor::stateful_pointer<message_store_state> self,
                                 std::shared_ptr<lmdb::env> env, std::shared_ptr<message_wal> wal,
                                 index_mode mode, caf::timespan stall_timeout) {
  self->state.log_stall_timeout = stall_timeout;
  return make_store(self, std::move(env), true, std::move(wal), mode);
}

} // namespace alephd
