#include "actors/crn_registry.hpp"

#include <chrono>
#include <map>

#include "runtime/crypto.hpp"
#include "runtime/lmdb.hpp"
#include "runtime/wall_clock.hpp"
#include "tests/caf_fixture.hpp"

using namespace alephd;
using namespace alephd::test;
using namespace std::chrono_literals;

// Named so that the suites can share one unity-built test binary.
namespace crn_registry_tests {

namespace {

// is() must not see an empty error (see serialization_test: is_on_no_error_is_false).
bool failed_with(const caf::error& err, ec code) {
  return err && is(err, code);
}

// A CRN's link as the registry sees it: records the states the CCN pushes.
struct link_double_state {
  std::string crn_id;
  std::vector<link_state> statuses;
  std::vector<allocation> allocations;
};

ccn_link_actor::behavior_type
link_double(ccn_link_actor::stateful_pointer<link_double_state> self, std::string crn_id) {
  self->state.crn_id = std::move(crn_id);
  return {
    [=](atom::status, link_state s) { self->state.statuses.push_back(s); },
    [=](atom::allocate, const allocation& a) {
      self->state.allocations.push_back(a);
      return allocation_ack{a.item_hash, a.epoch, self->state.crn_id, true, {}};
    },
    [=](atom::get) {
      link_info info;
      info.state = link_state::linked;
      info.ccn_id = "ccn-test";
      info.connected = true;
      return info;
    },
    [=](atom::tick) {},
    [=](atom::connect) {},
    [=](atom::get, const std::string& h) -> caf::result<stored_message> {
      return make_error(ec::not_found, "no message " + h);
    },
    [=](atom::replicate, const std::string& h) -> caf::result<file_info> {
      return make_error(ec::unavailable, "no replicas here: " + h);
    },
    [=](atom::remove, const std::string&) {},
    [=](atom::confirm, const std::vector<std::string>&) {},
    [=](atom::locate, const std::string&) -> caf::result<std::string> { return make_error(ec::unavailable, "fake link"); },
    [=](atom::get, const std::string& h, bool) -> caf::result<stored_message> {
      return make_error(ec::unavailable, "fake link: no message " + h);
    },
    [=](atom::read, const std::string& h) -> caf::result<file_blob> {
      return make_error(ec::not_found, "no file " + h);
    },
    [=](atom::run, const std::string& h, const stored_message&) -> caf::result<uint16_t> {
      return make_error(ec::not_found, "no program " + h);
    },
    [=](atom::exited, const execution_info&) {},
  };
}

// Records every (atom::node, ...) event.
struct node_event {
  crn_info info;
  link_state state;
  ccn_link_actor link;
};

struct node_recorder_state {
  std::vector<node_event> events;
};

node_listener_actor::behavior_type
node_recorder(node_listener_actor::stateful_pointer<node_recorder_state> self) {
  return {[=](atom::node, const crn_info& info, link_state s, const ccn_link_actor& link) {
    self->state.events.push_back(node_event{info, s, link});
  }};
}

crn_info crn(const std::string& id) {
  crn_info info;
  info.id = id;
  info.name = "name-" + id;
  info.address = "http://" + id + ":4020";
  info.vcpus = 4;
  info.memory_mib = 8192;
  info.disk_mib = 100000;
  info.software_version = "0.1.0";
  return info;
}

struct crn_registry_test : caf_fixture {
  crn_registry_config cfg = [] {
    crn_registry_config c;
    c.ccn_id = "ccn-test";
    c.max_linked = 3;
    c.heartbeat = 1000ms;
    c.failure_timeout = 5000ms;
    // The slot logic is tested with plain ids; identity has its own cases (verify_identity).
    c.verify_identity = false;
    return c;
  }();
  crn_registry_actor registry;
  std::map<std::string, ccn_link_actor> links;
  std::map<std::string, uint64_t> seqs;

  void start(uint32_t max_linked = 3) {
    cfg.max_linked = max_linked;
    registry = spawn(crn_registry, cfg);
  }

  ccn_link_actor new_link(const std::string& id) {
    return spawn(link_double, id);
  }

  /// Enrolls `id` with a fresh link double and returns the registry's answer.
  registration enroll(const std::string& id) {
    auto link = new_link(id);
    links[id] = link;
    auto r = ask<registration>(registry, atom::enroll_v, enrollment{1, crn(id), 0, {}, "ccn-test"}, link);
    EXPECT_TRUE(r.value) << id << ": " << describe(r.error);
    return r.value.value_or(registration{});
  }

