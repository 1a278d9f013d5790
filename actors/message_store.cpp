#include "actors/message_store.hpp"

#include <cerrno>
#include <string_view>
#include <unordered_set>

#include <algorithm>
#include <chrono>

#include <caf/all.hpp>
#include <spdlog/spdlog.h>

#include "messages/codec.hpp"

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
};

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
  // Once committed (or failed): whatever arrived while the commit blocked the actor is in the
  // mailbox before this message, and is counted on its way (see `target`).
  auto count_arrivals = [&] {
    if (!st.group_commit)
      return;
    st.counting = true;
    st.arrived = 0;
    self->send(self, atom::flush_v, st.round, uint64_t{flush_count});
  };
  lmdb::txn t{*st.env, true};
  int rc = t.status();
  auto seq = st.next_seq;
  // Known hashes are found here (MDB_NOOVERWRITE) rather than by a read per append.
  std::vector<bool> duplicate(batch.size(), false);
  std::vector<bool> stored_before(batch.size(), false); // durable already, whatever this commit does
  std::unordered_set<std::string_view> in_batch;
  for (size_t i = 0; i < batch.size() && rc == 0; ++i) {
    auto& msg = batch[i].first;
    rc = t.put(st.by_hash, msg.item_hash, codec::encode(msg), MDB_NOOVERWRITE);
    if (rc == MDB_KEYEXIST) {
      duplicate[i] = true;
      stored_before[i] = in_batch.count(msg.item_hash) == 0;
      rc = 0;
      continue;
    }
    in_batch.insert(msg.item_hash);
    if (rc == 0)
      rc = t.put(st.by_seq, lmdb::be64(seq++), msg.item_hash);
  }
  if (rc == 0)
    rc = t.commit();
  if (rc != 0) {
    count_arrivals(); // before the answers: a quick retry is not one more writer
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
  count_arrivals();
  for (size_t i = 0; i < batch.size(); ++i) {
    auto& [msg, rp] = batch[i];
    rp.deliver(append_result{msg.item_hash, "processed", duplicate[i]});
    if (!duplicate[i] && !st.listeners.empty()) {
      // One message shared by every listener's mailbox (they only read it).
      auto m = caf::make_message(atom::published_v, std::move(msg));
      for (auto& l : st.listeners)
        caf::anon_send(caf::actor_cast<caf::actor>(l), m);
    }
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

message_store_actor::behavior_type
message_store(message_store_actor::stateful_pointer<message_store_state> self,
              std::shared_ptr<lmdb::env> env, bool group_commit) {
  auto& st = self->state;
  st.env = std::move(env);
  st.group_commit = group_commit;
  std::string err;
  if (!st.env->open_db("messages", st.by_hash, err) || !st.env->open_db("messages_seq", st.by_seq, err)) {
    spdlog::error("message_store: {}", err);
    self->quit(make_error(ec::storage_failure, err));
    return message_store_actor::behavior_type::make_empty_behavior();
  }
  // Appends already answered "pending" must not be dropped at shutdown: commit them first.
  self->set_exit_handler([=](caf::exit_msg& em) {
    commit_pending(self);
    self->quit(em.reason);
  });
  {
    lmdb::txn t{*st.env, false};
    t.for_each(st.by_seq, true, [&](std::string_view k, std::string_view) {
      st.next_seq = lmdb::from_be64(k) + 1;
      return false;
    });
  }
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
    },
    [=](atom::inventory) -> std::vector<std::string> {
      auto& st = self->state;
      std::vector<std::string> out;
      lmdb::txn t{*st.env, false};
      t.for_each(st.by_hash, false, [&](std::string_view k, std::string_view) {
        out.emplace_back(k);
        return true;
      });
      return out;
    },
    [=](atom::subscribe, message_listener_actor& l) {
      self->state.listeners.push_back(std::move(l));
    },
  };
}

} // namespace alephd
