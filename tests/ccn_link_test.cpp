#include "actors/ccn_link.hpp"
#include "actors/reward_ledger.hpp"
#include "runtime/crypto.hpp"
#include "runtime/ledger.hpp"
#include "runtime/wall_clock.hpp"

#include <map>
#include <chrono>

#include "tests/caf_fixture.hpp"

using namespace alephd;
using namespace alephd::test;
using namespace std::chrono_literals;
using std::chrono::milliseconds;

// Named so that the suites can share one unity-built test binary.
namespace ccn_link_tests {

namespace {

// -- test doubles ---------------------------------------------------------------

// A CCN's registry: answers enrollments, counts heartbeats, can freeze or forget.
struct registry_double_state {
  std::string ccn_id;
  link_state answer = link_state::linked;
  uint32_t heartbeat_ms = 1000;
  bool frozen = false;    ///< never answer heartbeats
  bool forgetful = false; ///< answer heartbeats with ec::not_found (the CCN restarted)
  std::vector<crn_info> enrolled;
  std::vector<enrollment> enrollments;
  std::vector<heartbeat> beats;
  std::vector<std::string> unlinks;
  std::vector<caf::typed_response_promise<heartbeat_ack>> unanswered;
};

crn_registry_actor::behavior_type
registry_double(crn_registry_actor::stateful_pointer<registry_double_state> self,
                std::string ccn_id) {
  self->state.ccn_id = std::move(ccn_id);
  return {
    [=](atom::enroll, const enrollment& en, const ccn_link_actor&) {
      auto& st = self->state;
      st.enrolled.push_back(en.info);
      st.enrollments.push_back(en);
      return registration{st.answer, st.ccn_id, st.heartbeat_ms};
    },
    [=](atom::beat, const heartbeat& hb) -> caf::result<heartbeat_ack> {
      auto& st = self->state;
      st.beats.push_back(hb);
      if (st.frozen) {
        auto rp = self->make_response_promise<heartbeat_ack>();
        st.unanswered.push_back(rp);
        return rp;
      }
      if (st.forgetful)
        return make_error(ec::not_found, "CRN " + hb.crn_id + " is not registered");
      return heartbeat_ack{st.ccn_id, hb.seq, st.answer};
    },
    [=](atom::unlink, const std::string& id) { self->state.unlinks.push_back(id); },
    [=](atom::list) { return std::vector<node_view>{}; },
    [=](atom::subscribe, const node_listener_actor&) {},
    [=](atom::tick) {},
  };
}

// A CCN's node actor: introduces its registry, or refuses.
struct node_double_state {
  std::string ccn_id;
  crn_registry_actor registry;
  bool refuse = false;
  std::vector<caf::actor_clock::time_point> hellos;
  std::map<std::string, stored_message> messages;
  std::vector<std::pair<std::string, std::string>> failures; ///< (crn, item_hash) reported
  std::vector<placement> placed;                              ///< every CRN's placements
  std::vector<std::string> placement_queries;                 ///< CRN ids asked about
  std::map<std::string, std::vector<usage_entry>> usage;      ///< metering entries by CRN
  std::map<std::string, std::vector<uint64_t>> received;      ///< every seq sent, repeats too
  /// Answer placement queries only when asked about the CRN "release" (the test's signal; the
  /// answers are delivered from inside the actor, as CAF requires).
  bool hold_lists = false;
  std::vector<std::pair<std::string, caf::typed_response_promise<std::vector<placement>>>> held_lists;
};

using hello_result = caf::result<crn_registry_actor, caf::actor, std::string>;

ccn_node_actor::behavior_type node_double(ccn_node_actor::stateful_pointer<node_double_state> self,
                                          std::string ccn_id, crn_registry_actor registry) {
  self->state.ccn_id = std::move(ccn_id);
  self->state.registry = std::move(registry);
  return {
    [=](atom::hello) -> hello_result {
      auto& st = self->state;
      st.hellos.push_back(self->clock().now());
      if (st.refuse)
        return make_error(ec::unavailable, "CCN " + st.ccn_id + " is starting");
      return hello_result(st.registry, caf::actor{}, st.ccn_id);
    },
    [=](atom::get, const std::string& h) -> caf::result<stored_message> {
      auto& st = self->state;
      if (auto i = st.messages.find(h); i != st.messages.end())
        return i->second;
      return make_error(ec::not_found, "no message " + h);
    },
    [=](atom::locate, const std::string&) { return std::string{}; },
    [=](atom::get, const std::string& h, bool) -> caf::result<stored_message> {
      return make_error(ec::not_found, "no message " + h);
    },
    [=](atom::read, const std::string& h) -> caf::result<file_blob> {
      return make_error(ec::not_found, "no file " + h + " at " + self->state.ccn_id);
    },
    [=](atom::exited, const std::string& crn, const execution_info& info) {
      self->state.failures.emplace_back(crn, info.item_hash);
    },
    [=](atom::usage, const std::string& crn, const std::vector<usage_entry>& entries) {
      auto& held = self->state.usage[crn];
      for (auto& e : entries) {
        self->state.received[crn].push_back(e.seq);
        if (e.seq == held.size() + 1)
          held.push_back(e);
      }
      return static_cast<uint64_t>(held.size());
    },
    [=](atom::list, const std::string& crn) -> caf::result<std::vector<placement>> {
      auto placed_on = [=](const std::string& id) {
        std::vector<placement> mine;
        for (auto& p : self->state.placed)
          if (p.crn_id == id)
            mine.push_back(p);
        return mine;
      };
      if (crn == "release") {
        for (auto& [id, rp] : self->state.held_lists)
          rp.deliver(placed_on(id));
        self->state.held_lists.clear();
        return std::vector<placement>{};
      }
      if (crn.empty())
        return self->state.placed; // every placement, wherever
      self->state.placement_queries.push_back(crn);
      if (self->state.hold_lists) {
        auto rp = self->make_response_promise<std::vector<placement>>();
        self->state.held_lists.emplace_back(crn, rp);
        return rp;
      }
      return placed_on(crn);
    },
  };
}

// The CRN's job broker: records allocations and answers with a recognizable ack.
struct broker_double_state {
  bool accept = true;
  std::vector<allocation> allocations;
  std::vector<std::vector<placement>> confirms;
  std::vector<std::string> confirm_ccns; ///< the CCN each confirm speaks for
};

job_broker_actor::behavior_type
broker_double(job_broker_actor::stateful_pointer<broker_double_state> self) {
  return {
    [=](atom::allocate, const allocation& a) {
      auto& st = self->state;
      st.allocations.push_back(a);
      return allocation_ack{a.item_hash, a.epoch, "crn-from-broker", st.accept,
                            st.accept ? "" : "Insufficient capacity: broker double"};
    },
    [=](atom::list) { return std::vector<execution_info>{}; },
    [=](atom::stop, const std::string& hash) -> caf::result<execution_info> {
      return make_error(ec::not_found, "no execution " + hash);
    },
    [=](atom::run, const std::string& hash) -> caf::result<execution_info> {
      return make_error(ec::not_found, "no program " + hash);
    },
    [=](atom::reboot, const std::string& hash) -> caf::result<execution_info> {
      return make_error(ec::not_found, "no execution " + hash);
    },
    [=](atom::erase, const std::string& hash) -> caf::result<execution_info> {
      return make_error(ec::not_found, "no execution " + hash);
    },
    [=](atom::logs, const std::string& hash) -> caf::result<std::vector<log_line>> {
      return make_error(ec::not_found, "no execution " + hash);
    },
    [=](atom::drain, bool) { return uint32_t{0}; },
    [=](atom::run, const std::string&, const stored_message&) { return uint16_t{200}; },
    [=](atom::published, uint64_t, uint16_t) {},
    [=](atom::connect, const ccn_link_actor&) {},
    [=](atom::exited, const execution_info&, const std::vector<log_line>&) {},
    [=](atom::confirm, const std::string& ccn, const std::vector<placement>& mine) {
      self->state.confirms.push_back(mine);
      self->state.confirm_ccns.push_back(ccn);
    },
  };
}

// -- fixture ----------------------------------------------------------------------

struct ccn_link_test : caf_fixture {
  crn_registry_actor reg_a = spawn(registry_double, std::string{"ccn-A"});
  crn_registry_actor reg_b = spawn(registry_double, std::string{"ccn-B"});
  ccn_node_actor node_a = spawn(node_double, std::string{"ccn-A"}, reg_a);
  ccn_node_actor node_b = spawn(node_double, std::string{"ccn-B"}, reg_b);
  job_broker_actor broker = spawn(broker_double);
  ccn_link_actor link;