  reply<heartbeat_ack> beat(const std::string& id) {
    return ask<heartbeat_ack>(registry, atom::beat_v, heartbeat{id, ++seqs[id], {}});
  }

  /// The registry's view of every CRN, by id -> status.
  std::map<std::string, std::string> statuses() {
    std::map<std::string, std::string> out;
    auto r = ask<std::vector<node_view>>(registry, atom::list_v);
    EXPECT_TRUE(r.value);
    if (r.value)
      for (auto& v : *r.value)
        out[v.id] = v.status;
    return out;
  }

  std::vector<link_state>& pushed_to(const ccn_link_actor& link) {
    return state_of<link_double_state>(link).statuses;
  }

  void kill_link(const std::string& id) {
    caf::anon_send_exit(links[id], caf::exit_reason::kill);
    sched.run();
  }

  /// Moves time in half-heartbeat steps; the CRNs in `beating` beat every step.
  void run_for(std::chrono::milliseconds total, const std::vector<std::string>& beating) {
    for (auto t = 0ms; t < total; t += 500ms) {
      advance(500ms);
      for (auto& id : beating)
        EXPECT_TRUE(beat(id).value) << id;
    }
  }
};

TEST_F(crn_registry_test, enroll_links_up_to_the_limit_and_the_rest_wait) {
  start(3);
  EXPECT_EQ(enroll("c1").state, link_state::linked);
  EXPECT_EQ(enroll("c2").state, link_state::linked);
  EXPECT_EQ(enroll("c3").state, link_state::linked);
  auto fourth = enroll("c4");
  EXPECT_EQ(fourth.state, link_state::waiting);
  EXPECT_EQ(fourth.ccn_id, "ccn-test");
  EXPECT_EQ(fourth.heartbeat_ms, 1000u);
  EXPECT_EQ(statuses(), (std::map<std::string, std::string>{
                          {"c1", "linked"}, {"c2", "linked"}, {"c3", "linked"}, {"c4", "waiting"}}));
  EXPECT_EQ(pushed_to(links["c1"]), std::vector<link_state>{link_state::linked});
  EXPECT_EQ(pushed_to(links["c4"]), std::vector<link_state>{link_state::waiting});
}

TEST_F(crn_registry_test, list_shows_the_corechannel_view) {
  start(3);
  enroll("c1");
  auto r = ask<std::vector<node_view>>(registry, atom::list_v);
  ASSERT_TRUE(r.value);
  ASSERT_EQ(r.value->size(), 1u);
  auto& v = r.value->front();
  EXPECT_EQ(v.id, "c1");
  EXPECT_EQ(v.role, "crn");
  EXPECT_EQ(v.name, "name-c1");
  EXPECT_EQ(v.address, "http://c1:4020");
  EXPECT_EQ(v.status, "linked");
  EXPECT_EQ(v.ccn_id, "ccn-test");
  EXPECT_EQ(v.vcpus, 4u);
  EXPECT_EQ(v.memory_mib, 8192u);
  EXPECT_EQ(v.disk_mib, 100000u);
  EXPECT_EQ(v.software_version, "0.1.0");
  EXPECT_GT(v.registered, 0.0);
  EXPECT_GT(v.last_heartbeat, 0.0);
}

TEST_F(crn_registry_test, a_killed_linked_crn_is_down_and_the_waiting_one_is_promoted) {
  start(3);
  for (auto id : {"c1", "c2", "c3", "c4"})
    enroll(id);
  kill_link("c2");
  EXPECT_EQ(statuses(), (std::map<std::string, std::string>{
                          {"c1", "linked"}, {"c2", "down"}, {"c3", "linked"}, {"c4", "linked"}}));
  EXPECT_EQ(pushed_to(links["c4"]),
            (std::vector<link_state>{link_state::waiting, link_state::linked}));
  EXPECT_EQ(pushed_to(links["c1"]), std::vector<link_state>{link_state::linked});
}

TEST_F(crn_registry_test, a_killed_waiting_crn_is_down_and_frees_nothing) {
  start(1);
  enroll("c1");
  enroll("c2");
  kill_link("c2");
  EXPECT_EQ(statuses(),
            (std::map<std::string, std::string>{{"c1", "linked"}, {"c2", "down"}}));
}

TEST_F(crn_registry_test, the_longest_waiting_crn_is_promoted_first) {
  start(3);
  // Ids chosen so that id order and waiting order disagree.
  for (auto id : {"c1", "c2", "c3", "z-waits-first", "a-waits-second"})
    enroll(id);
  ASSERT_EQ(statuses()["z-waits-first"], "waiting");
  ASSERT_EQ(statuses()["a-waits-second"], "waiting");
  kill_link("c1");
  EXPECT_EQ(statuses()["z-waits-first"], "linked");
  EXPECT_EQ(statuses()["a-waits-second"], "waiting");
  kill_link("c3");
  EXPECT_EQ(statuses()["a-waits-second"], "linked");
  EXPECT_EQ(pushed_to(links["a-waits-second"]).back(), link_state::linked);
}

TEST_F(crn_registry_test, a_silent_crn_is_down_after_the_failure_timeout) {
  start(3);
  enroll("beating");
  enroll("silent");
  // 4.5 s without a heartbeat: still linked.
  run_for(4500ms, {"beating"});
  EXPECT_EQ(statuses()["silent"], "linked");
  // Past failure_timeout (5 s) plus one detection period (heartbeat / 2).
  run_for(1500ms, {"beating"});
  EXPECT_EQ(statuses(),
            (std::map<std::string, std::string>{{"beating", "linked"}, {"silent", "down"}}));
  // Still fine much later while it keeps beating.
  run_for(10000ms, {"beating"});
  EXPECT_EQ(statuses()["beating"], "linked");
}

TEST_F(crn_registry_test, a_silent_linked_crn_makes_room_for_a_waiting_one) {
  start(1);
  enroll("silent");
  enroll("waiter");
  run_for(6000ms, {"waiter"});
  EXPECT_EQ(statuses(),
            (std::map<std::string, std::string>{{"silent", "down"}, {"waiter", "linked"}}));
  EXPECT_EQ(pushed_to(links["waiter"]).back(), link_state::linked);
}

TEST_F(crn_registry_test, a_down_crn_that_beats_again_is_linked_when_a_slot_is_free) {
  start(2);
  enroll("c1");
  enroll("c2");
  run_for(6000ms, {"c1"});
  ASSERT_EQ(statuses()["c2"], "down");
  auto ack = beat("c2");
  ASSERT_TRUE(ack.value) << describe(ack.error);
  EXPECT_EQ(ack.value->state, link_state::linked);
  EXPECT_EQ(ack.value->ccn_id, "ccn-test");
  EXPECT_EQ(ack.value->seq, seqs["c2"]);
  EXPECT_EQ(statuses()["c2"], "linked");
  EXPECT_EQ(pushed_to(links["c2"]), (std::vector<link_state>{link_state::linked,
                                                              link_state::linked}));
}

TEST_F(crn_registry_test, a_down_crn_that_beats_again_waits_when_no_slot_is_free) {
  start(2);
  enroll("c1");
  enroll("c2");
  enroll("c3");
  run_for(6000ms, {"c1", "c3"});
  ASSERT_EQ(statuses(), (std::map<std::string, std::string>{
                          {"c1", "linked"}, {"c2", "down"}, {"c3", "linked"}}));
  auto ack = beat("c2");
  ASSERT_TRUE(ack.value) << describe(ack.error);
  EXPECT_EQ(ack.value->state, link_state::waiting);
  EXPECT_EQ(statuses()["c2"], "waiting");
  EXPECT_EQ(pushed_to(links["c2"]).back(), link_state::waiting);
}

TEST_F(crn_registry_test, heartbeat_from_an_unknown_crn_is_not_found) {
  start(3);
  enroll("c1");
  auto ack = beat("stranger");
  EXPECT_FALSE(ack.value);
  EXPECT_TRUE(failed_with(ack.error, ec::not_found)) << describe(ack.error);
}

TEST_F(crn_registry_test, heartbeat_ack_echoes_the_sequence_and_state) {
  start(1);
  enroll("c1");
  enroll("c2");
  auto a1 = beat("c1");
  auto a2 = beat("c2");
  ASSERT_TRUE(a1.value);
  ASSERT_TRUE(a2.value);
  EXPECT_EQ(a1.value->state, link_state::linked);
  EXPECT_EQ(a2.value->state, link_state::waiting);
  EXPECT_EQ(a2.value->seq, seqs["c2"]);
}

TEST_F(crn_registry_test, unlink_frees_the_slot) {
  start(3);
  for (auto id : {"c1", "c2", "c3", "c4"})
    enroll(id);
  caf::anon_send(registry, atom::unlink_v, std::string{"c1"});
  sched.run();
  EXPECT_EQ(statuses(), (std::map<std::string, std::string>{
                          {"c1", "unlinked"}, {"c2", "linked"}, {"c3", "linked"}, {"c4", "linked"}}));
  EXPECT_EQ(pushed_to(links["c4"]).back(), link_state::linked);
  // An unlinked CRN is no longer registered.
  EXPECT_TRUE(failed_with(beat("c1").error, ec::not_found));
  // Its link dying later changes nothing.
  kill_link("c1");
  EXPECT_EQ(statuses()["c1"], "unlinked");
  // It can come back (and waits: the slots are taken).
  EXPECT_EQ(enroll("c1").state, link_state::waiting);
}

TEST_F(crn_registry_test, a_second_link_claiming_a_live_crn_is_refused_until_the_first_is_gone) {
  start(2);
  enroll("c1");
  enroll("c2");
  enroll("c3");
  auto old_link1 = links["c1"];
  auto old_link3 = links["c3"];
  // Another process claims c1 and c3 while their links are alive.
  for (auto id : {"c1", "c3"}) {
    auto r = ask<registration>(registry, atom::enroll_v, enrollment{1, crn(id), 0, {}, "ccn-test"}, new_link(id));
    EXPECT_TRUE(failed_with(r.error, ec::refused)) << id;
  }
  EXPECT_EQ(statuses(), (std::map<std::string, std::string>{
                          {"c1", "linked"}, {"c2", "linked"}, {"c3", "waiting"}}));
  // The same link may register again (a reconnect).
  auto again = ask<registration>(registry, atom::enroll_v, enrollment{1, crn("c1"), 0, {}, "ccn-test"}, old_link1);
  ASSERT_TRUE(again.value) << describe(again.error);
  EXPECT_EQ(again.value->state, link_state::linked);
  // Once the first process is gone, a new one takes the id: c3 (waiting) got c1's slot.
  kill_link("c1");
  EXPECT_EQ(statuses()["c1"], "down");
  EXPECT_EQ(statuses()["c3"], "linked");
  EXPECT_EQ(pushed_to(old_link3).back(), link_state::linked);
  EXPECT_EQ(enroll("c1").state, link_state::waiting);
  // A promotion reaches the new link.
  kill_link("c2");
  EXPECT_EQ(statuses()["c1"], "linked");
  EXPECT_EQ(pushed_to(links["c1"]).back(), link_state::linked);
  EXPECT_TRUE(pushed_to(old_link1).size() == 1u);
}

TEST_F(crn_registry_test, a_listener_hears_every_change) {
  start(1);
  auto rec = spawn(node_recorder);
  caf::anon_send(registry, atom::subscribe_v, rec);
  sched.run();
  enroll("c1");
  enroll("c2");
  kill_link("c1");
  auto& ev = state_of<node_recorder_state>(rec).events;
  ASSERT_EQ(ev.size(), 4u);
  EXPECT_EQ(ev[0].info.id, "c1");
  EXPECT_EQ(ev[0].state, link_state::linked);
  EXPECT_EQ(ev[0].link, links["c1"]);
  EXPECT_EQ(ev[0].info.memory_mib, 8192u);
  EXPECT_EQ(ev[1].info.id, "c2");
  EXPECT_EQ(ev[1].state, link_state::waiting);
  EXPECT_EQ(ev[1].link, links["c2"]);
  EXPECT_EQ(ev[2].info.id, "c1");
  EXPECT_EQ(ev[2].state, link_state::down);
  EXPECT_EQ(ev[3].info.id, "c2");
  EXPECT_EQ(ev[3].state, link_state::linked);
  EXPECT_EQ(ev[3].link, links["c2"]);
}

TEST_F(crn_registry_test, a_late_listener_first_gets_every_known_crn) {
  start(1);
  enroll("c1");
  enroll("c2");
  auto rec = spawn(node_recorder);
  caf::anon_send(registry, atom::subscribe_v, rec);
  sched.run();
  auto& ev = state_of<node_recorder_state>(rec).events;
  ASSERT_EQ(ev.size(), 2u);
  std::map<std::string, link_state> got;
  for (auto& e : ev)
    got[e.info.id] = e.state;
  EXPECT_EQ(got, (std::map<std::string, link_state>{{"c1", link_state::linked},
                                                    {"c2", link_state::waiting}}));
}

TEST_F(crn_registry_test, a_listener_hears_a_new_link_handle) {
  start(2);
  enroll("c1");
  auto rec = spawn(node_recorder);
  caf::anon_send(registry, atom::subscribe_v, rec);
  sched.run();
  kill_link("c1"); // its process is gone; a new one registers
  enroll("c1");      // new link double
  auto& ev = state_of<node_recorder_state>(rec).events;
  ASSERT_EQ(ev.size(), 3u);
  EXPECT_EQ(ev[1].state, link_state::down);
  EXPECT_EQ(ev[2].state, link_state::linked);
  EXPECT_EQ(ev[2].link, links["c1"]);
  EXPECT_NE(ev[0].link, ev[2].link);
}

TEST_F(crn_registry_test, enroll_without_an_id_is_invalid) {
  start(3);
  auto link = new_link("");
  auto r = ask<registration>(registry, atom::enroll_v, enrollment{1, crn(""), 0, {}, "ccn-test"}, link);
  EXPECT_FALSE(r.value);
  EXPECT_TRUE(failed_with(r.error, ec::invalid)) << describe(r.error);
  EXPECT_TRUE(statuses().empty());
}

// -- durability across a CCN restart ----------------------------------------------------

struct crn_registry_restart_test : crn_registry_test {
  temp_dir dir;
  std::shared_ptr<lmdb::env> env = open_test_env(dir);

