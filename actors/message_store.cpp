#include "actors/message_store.hpp"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <limits>
#include <mutex>
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

using pending_append = std::pair<stored_message, caf::typed_response_promise<append_result>>;

// Hands what the log holds beyond the index to the writer, unless it is busy (or failing).
void start_indexing(message_store_pointer self) {
  auto& w = *self->state.wal;
  if (w.in_flight || w.queued.empty() || w.retry_armed)
    return;
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

// Group commit through the log: true when the batch is answered (durable in the log, or all
// duplicates); false leaves it to a commit straight into LMDB (too big for a segment, both
// segments holding unindexed appends, or a failed log).
bool log_commit(message_store_pointer self, std::vector<pending_append>& batch,
                caf::actor_clock::time_point started) {
  auto& st = self->state;
  auto& w = *st.wal;
  if (w.log->failed() || w.paused)
    return false;
  enum kind : char { fresh, known, repeated };
  std::vector<kind> kinds(batch.size(), fresh);
  std::vector<wal_entry> entries;
  uint64_t bytes = 0;
  auto seq = st.next_seq;
  {
    lmdb::txn t{*st.env, false};
    if (t.status() != 0)
      return false;
    std::unordered_set<std::string_view> in_batch;
    for (size_t i = 0; i < batch.size(); ++i) {
      auto& msg = batch[i].first;
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
      return false;
    std::string err;
    if (!w.log->fits(bytes)) {
      if (w.unindexed[1 - w.log->active()] != 0)
        return false; // the index is a whole segment behind
      if (!w.log->rotate(err)) {
        spdlog::error("message_store: {}; committing straight to LMDB from now on", err);
        return false;
      }
    }
    // Taken even if the append fails: its records may be on disk, and come back at the next start.
    st.next_seq = seq;
    if (!w.log->append(entries, err)) {
      spdlog::error("message_store: {}; committing straight to LMDB from now on", err);
      return false;
    }
  }
  ++st.commits;
  st.last_commit = self->clock().now() - started;
  count_arrivals(self);
  int segment = w.log->active();
  size_t k = 0;
  for (size_t i = 0; i < batch.size(); ++i) {
    auto& [msg, rp] = batch[i];
    if (kinds[i] != fresh) {
      rp.deliver(append_result{msg.item_hash, "processed", true});
      continue;
    }
    auto& e = entries[k++];
    rp.deliver(append_result{msg.item_hash, "processed", false});
    publish(self, msg);
    w.order.push_back(e.hash);
    ++w.unindexed[segment];
    w.overlay.emplace(e.hash, message_wal_state::held{std::move(msg), e.seq, segment});
  }
  w.queued.insert(w.queued.end(), std::make_move_iterator(entries.begin()),
                  std::make_move_iterator(entries.end()));
  start_indexing(self);
  return true;
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

void commit_pending(message_store_pointer self) {
  auto& st = self->state;
  st.flush_scheduled = false;
  st.linger_armed = false;
  ++st.round;
  if (st.pending.empty())
    return;
  // The actor clock: steady time in a node, virtual time on the deterministic scheduler (where a
  // commit takes no time, so the linger below does not depend on how fast this machine is).
  auto started = self->clock().now();
  auto batch = std::move(st.pending);
  st.pending.clear();
  st.last_batch = batch.size();
  if (st.wal && log_commit(self, batch, started))
    return;
  lmdb::txn t{*st.env, true};
  int rc = t.status();
  auto seq = st.next_seq;
  // Known hashes are found here (MDB_NOOVERWRITE) rather than by a read per append.
  std::vector<bool> duplicate(batch.size(), false);
  std::vector<bool> stored_before(batch.size(), false); // durable already, whatever this commit does
  std::unordered_set<std::string_view> in_batch;
  for (size_t i = 0; i < batch.size() && rc == 0; ++i) {
    auto& msg = batch[i].first;
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
      auto& [msg, rp] = batch[i];
      if (stored_before[i])
        rp.deliver(append_result{msg.item_hash, "processed", true}); // it was on disk before
      else if (full)
        rp.deliver(make_error(ec::no_space, "the node's storage is full: cannot store message: " + lmdb::error_text(rc)));
      else
        rp.deliver(make_error(ec::storage_failure, "cannot store message: " + lmdb::error_text(rc)));
    }
    return;
  }
  st.next_seq = seq;
  ++st.commits;
  st.last_commit = self->clock().now() - started;
  count_arrivals(self);
  for (size_t i = 0; i < batch.size(); ++i) {
    auto& [msg, rp] = batch[i];
    rp.deliver(append_result{msg.item_hash, "processed", duplicate[i]});
    if (!duplicate[i])
      publish(self, std::move(msg)); // not needed here any more
  }
}

// Commits at once when `target` appends pend (appends already in the mailbox land before the
// flush and join the transaction); else waits for more, at most twice as long as the last commit
// took (writers just answered need about that to send again: their next appends are parsed and
// checked first), and never more than 2 ms.
void schedule_flush(message_store_pointer self) {
  auto& st = self->state;
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
  return rp;
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
      auto& st = self->state;
      // A duplicate, even of a pending append, is answered only after the commit that makes the
      // first copy durable (MDB_NOOVERWRITE finds it within the same transaction).
      auto rp = self->make_response_promise<append_result>();
      st.pending.emplace_back(std::move(msg), rp);
      if (st.counting)
        ++st.arrived;
      if (!st.group_commit)
        commit_pending(self);
      else
        schedule_flush(self);
      return rp;
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
        if (st.pending.size() < st.target) { // the writers seen at work are more than these
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
  return make_store(self, std::move(env), true, std::move(wal), mode);
}

} // namespace alephd