  crypto::ed25519_key key = crypto::ed25519_generate();

  ccn_link_config config() {
    ccn_link_config c;
    c.info.id = "crn-1";
    c.info.public_key = key.public_key;
    c.sign = [k = key](std::string_view text) { return crypto::ed25519_sign(k, text); };
    c.info.name = "crn one";
    c.info.vcpus = 4;
    c.info.memory_mib = 8192;
    c.direct = {node_a, node_b};
    c.heartbeat = 1000ms;
    c.failure_timeout = 5000ms;
    c.backoff_initial = 200ms;
    c.backoff_max = 30000ms;
    return c;
  }

  void start() { start(config()); }

  void start(ccn_link_config c) {
    link = spawn(ccn_link, std::move(c), broker);
    sched.run();
  }

  link_info info() {
    auto r = ask<link_info>(link, atom::get_v);
    EXPECT_TRUE(r.value) << describe(r.error);
    return r.value.value_or(link_info{});
  }

  registry_double_state& reg(const crn_registry_actor& r) {
    return state_of<registry_double_state>(r);
  }

  node_double_state& node(const ccn_node_actor& n) {
    return state_of<node_double_state>(n);
  }

  ccn_link_state& link_state_() { return state_of<ccn_link_state>(link); }

  /// Moves time in `step` increments.
  void run_for(milliseconds total, milliseconds step = 100ms) {
    for (auto t = 0ms; t < total; t += step)
      advance(step);
  }