  void start_durable(uint32_t max_linked, std::chrono::milliseconds reserve_grace = 3000ms) {
    cfg.env = env;
    cfg.reserve_grace = reserve_grace;
    start(max_linked);
  }

  /// Stops the registry and starts a new one on the same LMDB environment.
  void restart() {
    caf::anon_send_exit(registry, caf::exit_reason::user_shutdown);
    sched.run();
    registry = spawn(crn_registry, cfg);
  }
};

TEST_F(crn_registry_restart_test, known_crns_are_down_after_a_restart) {
  start_durable(1);
  enroll("c1");
  enroll("c2");
  auto before = ask<std::vector<node_view>>(registry, atom::list_v);
  ASSERT_TRUE(before.value);
  restart();
  EXPECT_EQ(statuses(), (std::map<std::string, std::string>{{"c1", "down"}, {"c2", "down"}}));
  auto after = ask<std::vector<node_view>>(registry, atom::list_v);
  ASSERT_TRUE(after.value);
  ASSERT_EQ(after.value->size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_EQ((*after.value)[i].id, (*before.value)[i].id);
    EXPECT_EQ((*after.value)[i].name, (*before.value)[i].name);
    EXPECT_EQ((*after.value)[i].memory_mib, (*before.value)[i].memory_mib);
    EXPECT_EQ((*after.value)[i].registered, (*before.value)[i].registered)
      << "the first registration time survives a restart";
  }
  // Nobody is reachable yet, so a new listener hears of nobody.
  auto rec = spawn(node_recorder);
  caf::anon_send(registry, atom::subscribe_v, rec);
  sched.run();
  EXPECT_TRUE(state_of<node_recorder_state>(rec).events.empty());
  // A restored CRN must register again before it is known as alive.
  EXPECT_EQ(enroll("c2").state, link_state::waiting) << "c1 was linked: its slot is kept";
}

TEST_F(crn_registry_restart_test, a_linked_crn_gets_its_slot_back_before_others) {
  start_durable(1);
  enroll("c1");
  enroll("c2");
  enroll("c3");
  restart();
  EXPECT_EQ(enroll("c3").state, link_state::waiting);
  EXPECT_EQ(enroll("c2").state, link_state::waiting);
  EXPECT_EQ(enroll("c1").state, link_state::linked);
  EXPECT_EQ(statuses(), (std::map<std::string, std::string>{
                          {"c1", "linked"}, {"c2", "waiting"}, {"c3", "waiting"}}));
}

TEST_F(crn_registry_restart_test, a_kept_slot_is_freed_after_the_grace_period) {
  start_durable(1, 3000ms);
  enroll("c1");
  enroll("c2");
  restart();
  EXPECT_EQ(enroll("c2").state, link_state::waiting);
  run_for(2000ms, {"c2"});
  EXPECT_EQ(statuses()["c2"], "waiting");
  run_for(1500ms, {"c2"});
  EXPECT_EQ(statuses()["c2"], "linked");
  EXPECT_EQ(pushed_to(links["c2"]).back(), link_state::linked);
  // c1 comes back too late: it waits.
  EXPECT_EQ(enroll("c1").state, link_state::waiting);
}

TEST_F(crn_registry_restart_test, a_crn_that_unlinked_stays_unlinked_after_a_restart) {
  start_durable(2);
  enroll("c1");
  enroll("c2");
  caf::anon_send(registry, atom::unlink_v, std::string{"c1"});
  sched.run();
  restart();
  EXPECT_EQ(statuses(), (std::map<std::string, std::string>{{"c1", "unlinked"}, {"c2", "down"}}));
  // c1 holds no kept slot: a newcomer gets the free one.
  EXPECT_EQ(enroll("c3").state, link_state::linked);
  EXPECT_EQ(enroll("c2").state, link_state::linked);
}

// -- identity: node keys and signatures ------------------------------------------------------

struct crn_identity_test : crn_registry_restart_test {
  std::map<std::string, crypto::ed25519_key> keys;

