#include "actors/message_store.hpp"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <thread>

#include "messages/codec.hpp"
#include "runtime/message_wal.hpp"

#include "tests/caf_fixture.hpp"

using namespace alephd;
using namespace alephd::test;

// Named so that the suites can share one unity-built test binary.
namespace message_store_tests {

namespace {

stored_message msg(std::string hash, std::string type = "POST", std::string sender = "0xA") {
  stored_message m;
  m.item_hash = std::move(hash);
  m.type = std::move(type);
  m.sender = std::move(sender);
  m.origin = "ccn-1";
  m.json = R"({"item_hash":")" + m.item_hash + R"("})";
  return m;
}

// Records every message a store publishes.
struct recorder_state {
  std::vector<stored_message> seen;
};

message_listener_actor::behavior_type
recorder(message_listener_actor::stateful_pointer<recorder_state> self) {
  return {[=](atom::published, const stored_message& m) { self->state.seen.push_back(m); }};
}

// Every test runs twice: group commits straight into LMDB, and through the write-ahead log
// (small segments, so that a 1 MiB message takes the LMDB path; indexed inline).
struct message_store_test : caf_fixture, ::testing::WithParamInterface<bool> {
  temp_dir dir;
  std::shared_ptr<lmdb::env> env = open_env();

  std::shared_ptr<lmdb::env> open_env() {
    return open_test_env(dir);
  }