  caf::actor_clock::time_point now() { return sched.clock().now(); }
};

// -- cases --------------------------------------------------------------------------

TEST_F(ccn_link_test, registers_with_the_first_ccn) {
  start();
  auto i = info();
  EXPECT_TRUE(i.connected);
  EXPECT_EQ(i.state, link_state::linked);
  EXPECT_EQ(i.ccn_id, "ccn-A");
  EXPECT_EQ(i.ccn_endpoint, "in-process:0");
  EXPECT_EQ(i.reconnects, 0u);
  EXPECT_GT(i.last_ack, 0.0);
  ASSERT_EQ(reg(reg_a).enrolled.size(), 1u);
  EXPECT_EQ(reg(reg_a).enrolled[0].id, "crn-1");
  EXPECT_EQ(reg(reg_a).enrolled[0].memory_mib, 8192u);
  EXPECT_TRUE(node(node_b).hellos.empty());
  EXPECT_TRUE(reg(reg_b).enrolled.empty());
}

TEST_F(ccn_link_test, enrollments_and_heartbeats_are_signed_with_the_node_key) {
  start();
  run_for(3000ms);
  ASSERT_EQ(reg(reg_a).enrollments.size(), 1u);
  auto en = reg(reg_a).enrollments[0];
  EXPECT_TRUE(crypto::ed25519_verify(key.public_key, signed_text(en), en.signature));
  EXPECT_EQ(en.ccn_id, "ccn-A"); // bound to the CCN it enrolls with
  EXPECT_NEAR(static_cast<double>(en.signed_at_ms) / 1000, unix_seconds(), 60);
  auto beats = reg(reg_a).beats;
  ASSERT_GE(beats.size(), 2u);
  for (auto& hb : beats)
    EXPECT_TRUE(crypto::ed25519_verify(key.public_key, signed_text(hb, en.signed_at_ms), hb.signature));
  // What was signed is bound to the session and the seq.
  EXPECT_FALSE(crypto::ed25519_verify(key.public_key, signed_text(beats[1], en.signed_at_ms),
                                      beats[0].signature));
  EXPECT_FALSE(crypto::ed25519_verify(key.public_key, signed_text(beats[0], en.signed_at_ms + 1),
                                      beats[0].signature));
  // A re-registration (the CCN forgot us) is signed anew, with a newer time.
  reg(reg_a).forgetful = true;
  advance(1000ms);
  reg(reg_a).forgetful = false;
  run_for(1000ms);
  ASSERT_GE(reg(reg_a).enrollments.size(), 2u);
  auto again = reg(reg_a).enrollments.back();
  EXPECT_GT(again.signed_at_ms, en.signed_at_ms);
  EXPECT_TRUE(crypto::ed25519_verify(key.public_key, signed_text(again), again.signature));
}

TEST_F(ccn_link_test, sends_a_heartbeat_every_interval) {
  start();
  advance(999ms);
  EXPECT_TRUE(reg(reg_a).beats.empty());
  advance(1ms);
  ASSERT_EQ(reg(reg_a).beats.size(), 1u);
  for (int i = 0; i < 4; ++i)
    advance(1000ms);
  auto& beats = reg(reg_a).beats;
  ASSERT_EQ(beats.size(), 5u);
  for (size_t i = 0; i < beats.size(); ++i) {
    EXPECT_EQ(beats[i].crn_id, "crn-1");
    EXPECT_EQ(beats[i].seq, i + 1);
  }
  auto li = info();
  EXPECT_EQ(li.heartbeats_sent, 5u);
  EXPECT_EQ(li.heartbeats_missed, 0u);
  EXPECT_TRUE(li.connected);
}

TEST_F(ccn_link_test, follows_the_heartbeat_interval_the_ccn_asks_for) {
  reg(reg_a).heartbeat_ms = 250;
  start();
  run_for(3000ms, 250ms);
  // The first tick was armed before registration (1 s), then every 250 ms: 1.0 … 3.0 s.
  EXPECT_EQ(reg(reg_a).beats.size(), 9u);
}

TEST_F(ccn_link_test, fails_over_to_the_next_ccn_when_the_registry_dies) {
  start();
  ASSERT_EQ(info().ccn_id, "ccn-A");
  caf::anon_send_exit(reg_a, caf::exit_reason::kill);
  sched.run();
  auto down = info();
  EXPECT_FALSE(down.connected);
  EXPECT_EQ(down.reconnects, 1u);
  // The back-off (200 ms ± 50 %) has not passed yet.
  advance(50ms);
  EXPECT_TRUE(node(node_b).hellos.empty());
  advance(30000ms); // backoff_max
  auto up = info();
  EXPECT_TRUE(up.connected);
  EXPECT_EQ(up.ccn_id, "ccn-B");
  EXPECT_EQ(up.ccn_endpoint, "in-process:1");
  EXPECT_EQ(up.state, link_state::linked);
  EXPECT_GE(up.reconnects, 1u);
  ASSERT_EQ(reg(reg_b).enrolled.size(), 1u);
  EXPECT_EQ(reg(reg_b).enrolled[0].id, "crn-1");
  // Heartbeats now go to B.
  run_for(2000ms);
  EXPECT_GE(reg(reg_b).beats.size(), 1u);
}

TEST_F(ccn_link_test, fails_over_when_the_registry_stops_answering_heartbeats) {
  start();
  reg(reg_a).frozen = true;
  run_for(4900ms);
  auto before = info();
  EXPECT_TRUE(before.connected);
  EXPECT_EQ(before.ccn_id, "ccn-A");
  EXPECT_GE(before.heartbeats_missed, 3u);
  EXPECT_TRUE(reg(reg_b).enrolled.empty());
  run_for(2100ms); // past failure_timeout (5 s) plus one heartbeat and the back-off
  auto after = info();
  EXPECT_TRUE(after.connected);
  EXPECT_EQ(after.ccn_id, "ccn-B");
  EXPECT_GE(after.reconnects, 1u);
  EXPECT_EQ(reg(reg_b).enrolled.size(), 1u);
}

// Linked to A, the CRN runs what A placed; A freezes and the CRN fails over to B, which must not
// stop A's workloads. A, back, has placed the workload elsewhere meanwhile: the link asks A what
// it places here now, and A's answer (without it) reaches the job broker, which stops the copy.
TEST_F(ccn_link_test, a_ccn_left_behind_is_asked_what_it_still_places_here) {
  auto c = config();
  c.direct = {node_b, node_a}; // B is home; it refuses at first, so the link goes to A
  node(node_b).refuse = true;
  node(node_a).placed = {placement{"h-moved", "program", "crn-1", 2, "allocated", ""}};
  start(c);
  run_for(1000ms);
  ASSERT_EQ(info().ccn_id, "ccn-A");
  node(node_b).refuse = false;
  reg(reg_a).frozen = true;
  run_for(8000ms);
  ASSERT_EQ(info().ccn_id, "ccn-B");
  auto& b = state_of<broker_double_state>(broker);
  // A answers again; it has not placed the workload anywhere yet (pending): the copy stays.
  node(node_a).placed = {placement{"h-moved", "program", "", 2, "pending", ""},
                         placement{"h-elsewhere", "program", "crn-9", 5, "allocated", ""}};
  reg(reg_a).frozen = false;
  auto before = b.confirms.size();
  run_for(21000ms);
  auto from_a = [&](std::size_t from) {
    std::vector<std::vector<placement>> out;
    for (auto i = from; i < b.confirms.size(); ++i)
      if (b.confirm_ccns[i] == "ccn-A")
        out.push_back(b.confirms[i]);
    return out;
  };
  auto pending = from_a(before);
  ASSERT_FALSE(pending.empty()) << "the link never asked A";
  ASSERT_EQ(pending.back().size(), 1u) << "only what A places here or nowhere yet";
  EXPECT_EQ(pending.back()[0].item_hash, "h-moved");
  // Now A has placed it on another CRN: A's word no longer lists it, so the copy here stops.
  node(node_a).placed = {placement{"h-moved", "program", "crn-2", 3, "allocated", ""}};
  before = b.confirms.size();
  run_for(21000ms);
  EXPECT_EQ(info().ccn_id, "ccn-B") << "home is B: the link stays";
  auto moved = from_a(before);
  ASSERT_FALSE(moved.empty()) << "the link never asked A again";
  EXPECT_TRUE(moved.back().empty()) << "A places nothing on crn-1 now";
  for (auto i = before; i < b.confirms.size(); ++i)
    EXPECT_NE(b.confirm_ccns[i], "ccn-B") << "B registered once, before A came back";
}

TEST_F(ccn_link_test, re_registers_when_the_ccn_forgot_it) {
  start();
  reg(reg_a).forgetful = true;
  advance(1000ms); // one heartbeat, answered with not_found
  reg(reg_a).forgetful = false;
  sched.run();
  EXPECT_EQ(reg(reg_a).enrolled.size(), 2u);
  auto i = info();
  EXPECT_TRUE(i.connected);
  EXPECT_EQ(i.ccn_id, "ccn-A");
  EXPECT_TRUE(reg(reg_b).enrolled.empty());
}

TEST_F(ccn_link_test, after_each_registration_the_broker_learns_what_the_ccn_places_here) {
  node(node_a).placed = {placement{"h-mine", "program", "crn-1", 4, "allocated", ""},
                         placement{"h-other", "program", "crn-2", 7, "allocated", ""}};
  start();
  ASSERT_EQ(node(node_a).placement_queries, std::vector<std::string>{"crn-1"});
  auto& confirms = state_of<broker_double_state>(broker).confirms;
  ASSERT_EQ(confirms.size(), 1u);
  ASSERT_EQ(confirms[0].size(), 1u);
  EXPECT_EQ(confirms[0][0].item_hash, "h-mine");
  EXPECT_EQ(confirms[0][0].epoch, 4u);
  // A re-registration (the CCN forgot us) asks again.
  reg(reg_a).forgetful = true;
  advance(1000ms);
  reg(reg_a).forgetful = false;
  sched.run();
  EXPECT_EQ(confirms.size(), 2u);
}

// The CCN's answer to "what do you place here" was made before it placed a new workload here,
// and the allocation overtakes that answer: the workload must not be taken for a stale copy.
TEST_F(ccn_link_test, an_allocation_that_overtakes_the_placement_list_counts_as_confirmed) {
  node(node_a).hold_lists = true;
  start();
  ASSERT_EQ(node(node_a).held_lists.size(), 1u);
  allocation a{1, "hash-new", "program", 5, 1, 128, 0, "{}", "ccn-A"};
  ASSERT_TRUE(ask<allocation_ack>(link, atom::allocate_v, a).value);
  // Now the older view comes: nothing placed here.
  ASSERT_TRUE(ask<std::vector<placement>>(node_a, atom::list_v, std::string{"release"}).value);
  sched.run();
  auto& confirms = state_of<broker_double_state>(broker).confirms;
  ASSERT_EQ(confirms.size(), 1u);
  ASSERT_EQ(confirms[0].size(), 1u);
  EXPECT_EQ(confirms[0][0].item_hash, "hash-new");
  EXPECT_EQ(confirms[0][0].epoch, 5u);
  // Allocations after the answer are not carried into the next registration's list.
  ASSERT_TRUE(ask<allocation_ack>(link, atom::allocate_v, allocation{1, "hash-later", "program", 1, 1, 128, 0, "{}", "ccn-A"}).value);
  reg(reg_a).forgetful = true;
  advance(1000ms);
  reg(reg_a).forgetful = false;
  sched.run();
  ASSERT_EQ(node(node_a).held_lists.size(), 1u);
  ASSERT_TRUE(ask<std::vector<placement>>(node_a, atom::list_v, std::string{"release"}).value);
  sched.run();
  ASSERT_EQ(confirms.size(), 2u);
  EXPECT_TRUE(confirms[1].empty());
}

TEST_F(ccn_link_test, an_allocation_reaches_the_job_broker_and_its_ack_comes_back) {
  start();
  allocation a{1, "hash-1", "instance", 3, 2, 2048, 10240, R"({"type":"INSTANCE"})", "ccn-1"};
  auto ack = ask<allocation_ack>(link, atom::allocate_v, a);
  ASSERT_TRUE(ack.value) << describe(ack.error);
  EXPECT_TRUE(ack.value->accepted);
  EXPECT_EQ(ack.value->crn_id, "crn-from-broker");
  EXPECT_EQ(ack.value->item_hash, "hash-1");
  EXPECT_EQ(ack.value->epoch, 3u);
  auto& got = state_of<broker_double_state>(broker).allocations;
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0], a);
}