  crn_identity_test() {
    cfg.verify_identity = true;
  }

  const crypto::ed25519_key& key(const std::string& name) {
    auto i = keys.find(name);
    if (i == keys.end())
      i = keys.emplace(name, *crypto::ed25519_from_seed(crypto::sha256(name))).first;
    return i->second;
  }

  std::string id(const std::string& name) {
    return crypto::node_id_of(key(name).public_key);
  }

  static uint64_t now_ms() {
    return static_cast<uint64_t>(unix_seconds() * 1000);
  }

  /// `name`'s enrollment, signed by `signer` (default: itself) at `at`.
  enrollment signed_enrollment(const std::string& name, uint64_t at = 0, std::string signer = {}) {
    enrollment en;
    en.info = crn(id(name));
    en.info.public_key = key(name).public_key;
    en.signed_at_ms = at != 0 ? at : now_ms();
    en.ccn_id = "ccn-test";
    en.signature = crypto::ed25519_sign(key(signer.empty() ? name : signer), signed_text(en));
    return en;
  }

  reply<registration> enroll_as(const enrollment& en, ccn_link_actor link = {}) {
    if (!link)
      link = new_link(en.info.id);
    links[en.info.id] = link;
    return ask<registration>(registry, atom::enroll_v, en, link);
  }

