// The CRN's reward_ledger actor (group commit, acknowledgements) and the CCN's
// usage_book (each (node, seq) once, chains checked), on the deterministic scheduler.
#include "actors/reward_ledger.hpp"
#include "actors/usage_book.hpp"
#include "runtime/ledger.hpp"

#include "caf_fixture.hpp"

using namespace alephd;
using namespace alephd::test;
using namespace std::chrono_literals;

// Named so that the suites can share one unity-built test binary.
namespace reward_ledger_tests {

namespace {

usage_entry sample(uint64_t cpu) {
  usage_entry e;
  e.item_hash = "item-" + std::to_string(cpu % 3);
  e.product = "program";
  e.wall_s = 1;
  e.vcpus = 1;
  e.memory_mib = 128;
  e.cpu_ns = cpu;
  return e;
}

/// A chain of `n` entries of `node`, as a CRN's ledger would make them.
std::vector<usage_entry> chain(const std::string& node, std::size_t n) {
  std::vector<usage_entry> out;
  std::string prev = ledger_genesis;
  for (std::size_t i = 1; i <= n; ++i) {
    auto e = sample(i);
    e.node = node;
    ledger_chain(e, i, prev);
    out.push_back(e);
  }
  return out;
}

struct reward_ledger_test : caf_fixture {
  temp_dir dir;
  std::shared_ptr<ledger_store> store;
  reward_ledger_actor ledger;

  void start() {
    std::string err;
    store = ledger_store::open(dir.str() + "/ledger", err);
    ASSERT_TRUE(store) << err;
    reward_ledger_config c;
    c.node = "crn-7";
    c.commit_delay = 100ms;
    c.batch = 64;
    ledger = spawn(reward_ledger, store, c);
  }

  reward_ledger_state& state() { return state_of<reward_ledger_state>(ledger); }
};

} // namespace

TEST_F(reward_ledger_test, samples_arriving_together_share_one_commit) {
  start();
  for (uint64_t i = 1; i <= 10; ++i)
    caf::anon_send(ledger, atom::sample_v, sample(i));
  sched.run();
  EXPECT_EQ(store->last_seq(), 0u) << "nothing is written before the commit delay";
  advance(100ms);
  EXPECT_EQ(store->last_seq(), 10u);
  EXPECT_EQ(state().commits, 1u);
  auto all = store->read(0, 100);
  ASSERT_EQ(all.size(), 10u);
  for (auto& e : all)
    EXPECT_EQ(e.node, "crn-7") << "the ledger writes its node id into each entry";
  EXPECT_TRUE(store->verify().ok());
}

TEST_F(reward_ledger_test, a_full_batch_commits_at_once) {
  start();
  for (uint64_t i = 1; i <= 70; ++i)
    caf::anon_send(ledger, atom::sample_v, sample(i));
  sched.run();
  EXPECT_EQ(store->last_seq(), 64u);
  advance(100ms);
  EXPECT_EQ(store->last_seq(), 70u);
  EXPECT_EQ(state().commits, 2u);
}

TEST_F(reward_ledger_test, samples_waiting_are_written_when_it_stops) {
  start();
  caf::anon_send(ledger, atom::sample_v, sample(1));
  caf::anon_send(ledger, atom::sample_v, sample(2));
  sched.run();
  caf::anon_send_exit(ledger, caf::exit_reason::user_shutdown);
  sched.run();
  EXPECT_EQ(store->last_seq(), 2u);
}

TEST_F(reward_ledger_test, unacknowledged_entries_are_offered_until_confirmed) {
  start();
  for (uint64_t i = 1; i <= 5; ++i)
    caf::anon_send(ledger, atom::sample_v, sample(i));
  advance(100ms);
  auto first = ask<std::vector<usage_entry>>(ledger, atom::get_v, uint32_t{3});
  ASSERT_TRUE(first.value);
  ASSERT_EQ(first.value->size(), 3u);
  EXPECT_EQ(first.value->front().seq, 1u);
  caf::anon_send(ledger, atom::confirm_v, uint64_t{3});
  sched.run();
  auto rest = ask<std::vector<usage_entry>>(ledger, atom::get_v, uint32_t{10});
  ASSERT_TRUE(rest.value);
  ASSERT_EQ(rest.value->size(), 2u);
  EXPECT_EQ(rest.value->front().seq, 4u);
  // An acknowledgement beyond the ledger (another node's?) or going back is ignored.
  caf::anon_send(ledger, atom::confirm_v, uint64_t{99});
  caf::anon_send(ledger, atom::confirm_v, uint64_t{1});
  sched.run();
  EXPECT_EQ(store->acked(), 3u);
  uint64_t last = 0, acked = 0;
  sys.spawn([&, l = ledger](caf::event_based_actor* self) {
    self->request(l, caf::infinite, atom::status_v).then([&](uint64_t a, uint64_t b) {
      last = a;
      acked = b;
    });
  });
  sched.run();
  EXPECT_EQ(last, 5u);
  EXPECT_EQ(acked, 3u);
  auto listed = ask<std::vector<usage_entry>>(ledger, atom::list_v, uint64_t{0}, uint32_t{100});
  ASSERT_TRUE(listed.value);
  EXPECT_EQ(listed.value->size(), 5u) << "the records route lists acknowledged ones too";
}

struct usage_book_test : caf_fixture {
  temp_dir dir;
  std::shared_ptr<lmdb::env> env = open_test_env(dir);
  usage_book_actor book = spawn(usage_book, env);