TEST_F(ccn_link_test, ledger_entries_are_shipped_and_acknowledged_once) {
  temp_dir dir;
  std::string err;
  std::shared_ptr<ledger_store> store = ledger_store::open(dir.str() + "/ledger", err);
  ASSERT_TRUE(store) << err;
  reward_ledger_config rc;
  rc.node = "crn-1";
  auto ledger = spawn(reward_ledger, store, rc);
  for (uint64_t i = 1; i <= 5; ++i) {
    usage_entry e;
    e.item_hash = "hash-" + std::to_string(i);
    e.cpu_ns = i;
    caf::anon_send(ledger, atom::sample_v, e);
  }
  advance(100ms);
  ASSERT_EQ(store->last_seq(), 5u);
  auto c = config();
  c.ledger = ledger;
  c.ship_batch = 2; // three batches: 2 + 2 + 1, sent one after the other
  start(c);
  advance(1000ms);
  auto& held = node(node_a).usage["crn-1"];
  ASSERT_EQ(held.size(), 5u);
  for (uint64_t i = 0; i < 5; ++i)
    EXPECT_EQ(held[i].seq, i + 1);
  EXPECT_EQ(store->acked(), 5u);
  // Later samples go on the next heartbeat; nothing acknowledged is sent again.
  caf::anon_send(ledger, atom::sample_v, usage_entry{});
  run_for(2000ms);
  EXPECT_EQ(held.size(), 6u);
  EXPECT_EQ(store->acked(), 6u);
  EXPECT_EQ(node(node_a).received["crn-1"], (std::vector<uint64_t>{1, 2, 3, 4, 5, 6}))
    << "an acknowledged entry was sent again";
}

