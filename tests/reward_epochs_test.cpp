// Reward epochs on the deterministic scheduler: usage counted once per epoch, inputs and
// results stored, and a stored epoch recomputed from the usage book.
#include "actors/ccn_node.hpp"
#include "actors/reward_epochs.hpp"
#include "actors/usage_book.hpp"
#include "runtime/ledger.hpp"
#include "runtime/lmdb.hpp"

#include <nlohmann/json.hpp>

#include "caf_fixture.hpp"

using namespace alephd;
using namespace alephd::test;
using namespace std::chrono_literals;
using nlohmann::json;

// Named so that the suites can share one unity-built test binary.
namespace reward_epochs_tests {

namespace {

struct registry_list_state {
  std::vector<node_view> nodes;
};

// A registry that only lists its CRNs.
crn_registry_actor::behavior_type
registry_list(crn_registry_actor::stateful_pointer<registry_list_state> self,
              std::vector<node_view> nodes) {
  self->state.nodes = std::move(nodes);
  return {
    [=](atom::enroll, const enrollment&, const ccn_link_actor&) -> caf::result<registration> {
      return make_error(ec::unavailable, "not in this test");
    },
    [=](atom::beat, const heartbeat&) -> caf::result<heartbeat_ack> {
      return make_error(ec::unavailable, "not in this test");
    },
    [=](atom::unlink, const std::string&) {},
    [=](atom::list) { return self->state.nodes; },
    [=](atom::subscribe, const node_listener_actor&) {},
    [=](atom::tick) {},
  };
}

// A prober that answers fixed scores.
prober_actor::behavior_type fixed_scores(prober_actor::pointer, std::vector<node_score> scores) {
  return {
    [=](atom::node, const crn_info&, link_state, const ccn_link_actor&) {},
    [=](atom::list) { return scores; },
    [=](atom::probe, const std::string&, const std::string&) {},
    [=](atom::probe) {},
    [=](atom::tick) {},
  };
}

node_view crn_view(const std::string& id, double registered) {
  node_view v;
  v.id = id;
  v.role = "crn";
  v.status = "linked";
  v.registered = registered;
  return v;
}

/// Entries seq first..last of `node`'s chain: one execution of 2 vCPUs, 1 hour each.
std::vector<usage_entry> hours(const std::string& node, uint64_t first, uint64_t last,
                               std::string& prev) {
  std::vector<usage_entry> out;
  for (uint64_t seq = first; seq <= last; ++seq) {
    usage_entry e;
    e.node = node;
    e.item_hash = "exec-1";
    e.product = "program";
    e.vcpus = 2;
    e.memory_mib = 1024;
    e.wall_s = 3600;
    e.storage_bytes = 1ull << 30;
    ledger_chain(e, seq, prev);
    out.push_back(e);
  }
  return out;
}

struct reward_epochs_test : caf_fixture {
  temp_dir dir;
  std::shared_ptr<lmdb::env> env = open_test_env(dir);
  usage_book_actor book = spawn(usage_book, env);
  double now = 100 * 10 + 5; // in epoch 100 of 10 s
  std::string prev_a = ledger_genesis;

  reward_epochs_actor start() {
    reward_epochs_config c;
    c.ccn_id = "ccn-self";
    c.ccn_name = "self";
    c.env = env;
    c.epoch_seconds = std::chrono::seconds(10);
    c.check = 1000ms;
    c.now = [this] { return now; };
    c.stakes = {{"self", "staker-1", 300000}, {"ccn-self", "staker-2", 100000}};
    c.registry = spawn(registry_list, std::vector<node_view>{crn_view("crn-a", 1), crn_view("crn-b", 2)});
    c.prober = spawn(fixed_scores, std::vector<node_score>{
                                     node_score{"crn-a", "a", "AS1", 5, 1, 1, 1, 1, 1, 1, 0.9, 0.25, 1},
                                     node_score{"crn-b", "b", "AS2", 5, 1, 1, 1, 1, 1, 1, 0.5, 0.25, 0.5}});
    return spawn(reward_epochs, c);
  }