  message_store_actor open_store(bool group_commit = true) {
    if (!GetParam() || !group_commit)
      return spawn(message_store, env, group_commit);
    std::string err;
    std::shared_ptr<message_wal> wal = message_wal::open((dir.path / "wal").string(), err, 64 << 10);
    EXPECT_TRUE(wal) << err;
    return spawn(message_store_wal, env, wal, index_mode::now);
  }
};

TEST_P(message_store_test, append_then_get_returns_the_message) {
  auto store = open_store();
  auto r = ask<append_result>(store, atom::append_v, msg("h1"));
  ASSERT_TRUE(r.value) << describe(r.error);
  EXPECT_EQ(r.value->item_hash, "h1");
  EXPECT_FALSE(r.value->duplicate);
  auto g = ask<stored_message>(store, atom::get_v, std::string{"h1"});
  ASSERT_TRUE(g.value);
  EXPECT_EQ(*g.value, msg("h1"));
}

TEST_P(message_store_test, unknown_hash_is_not_found) {
  auto store = open_store();
  auto g = ask<stored_message>(store, atom::get_v, std::string{"nope"});
  EXPECT_FALSE(g.value);
  EXPECT_TRUE(is(g.error, ec::not_found));
}

TEST_P(message_store_test, concurrent_appends_share_one_commit) {
  auto store = open_store();
  std::vector<std::shared_ptr<reply<append_result>>> replies;
  for (int i = 0; i < 8; ++i)
    replies.push_back(ask_later<append_result>(store, atom::append_v, msg("g" + std::to_string(i))));
  sched.run();
  for (auto& r : replies)
    ASSERT_TRUE(r->value) << describe(r->error);
  EXPECT_EQ(state_of<message_store_state>(store).commits, 1u);
}

TEST_P(message_store_test, after_a_busy_commit_the_next_waits_briefly_for_company) {
  auto store = open_store();
  std::vector<std::shared_ptr<reply<append_result>>> first;
  for (int i = 0; i < 4; ++i)
    first.push_back(ask_later<append_result>(store, atom::append_v, msg("b" + std::to_string(i))));
  sched.run();
  EXPECT_EQ(state_of<message_store_state>(store).commits, 1u);
  // One append alone after a commit of four: it waits (at most twice a commit's time).
  auto lone = ask_later<append_result>(store, atom::append_v, msg("lone"));
  sched.run();
  EXPECT_FALSE(lone->done);
  // Company arrives: with four pending again the commit goes at once.
  std::vector<std::shared_ptr<reply<append_result>>> more;
  for (int i = 0; i < 3; ++i)
    more.push_back(ask_later<append_result>(store, atom::append_v, msg("c" + std::to_string(i))));
  sched.run();
  EXPECT_TRUE(lone->done);
  for (auto& r : more)
    EXPECT_TRUE(r->done);
  EXPECT_EQ(state_of<message_store_state>(store).commits, 2u);
  // A lone append with nobody else coming is committed when the short wait ends.
  auto last = ask_later<append_result>(store, atom::append_v, msg("last"));
  sched.run();
  EXPECT_FALSE(last->done);
  advance(std::chrono::milliseconds(2));
  ASSERT_TRUE(last->done);
  EXPECT_TRUE(last->value) << describe(last->error);
  EXPECT_EQ(state_of<message_store_state>(store).commits, 3u);
}

// Eight writers that settled into two halves committing in turn (each half's appends arrive
// while the other half's commit runs) are brought back into one commit of eight.
TEST_P(message_store_test, writers_split_into_halves_are_merged_into_one_commit) {
  auto store = open_store();
  auto& st = state_of<message_store_state>(store);
  // One request from a fresh actor, which the test runs itself (the store does not run).
  auto send_one = [&](const std::string& hash) {
    auto out = std::make_shared<reply<append_result>>();
    auto requester = sys.spawn([=](caf::event_based_actor* self) {
      self->request(store, caf::infinite, atom::append_v, msg(hash))
        .then([out](append_result& r) { out->value = r; out->done = true; },
              [out](caf::error& e) { out->error = e; out->done = true; });
    });
    sched.prioritize(requester); // ahead of the store's own turn
    sched.run_once();
    return out;
  };
  std::vector<std::shared_ptr<reply<append_result>>> a, b, c;
  for (int i = 0; i < 4; ++i)
    a.push_back(ask_later<append_result>(store, atom::append_v, msg("a" + std::to_string(i))));
  sched.run();
  ASSERT_EQ(st.commits, 1u);
  ASSERT_EQ(st.target, 4u); // four writers seen
  // Half B: four appends, then the store runs until it has decided to commit them ...
  for (int i = 0; i < 4; ++i)
    b.push_back(send_one("b" + std::to_string(i)));
  while (!st.flush_scheduled && sched.try_run_once()) {
  }
  ASSERT_TRUE(st.flush_scheduled);
  // ... and half A's next appends arrive behind that decision, i.e. during B's commit.
  for (int i = 0; i < 4; ++i)
    c.push_back(send_one("c" + std::to_string(i)));
  sched.run();
  EXPECT_EQ(st.commits, 2u);
  for (auto& r : b)
    EXPECT_TRUE(r->done);
  EXPECT_EQ(st.target, 8u) << "four committed and four arrived meanwhile";
  for (auto& r : c)
    EXPECT_FALSE(r->done) << "four of eight writers wait (briefly) for the other four";
  // B's writers come back: all eight go in one commit at once, no timer needed.
  for (int i = 0; i < 4; ++i)
    b.push_back(ask_later<append_result>(store, atom::append_v, msg("d" + std::to_string(i))));
  sched.run();
  EXPECT_EQ(st.commits, 3u);
  for (auto& r : c)
    EXPECT_TRUE(r->done && r->value);
  for (auto& r : b)
    EXPECT_TRUE(r->done && r->value);
  EXPECT_EQ(st.last_batch, 8u);
  // When fewer writers are left, the next commit waits at most twice a commit's time.
  auto lone = ask_later<append_result>(store, atom::append_v, msg("lone"));
  sched.run();
  EXPECT_FALSE(lone->done);
  advance(std::chrono::milliseconds(2));
  EXPECT_TRUE(lone->done && lone->value);
  EXPECT_EQ(st.target, 1u);
}

TEST_P(message_store_test, a_lone_writer_never_waits) {
  auto store = open_store();
  for (int i = 0; i < 3; ++i) {
    auto r = ask<append_result>(store, atom::append_v, msg("w" + std::to_string(i)));
    EXPECT_TRUE(r.done) << "append " << i << " waited without concurrency";
  }
  EXPECT_EQ(state_of<message_store_state>(store).commits, 3u);
}

TEST_P(message_store_test, without_group_commit_every_append_commits) {
  auto store = open_store(false);
  std::vector<std::shared_ptr<reply<append_result>>> replies;
  for (int i = 0; i < 5; ++i)
    replies.push_back(ask_later<append_result>(store, atom::append_v, msg("s" + std::to_string(i))));
  sched.run();
  for (auto& r : replies)
    ASSERT_TRUE(r->value);
  EXPECT_EQ(state_of<message_store_state>(store).commits, 5u);
}

TEST_P(message_store_test, duplicate_is_acknowledged_and_not_published_twice) {
  auto store = open_store();
  auto rec = spawn(recorder);
  caf::anon_send(store, atom::subscribe_v, caf::actor_cast<message_listener_actor>(rec));
  sched.run();
  ASSERT_TRUE(ask<append_result>(store, atom::append_v, msg("d")).value);
  auto again = ask<append_result>(store, atom::append_v, msg("d"));
  ASSERT_TRUE(again.value);
  EXPECT_TRUE(again.value->duplicate);
  EXPECT_EQ(state_of<recorder_state>(rec).seen.size(), 1u);
}

TEST_P(message_store_test, a_duplicate_of_a_pending_append_waits_for_its_commit) {
  auto store = open_store();
  auto first = ask_later<append_result>(store, atom::append_v, msg("same"));
  auto second = ask_later<append_result>(store, atom::append_v, msg("same"));
  sched.run();
  ASSERT_TRUE(first->value && second->value);
  EXPECT_FALSE(first->value->duplicate);
  EXPECT_TRUE(second->value->duplicate);
  EXPECT_EQ(state_of<message_store_state>(store).commits, 1u);
  auto page = ask<message_page>(store, atom::list_v, message_query{});
  EXPECT_EQ(page.value->total, 1u) << "a duplicate must not get a second sequence entry";
}

TEST_P(message_store_test, pending_appends_are_committed_when_the_store_stops) {
  auto store = open_store();
  for (int i = 0; i < 4; ++i)
    ask_later<append_result>(store, atom::append_v, msg("warm" + std::to_string(i)));
  sched.run();
  // The next lone append waits for company; a shutdown must commit it, not drop it.
  auto lone = ask_later<append_result>(store, atom::append_v, msg("at-exit"));
  sched.run();
  ASSERT_FALSE(lone->done);
  caf::anon_send_exit(store, caf::exit_reason::user_shutdown);
  sched.run();
  ASSERT_TRUE(lone->done);
  EXPECT_TRUE(lone->value) << describe(lone->error);
  owned.clear();
  auto reopened = open_store();
  EXPECT_TRUE(ask<stored_message>(reopened, atom::get_v, std::string{"at-exit"}).value);
}

TEST_P(message_store_test, list_filters_by_type_and_sender_newest_first_with_pages) {
  auto store = open_store();
  for (int i = 0; i < 5; ++i)
    ask<append_result>(store, atom::append_v, msg("p" + std::to_string(i), "PROGRAM", "0xA"));
  ask<append_result>(store, atom::append_v, msg("x", "POST", "0xB"));
  message_query q;
  q.type = "PROGRAM";
  q.per_page = 2;
  q.page = 1;
  auto page1 = ask<message_page>(store, atom::list_v, q);
  ASSERT_TRUE(page1.value);
  EXPECT_EQ(page1.value->total, 5u);
  ASSERT_EQ(page1.value->messages.size(), 2u);
  EXPECT_EQ(page1.value->messages[0].item_hash, "p4");
  EXPECT_EQ(page1.value->messages[1].item_hash, "p3");
  q.page = 3;
  auto page3 = ask<message_page>(store, atom::list_v, q);
  ASSERT_EQ(page3.value->messages.size(), 1u);
  EXPECT_EQ(page3.value->messages[0].item_hash, "p0");
  // Unfiltered pages: x, p4 | p3, p2 | p1, p0
  message_query all;
  all.per_page = 2;
  all.page = 2;
  auto unfiltered = ask<message_page>(store, atom::list_v, all);
  ASSERT_TRUE(unfiltered.value);
  EXPECT_EQ(unfiltered.value->total, 6u);
  ASSERT_EQ(unfiltered.value->messages.size(), 2u);
  EXPECT_EQ(unfiltered.value->messages[0].item_hash, "p3");
  EXPECT_EQ(unfiltered.value->messages[1].item_hash, "p2");
  all.page = 4;
  EXPECT_TRUE(ask<message_page>(store, atom::list_v, all).value->messages.empty());
  message_query by_sender;
  by_sender.addresses = {"0xB"};
  auto b = ask<message_page>(store, atom::list_v, by_sender);
  ASSERT_EQ(b.value->messages.size(), 1u);
  EXPECT_EQ(b.value->messages[0].item_hash, "x");
}

TEST_P(message_store_test, messages_survive_reopening_the_store) {
  {
    auto store = open_store();
    ASSERT_TRUE(ask<append_result>(store, atom::append_v, msg("keep1")).value);
    ASSERT_TRUE(ask<append_result>(store, atom::append_v, msg("keep2")).value);
    caf::anon_send_exit(store, caf::exit_reason::user_shutdown);
    sched.run();
  }
  owned.clear();
  env.reset();
  env = open_env();
  auto store = open_store();
  EXPECT_TRUE(ask<stored_message>(store, atom::get_v, std::string{"keep1"}).value);
  ASSERT_TRUE(ask<append_result>(store, atom::append_v, msg("keep3")).value);
  auto page = ask<message_page>(store, atom::list_v, message_query{});
  ASSERT_EQ(page.value->messages.size(), 3u);
  EXPECT_EQ(page.value->messages[0].item_hash, "keep3"); // sequence continues after reopen
  auto inv = ask<std::vector<std::string>>(store, atom::inventory_v);
  EXPECT_EQ(inv.value->size(), 3u);
}

// A full disk: appends are refused with no_space (HTTP 507), nothing half-stored is visible,
// reads go on, and appends work again once there is room.
TEST_P(message_store_test, a_full_store_refuses_appends_with_no_space_and_recovers) {
  auto store = open_store();
  ASSERT_TRUE(ask<append_result>(store, atom::append_v, msg("before")).value);
  // The map shrunk to what is used (LMDB keeps at least that): new pages cannot be had.
  ASSERT_EQ(mdb_env_set_mapsize(env->get(), 1), 0);
  auto big = msg("too-big");
  big.json = std::string(1 << 20, 'x');
  auto r = ask<append_result>(store, atom::append_v, big);
  EXPECT_FALSE(r.value);
  EXPECT_TRUE(is(r.error, ec::no_space)) << describe(r.error);
  EXPECT_NE(describe(r.error).find("storage is full"), std::string::npos) << describe(r.error);
  EXPECT_TRUE(is(ask<stored_message>(store, atom::get_v, std::string{"too-big"}).error, ec::not_found));
  EXPECT_TRUE(ask<stored_message>(store, atom::get_v, std::string{"before"}).value);
  // A message stored before is still answered as a duplicate when it shares a failing commit.
  auto commits = state_of<message_store_state>(store).commits;
  auto dup = ask_later<append_result>(store, atom::append_v, msg("before"));
  auto big2 = ask_later<append_result>(store, atom::append_v, big);
  sched.run();
  EXPECT_EQ(state_of<message_store_state>(store).commits, commits) << "the two shared one commit, which failed";
  ASSERT_TRUE(dup->value) << describe(dup->error);
  EXPECT_TRUE(dup->value->duplicate);
  EXPECT_TRUE(is(big2->error, ec::no_space)) << describe(big2->error);
  ASSERT_EQ(mdb_env_set_mapsize(env->get(), uint64_t{1} << 30), 0);
  // Alone after a commit of two, it waits (at most twice a commit's time) for company.
  auto again_later = ask_later<append_result>(store, atom::append_v, big);
  advance(std::chrono::milliseconds(2));
  auto again = *again_later;
  ASSERT_TRUE(again.value) << describe(again.error);
  EXPECT_FALSE(again.value->duplicate);
  EXPECT_EQ(ask<stored_message>(store, atom::get_v, std::string{"too-big"}).value->json.size(), std::size_t{1} << 20);
}

INSTANTIATE_TEST_SUITE_P(modes, message_store_test, ::testing::Values(false, true),
                         [](const ::testing::TestParamInfo<bool>& p) { return p.param ? "wal" : "lmdb"; });

// The write-ahead log's own behaviour in the store.
struct message_store_wal_test : caf_fixture {
  temp_dir dir;
  std::shared_ptr<lmdb::env> env = open_test_env(dir);