TEST_F(ccn_link_test, fetches_go_to_the_registered_ccn_and_fail_clearly_while_down) {
  stored_message m;
  m.item_hash = "prog-1";
  m.type = "PROGRAM";
  m.json = R"({"type":"PROGRAM"})";
  node(node_a).messages[m.item_hash] = m;
  start();
  auto got = ask<stored_message>(link, atom::get_v, std::string{"prog-1"});
  ASSERT_TRUE(got.value) << describe(got.error);
  EXPECT_EQ(*got.value, m);
  auto missing = ask<stored_message>(link, atom::get_v, std::string{"nope"});
  EXPECT_TRUE(missing.error && is(missing.error, ec::not_found)) << describe(missing.error);
  auto file = ask<file_blob>(link, atom::read_v, std::string{"f1"});
  ASSERT_FALSE(file.value);
  EXPECT_NE(describe(file.error).find("at ccn-A"), std::string::npos) << describe(file.error);
  // The CCN dies; until the link found the next one, a fetch fails at once, it does not hang.
  caf::anon_send_exit(reg_a, caf::exit_reason::kill);
  sched.run();
  auto down = ask<stored_message>(link, atom::get_v, std::string{"prog-1"});
  EXPECT_FALSE(down.value);
  EXPECT_TRUE(down.error && is(down.error, ec::unavailable)) << describe(down.error);
}

