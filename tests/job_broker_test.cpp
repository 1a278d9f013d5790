#include "actors/job_broker.hpp"

#include "actors/vm_supervisor.hpp"
#include "tests/caf_fixture.hpp"

using namespace alephd;
using namespace alephd::test;

namespace {

// is() must not see an empty error (see serialization_test: is_on_no_error_is_false).
bool failed_with(const caf::error& err, ec code) {
  return err && is(err, code);
}

bool insufficient(const std::string& why) {
  return why.rfind("Insufficient capacity", 0) == 0;
}

// 16 GiB, 2 cores, 10000 MiB of disk, default reservations:
//   program bucket  = program_reserved          = 8192 MiB
//   instance bucket = 16384 - 2048 - 8192       = 6144 MiB
//   vCPU cap        = 2 cores × 4.0             = 8
job_broker_config host() {
  job_broker_config c;
  c.crn_id = "crn-1";
  c.cores = 2;
  c.memory_mib = 16384;
  c.disk_mib = 10000;
  c.host_reserved_mib = 2048;
  c.program_reserved_mib = 8192;
  c.vcpu_overcommit = 4.0;
  return c;
}

allocation work(std::string hash, std::string kind, uint64_t memory_mib, uint32_t vcpus = 1,
                uint64_t disk_mib = 0, uint64_t epoch = 1) {
  allocation a;
  a.item_hash = std::move(hash);
  a.kind = std::move(kind);
  a.memory_mib = memory_mib;
  a.vcpus = vcpus;
  a.disk_mib = disk_mib;
  a.epoch = epoch;
  a.message_json = "{}";
  return a;
}

using table = std::map<std::string, execution_entry>;

table running(std::initializer_list<allocation> xs) {
  table t;
  for (auto& a : xs)
    t.emplace(a.item_hash, execution_entry{a, {}});
  return t;
}

// -- admission_refusal: a pure function --------------------------------------------

TEST(admission_refusal, program_bucket_is_program_reserved) {
  EXPECT_EQ(admission_refusal(host(), {}, work("p", "program", 8192)), "");
  auto why = admission_refusal(host(), {}, work("p", "program", 8193));
  EXPECT_TRUE(insufficient(why)) << why;
  EXPECT_NE(why.find("program memory"), std::string::npos) << why;
}

TEST(admission_refusal, program_bucket_counts_running_programs_only) {
  auto t = running({work("p1", "program", 4096), work("i1", "instance", 6144)});
  EXPECT_EQ(admission_refusal(host(), t, work("p2", "program", 4096)), "");
  EXPECT_TRUE(insufficient(admission_refusal(host(), t, work("p2", "program", 4097))));
}

TEST(admission_refusal, instance_bucket_is_memory_minus_both_reservations) {
  EXPECT_EQ(admission_refusal(host(), {}, work("i", "instance", 6144)), "");
  auto why = admission_refusal(host(), {}, work("i", "instance", 6145));
  EXPECT_TRUE(insufficient(why)) << why;
  EXPECT_NE(why.find("instance memory"), std::string::npos) << why;
}

TEST(admission_refusal, instance_bucket_counts_running_instances_only) {
  auto t = running({work("i1", "instance", 3000), work("p1", "program", 8192)});
  EXPECT_EQ(admission_refusal(host(), t, work("i2", "instance", 3144)), "");
  EXPECT_TRUE(insufficient(admission_refusal(host(), t, work("i2", "instance", 3145))));
}

TEST(admission_refusal, a_small_host_has_no_instance_bucket) {
  auto small = host();
  small.memory_mib = 4096; // below host + program reservations
  EXPECT_TRUE(insufficient(admission_refusal(small, {}, work("i", "instance", 1))));
  // Programs get what there is, up to program_reserved.
  EXPECT_EQ(admission_refusal(small, {}, work("p", "program", 4096)), "");
  EXPECT_TRUE(insufficient(admission_refusal(small, {}, work("p", "program", 4097))));
}

TEST(admission_refusal, vcpus_are_capped_at_cores_times_overcommit) {
  EXPECT_EQ(admission_refusal(host(), {}, work("p", "program", 128, 8)), "");
  auto why = admission_refusal(host(), {}, work("p", "program", 128, 9));
  EXPECT_TRUE(insufficient(why)) << why;
  EXPECT_NE(why.find("vCPUs"), std::string::npos) << why;
  auto t = running({work("a", "program", 128, 3), work("b", "instance", 128, 3)});
  EXPECT_EQ(admission_refusal(host(), t, work("c", "program", 128, 2)), "");
  EXPECT_TRUE(insufficient(admission_refusal(host(), t, work("c", "program", 128, 3))));
}

TEST(admission_refusal, a_fractional_overcommit_rounds_down) {
  auto c = host();
  c.cores = 3;
  c.vcpu_overcommit = 1.5; // 4.5 → 4
  EXPECT_EQ(admission_refusal(c, {}, work("p", "program", 128, 4)), "");
  EXPECT_TRUE(insufficient(admission_refusal(c, {}, work("p", "program", 128, 5))));
}

TEST(admission_refusal, disk_counts_every_execution) {
  EXPECT_EQ(admission_refusal(host(), {}, work("i", "instance", 128, 1, 10000)), "");
  auto why = admission_refusal(host(), {}, work("i", "instance", 128, 1, 10001));
  EXPECT_TRUE(insufficient(why)) << why;
  EXPECT_NE(why.find("disk"), std::string::npos) << why;
  auto t = running({work("a", "program", 128, 1, 4000), work("b", "instance", 128, 1, 5000)});
  EXPECT_EQ(admission_refusal(host(), t, work("c", "program", 128, 1, 1000)), "");
  EXPECT_TRUE(insufficient(admission_refusal(host(), t, work("c", "program", 128, 1, 1001))));
}

// -- the actor ----------------------------------------------------------------------

struct job_broker_test : caf_fixture {
  job_broker_actor broker = spawn(job_broker, host());