  uint64_t send(const std::string& node, std::vector<usage_entry> batch) {
    auto r = ask<uint64_t>(book, atom::usage_v, node, std::move(batch));
    EXPECT_TRUE(r.value) << describe(r.error);
    return r.value.value_or(UINT64_MAX);
  }

  std::vector<usage_entry> held(const std::string& node) {
    auto r = ask<std::vector<usage_entry>>(book, atom::list_v, node, uint64_t{0}, uint32_t{1000});
    return r.value.value_or(std::vector<usage_entry>{});
  }
};

TEST_F(usage_book_test, a_batch_sent_again_is_not_counted_twice) {
  auto c = chain("crn-a", 6);
  EXPECT_EQ(send("crn-a", {c.begin(), c.begin() + 4}), 4u);
  // The acknowledgement was lost: the CRN sends 1..6 again.
  EXPECT_EQ(send("crn-a", c), 6u);
  auto h = held("crn-a");
  ASSERT_EQ(h.size(), 6u);
  for (std::size_t i = 0; i < h.size(); ++i)
    EXPECT_EQ(h[i], c[i]);
  EXPECT_EQ(state_of<usage_book_state>(book).duplicates, 4u);
}

TEST_F(usage_book_test, a_broken_chain_stops_the_batch_and_a_changed_entry_is_a_conflict) {
  auto c = chain("crn-a", 5);
  auto forged = c[2];
  forged.cpu_ns = 1;
  EXPECT_EQ(send("crn-a", {c[0], c[1], forged, c[3]}), 2u) << "entry 3's hash does not match";
  auto rehashed = forged;
  rehashed.hash = ledger_hash(rehashed);
  EXPECT_EQ(send("crn-a", {rehashed}), 3u) << "a rehashed entry 3 fits entry 2...";
  EXPECT_EQ(send("crn-a", {c[3], c[4]}), 3u) << "...but then the real entry 4 does not follow it";
  EXPECT_EQ(send("crn-a", {c[2]}), 3u) << "the real entry 3 differs from the one held";
  EXPECT_EQ(state_of<usage_book_state>(book).conflicts, 1u);
  EXPECT_EQ(state_of<usage_book_state>(book).duplicates, 0u);
  EXPECT_EQ(held("crn-a").size(), 3u);
}

TEST_F(usage_book_test, a_crn_back_from_another_ccn_starts_a_new_segment) {
  auto c = chain("crn-a", 8);
  EXPECT_EQ(send("crn-a", {c[0], c[1], c[2]}), 3u);
  // Entries 4 and 5 went to another CCN while the CRN was linked there.
  EXPECT_EQ(send("crn-a", {c[5], c[6]}), 7u);
  EXPECT_EQ(send("crn-a", {c[7]}), 8u);
  std::vector<uint64_t> seqs;
  for (auto& e : held("crn-a"))
    seqs.push_back(e.seq);
  EXPECT_EQ(seqs, (std::vector<uint64_t>{1, 2, 3, 6, 7, 8}));
  EXPECT_EQ(state_of<usage_book_state>(book).segments, 1u);
}

TEST_F(usage_book_test, malformed_entries_are_refused_without_harm) {
  auto c = chain("crn-a", 2);
  auto bad_node = c[0];
  bad_node.node = "crn-\xff"; // hashing it would not even be possible: refused before
  EXPECT_EQ(send("crn-\xff", {bad_node}), 0u) << "not printable ASCII";
  auto gpu = c[0];
  gpu.product = "gpu";
  gpu.hash = ledger_hash(gpu);
  EXPECT_EQ(send("crn-a", {gpu}), 0u) << "unknown product";
  auto huge = c[0];
  huge.seq = UINT64_MAX;
  huge.hash = ledger_hash(huge);
  EXPECT_EQ(send("crn-a", {huge}), 0u) << "seq out of range";
  EXPECT_EQ(send("crn-a", c), 2u) << "and the book still works";
}

TEST_F(usage_book_test, entries_of_another_node_are_refused) {
  auto c = chain("crn-b", 2);
  EXPECT_EQ(send("crn-a", c), 0u);
  EXPECT_TRUE(held("crn-a").empty());
  auto bad = ask<uint64_t>(book, atom::usage_v, std::string{}, c);
  EXPECT_FALSE(bad.value);
}

TEST_F(usage_book_test, nodes_are_kept_apart_and_survive_a_restart) {
  EXPECT_EQ(send("crn-a", chain("crn-a", 3)), 3u);
  EXPECT_EQ(send("crn-b", chain("crn-b", 5)), 5u);
  auto heads = ask<std::map<std::string, uint64_t>>(book, atom::status_v);
  ASSERT_TRUE(heads.value);
  EXPECT_EQ(*heads.value, (std::map<std::string, uint64_t>{{"crn-a", 3}, {"crn-b", 5}}));
  caf::anon_send_exit(book, caf::exit_reason::kill);
  sched.run();
  auto again = spawn(usage_book, env);
  auto r = ask<uint64_t>(again, atom::usage_v, std::string{"crn-a"}, chain("crn-a", 4));
  ASSERT_TRUE(r.value);
  EXPECT_EQ(*r.value, 4u) << "entries 1-3 were held across the restart; only 4 is new";
}

TEST_F(usage_book_test, a_node_first_seen_mid_chain_is_taken_from_there) {
  // It shipped entries 1-3 to another CCN before failing over to this one.
  auto c = chain("crn-a", 5);
  EXPECT_EQ(send("crn-a", {c[3], c[4]}), 5u);
  auto h = held("crn-a");
  ASSERT_EQ(h.size(), 2u);
  EXPECT_EQ(h[0].seq, 4u);
}

} // namespace reward_ledger_tests
