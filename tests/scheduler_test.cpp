#include "actors/scheduler.hpp"

#include <chrono>
#include <fstream>

#include <nlohmann/json.hpp>

#include "messages/aleph_message.hpp"
#include "runtime/lmdb.hpp"
#include "tests/caf_fixture.hpp"
#include "tests/stored_message.hpp"

using namespace alephd;
using namespace alephd::test;
using namespace std::chrono_literals;

// Named so that the suites can share one unity-built test binary.
namespace scheduler_tests {

namespace {

const std::string ccn_id = "ccn-1";

// A CRN's link as the scheduler sees it: accepts, refuses or never answers allocations.
enum class answer { accept, refuse, silent };

struct link_double_state {
  std::string crn_id;
  answer mode = answer::accept;
  std::vector<allocation> allocations;
  std::vector<caf::typed_response_promise<allocation_ack>> unanswered;
};

ccn_link_actor::behavior_type link_double(ccn_link_actor::stateful_pointer<link_double_state> self,
                                          std::string crn_id, answer mode) {
  self->state.crn_id = std::move(crn_id);
  self->state.mode = mode;
  return {
    [=](atom::status, link_state) {},
    [=](atom::allocate, const allocation& a) -> caf::result<allocation_ack> {
      auto& st = self->state;
      st.allocations.push_back(a);
      if (st.mode == answer::silent) {
        auto rp = self->make_response_promise<allocation_ack>();
        st.unanswered.push_back(rp);
        return rp;
      }
      if (st.mode == answer::refuse)
        return allocation_ack{a.item_hash, a.epoch, st.crn_id, false,
                              "Insufficient capacity: test double refuses"};
      return allocation_ack{a.item_hash, a.epoch, st.crn_id, true, {}};
    },
    [=](atom::get) { return link_info{}; },
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

nlohmann::ordered_json load(const std::string& file) {
  std::ifstream in{std::string{ALEPHD_PEER_DATA_DIR} + "/" + file};
  EXPECT_TRUE(in) << "cannot read " << ALEPHD_PEER_DATA_DIR << "/" << file;
  return nlohmann::ordered_json::parse(in);
}

/// A stored message as the message store publishes it, built from a real message document.
stored_message stored(nlohmann::ordered_json doc, const std::string& origin = ccn_id) {
  return alephd::test::stored_from(std::move(doc), origin);
}

/// The real INSTANCE, with another memory size (a different message, so another hash).
stored_message instance(uint64_t memory_mib = 128, uint32_t vcpus = 1,
                        const std::string& origin = ccn_id) {
  auto doc = load("instance_machine.json");
  doc["content"]["resources"]["memory"] = memory_mib;
  doc["content"]["resources"]["vcpus"] = vcpus;
  return stored(std::move(doc), origin);
}

/// The real on-demand PROGRAM (on.persistent false).
stored_message on_demand_program() {
  return stored(load("machine.json"));
}

/// The same PROGRAM made persistent.
stored_message persistent_program() {
  auto doc = load("machine.json");
  doc["content"]["on"]["persistent"] = true;
  return stored(std::move(doc));
}

// Host memory reserved by aleph-vm's admission rule (host 2048 + programs 8192 MiB).
constexpr uint64_t reserved_mib = 2048 + 8192;

// A CRN whose instance bucket holds `instance_mib` (its host has that plus the reserve).
crn_info crn(const std::string& id, uint64_t instance_mib, uint32_t vcpus = 8) {
  crn_info info;
  info.id = id;
  info.name = id;
  info.address = "http://" + id;
  info.vcpus = vcpus;
  info.memory_mib = instance_mib + reserved_mib;
  info.disk_mib = 1000000;
  return info;
}

struct scheduler_test : caf_fixture {
  scheduler_actor sch = spawn(scheduler, [] {
    scheduler_config c;
    c.ccn_id = ccn_id;
    c.retry = 2000ms;
    c.allocate_timeout = 10000ms;
    return c;
  }());
  std::map<std::string, ccn_link_actor> links;
  std::map<std::string, crn_info> infos;

  /// A CRN with a link double, announced to the scheduler in `state`.
  void add_crn(const std::string& id, uint64_t memory_mib, link_state state = link_state::linked,
               answer mode = answer::accept, uint32_t vcpus = 8) {
    links[id] = spawn(link_double, id, mode);
    infos[id] = crn(id, memory_mib, vcpus);
    node_event(id, state);
  }

  void node_event(const std::string& id, link_state state) {
    caf::anon_send(sch, atom::node_v, infos[id], state, links[id]);
    sched.run();
  }

  void publish(const stored_message& m) {
    caf::anon_send(sch, atom::published_v, m);
    sched.run();
  }

  std::vector<placement> placements() {
    auto r = ask<std::vector<placement>>(sch, atom::list_v);
    EXPECT_TRUE(r.value) << describe(r.error);
    return r.value.value_or(std::vector<placement>{});
  }

  std::optional<placement> placement_of(const std::string& hash) {
    for (auto& p : placements())
      if (p.item_hash == hash)
        return p;
    return std::nullopt;
  }

  std::vector<allocation>& allocations_at(const std::string& id) {
    return state_of<link_double_state>(links[id]).allocations;
  }

  /// Moves time past the scheduler's orphan grace period, retry by retry.
  void run_for_grace() {
    for (int i = 0; i < 6; ++i)
      advance(2000ms);
  }
};

TEST_F(scheduler_test, test_messages_are_what_the_cases_assume) {
  auto inst = instance();
  EXPECT_EQ(inst.type, "INSTANCE");
  EXPECT_EQ(inst.item_hash.size(), 64u);
  EXPECT_NE(instance(256).item_hash, inst.item_hash);
  auto od = on_demand_program();
  auto pp = persistent_program();
  EXPECT_EQ(od.type, "PROGRAM");
  EXPECT_EQ(pp.type, "PROGRAM");
  EXPECT_NE(od.item_hash, pp.item_hash) << "the persistent variant must be re-hashed";
  auto spec = aleph::workload_of(*aleph::parse_message(od.json).msg);
  ASSERT_TRUE(spec);
  EXPECT_FALSE(spec->persistent);
  spec = aleph::workload_of(*aleph::parse_message(pp.json).msg);
  ASSERT_TRUE(spec);
  EXPECT_TRUE(spec->persistent);
}

TEST_F(scheduler_test, an_instance_goes_to_the_linked_crn_with_most_free_memory) {
  add_crn("a", 4096);
  add_crn("b", 8192);
  add_crn("c", 2048);
  auto m = instance();
  publish(m);
  auto ps = placements();
  ASSERT_EQ(ps.size(), 1u);
  EXPECT_EQ(ps[0].item_hash, m.item_hash);
  EXPECT_EQ(ps[0].kind, "instance");
  EXPECT_EQ(ps[0].crn_id, "b");
  EXPECT_EQ(ps[0].epoch, 1u);
  EXPECT_EQ(ps[0].state, "allocated");
  ASSERT_EQ(allocations_at("b").size(), 1u);
  auto& a = allocations_at("b")[0];
  EXPECT_EQ(a.item_hash, m.item_hash);
  EXPECT_EQ(a.kind, "instance");
  EXPECT_EQ(a.epoch, 1u);
  EXPECT_EQ(a.memory_mib, 128u);
  EXPECT_EQ(a.vcpus, 1u);
  EXPECT_GT(a.disk_mib, 0u);
  EXPECT_EQ(a.message_json, m.json);
  EXPECT_TRUE(allocations_at("a").empty());
  EXPECT_TRUE(allocations_at("c").empty());
}

TEST_F(scheduler_test, an_on_demand_program_is_not_placed) {
  add_crn("a", 8192);
  publish(on_demand_program());
  EXPECT_TRUE(placements().empty());
  EXPECT_TRUE(allocations_at("a").empty());
}

TEST_F(scheduler_test, a_persistent_program_is_placed) {
  add_crn("a", 8192);
  auto m = persistent_program();
  publish(m);
  auto p = placement_of(m.item_hash);
  ASSERT_TRUE(p);
  EXPECT_EQ(p->kind, "program");
  EXPECT_EQ(p->crn_id, "a");
  EXPECT_EQ(p->state, "allocated");
  ASSERT_EQ(allocations_at("a").size(), 1u);
  EXPECT_EQ(allocations_at("a")[0].kind, "program");
}

TEST_F(scheduler_test, a_workload_its_crn_reports_failed_is_not_placed_again) {
  add_crn("a", 8192);
  add_crn("b", 4096);
  auto m = persistent_program();
  publish(m);
  ASSERT_EQ(placement_of(m.item_hash)->crn_id, "a");
  execution_info info;
  info.item_hash = m.item_hash;
  info.epoch = 1;
  info.phase = "failed";
  info.detail = "crash loop: 5 failures within 600 s";
  // A stale report (other CRN, or older epoch) changes nothing.
  caf::anon_send(sch, atom::exited_v, std::string{"b"}, info);
  sched.run();
  EXPECT_EQ(placement_of(m.item_hash)->state, "allocated");
  caf::anon_send(sch, atom::exited_v, std::string{"a"}, info);
  sched.run();
  auto p = placement_of(m.item_hash);
  EXPECT_EQ(p->state, "failed");
  EXPECT_NE(p->detail.find("crash loop"), std::string::npos) << p->detail;
  // Its CRN going down does not move a failed workload to another CRN.
  node_event("a", link_state::down);
  advance(4000ms);
  EXPECT_EQ(placement_of(m.item_hash)->state, "failed");
  EXPECT_TRUE(allocations_at("b").empty());
}

TEST_F(scheduler_test, a_workload_accepted_by_another_ccn_is_not_placed_here) {
  add_crn("a", 8192);
  publish(instance(128, 1, "ccn-other"));
  EXPECT_TRUE(placements().empty());
  EXPECT_TRUE(allocations_at("a").empty());
}

TEST_F(scheduler_test, other_message_types_and_broken_json_are_not_placed) {
  add_crn("a", 8192);
  auto post = instance();
  post.type = "POST";
  publish(post);
  auto broken = instance(256);
  broken.json = "{not json";
  publish(broken);
  EXPECT_TRUE(placements().empty());
  EXPECT_TRUE(allocations_at("a").empty());
}

TEST_F(scheduler_test, the_same_message_twice_is_placed_once) {
  add_crn("a", 8192);
  auto m = instance();
  publish(m);
  publish(m);
  EXPECT_EQ(placements().size(), 1u);
  EXPECT_EQ(allocations_at("a").size(), 1u);
}

TEST_F(scheduler_test, without_a_fitting_crn_the_workload_is_pending_until_one_links) {
  add_crn("small", 64);
  auto m = instance(128);
  publish(m);
  auto p = placement_of(m.item_hash);
  ASSERT_TRUE(p);
  EXPECT_EQ(p->state, "pending");
  EXPECT_EQ(p->crn_id, "");
  EXPECT_FALSE(p->detail.empty());
  EXPECT_TRUE(allocations_at("small").empty());
  // Retries alone do not make it fit.
  advance(2000ms);
  EXPECT_EQ(placement_of(m.item_hash)->state, "pending");
  add_crn("big", 4096);
  p = placement_of(m.item_hash);
  ASSERT_TRUE(p);
  EXPECT_EQ(p->state, "allocated");
  EXPECT_EQ(p->crn_id, "big");
  EXPECT_EQ(p->epoch, 1u);
  EXPECT_EQ(allocations_at("big").size(), 1u);
}

TEST_F(scheduler_test, with_no_crn_at_all_the_workload_is_pending) {
  auto m = instance();
  publish(m);
  auto p = placement_of(m.item_hash);
  ASSERT_TRUE(p);
  EXPECT_EQ(p->state, "pending");
  EXPECT_EQ(p->epoch, 0u);
}

TEST_F(scheduler_test, a_crn_going_down_moves_its_workloads_with_a_higher_epoch) {
  add_crn("a", 8192);
  add_crn("b", 4096);
  auto m = instance();
  publish(m);
  ASSERT_EQ(placement_of(m.item_hash)->crn_id, "a");
  node_event("a", link_state::down);
  auto p = placement_of(m.item_hash);
  ASSERT_TRUE(p);
  EXPECT_EQ(p->crn_id, "b");
  EXPECT_EQ(p->epoch, 2u);
  EXPECT_EQ(p->state, "allocated");
  ASSERT_EQ(allocations_at("b").size(), 1u);
  EXPECT_EQ(allocations_at("b")[0].epoch, 2u);
  EXPECT_EQ(allocations_at("b")[0].item_hash, m.item_hash);
  EXPECT_EQ(allocations_at("a").size(), 1u); // nothing new for the dead CRN
}

TEST_F(scheduler_test, a_crn_that_unlinks_also_gives_up_its_workloads) {
  add_crn("a", 8192);
  add_crn("b", 4096);
  auto m = instance();
  publish(m);
  node_event("a", link_state::unlinked);
  auto p = placement_of(m.item_hash);
  ASSERT_TRUE(p);
  EXPECT_EQ(p->crn_id, "b");
  EXPECT_EQ(p->epoch, 2u);
}

TEST_F(scheduler_test, the_last_crn_going_down_leaves_the_workload_pending_then_it_returns) {
  add_crn("a", 8192);
  auto m = instance();
  publish(m);
  node_event("a", link_state::down);
  auto p = placement_of(m.item_hash);
  ASSERT_TRUE(p);
  EXPECT_EQ(p->state, "pending");
  EXPECT_EQ(p->crn_id, "");
  node_event("a", link_state::linked);
  p = placement_of(m.item_hash);
  EXPECT_EQ(p->state, "allocated");
  EXPECT_EQ(p->crn_id, "a");
  EXPECT_EQ(p->epoch, 2u);
  // Its memory is counted once: a workload taking the rest of the CRN still fits.
  auto rest = instance(8192 - 128);
  publish(rest);
  EXPECT_EQ(placement_of(rest.item_hash)->crn_id, "a");
  EXPECT_EQ(placement_of(rest.item_hash)->state, "allocated");
}

TEST_F(scheduler_test, a_refusing_crn_is_skipped_for_the_next_one) {
  add_crn("refuser", 8192, link_state::linked, answer::refuse);
  add_crn("other", 4096);
  auto m = instance();
  publish(m);
  auto p = placement_of(m.item_hash);
  ASSERT_TRUE(p);
  EXPECT_EQ(p->crn_id, "other");
  EXPECT_EQ(p->state, "allocated");
  ASSERT_EQ(allocations_at("refuser").size(), 1u);
  ASSERT_EQ(allocations_at("other").size(), 1u);
  EXPECT_GT(allocations_at("other")[0].epoch, allocations_at("refuser")[0].epoch);
  // The refuser's memory is not held by the refused workload.
  state_of<link_double_state>(links["refuser"]).mode = answer::accept;
  auto whole = instance(8192);
  publish(whole);
  EXPECT_EQ(placement_of(whole.item_hash)->crn_id, "refuser");
  EXPECT_EQ(placement_of(whole.item_hash)->state, "allocated");
}

TEST_F(scheduler_test, when_every_crn_refuses_the_workload_stays_pending) {
  add_crn("refuser", 8192, link_state::linked, answer::refuse);
  auto m = instance();
  publish(m);
  auto p = placement_of(m.item_hash);
  ASSERT_TRUE(p);
  EXPECT_EQ(p->state, "pending");
  EXPECT_EQ(p->crn_id, "");
  EXPECT_EQ(allocations_at("refuser").size(), 1u);
  // The periodic retry asks again.
  advance(2000ms);
  EXPECT_EQ(allocations_at("refuser").size(), 2u);
  EXPECT_EQ(placement_of(m.item_hash)->state, "pending");
}

TEST_F(scheduler_test, waiting_crns_are_never_used) {
  add_crn("waiter", 65536, link_state::waiting);
  auto m = instance();
  publish(m);
  EXPECT_EQ(placement_of(m.item_hash)->state, "pending");
  advance(2000ms);
  EXPECT_EQ(placement_of(m.item_hash)->state, "pending");
  add_crn("linked", 1024);
  auto p = placement_of(m.item_hash);
  EXPECT_EQ(p->crn_id, "linked");
  EXPECT_EQ(p->state, "allocated");
  EXPECT_TRUE(allocations_at("waiter").empty());
}

TEST_F(scheduler_test, memory_is_accounted_across_workloads) {
  add_crn("a", 4096);
  add_crn("b", 4000);
  auto w1 = instance(3000);
  auto w2 = instance(3001);
  publish(w1);
  publish(w2);
  auto p1 = placement_of(w1.item_hash);
  auto p2 = placement_of(w2.item_hash);
  ASSERT_TRUE(p1 && p2);
  EXPECT_EQ(p1->crn_id, "a");
  EXPECT_EQ(p2->crn_id, "b");
  EXPECT_EQ(p1->state, "allocated");
  EXPECT_EQ(p2->state, "allocated");
  // A third one fits nowhere.
  auto w3 = instance(2000);
  publish(w3);
  EXPECT_EQ(placement_of(w3.item_hash)->state, "pending");
}

TEST_F(scheduler_test, vcpus_are_accounted_with_overcommit) {
  // 1 core × 4.0 overcommit = 4 vCPUs per CRN.
  add_crn("a", 65536, link_state::linked, answer::accept, 1);
  add_crn("b", 32768, link_state::linked, answer::accept, 1);
  auto w1 = instance(128, 3);
  auto w2 = instance(129, 2);
  publish(w1);
  publish(w2);
  EXPECT_EQ(placement_of(w1.item_hash)->crn_id, "a");
  EXPECT_EQ(placement_of(w2.item_hash)->crn_id, "b");
}

TEST_F(scheduler_test, an_unanswered_allocation_goes_back_to_pending_after_the_timeout) {
  add_crn("mute", 8192, link_state::linked, answer::silent);
  auto m = instance();
  publish(m);
  EXPECT_EQ(placement_of(m.item_hash)->state, "allocating");
  advance(9000ms);
  EXPECT_EQ(placement_of(m.item_hash)->state, "allocating");
  advance(1000ms);
  auto p = placement_of(m.item_hash);
  EXPECT_EQ(p->state, "pending");
  EXPECT_EQ(p->crn_id, "");
  EXPECT_NE(p->detail.find("allocation failed"), std::string::npos) << p->detail;
  // Its memory is free again.
  state_of<link_double_state>(links["mute"]).mode = answer::accept;
  auto whole = instance(8192);
  publish(whole);
  EXPECT_EQ(placement_of(whole.item_hash)->crn_id, "mute");
  EXPECT_EQ(placement_of(whole.item_hash)->state, "allocated");
}

// -- durability across a CCN restart ----------------------------------------------------

struct scheduler_restart_test : scheduler_test {
  temp_dir dir;
  std::shared_ptr<lmdb::env> env = open_test_env(dir);

  scheduler_config durable_config() {
    scheduler_config c;
    c.ccn_id = ccn_id;
    c.retry = 2000ms;
    c.allocate_timeout = 10000ms;
    c.orphan_grace = 10000ms;
    c.env = env;
    return c;
  }

  void start_durable() {
    caf::anon_send_exit(sch, caf::exit_reason::user_shutdown);
    sched.run();
    sch = spawn(scheduler, durable_config());
  }

  /// Stops the scheduler and starts a new one on the same LMDB environment; the CRNs it
  /// knew are unknown to the new one until their node events arrive.
  void restart() { start_durable(); }

  /// A CRN that registers again after the restart, with a new link double.
  void crn_returns(const std::string& id, link_state state = link_state::linked) {
    if (infos.count(id) == 0)
      infos[id] = crn(id, 8192);
    links[id] = spawn(link_double, id, answer::accept);
    node_event(id, state);
  }
};

TEST_F(scheduler_restart_test, placements_survive_and_are_confirmed_with_the_same_epoch) {
  start_durable();
  add_crn("a", 8192);
  auto m = instance();
  publish(m);
  ASSERT_EQ(placement_of(m.item_hash)->state, "allocated");
  restart();
  auto p = placement_of(m.item_hash);
  ASSERT_TRUE(p) << "the placement was lost in the restart";
  EXPECT_EQ(p->crn_id, "a");
  EXPECT_EQ(p->epoch, 1u);
  EXPECT_EQ(p->kind, "instance");
  crn_returns("a");
  ASSERT_EQ(allocations_at("a").size(), 1u) << "the returning CRN must be asked to confirm";
  EXPECT_EQ(allocations_at("a")[0].epoch, 1u);
  EXPECT_EQ(allocations_at("a")[0].item_hash, m.item_hash);
  EXPECT_EQ(allocations_at("a")[0].message_json, m.json);
  p = placement_of(m.item_hash);
  EXPECT_EQ(p->state, "allocated");
  EXPECT_EQ(p->epoch, 1u);
  // Past the grace period nothing moves.
  run_for_grace();
  EXPECT_EQ(placement_of(m.item_hash)->crn_id, "a");
  EXPECT_EQ(placement_of(m.item_hash)->epoch, 1u);
  EXPECT_EQ(allocations_at("a").size(), 1u);
}

TEST_F(scheduler_restart_test, an_orphan_is_placed_elsewhere_after_the_grace_period) {
  start_durable();
  add_crn("a", 8192);
  auto m = instance();
  publish(m);
  restart();
  crn_returns("b"); // another CRN (new to this CCN), but not a
  advance(8000ms);
  EXPECT_EQ(placement_of(m.item_hash)->crn_id, "a") << "moved before orphan_grace";
  EXPECT_TRUE(allocations_at("b").empty());
  run_for_grace();
  auto p = placement_of(m.item_hash);
  ASSERT_TRUE(p);
  EXPECT_EQ(p->crn_id, "b");
  EXPECT_EQ(p->epoch, 2u);
  EXPECT_EQ(p->state, "allocated");
  ASSERT_EQ(allocations_at("b").size(), 1u);
  EXPECT_EQ(allocations_at("b")[0].epoch, 2u);
}

TEST_F(scheduler_restart_test, a_pending_workload_survives_and_is_placed_later) {
  start_durable();
  auto m = instance();
  publish(m);
  ASSERT_EQ(placement_of(m.item_hash)->state, "pending");
  restart();
  auto p = placement_of(m.item_hash);
  ASSERT_TRUE(p);
  EXPECT_EQ(p->state, "pending");
  crn_returns("a");
  p = placement_of(m.item_hash);
  EXPECT_EQ(p->state, "allocated");
  EXPECT_EQ(p->crn_id, "a");
  EXPECT_EQ(p->epoch, 1u);
  // Re-publishing the same message (a peer replicating it back) does not place it twice.
  publish(m);
  EXPECT_EQ(placements().size(), 1u);
  EXPECT_EQ(allocations_at("a").size(), 1u);
}

TEST_F(scheduler_restart_test, a_restored_placement_holds_its_memory_on_the_returning_crn) {
  start_durable();
  add_crn("a", 4096);
  auto big = instance(4000);
  publish(big);
  restart();
  crn_returns("a");
  auto other = instance(500);
  publish(other);
  EXPECT_EQ(placement_of(other.item_hash)->state, "pending")
    << "the restored workload's memory must be counted on its CRN";
}

} // namespace

namespace {

TEST_F(scheduler_test, a_host_too_small_for_instances_gets_no_allocation_it_would_refuse) {
  add_crn("small", 0);
  infos["small"].memory_mib = 8192; // below the 10 GiB reserve: no instance bucket at all
  node_event("small", link_state::linked);
  auto m = instance();
  publish(m);
  auto ps = placements();
  ASSERT_EQ(ps.size(), 1u);
  EXPECT_EQ(ps[0].state, "pending");
  EXPECT_NE(ps[0].detail.find("Insufficient capacity"), std::string::npos) << ps[0].detail;
  EXPECT_TRUE(allocations_at("small").empty());
}

} // namespace

} // namespace scheduler_tests