  reply<allocation_ack> allocate(const allocation& a) {
    return ask<allocation_ack>(broker, atom::allocate_v, a);
  }

  std::vector<execution_info> list() {
    auto r = ask<std::vector<execution_info>>(broker, atom::list_v);
    EXPECT_TRUE(r.value) << describe(r.error);
    return r.value.value_or(std::vector<execution_info>{});
  }

  std::optional<execution_info> find(const std::string& hash) {
    for (auto& x : list())
      if (x.item_hash == hash)
        return x;
    return std::nullopt;
  }

  vm_supervisor_actor supervisor_of(const std::string& hash) {
    auto& ex = state_of<job_broker_state>(broker).executions;
    auto i = ex.find(hash);
    return i == ex.end() ? vm_supervisor_actor{} : i->second.supervisor;
  }
};

TEST_F(job_broker_test, an_allocation_is_accepted_and_listed_as_preparing) {
  EXPECT_TRUE(list().empty());
  auto ack = allocate(work("h1", "instance", 2048, 2, 1000, 3));
  ASSERT_TRUE(ack.value) << describe(ack.error);
  EXPECT_TRUE(ack.value->accepted);
  EXPECT_EQ(ack.value->crn_id, "crn-1");
  EXPECT_EQ(ack.value->item_hash, "h1");
  EXPECT_EQ(ack.value->epoch, 3u);
  EXPECT_EQ(ack.value->reason, "");
  auto x = find("h1");
  ASSERT_TRUE(x);
  EXPECT_EQ(x->phase, "preparing");
  EXPECT_EQ(x->kind, "instance");
  EXPECT_EQ(x->epoch, 3u);
  EXPECT_EQ(x->vcpus, 2u);
  EXPECT_EQ(x->memory_mib, 2048u);
  EXPECT_EQ(x->disk_mib, 1000u);
  EXPECT_TRUE(x->persistent);
  EXPECT_GT(x->defined_at, 0.0);
  EXPECT_GT(x->preparing_at, 0.0);
  EXPECT_EQ(x->stopped_at, 0.0);
}

TEST_F(job_broker_test, a_higher_epoch_updates_the_execution) {
  ASSERT_TRUE(allocate(work("h1", "instance", 2048, 1, 0, 1)).value);
  auto ack = allocate(work("h1", "instance", 2048, 1, 0, 4));
  ASSERT_TRUE(ack.value);
  EXPECT_TRUE(ack.value->accepted);
  EXPECT_EQ(ack.value->epoch, 4u);
  auto all = list();
  ASSERT_EQ(all.size(), 1u) << "the same workload must not run twice";
  EXPECT_EQ(all[0].epoch, 4u);
}

TEST_F(job_broker_test, a_lower_epoch_is_stale) {
  ASSERT_TRUE(allocate(work("h1", "instance", 2048, 1, 0, 5)).value);
  auto ack = allocate(work("h1", "instance", 2048, 1, 0, 4));
  ASSERT_TRUE(ack.value);
  EXPECT_FALSE(ack.value->accepted);
  EXPECT_EQ(ack.value->reason, "stale allocation epoch");
  EXPECT_EQ(find("h1")->epoch, 5u);
}

TEST_F(job_broker_test, stop_stops_the_execution) {
  ASSERT_TRUE(allocate(work("h1", "program", 256)).value);
  auto stopped = ask<execution_info>(broker, atom::stop_v, std::string{"h1"});
  ASSERT_TRUE(stopped.value) << describe(stopped.error);
  EXPECT_EQ(stopped.value->phase, "stopped");
  EXPECT_GT(stopped.value->stopped_at, 0.0);
  EXPECT_GE(stopped.value->stopped_at, stopped.value->stopping_at);
  EXPECT_GT(stopped.value->stopping_at, 0.0);
  auto x = find("h1");
  ASSERT_TRUE(x);
  EXPECT_EQ(x->phase, "stopped");
  // Stopping again is safe and changes nothing.
  auto again = ask<execution_info>(broker, atom::stop_v, std::string{"h1"});
  ASSERT_TRUE(again.value);
  EXPECT_EQ(again.value->stopped_at, stopped.value->stopped_at);
}

TEST_F(job_broker_test, a_stopped_supervisor_refuses_a_new_allocation) {
  ASSERT_TRUE(allocate(work("h1", "program", 256, 1, 0, 1)).value);
  auto sup = supervisor_of("h1");
  ASSERT_TRUE(sup);
  ASSERT_TRUE(ask<execution_info>(broker, atom::stop_v, std::string{"h1"}).value);
  auto r = ask<execution_info>(sup, atom::allocate_v, work("h1", "program", 256, 1, 0, 2));
  EXPECT_FALSE(r.value);
  EXPECT_TRUE(failed_with(r.error, ec::wrong_phase)) << describe(r.error);
  auto g = ask<execution_info>(sup, atom::get_v);
  ASSERT_TRUE(g.value);
  EXPECT_EQ(g.value->phase, "stopped");
  EXPECT_EQ(g.value->epoch, 1u);
}

TEST_F(job_broker_test, a_supervisor_refuses_an_older_epoch) {
  auto sup = spawn(vm_supervisor, work("h1", "instance", 128, 1, 0, 3));
  auto older = ask<execution_info>(sup, atom::allocate_v, work("h1", "instance", 128, 1, 0, 2));
  EXPECT_TRUE(failed_with(older.error, ec::wrong_phase)) << describe(older.error);
  auto newer = ask<execution_info>(sup, atom::allocate_v, work("h1", "instance", 128, 1, 0, 7));
  ASSERT_TRUE(newer.value);
  EXPECT_EQ(newer.value->epoch, 7u);
  EXPECT_EQ(newer.value->phase, "preparing");
}

TEST_F(job_broker_test, stopping_an_unknown_execution_is_not_found) {
  auto r = ask<execution_info>(broker, atom::stop_v, std::string{"nope"});
  EXPECT_FALSE(r.value);
  EXPECT_TRUE(failed_with(r.error, ec::not_found)) << describe(r.error);
}

TEST_F(job_broker_test, over_capacity_the_allocation_is_refused_with_a_reason) {
  ASSERT_TRUE(allocate(work("i1", "instance", 6000)).value->accepted);
  auto ack = allocate(work("i2", "instance", 145));
  ASSERT_TRUE(ack.value) << describe(ack.error);
  EXPECT_FALSE(ack.value->accepted);
  EXPECT_EQ(ack.value->crn_id, "crn-1");
  EXPECT_TRUE(insufficient(ack.value->reason)) << ack.value->reason;
  EXPECT_FALSE(find("i2")) << "a refused allocation must not be listed";
  // What fits is still accepted.
  EXPECT_TRUE(allocate(work("i3", "instance", 144)).value->accepted);
  EXPECT_EQ(list().size(), 2u);
}

TEST_F(job_broker_test, a_killed_supervisor_leaves_the_table) {
  ASSERT_TRUE(allocate(work("h1", "instance", 6144)).value->accepted);
  caf::anon_send_exit(supervisor_of("h1"), caf::exit_reason::kill);
  sched.run();
  EXPECT_TRUE(list().empty());
  // Its capacity is free again.
  EXPECT_TRUE(allocate(work("h2", "instance", 6144)).value->accepted);
}

TEST_F(job_broker_test, a_stopped_execution_frees_its_capacity) {
  ASSERT_TRUE(allocate(work("h1", "instance", 6144)).value->accepted);
  ASSERT_TRUE(ask<execution_info>(broker, atom::stop_v, std::string{"h1"}).value);
  auto ack = allocate(work("h2", "instance", 6144));
  ASSERT_TRUE(ack.value);
  EXPECT_TRUE(ack.value->accepted) << ack.value->reason;
}

TEST_F(job_broker_test, a_stopped_execution_allocated_again_is_not_silently_dropped) {
  ASSERT_TRUE(allocate(work("h1", "instance", 1024, 1, 0, 1)).value->accepted);
  ASSERT_TRUE(ask<execution_info>(broker, atom::stop_v, std::string{"h1"}).value);
  auto ack = allocate(work("h1", "instance", 1024, 1, 0, 2));
  ASSERT_TRUE(ack.value);
  auto x = find("h1");
  ASSERT_TRUE(x);
  // Either it runs again (a new execution at epoch 2) or the CCN is told it was refused.
  EXPECT_TRUE((ack.value->accepted && x->phase != "stopped" && x->epoch == 2)
              || !ack.value->accepted)
    << "accepted=" << ack.value->accepted << " phase=" << x->phase << " epoch=" << x->epoch;
}

} // namespace