  std::shared_ptr<message_wal> open_wal(uint64_t segment_bytes = 64 << 10) {
    std::string err;
    std::shared_ptr<message_wal> wal = message_wal::open((dir.path / "wal").string(), err, segment_bytes);
    EXPECT_TRUE(wal) << err;
    return wal;
  }

  // Writes entries into the log as a store would have, before a crash.
  void log_entries(message_wal& wal, const std::vector<std::pair<uint64_t, stored_message>>& msgs) {
    std::vector<wal_entry> entries;
    for (auto& [seq, m] : msgs)
      entries.push_back(wal_entry{seq, m.item_hash, codec::encode(m)});
    std::string err;
    ASSERT_TRUE(wal.append(entries, err)) << err;
  }

  std::vector<std::string> listed(const message_store_actor& store) {
    message_query q;
    q.per_page = 500;
    auto page = ask<message_page>(store, atom::list_v, q);
    EXPECT_TRUE(page.value) << describe(page.error);
    std::vector<std::string> out;
    if (page.value)
      for (auto& m : page.value->messages)
        out.push_back(m.item_hash);
    return out;
  }
};

// A node killed after answering appends from the log, before indexing them: they are in
// LMDB after the next start, in their order, and the log is empty again.
TEST_F(message_store_wal_test, appends_left_in_the_log_are_indexed_at_start) {
  {
    auto wal = open_wal();
    std::vector<wal_entry> entries;
    for (uint64_t i = 1; i <= 3; ++i)
      entries.push_back(wal_entry{i, "left" + std::to_string(i), codec::encode(msg("left" + std::to_string(i)))});
    std::string err;
    ASSERT_TRUE(wal->append(entries, err)) << err;
  }
  auto store = spawn(message_store_wal, env, open_wal(), index_mode::now);
  auto g = ask<stored_message>(store, atom::get_v, std::string{"left2"});
  ASSERT_TRUE(g.value) << describe(g.error);
  EXPECT_EQ(*g.value, msg("left2"));
  ASSERT_TRUE(ask<append_result>(store, atom::append_v, msg("after")).value);
  auto page = ask<message_page>(store, atom::list_v, message_query{});
  ASSERT_TRUE(page.value) << describe(page.error);
  ASSERT_EQ(page.value->messages.size(), 4u);
  EXPECT_EQ(page.value->messages[0].item_hash, "after"); // numbered after what the log held
  EXPECT_EQ(page.value->messages[3].item_hash, "left1");
  caf::anon_send_exit(store, caf::exit_reason::user_shutdown);
  sched.run();
  owned.clear();
  auto left = open_wal()->take_recovered();
  ASSERT_EQ(left.size(), 1u) << "what was there at start was emptied after indexing";
  EXPECT_EQ(left[0].hash, "after");
}

// LMDB cannot take the index (its map is full): appends are still acknowledged from the log
// and readable; a list fails with a clear error instead of waiting; once there is room the
// writer catches up on its own.
TEST_F(message_store_wal_test, a_failing_index_keeps_appends_readable_and_catches_up) {
  auto store = spawn(message_store_wal, env, open_wal(), index_mode::now);
  ASSERT_TRUE(ask<append_result>(store, atom::append_v, msg("first")).value);
  ASSERT_EQ(mdb_env_set_mapsize(env->get(), 1), 0); // no new pages
  auto logged = msg("logged");
  logged.json = std::string(40 << 10, 'x'); // fits a segment; needs new LMDB pages
  auto r = ask<append_result>(store, atom::append_v, logged);
  ASSERT_TRUE(r.value) << describe(r.error);
  EXPECT_FALSE(r.value->duplicate);
  EXPECT_TRUE(ask<stored_message>(store, atom::get_v, std::string{"logged"}).value);
  auto page = ask<message_page>(store, atom::list_v, message_query{});
  ASSERT_TRUE(page.done) << "a list must not wait for an index that fails";
  EXPECT_TRUE(is(page.error, ec::no_space)) << describe(page.error);
  EXPECT_NE(describe(page.error).find("cannot index"), std::string::npos) << describe(page.error);
  auto again = ask<append_result>(store, atom::append_v, logged);
  ASSERT_TRUE(again.value);
  EXPECT_TRUE(again.value->duplicate) << "known from the log, though not indexed";
  ASSERT_EQ(mdb_env_set_mapsize(env->get(), uint64_t{1} << 30), 0);
  advance(std::chrono::seconds(1)); // the retry
  auto after = ask<message_page>(store, atom::list_v, message_query{});
  ASSERT_TRUE(after.value) << describe(after.error);
  EXPECT_EQ(after.value->total, 2u);
  EXPECT_EQ(after.value->messages[0].item_hash, "logged");
}

// The index lags (held): the log turns over to its second segment, and when that is full too
// while the first is not indexed, groups commit straight into LMDB. A store killed then (no
// exit handler) loses nothing: at the next start the log's messages are indexed, in order.
TEST_F(message_store_wal_test, a_lagging_index_falls_back_to_lmdb_and_a_kill_loses_nothing) {
  std::vector<std::string> hashes;
  {
    auto store = spawn(message_store_wal, env, open_wal(16 << 10), index_mode::held);
    auto& st = state_of<message_store_state>(store);
    for (int i = 0; i < 300; ++i) {
      hashes.push_back("k" + std::to_string(i));
      auto r = ask<append_result>(store, atom::append_v, msg(hashes.back()));
      ASSERT_TRUE(r.value) << i << ": " << describe(r.error);
    }
    EXPECT_EQ(st.indexed, 0u) << "nothing was released to the index";
    // ~120 bytes a record, 12 KiB a segment: two segments hold ~200, the rest went to LMDB.
    lmdb::txn t{*env, false};
    MDB_dbi by_hash = 0;
    ASSERT_EQ(mdb_dbi_open(t.get(), "messages", 0, &by_hash), 0);
    EXPECT_FALSE(t.get(by_hash, "k0")) << "k0 is only in the log";
    EXPECT_TRUE(t.get(by_hash, "k299")) << "k299 was committed straight into LMDB";
    EXPECT_TRUE(ask<stored_message>(store, atom::get_v, std::string{"k0"}).value);
    caf::anon_send_exit(store, caf::exit_reason::kill);
    sched.run();
  }
  owned.clear();
  auto store = spawn(message_store_wal, env, open_wal(16 << 10), index_mode::now);
  auto got = listed(store);
  ASSERT_EQ(got.size(), hashes.size());
  std::reverse(got.begin(), got.end()); // newest first
  EXPECT_EQ(got, hashes) << "every acknowledged message, in the order of its acknowledgement";
}

// A log left behind by a run that was killed, then a run without the log that numbered new
// messages from LMDB: recovery keeps both, giving the log's messages free sequence numbers.
TEST_F(message_store_wal_test, sequence_numbers_taken_meanwhile_are_not_overwritten) {
  {
    auto wal = open_wal();
    std::string err;
    ASSERT_TRUE(wal->reset(err)) << err;
    log_entries(*wal, {{1, msg("logged1")}, {2, msg("logged2")}});
  }
  {
    auto plain = spawn(message_store, env, true);
    ASSERT_TRUE(ask<append_result>(plain, atom::append_v, msg("direct1")).value);
    ASSERT_TRUE(ask<append_result>(plain, atom::append_v, msg("direct2")).value);
    caf::anon_send_exit(plain, caf::exit_reason::user_shutdown);
    sched.run();
  }
  owned.clear();
  auto store = spawn(message_store_wal, env, open_wal(), index_mode::now);
  EXPECT_EQ(listed(store), (std::vector<std::string>{"logged2", "logged1", "direct2", "direct1"}));
}

// LMDB is full when the node starts with messages in the log: it starts anyway, serves them
// from memory (a list says why it cannot answer), and indexes them once there is room.
TEST_F(message_store_wal_test, a_full_lmdb_at_start_serves_the_log_from_memory) {
  {
    auto plain = spawn(message_store, env, true);
    ASSERT_TRUE(ask<append_result>(plain, atom::append_v, msg("old")).value);
    caf::anon_send_exit(plain, caf::exit_reason::user_shutdown);
    sched.run();
  }
  owned.clear();
  auto big = msg("big");
  big.json = std::string(40 << 10, 'x');
  {
    auto wal = open_wal();
    std::string err;
    ASSERT_TRUE(wal->reset(err)) << err;
    log_entries(*wal, {{2, big}});
  }
  ASSERT_EQ(mdb_env_set_mapsize(env->get(), 1), 0);
  std::string err;
  {
    auto wal = open_wal();
    EXPECT_EQ(message_store_recover(*env, *wal), "");
    EXPECT_EQ(wal->recovered().size(), 1u) << "kept for the store";
  }
  auto store = spawn(message_store_wal, env, open_wal(), index_mode::now);
  auto g = ask<stored_message>(store, atom::get_v, std::string{"big"});
  ASSERT_TRUE(g.value) << describe(g.error);
  EXPECT_EQ(*g.value, big);
  auto page = ask<message_page>(store, atom::list_v, message_query{});
  EXPECT_TRUE(is(page.error, ec::no_space)) << describe(page.error);
  auto meanwhile = ask<append_result>(store, atom::append_v, big);
  ASSERT_TRUE(meanwhile.value) << describe(meanwhile.error);
  EXPECT_TRUE(meanwhile.value->duplicate) << "known from the log";
  ASSERT_EQ(mdb_env_set_mapsize(env->get(), uint64_t{1} << 30), 0);
  // Room again: new messages commit straight into LMDB (the log waits for its backlog) ...
  ASSERT_TRUE(ask<append_result>(store, atom::append_v, msg("new1")).value);
  auto& st = state_of<message_store_state>(store);
  EXPECT_EQ(st.indexed, 0u) << "the retry is still a second away";
  advance(std::chrono::seconds(1));
  EXPECT_EQ(st.indexed, 1u);
  // ... and once the backlog is indexed the log is used again.
  ASSERT_TRUE(ask<append_result>(store, atom::append_v, msg("new2")).value);
  EXPECT_EQ(st.indexed, 2u) << "new2 went through the log";
  EXPECT_EQ(listed(store), (std::vector<std::string>{"new2", "new1", "big", "old"}))
    << "numbered after LMDB's messages, none hiding another";
}

// A list waits for the index to catch up with every append acknowledged before it.
TEST_F(message_store_wal_test, a_list_waits_until_the_index_has_caught_up) {
  auto store = spawn(message_store_wal, env, open_wal(), index_mode::held);
  for (int i = 0; i < 3; ++i)
    ASSERT_TRUE(ask<append_result>(store, atom::append_v, msg("w" + std::to_string(i))).value);
  auto page = ask_later<message_page>(store, atom::list_v, message_query{});
  sched.run();
  EXPECT_FALSE(page->done) << "two appends are not indexed yet";
  caf::anon_send(store, atom::flush_v, uint64_t{0}, uint64_t{5}); // release the first batch (w0)
  sched.run();
  EXPECT_FALSE(page->done) << "w1 and w2 still wait";
  caf::anon_send(store, atom::flush_v, uint64_t{0}, uint64_t{5}); // the rest
  sched.run();
  ASSERT_TRUE(page->done && page->value) << describe(page->error);
  EXPECT_EQ(page->value->total, 3u);
  EXPECT_EQ(page->value->messages[0].item_hash, "w2");
}

// Many appends through small segments: the log turns over from one segment to the other, and
// everything is there after a restart.
TEST_F(message_store_wal_test, the_log_turns_over_between_its_segments) {
  {
    auto store = spawn(message_store_wal, env, open_wal(16 << 10), index_mode::now);
    for (int i = 0; i < 200; ++i)
      ASSERT_TRUE(ask<append_result>(store, atom::append_v, msg("r" + std::to_string(i))).value);
    EXPECT_EQ(state_of<message_store_state>(store).commits, 200u);
    caf::anon_send_exit(store, caf::exit_reason::user_shutdown);
    sched.run();
  }
  owned.clear();
  auto store = spawn(message_store_wal, env, open_wal(16 << 10), index_mode::now);
  auto page = ask<message_page>(store, atom::list_v, message_query{});
  ASSERT_TRUE(page.value);
  EXPECT_EQ(page.value->total, 200u);
  for (int i : {0, 57, 199})
    EXPECT_TRUE(ask<stored_message>(store, atom::get_v, "r" + std::to_string(i)).value) << i;
}

// As in a node: the log synced and the index written on threads of their own, on a real
// scheduler (the deterministic one is not for other threads).
struct message_store_wal_thread : ::testing::Test {
  temp_dir dir; // outlives the actor system, and the store's threads with it
  caf::actor_system_config cfg;
  std::unique_ptr<caf::actor_system> sys;
  std::shared_ptr<lmdb::env> env;
  std::shared_ptr<message_wal> wal;
  message_store_actor store;