  void ship(uint64_t first, uint64_t last) {
    auto r = ask<uint64_t>(book, atom::usage_v, std::string{"crn-a"}, hours("crn-a", first, last, prev_a));
    ASSERT_TRUE(r.value) << describe(r.error);
    ASSERT_EQ(*r.value, last);
  }

  std::optional<json> epoch(const reward_epochs_actor& a, uint64_t n) {
    auto r = ask<std::string>(a, atom::rewards_v, n);
    if (!r.value)
      return std::nullopt;
    return json::parse(*r.value);
  }
};

double amount(const json& model, const std::string& pool, const std::string& recipient) {
  double sum = 0;
  for (auto& p : model["payouts"])
    if (p["pool"] == pool && p["recipient"] == recipient)
      sum += p["amount"].get<double>();
  return sum;
}

} // namespace

TEST_F(reward_epochs_test, each_entry_counts_in_exactly_one_epoch) {
  auto a = start();
  ship(1, 3);
  advance(1000ms);
  EXPECT_FALSE(epoch(a, 0)) << "epoch 100 has not ended";
  now = 101 * 10 + 1;
  advance(1000ms);
  auto e100 = epoch(a, 100);
  ASSERT_TRUE(e100);
  EXPECT_EQ((*e100)["ranges"]["crn-a"], json::array({0, 3}));
  // 3 hours × 2 CU × 0.011 = 0.066 ALEPH; 60 % to crn-a.
  EXPECT_NEAR(amount((*e100)["usage"], "usage-execution", "crn-a"), 0.066 * 0.6, 1e-12);
  // Its CCN (this one) gets 15 %, its stakers 20 % by stake (3:1).
  EXPECT_NEAR(amount((*e100)["usage"], "usage-execution", "ccn-self"), 0.066 * 0.15, 1e-12);
  EXPECT_NEAR(amount((*e100)["usage"], "usage-execution", "staker-1"), 0.066 * 0.2 * 0.75, 1e-12);
  // 3 GiB-hours of storage × 0.0001.
  EXPECT_NEAR((*e100)["usage"]["pools"]["usage-storage"].get<double>(), 0.0003, 1e-15);
  // Legacy: one active CCN with two scoring CRNs (linkage 0.9); 10 s of 15,000/day.
  EXPECT_NEAR(amount((*e100)["legacy"], "legacy-ccn", "ccn-self"), 15000.0 * 10 / 86400 * 0.9, 1e-9);
  EXPECT_EQ((*e100)["ccns"][0]["linked_crns"], json::array({"crn-a", "crn-b"}));

  // Entries shipped later, even if sampled during epoch 100, count in the next epoch.
  ship(4, 5);
  now = 102 * 10 + 1;
  advance(1000ms);
  auto e101 = epoch(a, 101);
  ASSERT_TRUE(e101);
  EXPECT_EQ((*e101)["ranges"]["crn-a"], json::array({3, 5}));
  EXPECT_NEAR(amount((*e101)["usage"], "usage-execution", "crn-a"), 0.044 * 0.6, 1e-12);
  EXPECT_EQ(epoch(a, 0), e101) << "0 asks for the latest";
  EXPECT_EQ(verify_epoch(*env, 100), "");
  EXPECT_EQ(verify_epoch(*env, 101), "");
}

TEST_F(reward_epochs_test, epochs_missed_while_down_are_computed_and_a_changed_book_is_found) {
  ship(1, 2);
  auto a = start();
  now = 104 * 10 + 1; // epochs 100 to 103 ended
  advance(1000ms);
  for (uint64_t n = 100; n <= 103; ++n)
    EXPECT_TRUE(epoch(a, n)) << n;
  EXPECT_EQ((*epoch(a, 100))["ranges"]["crn-a"], json::array({0, 2}));
  // Epochs without new entries keep the CRN's place: nothing is counted again.
  for (uint64_t n = 101; n <= 103; ++n) {
    EXPECT_EQ((*epoch(a, n))["ranges"]["crn-a"], json::array({2, 2})) << n;
    EXPECT_DOUBLE_EQ((*epoch(a, n))["usage"]["pools"]["usage-execution"].get<double>(), 0) << n;
  }
  ship(3, 3);
  now = 105 * 10 + 1;
  advance(1000ms);
  EXPECT_EQ((*epoch(a, 104))["ranges"]["crn-a"], json::array({2, 3}));
  // Someone edits a counted entry in the CCN's usage book: the recomputation disagrees.
  {
    MDB_dbi db = 0;
    std::string err;
    ASSERT_TRUE(env->open_db("usage", db, err));
    lmdb::txn t{*env, true};
    auto e = *ledger_decode(*t.get(db, usage_key("crn-a", 2)));
    e.vcpus = 64;
    ASSERT_EQ(t.put(db, usage_key("crn-a", 2), ledger_encode(e)), 0);
    ASSERT_EQ(t.commit(), 0);
  }
  EXPECT_EQ(verify_epoch(*env, 100), "the usage distribution differs from the stored one");
  EXPECT_EQ(verify_epoch(*env, 101), "");
  EXPECT_EQ(verify_epoch(*env, 104), "");
  EXPECT_EQ(verify_epoch(*env, 7), "no epoch 7 is stored");
}

// The CCN's node actor takes usage only from CRNs registered with it.
TEST_F(reward_epochs_test, only_registered_crns_ship_usage) {
  auto reg = spawn(registry_list, std::vector<node_view>{crn_view("crn-a", 1)});
  auto node = spawn(ccn_node, std::string{"ccn-self"}, reg, ccn_peer_actor{}, message_store_actor{},
                    content_store_actor{}, scheduler_actor{}, std::shared_ptr<const http_locator>{},
                    book);
  std::string prev = ledger_genesis;
  auto ok = ask<uint64_t>(node, atom::usage_v, std::string{"crn-a"}, hours("crn-a", 1, 2, prev));
  ASSERT_TRUE(ok.value) << describe(ok.error);
  EXPECT_EQ(*ok.value, 2u);
  std::string other = ledger_genesis;
  auto refused = ask<uint64_t>(node, atom::usage_v, std::string{"crn-x"}, hours("crn-x", 1, 2, other));
  EXPECT_FALSE(refused.value);
  EXPECT_TRUE(is(refused.error, ec::refused)) << describe(refused.error);
}

TEST(reward_epoch_codec, stakes_parse_and_refuse_bad_items) {
  std::vector<stake_entry> s;
  std::string err;
  ASSERT_TRUE(parse_stakes("ccn-a:0xabc:500000,ccn-b:0xdef:1e4", s, err)) << err;
  ASSERT_EQ(s.size(), 2u);
  EXPECT_EQ(s[1].ccn, "ccn-b");
  EXPECT_EQ(s[1].address, "0xdef");
  EXPECT_DOUBLE_EQ(s[1].amount, 10000);
  for (std::string bad : {"x", "a:b", "a:b:", ":b:1", "a::1", "a:b:-5", "a:b:ten", "a:b:inf"}) {
    EXPECT_FALSE(parse_stakes(bad, s, err)) << bad;
    EXPECT_FALSE(err.empty());
  }
  EXPECT_DOUBLE_EQ(compute_units(1, 128), 1);
  EXPECT_DOUBLE_EQ(compute_units(1, 4096), 2);
  EXPECT_DOUBLE_EQ(compute_units(1, 4097), 3);
  EXPECT_DOUBLE_EQ(compute_units(4, 2048), 4);
}

} // namespace reward_epochs_tests