TEST_F(ccn_link_test, a_failed_workload_is_reported_to_the_ccn_with_the_crn_id) {
  start();
  execution_info info;
  info.item_hash = "prog-9";
  info.phase = "failed";
  caf::anon_send(link, atom::exited_v, info);
  sched.run();
  ASSERT_EQ(node(node_a).failures.size(), 1u);
  EXPECT_EQ(node(node_a).failures[0], std::make_pair(std::string{"crn-1"}, std::string{"prog-9"}));
}

TEST_F(ccn_link_test, a_refusal_from_the_job_broker_comes_back_unchanged) {
  start();
  state_of<broker_double_state>(broker).accept = false;
  allocation a;
  a.item_hash = "hash-2";
  a.epoch = 1;
  auto ack = ask<allocation_ack>(link, atom::allocate_v, a);
  ASSERT_TRUE(ack.value) << describe(ack.error);
  EXPECT_FALSE(ack.value->accepted);
  EXPECT_EQ(ack.value->reason, "Insufficient capacity: broker double");
}

TEST_F(ccn_link_test, status_from_the_ccn_updates_the_state) {
  reg(reg_a).answer = link_state::waiting;
  start();
  EXPECT_EQ(info().state, link_state::waiting);
  caf::anon_send(link, atom::status_v, link_state::linked);
  sched.run();
  EXPECT_EQ(info().state, link_state::linked);
}