  void SetUp() override {
    add_message_types(cfg);
    cfg.set("scheduler.max-threads", 2);
    sys = std::make_unique<caf::actor_system>(cfg);
    env = open_test_env(dir);
    std::string err;
    wal = message_wal::open((dir.path / "wal").string(), err);
    ASSERT_TRUE(wal) << err;
    store = sys->spawn(message_store_wal, env, wal, index_mode::thread);
  }

  void TearDown() override {
    if (!sys)
      return;
    caf::anon_send_exit(store, caf::exit_reason::user_shutdown);
    store = nullptr;
    sys.reset(); // waits for the store
  }

  // What each append sent with an append_reply was answered: "ok", "duplicate", or the error.
  // The answers are kept apart from the test's frame: a store may answer after a failed
  // assertion has left it.
  struct replies {
    struct data {
      std::mutex mtx;
      std::condition_variable cv;
      std::map<std::string, std::vector<std::string>> got;
      size_t calls = 0;
    };
    std::shared_ptr<data> d = std::make_shared<data>();

    append_reply make(const std::string& hash) {
      return append_reply{[d = d, hash](const append_result* r, const caf::error* err) {
        std::lock_guard<std::mutex> guard{d->mtx};
        if (r != nullptr && r->item_hash != hash)
          d->got[hash].push_back("answered for " + r->item_hash);
        else
          d->got[hash].push_back(r != nullptr ? (r->duplicate ? "duplicate" : "ok") : describe(*err));
        ++d->calls;
        d->cv.notify_all();
      }};
    }