  reply<heartbeat_ack> signed_beat(const std::string& name, uint64_t session, uint64_t seq,
                                   std::string signer = {}) {
    heartbeat hb{id(name), seq, {}};
    hb.signature = crypto::ed25519_sign(key(signer.empty() ? name : signer), signed_text(hb, session));
    return ask<heartbeat_ack>(registry, atom::beat_v, hb);
  }
};

TEST_F(crn_identity_test, a_signed_enrollment_links_and_signed_heartbeats_keep_it_linked) {
  start(3);
  auto en = signed_enrollment("alice");
  auto r = enroll_as(en);
  ASSERT_TRUE(r.value) << describe(r.error);
  EXPECT_EQ(r.value->state, link_state::linked);
  for (uint64_t seq = 1; seq <= 16; ++seq) {
    advance(500ms);
    EXPECT_TRUE(signed_beat("alice", en.signed_at_ms, seq).value) << seq;
  }
  EXPECT_EQ(statuses()[id("alice")], "linked");
}

TEST_F(crn_identity_test, enrollments_that_do_not_prove_the_id_are_refused) {
  start(3);
  auto expect_refused = [&](const enrollment& en, const std::string& needle) {
    auto r = enroll_as(en);
    EXPECT_TRUE(failed_with(r.error, ec::refused)) << needle;
    EXPECT_NE(describe(r.error).find(needle), std::string::npos) << describe(r.error);
  };
  // An id that is not the hash of the key (someone claims another CRN's id with their own key).
  auto wrong_id = signed_enrollment("mallory");
  wrong_id.info.id = id("alice");
  wrong_id.signature = crypto::ed25519_sign(key("mallory"), signed_text(wrong_id));
  expect_refused(wrong_id, "not the hash of its node key");
  // Alice's key and id, signed by Mallory.
  expect_refused(signed_enrollment("alice", 0, "mallory"), "not signed by its node key");
  // Signed by Alice, then changed on the way.
  auto changed = signed_enrollment("alice");
  changed.info.memory_mib *= 2;
  expect_refused(changed, "not signed by its node key");
  auto no_key = signed_enrollment("alice");
  no_key.info.public_key.clear();
  expect_refused(no_key, "no node key");
  // Signed for another CCN (a recorded enrollment played to this one).
  auto elsewhere = signed_enrollment("alice");
  elsewhere.ccn_id = "ccn-other";
  elsewhere.signature = crypto::ed25519_sign(key("alice"), signed_text(elsewhere));
  expect_refused(elsewhere, "meant for CCN ccn-other");
  // Signed ten minutes ago (a recorded enrollment played back).
  expect_refused(signed_enrollment("alice", now_ms() - 600000), "from this CCN's clock");
  EXPECT_TRUE(statuses().empty());
  // The real one is taken; the same one again (a replay) is not, even after its link died.
  auto en = signed_enrollment("alice");
  ASSERT_TRUE(enroll_as(en).value);
  kill_link(id("alice"));
  EXPECT_EQ(statuses()[id("alice")], "down");
  expect_refused(en, "not newer");
  EXPECT_TRUE(enroll_as(signed_enrollment("alice", en.signed_at_ms + 1)).value);
}

TEST_F(crn_identity_test, a_second_process_with_a_linked_crns_key_is_refused) {
  start(3);
  auto first = signed_enrollment("alice");
  ASSERT_TRUE(enroll_as(first).value);
  auto first_link = links[id("alice")];
  // A copy of Alice's data dir started elsewhere signs validly, but Alice is alive.
  auto r = enroll_as(signed_enrollment("alice", first.signed_at_ms + 10));
  EXPECT_TRUE(failed_with(r.error, ec::refused)) << describe(r.error);
  EXPECT_NE(describe(r.error).find("another live process"), std::string::npos);
  // Alice's heartbeats (her session) still count.
  EXPECT_TRUE(signed_beat("alice", first.signed_at_ms, 1).value);
  EXPECT_EQ(state_of<link_double_state>(first_link).statuses.back(), link_state::linked);
}

TEST_F(crn_identity_test, forged_or_replayed_heartbeats_do_not_keep_a_crn_up) {
  start(3);
  auto en = signed_enrollment("alice");
  ASSERT_TRUE(enroll_as(en).value);
  ASSERT_TRUE(signed_beat("alice", en.signed_at_ms, 1).value);
  ASSERT_TRUE(signed_beat("alice", en.signed_at_ms, 2).value);
  // Replayed seq, wrong signer, a heartbeat of another session: each refused.
  EXPECT_TRUE(failed_with(signed_beat("alice", en.signed_at_ms, 2).error, ec::refused));
  EXPECT_TRUE(failed_with(signed_beat("alice", en.signed_at_ms, 3, "mallory").error, ec::refused));
  EXPECT_TRUE(failed_with(signed_beat("alice", en.signed_at_ms - 1, 3).error, ec::refused));
  // Alice has stopped; only forgeries arrive: she goes down after failure-timeout.
  for (uint64_t seq = 10; seq < 22; ++seq) {
    advance(500ms);
    signed_beat("alice", en.signed_at_ms, seq, "mallory");
  }
  EXPECT_EQ(statuses()[id("alice")], "down");
}

TEST_F(crn_identity_test, only_a_crns_own_link_can_unlink_it) {
  start(3);
  ASSERT_TRUE(enroll_as(signed_enrollment("alice")).value);
  caf::anon_send(registry, atom::unlink_v, id("alice"));
  sched.run();
  EXPECT_EQ(statuses()[id("alice")], "linked");
  caf::send_as(links[id("alice")], registry, atom::unlink_v, id("alice"));
  sched.run();
  EXPECT_EQ(statuses()[id("alice")], "unlinked");
}

TEST_F(crn_identity_test, a_replay_is_refused_after_a_ccn_restart_too) {
  start_durable(3);
  auto en = signed_enrollment("alice");
  ASSERT_TRUE(enroll_as(en).value);
  restart();
  auto r = enroll_as(en);
  EXPECT_TRUE(failed_with(r.error, ec::refused)) << describe(r.error);
  auto fresh = enroll_as(signed_enrollment("alice", en.signed_at_ms + 1));
  ASSERT_TRUE(fresh.value) << describe(fresh.error);
  EXPECT_EQ(fresh.value->state, link_state::linked); // its kept slot
}

} // namespace

} // namespace crn_registry_tests