TEST_F(ccn_link_test, stopping_the_link_unlinks_from_the_registry) {
  start();
  EXPECT_TRUE(reg(reg_a).unlinks.empty());
  caf::anon_send_exit(link, caf::exit_reason::user_shutdown);
  sched.run();
  EXPECT_EQ(reg(reg_a).unlinks, std::vector<std::string>{"crn-1"});
  EXPECT_TRUE(reg(reg_b).unlinks.empty());
}

TEST_F(ccn_link_test, back_off_doubles_with_jitter_and_is_capped_when_every_ccn_is_dead) {
  caf::anon_send_exit(node_a, caf::exit_reason::kill);
  caf::anon_send_exit(node_b, caf::exit_reason::kill);
  sched.run();
  start();
  auto& st = link_state_();
  // The first attempt failed at once.
  std::vector<caf::actor_clock::time_point> failed_at{now()};
  std::vector<milliseconds> backoff{st.backoff};
  ASSERT_EQ(st.info.reconnects, 1u);
  uint64_t seen = 1;
  while (failed_at.size() < 16 && sched.trigger_timeout()) {
    sched.run();
    if (st.info.reconnects != seen) {
      ASSERT_EQ(st.info.reconnects, seen + 1) << "two failures in one step";
      seen = st.info.reconnects;
      failed_at.push_back(now());
      backoff.push_back(st.backoff);
    }
  }
  ASSERT_EQ(failed_at.size(), 16u);
  EXPECT_EQ(backoff[0], 200ms);
  for (size_t i = 1; i < backoff.size(); ++i)
    EXPECT_EQ(backoff[i], std::min(backoff[i - 1] * 2, milliseconds{30000})) << i;
  EXPECT_EQ(backoff.back(), 30000ms);
  for (size_t i = 0; i + 1 < failed_at.size(); ++i) {
    auto delay = std::chrono::duration_cast<milliseconds>(failed_at[i + 1] - failed_at[i]);
    EXPECT_GE(delay.count(), backoff[i].count() / 2) << "attempt " << i;
    EXPECT_LE(delay.count(), std::min<int64_t>(backoff[i].count() * 3 / 2, 30000))
      << "attempt " << i;
  }
  // The second delay is at least the first's base.
  EXPECT_GE(failed_at[2] - failed_at[1], backoff[0]);
  EXPECT_FALSE(info().connected);
}