    size_t calls() {
      std::lock_guard<std::mutex> guard{d->mtx};
      return d->calls;
    }

    bool wait_for(size_t n) {
      std::unique_lock<std::mutex> lock{d->mtx};
      return d->cv.wait_for(lock, std::chrono::seconds(20), [&] { return d->calls >= n; });
    }

    std::string answer(const std::string& hash) {
      std::lock_guard<std::mutex> guard{d->mtx};
      auto i = d->got.find(hash);
      return i == d->got.end()          ? "none"
             : i->second.size() != 1 ? "answered " + std::to_string(i->second.size()) + " times"
                                      : i->second[0];
    }
  };

  // Stops the store (waiting until it is gone) and starts another on the same LMDB and log.
  void restart_store(caf::timespan stall_timeout) {
    caf::scoped_actor self{*sys};
    self->monitor(store);
    caf::anon_send_exit(store, caf::exit_reason::user_shutdown);
    self->receive([](const caf::down_msg&) {});
    store = sys->spawn(message_store_wal_stalling_after, env, wal, index_mode::thread, stall_timeout);
  }

  // Asks for `hash` until the store has it (false after 10 s).
  bool eventually_found(const std::string& hash) {
    caf::scoped_actor self{*sys};
    for (int i = 0; i < 500; ++i) {
      bool found = false;
      self->request(store, std::chrono::seconds(10), atom::get_v, hash)
        .receive([&](const stored_message&) { found = true; }, [](const caf::error&) {});
      if (found)
        return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return false;
  }

  void append(replies& r, const std::string& hash) {
    caf::anon_send(store, atom::append_v, msg(hash), r.make(hash));
  }

  caf::expected<message_page> list(uint32_t per_page = 1) {
    caf::scoped_actor self{*sys};
    message_query q;
    q.per_page = per_page;
    caf::expected<message_page> out = make_error(ec::unavailable, "no answer");
    self->request(store, std::chrono::seconds(20), atom::list_v, q)
      .receive([&](message_page& p) { out = std::move(p); }, [&](caf::error& e) { out = std::move(e); });
    return out;
  }

  // The item_hash as LMDB holds it now (not the store's memory).
  bool in_lmdb(const std::string& hash) {
    lmdb::txn t{*env, false};
    MDB_dbi by_hash = 0;
    return mdb_dbi_open(t.get(), "messages", 0, &by_hash) == 0 && t.get(by_hash, hash).has_value();
  }
};

// A list answered after appends shows them all.
TEST_F(message_store_wal_thread, a_list_shows_every_append_acknowledged_before_it) {
  caf::scoped_actor self{*sys};
  for (int i = 0; i < 200; ++i)
    self->send(store, atom::append_v, msg("t" + std::to_string(i)));
  int acked = 0;
  for (int i = 0; i < 200; ++i)
    self->receive([&](const append_result& r) { acked += r.duplicate ? 0 : 1; },
                  [&](const caf::error& e) { ADD_FAILURE() << describe(e); },
                  caf::after(std::chrono::seconds(10)) >> [&] { ADD_FAILURE() << "no answer"; });
  EXPECT_EQ(acked, 200);
  auto p = list();
  ASSERT_TRUE(p) << describe(p.error());
  EXPECT_EQ(p->total, 200u);
  ASSERT_EQ(p->messages.size(), 1u);
  EXPECT_EQ(p->messages[0].item_hash, "t199");
}

// Appends answered through a reply (as the HTTP handler sends them), from four threads at once:
// each is answered once, each is readable as soon as it is answered, and a second copy is a
// duplicate.
TEST_F(message_store_wal_thread, appends_answered_by_reply_are_readable_once_answered) {
  replies r;
  std::vector<std::thread> writers;
  for (int w = 0; w < 4; ++w)
    writers.emplace_back([&, w] {
      for (int i = 0; i < 100; ++i)
        append(r, "c" + std::to_string(w) + "-" + std::to_string(i));
    });
  for (auto& t : writers)
    t.join();
  ASSERT_TRUE(r.wait_for(400)) << r.calls() << " of 400 answered";
  for (int w = 0; w < 4; ++w)
    for (int i = 0; i < 100; ++i) {
      auto h = "c" + std::to_string(w) + "-" + std::to_string(i);
      ASSERT_EQ(r.answer(h), "ok") << h;
    }
  // One at a time: the get that follows an answer finds the message.
  caf::scoped_actor self{*sys};
  for (int i = 0; i < 30; ++i) {
    auto h = "s" + std::to_string(i);
    append(r, h);
    ASSERT_TRUE(r.wait_for(401 + static_cast<size_t>(i)));
    ASSERT_EQ(r.answer(h), "ok");
    self->request(store, std::chrono::seconds(10), atom::get_v, h)
      .receive([&](const stored_message& m) { EXPECT_EQ(m.item_hash, h); },
               [&](const caf::error& e) { ADD_FAILURE() << h << " answered but not found: " << describe(e); });
  }
  replies again;
  caf::anon_send(store, atom::append_v, msg("c2-7"), again.make("c2-7"));
  ASSERT_TRUE(again.wait_for(1));
  EXPECT_EQ(again.answer("c2-7"), "duplicate");
  auto p = list();
  ASSERT_TRUE(p) << describe(p.error());
  EXPECT_EQ(p->total, 430u);
  EXPECT_EQ(p->messages.at(0).item_hash, "s29");
}

// A reply nobody answers (the store is gone, or the reply was dropped) is told so, once.
TEST_F(message_store_wal_thread, a_reply_to_a_store_that_is_gone_gets_unavailable) {
  replies r;
  { auto unanswered = r.make("dropped"); }
  ASSERT_TRUE(r.wait_for(1));
  EXPECT_NE(r.answer("dropped").find("not running"), std::string::npos) << r.answer("dropped");
  caf::scoped_actor self{*sys};
  self->monitor(store);
  caf::anon_send_exit(store, caf::exit_reason::user_shutdown);
  self->receive([](const caf::down_msg&) {});
  append(r, "late");
  ASSERT_TRUE(r.wait_for(2));
  EXPECT_NE(r.answer("late").find("not running"), std::string::npos) << r.answer("late");
}

// The log fails under way (a write error): that group, and every one after it, is committed
// straight into LMDB instead, and answered as stored.
TEST_F(message_store_wal_thread, a_failing_log_write_falls_back_to_lmdb_and_loses_nothing) {
  replies r;
  append(r, "before");
  ASSERT_TRUE(r.wait_for(1));
  ASSERT_EQ(r.answer("before"), "ok");
  wal->fail_next_write(EIO); // the log's thread is idle: nothing is under way
  for (int i = 0; i < 50; ++i)
    append(r, "after" + std::to_string(i));
  ASSERT_TRUE(r.wait_for(51)) << r.calls();
  for (int i = 0; i < 50; ++i) {
    auto h = "after" + std::to_string(i);
    ASSERT_EQ(r.answer(h), "ok") << h;
    EXPECT_TRUE(in_lmdb(h)) << h << " was answered, so it is in LMDB";
  }
  EXPECT_TRUE(wal->failed());
  auto p = list();
  ASSERT_TRUE(p) << describe(p.error());
  EXPECT_EQ(p->total, 51u);
}

// The disk hangs in a write to the log (here for 1.5 s, with a stall timeout of 200 ms): the
// appends in that write, and those arriving meanwhile, are answered "unavailable" instead of
// hanging; once the write ends the store takes appends again, and what that write held is kept.
TEST_F(message_store_wal_thread, a_write_that_hangs_is_answered_unavailable_and_kept) {
  restart_store(std::chrono::milliseconds(200));
  replies r;
  wal->stall_next_write(1500);
  auto t0 = std::chrono::steady_clock::now();
  append(r, "hung");
  ASSERT_TRUE(r.wait_for(1));
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::milliseconds(1400)) << "answered before the write ended";
  EXPECT_NE(r.answer("hung").find("has not finished a write in 200 ms"), std::string::npos) << r.answer("hung");
  append(r, "meanwhile");
  ASSERT_TRUE(r.wait_for(2));
  EXPECT_NE(r.answer("meanwhile").find("has not finished a write"), std::string::npos) << r.answer("meanwhile");
  // Once the write has ended, what it held is kept, and appends are taken again.
  ASSERT_TRUE(eventually_found("hung")) << "the write that hung ended, and holds it";
  append(r, "after");
  ASSERT_TRUE(r.wait_for(3));
  EXPECT_EQ(r.answer("after"), "ok");
  replies again;
  caf::anon_send(store, atom::append_v, msg("hung"), again.make("hung"));
  ASSERT_TRUE(again.wait_for(1));
  EXPECT_EQ(again.answer("hung"), "duplicate");
  auto p = list(10);
  ASSERT_TRUE(p) << describe(p.error());
  EXPECT_EQ(p->total, 2u) << "hung and after; meanwhile was refused";
}

// A store told to stop while a write hangs stops within the stall timeout instead of waiting
// for the disk; the append is answered unavailable, and if the write ends later it is in the log.
TEST_F(message_store_wal_thread, a_store_stopping_during_a_hung_write_does_not_wait_for_it) {
  restart_store(std::chrono::milliseconds(300));
  replies r;
  append(r, "before");
  ASSERT_TRUE(r.wait_for(1));
  wal->stall_next_write(2000);
  append(r, "hung");
  std::this_thread::sleep_for(std::chrono::milliseconds(50)); // the write is under way
  auto t0 = std::chrono::steady_clock::now();
  {
    caf::scoped_actor self{*sys};
    self->monitor(store);
    caf::anon_send_exit(store, caf::exit_reason::user_shutdown);
    self->receive([](const caf::down_msg&) {});
  }
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::milliseconds(1500)) << "waited for the disk";
  ASSERT_TRUE(r.wait_for(2));
  EXPECT_NE(r.answer("hung").find("has not finished a write"), std::string::npos) << r.answer("hung");
  store = nullptr;
  sys.reset();
  // The write ends (the thread left behind finishes it, and lets go of the log); it is read back
  // at the next start.
  for (int i = 0; i < 1000 && wal.use_count() > 1; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  ASSERT_EQ(wal.use_count(), 1) << "the writer left behind still holds the log";
  wal.reset();
  std::string err;
  auto reopened = message_wal::open((dir.path / "wal").string(), err);
  ASSERT_TRUE(reopened) << err;
  ASSERT_EQ(message_store_recover(*env, *reopened), "");
  EXPECT_TRUE(in_lmdb("before"));
  EXPECT_TRUE(in_lmdb("hung")) << "its write ended after all: kept, as a retry would have found";
}

// A store told to stop while appends stream in: every append is answered once, and each one
// answered as stored is there after a restart (from LMDB, or from the log at the next start).
TEST_F(message_store_wal_thread, a_stopping_store_keeps_every_append_it_acknowledged) {
  replies r;
  for (int i = 0; i < 20; ++i)
    append(r, "m" + std::to_string(i));
  ASSERT_TRUE(r.wait_for(1)); // groups are under way
  std::thread writer{[&] {
    for (int i = 20; i < 300; ++i)
      append(r, "m" + std::to_string(i));
  }};
  caf::anon_send_exit(store, caf::exit_reason::user_shutdown);
  writer.join();
  ASSERT_TRUE(r.wait_for(300)) << r.calls() << " of 300 answered";
  store = nullptr;
  sys.reset();
  wal.reset();
  std::string err;
  auto reopened = message_wal::open((dir.path / "wal").string(), err);
  ASSERT_TRUE(reopened) << err;
  ASSERT_EQ(message_store_recover(*env, *reopened), "");
  size_t stored = 0;
  for (int i = 0; i < 300; ++i) {
    auto h = "m" + std::to_string(i);
    auto a = r.answer(h);
    if (a == "ok") {
      ++stored;
      EXPECT_TRUE(in_lmdb(h)) << h << " was acknowledged and is lost";
    } else {
      EXPECT_NE(a.find("not running"), std::string::npos) << h << ": " << a;
    }
  }
  EXPECT_GT(stored, 0u);
}

} // namespace

} // namespace message_store_tests
