#include "actors/crn_registry.hpp"

#include <chrono>
#include <map>

#include "runtime/lmdb.hpp"
#include "tests/caf_fixture.hpp"

using namespace alephd;
using namespace alephd::test;
using namespace std::chrono_literals;

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
    auto r = ask<registration>(registry, atom::enroll_v, crn(id), link);
    EXPECT_TRUE(r.value) << id << ": " << describe(r.error);
    return r.value.value_or(registration{});
  }

  reply<heartbeat_ack> beat(const std::string& id) {
    return ask<heartbeat_ack>(registry, atom::beat_v, heartbeat{id, ++seqs[id]});
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

TEST_F(crn_registry_test, re_enrolling_with_a_new_link_keeps_the_state) {
  start(2);
  enroll("c1");
  enroll("c2");
  enroll("c3");
  auto old_link1 = links["c1"];
  auto old_link3 = links["c3"];
  EXPECT_EQ(enroll("c1").state, link_state::linked);
  EXPECT_EQ(enroll("c3").state, link_state::waiting);
  EXPECT_EQ(statuses(), (std::map<std::string, std::string>{
                          {"c1", "linked"}, {"c2", "linked"}, {"c3", "waiting"}}));
  // The old link of c1 dying does not take c1 down.
  caf::anon_send_exit(old_link1, caf::exit_reason::kill);
  sched.run();
  EXPECT_EQ(statuses()["c1"], "linked");
  // A promotion reaches the new link of c3, not the old one.
  kill_link("c2");
  EXPECT_EQ(statuses()["c3"], "linked");
  EXPECT_EQ(pushed_to(links["c3"]).back(), link_state::linked);
  EXPECT_EQ(pushed_to(old_link3), std::vector<link_state>{link_state::waiting});
  // The new link dying does take c1 down.
  kill_link("c1");
  EXPECT_EQ(statuses()["c1"], "down");
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
  enroll("c1"); // new link double
  auto& ev = state_of<node_recorder_state>(rec).events;
  ASSERT_EQ(ev.size(), 2u);
  EXPECT_EQ(ev[1].state, link_state::linked);
  EXPECT_EQ(ev[1].link, links["c1"]);
  EXPECT_NE(ev[0].link, ev[1].link);
}

TEST_F(crn_registry_test, enroll_without_an_id_is_invalid) {
  start(3);
  auto link = new_link("");
  auto r = ask<registration>(registry, atom::enroll_v, crn(""), link);
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

} // namespace