TEST_F(ccn_link_test, retries_alternate_between_ccns_and_the_back_off_resets_once_registered) {
  node(node_a).refuse = true;
  node(node_b).refuse = true;
  start();
  // Attempts alternate A, B, A, B, …
  for (int i = 0; i < 100 && (node(node_a).hellos.size() < 2 || node(node_b).hellos.size() < 2);
       ++i) {
    ASSERT_TRUE(sched.trigger_timeout());
    sched.run();
  }
  auto hellos_a = node(node_a).hellos;
  auto hellos_b = node(node_b).hellos;
  ASSERT_GE(hellos_a.size(), 2u);
  ASSERT_GE(hellos_b.size(), 2u);
  EXPECT_LT(hellos_a[0], hellos_b[0]);
  EXPECT_LT(hellos_b[0], hellos_a[1]);
  EXPECT_LT(hellos_a[1], hellos_b[1]);
  // Delays grow: the gap before the 3rd attempt is at least the first back-off base.
  EXPECT_GE(hellos_a[1] - hellos_b[0], 200ms);
  EXPECT_GT(link_state_().backoff, 200ms);
  // Both CCNs come back: the link registers and the back-off starts over.
  node(node_a).refuse = false;
  node(node_b).refuse = false;
  run_for(30000ms, 1000ms);
  ASSERT_TRUE(info().connected);
  EXPECT_EQ(link_state_().backoff, 0ms);
  auto& reg_now = info().ccn_id == "ccn-A" ? reg_a : reg_b;
  caf::anon_send_exit(reg_now, caf::exit_reason::kill);
  sched.run();
  EXPECT_EQ(link_state_().backoff, 200ms);
}

} // namespace

} // namespace ccn_link_tests
