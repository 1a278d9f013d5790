#include "actors/content_store.hpp"
#include "actors/job_broker.hpp"

#include "actors/vm_supervisor.hpp"
#include "messages/aleph_message.hpp"
#include "tests/caf_fixture.hpp"

#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

using namespace alephd;
using namespace alephd::test;

// Named so that the suites can share one unity-built test binary.
namespace job_broker_tests {

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
  // A valid message whose code or rootfs the link double never delivers: the execution
  // stays in `preparing` (instances) until the test moves it on.
  nlohmann::ordered_json content{
    {"address", "0xabc"}, {"time", 1700000000.0}, {"allow_amend", false},
    {"environment", {{"reproducible", false}, {"internet", false}, {"aleph_api", false},
                     {"shared_cache", false}}},
    {"resources", {{"vcpus", vcpus}, {"memory", memory_mib}, {"seconds", 30}}},
    {"rootfs", {{"parent", {{"ref", "eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee"}, {"use_latest", false}}},
                {"persistence", "host"}, {"size_mib", 1000}}},
    {"volumes", nlohmann::ordered_json::array()}};
  a.message_json = nlohmann::ordered_json{{"chain", "ETH"}, {"sender", "0xabc"},
                                          {"type", "INSTANCE"}, {"item_type", "inline"},
                                          {"time", 1700000000.0}, {"content", content}}
                     .dump();
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

// -- doubles -------------------------------------------------------------------------

// An executor that never blocks: start() answers at once (or fails as told), requests are
// echoed, and the test ends the guest with crash().
struct fake_executor : executor {
  std::string start_error;
  int starts = 0;
  int stops = 0;
  bool up = false;
  exit_handler on_exit_;
  log_handler on_log_;
  guest::configure cfg;

  std::string start(const guest::configure& c) override {
    ++starts;
    cfg = c;
    up = start_error.empty();
    if (up && on_log_)
      on_log_(timed_log{1.0, "stdout", "fake program output"});
    return start_error;
  }
  void request_async(guest::http_request req, std::chrono::milliseconds,
                     reply_handler done) override {
    guest::http_response r;
    r.id = req.id;
    r.status = up ? 200 : 502;
    r.body = req.path;
    done(std::move(r));
  }
  int stop(std::chrono::milliseconds) override {
    ++stops;
    up = false;
    return 0;
  }
  bool running() const override { return up; }
  int pid() const override { return 0; }
  std::vector<timed_log> logs() const override {
    return {timed_log{1.0, "stdout", "fake program output"}};
  }
  void on_exit(exit_handler h) override { on_exit_ = std::move(h); }
  void on_log(log_handler h) override { on_log_ = std::move(h); }
  void crash(int code) {
    up = false;
    if (auto h = std::move(on_exit_))
      h(code, "program exited with code " + std::to_string(code));
  }
};

// The CCN as the CRN's link shows it: messages and files by hash.
struct link_double_state {
  std::vector<caf::typed_response_promise<stored_message>> stalled; ///< never answered
  std::map<std::string, stored_message> messages;
  std::map<std::string, std::string> latest; ///< ref -> its newest amend (use_latest)
  std::map<std::string, std::string> files;
  int message_fetches = 0;
  std::vector<execution_info> failures; ///< reported to the CCN
  int file_fetches = 0;
};

ccn_link_actor::behavior_type link_double(ccn_link_actor::stateful_pointer<link_double_state> self) {
  return {
    [=](atom::status, link_state) {},
    [=](atom::allocate, const allocation& a) { return allocation_ack{a.item_hash, a.epoch, "", false, "double"}; },
    [=](atom::get) { return link_info{}; },
    [=](atom::get, const std::string& h) -> caf::result<stored_message> {
      if (h == "eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee") {
        auto rp = self->make_response_promise<stored_message>();
        self->state.stalled.push_back(rp);
        return rp;
      }
      ++self->state.message_fetches;
      if (auto i = self->state.messages.find(h); i != self->state.messages.end())
        return i->second;
      return make_error(ec::not_found, "no message " + h);
    },
    [=](atom::replicate, const std::string& h) -> caf::result<file_info> {
      return make_error(ec::unavailable, "no replicas here: " + h);
    },
    [=](atom::remove, const std::string&) {},
    [=](atom::confirm, const std::vector<std::string>&) {},
    [=](atom::locate, const std::string&) -> caf::result<std::string> { return make_error(ec::unavailable, "fake link"); },
    [=](atom::get, const std::string& h, bool latest) -> caf::result<stored_message> {
      if (latest)
        if (auto i = self->state.latest.find(h); i != self->state.latest.end())
          return self->state.messages.at(i->second);
      if (auto i = self->state.messages.find(h); i != self->state.messages.end())
        return i->second;
      return make_error(ec::not_found, "no message " + h);
    },
    [=](atom::read, const std::string& h) -> caf::result<file_blob> {
      ++self->state.file_fetches;
      if (auto i = self->state.files.find(h); i != self->state.files.end())
        return file_blob{h, i->second};
      return make_error(ec::not_found, "no file " + h);
    },
    [=](atom::tick) {},
    [=](atom::connect) {},
    [=](atom::run, const std::string&, const stored_message&) { return uint16_t{500}; },
    [=](atom::exited, const execution_info& info) { self->state.failures.push_back(info); },
  };
}

stored_message as_stored(const nlohmann::ordered_json& doc) {
  auto parsed = aleph::parse_message(doc.dump());
  EXPECT_TRUE(parsed.msg) << parsed.error.field << ": " << parsed.error.reason;
  stored_message m;
  m.item_hash = parsed.msg->item_hash;
  m.type = doc["type"];
  m.json = doc.dump();
  return m;
}

nlohmann::ordered_json store_doc(const std::string& file_hash) {
  return {{"chain", "ETH"}, {"sender", "0xabc"}, {"type", "STORE"}, {"item_type", "inline"},
          {"time", 1700000000.0},
          {"content", {{"address", "0xabc"}, {"time", 1700000000.0}, {"item_type", "storage"},
                       {"item_hash", file_hash}}}};
}

nlohmann::ordered_json program_doc(const std::string& code_ref, uint64_t memory = 128,
                                   bool persistent = false) {
  return {{"chain", "ETH"}, {"sender", "0xabc"}, {"type", "PROGRAM"}, {"item_type", "inline"},
          {"time", 1700000000.0},
          {"content",
           {{"type", "vm-function"}, {"address", "0xabc"}, {"time", 1700000000.0},
            {"allow_amend", false},
            {"code", {{"encoding", "plain"}, {"entrypoint", "app"}, {"ref", code_ref},
                      {"interface", "binary"}, {"use_latest", false}}},
            {"variables", {{"GREETING", "hi"}}},
            {"on", {{"http", true}, {"persistent", persistent}}},
            {"environment", {{"reproducible", false}, {"internet", false}, {"aleph_api", false},
                             {"shared_cache", false}}},
            {"resources", {{"vcpus", 1}, {"memory", memory}, {"seconds", 3}}},
            {"volumes", nlohmann::ordered_json::array()}}}};
}

// -- the actor ----------------------------------------------------------------------

struct job_broker_test : caf_fixture {
  temp_dir dir;
  std::vector<std::shared_ptr<fake_executor>> executors;
  std::string next_start_error;
  std::shared_ptr<execution_table> table = std::make_shared<execution_table>();
  std::shared_ptr<execution_env> env = make_env();
  job_broker_actor broker = spawn(job_broker, [this] {
    auto c = host();
    c.env = env;
    return c;
  }());
  ccn_link_actor link = spawn(link_double);
  std::shared_ptr<lmdb::env> cache_env = open_test_env(dir);
  bool linked = [this] {
    content_store_config cc;
    cc.root = dir.str() + "/cache";
    cc.env = cache_env;
    cc.fetch_missing = true;
    cc.scrub_bytes = 0;
    env->files = spawn(content_store, cc);
    caf::anon_send(env->files, atom::connect_v, caf::actor_cast<file_source_actor>(link));
    caf::anon_send(broker, atom::connect_v, link);
    sched.run();
    return true;
  }();

  std::shared_ptr<execution_env> make_env() {
    auto e = std::make_shared<execution_env>();
    e->data_dir = dir.str();
    e->table = table;
    e->threaded_host = false;
    e->reuse_timeout = std::chrono::seconds(60);
    e->make_executor = [this](const executor_request&) {
      auto x = std::make_shared<fake_executor>();
      x->start_error = next_start_error;
      executors.push_back(x);
      return std::static_pointer_cast<executor>(x);
    };
    return e;
  }

  void connect() {
    caf::anon_send(broker, atom::connect_v, link);
    sched.run();
  }

  link_double_state& ccn() { return state_of<link_double_state>(link); }

  // Publishes code, its STORE and a PROGRAM at the double CCN; returns the program's hash.
  std::string publish_program(const std::string& code = "#!/bin/true\n", uint64_t memory = 128,
                              bool persistent = false) {
    auto file = aleph::sha256_hex(code);
    ccn().files[file] = code;
    auto store = as_stored(store_doc(file));
    ccn().messages[store.item_hash] = store;
    auto prog = as_stored(program_doc(store.item_hash, memory, persistent));
    ccn().messages[prog.item_hash] = prog;
    return prog.item_hash;
  }

  reply<allocation_ack> allocate(const allocation& a) {
    return ask<allocation_ack>(broker, atom::allocate_v, a);
  }

  reply<execution_info> run(const std::string& hash) {
    return ask<execution_info>(broker, atom::run_v, hash);
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

  std::vector<log_line> logs(const std::string& hash) {
    auto r = ask<std::vector<log_line>>(broker, atom::logs_v, hash);
    EXPECT_TRUE(r.value) << describe(r.error);
    return r.value.value_or(std::vector<log_line>{});
  }

  static bool mentions(const std::vector<log_line>& lines, const std::string& text) {
    for (auto& l : lines)
      if (l.line.find(text) != std::string::npos)
        return true;
    return false;
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

TEST_F(job_broker_test, stop_stops_the_execution_and_keeps_its_final_state) {
  ASSERT_TRUE(allocate(work("h1", "instance", 256)).value);
  auto sup = supervisor_of("h1");
  ASSERT_TRUE(sup);
  auto stopped = ask<execution_info>(broker, atom::stop_v, std::string{"h1"});
  ASSERT_TRUE(stopped.value) << describe(stopped.error);
  EXPECT_EQ(stopped.value->phase, "stopped");
  EXPECT_GT(stopped.value->stopped_at, 0.0);
  EXPECT_GE(stopped.value->stopped_at, stopped.value->stopping_at);
  EXPECT_GT(stopped.value->stopping_at, 0.0);
  // The supervisor is gone; the broker lists the final state.
  EXPECT_FALSE(supervisor_of("h1"));
  auto x = find("h1");
  ASSERT_TRUE(x);
  EXPECT_EQ(x->phase, "stopped");
  // Stopping again is safe and changes nothing.
  auto again = ask<execution_info>(broker, atom::stop_v, std::string{"h1"});
  ASSERT_TRUE(again.value);
  EXPECT_EQ(again.value->stopped_at, stopped.value->stopped_at);
}

TEST_F(job_broker_test, a_supervisor_refuses_an_older_epoch) {
  auto sup = spawn(vm_supervisor, work("h1", "instance", 128, 1, 0, 3), true,
                   std::shared_ptr<const execution_env>(env), link, job_broker_actor{});
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

TEST_F(job_broker_test, a_killed_supervisor_is_listed_as_failed_and_frees_its_capacity) {
  ASSERT_TRUE(allocate(work("h1", "instance", 6144)).value->accepted);
  caf::anon_send_exit(supervisor_of("h1"), caf::exit_reason::kill);
  sched.run();
  auto x = find("h1");
  ASSERT_TRUE(x);
  EXPECT_EQ(x->phase, "failed");
  EXPECT_TRUE(allocate(work("h2", "instance", 6144)).value->accepted);
}

TEST_F(job_broker_test, a_stopped_execution_frees_its_capacity) {
  ASSERT_TRUE(allocate(work("h1", "instance", 6144)).value->accepted);
  ASSERT_TRUE(ask<execution_info>(broker, atom::stop_v, std::string{"h1"}).value);
  auto ack = allocate(work("h2", "instance", 6144));
  ASSERT_TRUE(ack.value);
  EXPECT_TRUE(ack.value->accepted) << ack.value->reason;
}

TEST_F(job_broker_test, a_stopped_execution_allocated_again_runs_again) {
  ASSERT_TRUE(allocate(work("h1", "instance", 1024, 1, 0, 1)).value->accepted);
  ASSERT_TRUE(ask<execution_info>(broker, atom::stop_v, std::string{"h1"}).value);
  auto ack = allocate(work("h1", "instance", 1024, 1, 0, 2));
  ASSERT_TRUE(ack.value);
  EXPECT_TRUE(ack.value->accepted) << ack.value->reason;
  auto x = find("h1");
  ASSERT_TRUE(x);
  EXPECT_NE(x->phase, "stopped");
  EXPECT_EQ(x->epoch, 2u);
}

// -- on-demand programs -------------------------------------------------------------

TEST_F(job_broker_test, a_call_starts_the_program_with_its_code_and_publishes_it) {
  connect();
  auto hash = publish_program("#!/bin/sh\necho hi\n");
  auto r = run(hash);
  ASSERT_TRUE(r.value) << describe(r.error);
  EXPECT_EQ(r.value->phase, "running");
  EXPECT_FALSE(r.value->persistent);
  ASSERT_EQ(executors.size(), 1u);
  EXPECT_EQ(executors[0]->starts, 1);
  EXPECT_EQ(executors[0]->cfg.code, "#!/bin/sh\necho hi\n");
  EXPECT_EQ(executors[0]->cfg.entrypoint, "app");
  EXPECT_EQ(executors[0]->cfg.variables.at("GREETING"), "hi");
  auto live = table->find(hash);
  ASSERT_TRUE(live);
  EXPECT_EQ(live->timeout, std::chrono::seconds(3));
  // A second call finds it running: no new start, no new fetch.
  auto fetches = ccn().message_fetches;
  ASSERT_TRUE(run(hash).value);
  EXPECT_EQ(executors.size(), 1u);
  EXPECT_EQ(ccn().message_fetches, fetches);
}

TEST_F(job_broker_test, concurrent_first_calls_share_one_start) {
  connect();
  auto hash = publish_program();
  std::vector<std::shared_ptr<reply<execution_info>>> calls;
  for (int i = 0; i < 10; ++i)
    calls.push_back(ask_later<execution_info>(broker, atom::run_v, hash));
  sched.run();
  for (auto& c : calls) {
    ASSERT_TRUE(c->value) << describe(c->error);
    EXPECT_EQ(c->value->phase, "running");
  }
  EXPECT_EQ(executors.size(), 1u);
  EXPECT_EQ(ccn().file_fetches, 1);
}

TEST_F(job_broker_test, code_with_use_latest_runs_the_newest_amend) {
  connect();
  auto hash = publish_program("old code");
  auto prog = ccn().messages.at(hash);
  auto doc = nlohmann::ordered_json::parse(prog.json);
  auto ref = doc["content"]["code"]["ref"].get<std::string>();
  doc["content"]["code"]["use_latest"] = true;
  doc.erase("item_hash");
  doc.erase("item_content");
  auto latest_prog = as_stored(doc);
  ccn().messages[latest_prog.item_hash] = latest_prog;
  auto code = std::string{"new code"};
  ccn().files[aleph::sha256_hex(code)] = code;
  auto amend = as_stored(store_doc(aleph::sha256_hex(code)));
  ccn().messages[amend.item_hash] = amend;
  ccn().latest[ref] = amend.item_hash;
  ASSERT_TRUE(run(latest_prog.item_hash).value);
  EXPECT_EQ(executors.back()->cfg.code, code);
  ASSERT_TRUE(run(hash).value); // use_latest false: the original
  EXPECT_EQ(executors.back()->cfg.code, "old code");
}

TEST_F(job_broker_test, a_running_execution_pins_its_files_until_it_stops) {
  connect();
  auto hash = publish_program("pinned code");
  ASSERT_TRUE(run(hash).value);
  auto during = ask<cache_usage>(env->files, atom::usage_v);
  ASSERT_TRUE(during.value);
  EXPECT_EQ(during.value->pinned_bytes, std::string{"pinned code"}.size());
  ASSERT_TRUE(ask<execution_info>(broker, atom::stop_v, hash).value);
  sched.run();
  auto after = ask<cache_usage>(env->files, atom::usage_v);
  ASSERT_TRUE(after.value);
  EXPECT_EQ(after.value->pinned_bytes, 0u);
  EXPECT_EQ(after.value->files, 1u) << "still cached, now evictable";
}

TEST_F(job_broker_test, a_runtime_the_ccn_holds_is_fetched_and_a_foreign_one_is_noted) {
  connect();
  auto runtime = std::string{"runtime image"};
  ccn().files[aleph::sha256_hex(runtime)] = runtime;
  auto runtime_store = as_stored(store_doc(aleph::sha256_hex(runtime)));
  ccn().messages[runtime_store.item_hash] = runtime_store;
  auto with_runtime = [&](const std::string& ref, const std::string& code) {
    auto doc = nlohmann::ordered_json::parse(ccn().messages.at(publish_program(code)).json);
    doc["content"]["runtime"] = {{"ref", ref}, {"use_latest", false}, {"comment", "test"}};
    doc.erase("item_hash");
    doc.erase("item_content");
    auto m = as_stored(doc);
    ccn().messages[m.item_hash] = m;
    return m.item_hash;
  };
  auto logs_of = [&](const std::string& hash) {
    std::string all;
    auto r = ask<std::vector<log_line>>(broker, atom::logs_v, hash);
    EXPECT_TRUE(r.value) << describe(r.error);
    for (auto& l : r.value.value_or(std::vector<log_line>{}))
      all += l.line + "\n";
    return all;
  };
  auto ours = with_runtime(runtime_store.item_hash, "code one");
  ASSERT_TRUE(run(ours).value);
  EXPECT_NE(logs_of(ours).find("runtime " + aleph::sha256_hex(runtime) + " mounted read-only"),
            std::string::npos) << logs_of(ours);
  auto foreign = with_runtime(std::string(64, '7'), "code two");
  ASSERT_TRUE(run(foreign).value) << "a runtime this CCN does not hold is not an error";
  EXPECT_NE(logs_of(foreign).find("the host's /usr is the runtime"), std::string::npos)
    << logs_of(foreign);
}

TEST_F(job_broker_test, code_comes_from_the_cache_the_second_time) {
  connect();
  auto hash = publish_program("cached code");
  ASSERT_TRUE(run(hash).value);
  ASSERT_TRUE(ask<execution_info>(broker, atom::stop_v, hash).value);
  ASSERT_TRUE(run(hash).value);
  EXPECT_EQ(ccn().file_fetches, 1);
  EXPECT_EQ(executors.size(), 2u);
}

TEST_F(job_broker_test, a_corrupt_cache_entry_is_fetched_again) {
  connect();
  auto code = std::string{"good code"};
  auto hash = publish_program(code);
  ASSERT_TRUE(run(hash).value);
  ASSERT_TRUE(ask<execution_info>(broker, atom::stop_v, hash).value);
  auto h = aleph::sha256_hex(code);
  auto blob = dir.str() + "/cache/" + h.substr(0, 2) + "/" + h.substr(2);
  ASSERT_TRUE(std::filesystem::exists(blob));
  std::ofstream{blob, std::ios::trunc} << "tampered";
  ASSERT_TRUE(run(hash).value);
  EXPECT_EQ(ccn().file_fetches, 2);
  EXPECT_EQ(executors.back()->cfg.code, code);
  // The same size, written later: its verification stamp no longer matches, so it is hashed.
  ASSERT_TRUE(ask<execution_info>(broker, atom::stop_v, hash).value);
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  std::ofstream{blob, std::ios::trunc} << "evil code";
  ASSERT_TRUE(run(hash).value);
  EXPECT_EQ(ccn().file_fetches, 3);
  EXPECT_EQ(executors.back()->cfg.code, code);
}

TEST_F(job_broker_test, code_that_does_not_match_its_hash_is_refused) {
  connect();
  auto hash = publish_program("original");
  ccn().files[aleph::sha256_hex("original")] = "swapped by a bad CCN";
  auto r = run(hash);
  ASSERT_FALSE(r.value);
  EXPECT_TRUE(failed_with(r.error, ec::workload_failed)) << describe(r.error);
  EXPECT_NE(describe(r.error).find("does not match"), std::string::npos) << describe(r.error);
  EXPECT_TRUE(executors.empty());
}

TEST_F(job_broker_test, calls_fail_clearly_for_unknown_wrong_or_too_big_programs) {
  connect();
  EXPECT_TRUE(failed_with(run("feed").error, ec::not_found));
  auto store = as_stored(store_doc(aleph::sha256_hex("x")));
  ccn().messages[store.item_hash] = store;
  EXPECT_TRUE(failed_with(run(store.item_hash).error, ec::invalid));
  auto big = publish_program("code", 9000); // the program bucket is 8192 MiB
  auto r = run(big);
  EXPECT_TRUE(failed_with(r.error, ec::no_capacity)) << describe(r.error);
  EXPECT_TRUE(insufficient(describe(r.error))) << describe(r.error);
  EXPECT_TRUE(executors.empty());
}

TEST_F(job_broker_test, without_a_ccn_link_calls_are_unavailable_and_allocations_fail_clearly) {
  auto c = host();
  c.env = env;
  auto lonely = spawn(job_broker, c);
  auto r = ask<execution_info>(lonely, atom::run_v, std::string{"0000"});
  EXPECT_TRUE(failed_with(r.error, ec::unavailable)) << describe(r.error);
  ASSERT_TRUE(ask<allocation_ack>(lonely, atom::allocate_v, work("h9", "instance", 128)).value);
  auto all = ask<std::vector<execution_info>>(lonely, atom::list_v);
  ASSERT_TRUE(all.value);
  ASSERT_EQ(all.value->size(), 1u);
  EXPECT_EQ((*all.value)[0].phase, "failed");
  EXPECT_NE((*all.value)[0].detail.find("no CCN link"), std::string::npos) << (*all.value)[0].detail;
}

TEST_F(job_broker_test, a_program_that_fails_to_start_is_reported_with_the_reason) {
  connect();
  next_start_error = "configure failed: no such entrypoint";
  auto hash = publish_program();
  auto r = run(hash);
  ASSERT_FALSE(r.value);
  EXPECT_TRUE(failed_with(r.error, ec::workload_failed)) << describe(r.error);
  EXPECT_NE(describe(r.error).find("no such entrypoint"), std::string::npos);
  auto x = find(hash);
  ASSERT_TRUE(x);
  EXPECT_EQ(x->phase, "failed");
  EXPECT_TRUE(mentions(logs(hash), "no such entrypoint"));
  EXPECT_FALSE(table->find(hash));
}

TEST_F(job_broker_test, a_crash_stops_the_execution_and_the_next_call_starts_a_new_one) {
  connect();
  auto hash = publish_program();
  ASSERT_TRUE(run(hash).value);
  executors[0]->crash(3);
  sched.run();
  EXPECT_FALSE(table->find(hash));
  auto x = find(hash);
  ASSERT_TRUE(x);
  EXPECT_EQ(x->phase, "stopped");
  EXPECT_NE(x->detail.find("code 3"), std::string::npos) << x->detail;
  auto kept = logs(hash);
  EXPECT_TRUE(mentions(kept, "fake program output")) << "the program's output outlives it";
  EXPECT_TRUE(mentions(kept, "code 3"));
  ASSERT_TRUE(run(hash).value);
  EXPECT_EQ(executors.size(), 2u);
}

TEST_F(job_broker_test, an_idle_program_stops_after_the_reuse_timeout) {
  connect();
  auto hash = publish_program();
  ASSERT_TRUE(run(hash).value);
  auto live = table->find(hash);
  ASSERT_TRUE(live);
  // The idle check compares the real clock with the last call; make the last call old.
  live->last_used_ms = live_execution::now_ms() - 61000;
  live->in_flight = 1; // a call in flight keeps it
  advance(std::chrono::seconds(2));
  EXPECT_EQ(find(hash)->phase, "running");
  live->in_flight = 0;
  advance(std::chrono::seconds(2));
  auto x = find(hash);
  ASSERT_TRUE(x);
  EXPECT_EQ(x->phase, "stopped");
  EXPECT_NE(x->detail.find("reuse-timeout"), std::string::npos) << x->detail;
  EXPECT_EQ(executors[0]->stops, 1);
  EXPECT_FALSE(table->find(hash));
}

TEST_F(job_broker_test, a_persistent_program_restarts_with_back_off_and_fails_in_a_crash_loop) {
  connect();
  auto hash = publish_program("code", 128, true);
  allocation a = work(hash, "program", 128);
  a.message_json = ccn().messages[hash].json;
  ASSERT_TRUE(allocate(a).value->accepted);
  ASSERT_EQ(find(hash)->phase, "running");
  executors.back()->crash(1);
  sched.run();
  auto x = find(hash);
  EXPECT_EQ(x->phase, "preparing");
  EXPECT_NE(x->detail.find("restart in"), std::string::npos) << x->detail;
  advance(std::chrono::seconds(2)); // first back-off: 1 s ± 50 %
  EXPECT_EQ(find(hash)->phase, "running");
  EXPECT_EQ(executors.size(), 2u);
  // Keep crashing: the fifth failure within the window ends it.
  for (int i = 0; i < 3; ++i) {
    executors.back()->crash(1);
    sched.run();
    advance(std::chrono::seconds(70));
  }
  EXPECT_EQ(find(hash)->phase, "running");
  executors.back()->crash(1);
  sched.run();
  x = find(hash);
  ASSERT_TRUE(x);
  EXPECT_EQ(x->phase, "failed");
  EXPECT_NE(x->detail.find("crash loop"), std::string::npos) << x->detail;
  // The CCN is told, once.
  auto& reported = ccn().failures;
  ASSERT_EQ(reported.size(), 1u);
  EXPECT_EQ(reported[0].item_hash, hash);
  EXPECT_EQ(reported[0].phase, "failed");
}

TEST_F(job_broker_test, a_persistent_program_whose_code_is_missing_retries_until_it_appears) {
  auto code = std::string{"late code"};
  auto hash = publish_program(code, 128, true);
  auto file = aleph::sha256_hex(code);
  auto saved = ccn().files[file];
  ccn().files.erase(file); // the CCN does not have it (yet)
  allocation a = work(hash, "program", 128);
  a.message_json = ccn().messages[hash].json;
  ASSERT_TRUE(allocate(a).value->accepted);
  auto x = find(hash);
  ASSERT_TRUE(x);
  EXPECT_EQ(x->phase, "preparing");
  EXPECT_NE(x->detail.find("retrying in"), std::string::npos) << x->detail;
  for (int i = 0; i < 6; ++i) // well past the crash-loop count: fetch failures are not crashes
    advance(std::chrono::seconds(70));
  EXPECT_EQ(find(hash)->phase, "preparing");
  EXPECT_TRUE(ccn().failures.empty());
  ccn().files[file] = saved;
  advance(std::chrono::seconds(70));
  EXPECT_EQ(find(hash)->phase, "running");
  EXPECT_EQ(executors.back()->cfg.code, code);
}

TEST_F(job_broker_test, drain_refuses_new_calls_stops_on_demand_and_lets_persistent_go) {
  connect();
  auto od = publish_program("on demand");
  auto pp = publish_program("persistent", 128, true);
  ASSERT_TRUE(run(od).value);
  allocation a = work(pp, "program", 128);
  a.message_json = ccn().messages[pp].json;
  ASSERT_TRUE(allocate(a).value->accepted);
  // Keeping persistent workloads: the on-demand one is stopped (and counted); the persistent
  // one is let go, which for an executor that cannot outlive the CRN (this fake, a microVM)
  // means a clean stop rather than a kill when the process exits.
  auto n = ask<uint32_t>(broker, atom::drain_v, false);
  ASSERT_TRUE(n.value) << describe(n.error);
  EXPECT_EQ(*n.value, 1u);
  EXPECT_EQ(find(od)->phase, "stopped");
  EXPECT_EQ(find(pp)->phase, "stopped");
  EXPECT_EQ(executors.back()->stops, 1);
  auto r = run(od);
  EXPECT_TRUE(failed_with(r.error, ec::unavailable));
  EXPECT_EQ(describe(r.error), "Server is draining");
  // Nothing is left for a second drain.
  EXPECT_EQ(*ask<uint32_t>(broker, atom::drain_v, true).value, 0u);
}

TEST_F(job_broker_test, a_stop_during_a_reboot_wins) {
  auto hash = publish_program();
  ASSERT_TRUE(run(hash).value);
  auto reboot = ask_later<execution_info>(broker, atom::reboot_v, hash);
  auto stop = ask_later<execution_info>(broker, atom::stop_v, hash);
  sched.run();
  ASSERT_TRUE(stop->value) << describe(stop->error);
  EXPECT_EQ(stop->value->phase, "stopped");
  EXPECT_FALSE(reboot->value) << "a reboot must not bring back a stopped execution";
  EXPECT_EQ(executors.size(), 1u);
  EXPECT_FALSE(table->find(hash));
  EXPECT_EQ(find(hash)->phase, "stopped");
}

TEST_F(job_broker_test, a_call_during_an_idle_stop_gets_a_fresh_start) {
  auto hash = publish_program();
  ASSERT_TRUE(run(hash).value);
  table->find(hash)->last_used_ms = live_execution::now_ms() - 61000;
  sched.advance_time(std::chrono::seconds(2)); // the idle tick is due
  sched.run_once();                           // the supervisor starts stopping
  auto call = ask_later<execution_info>(broker, atom::run_v, hash);
  sched.run();
  ASSERT_TRUE(call->value) << describe(call->error);
  EXPECT_EQ(call->value->phase, "running");
  EXPECT_EQ(executors.size(), 2u);
  EXPECT_TRUE(table->find(hash));
}

TEST_F(job_broker_test, erase_removes_the_execution_data) {
  connect();
  auto hash = publish_program();
  ASSERT_TRUE(run(hash).value);
  auto data = dir.str() + "/executions/" + hash;
  auto volumes = dir.str() + "/volumes/" + hash;
  std::filesystem::create_directories(data);
  std::filesystem::create_directories(volumes + "/state");
  std::ofstream{volumes + "/state/file"} << "kept across restarts until erased";
  auto r = ask<execution_info>(broker, atom::erase_v, hash);
  ASSERT_TRUE(r.value) << describe(r.error);
  EXPECT_EQ(r.value->phase, "stopped");
  EXPECT_FALSE(std::filesystem::exists(data));
  EXPECT_FALSE(std::filesystem::exists(volumes));
}

TEST_F(job_broker_test, reboot_restarts_a_running_execution) {
  connect();
  auto hash = publish_program();
  ASSERT_TRUE(run(hash).value);
  auto r = ask<execution_info>(broker, atom::reboot_v, hash);
  ASSERT_TRUE(r.value) << describe(r.error);
  EXPECT_EQ(r.value->phase, "running");
  EXPECT_EQ(executors.size(), 2u);
  EXPECT_EQ(executors[0]->stops, 1);
  EXPECT_TRUE(table->find(hash));
  auto none = ask<execution_info>(broker, atom::reboot_v, std::string{"nope"});
  EXPECT_TRUE(failed_with(none.error, ec::not_found));
}

} // namespace

TEST_F(job_broker_test, executions_resumed_after_a_restart_stay_only_where_the_ccn_confirms_them) {
  auto kept = publish_program("#!/bin/kept\n", 128, true);
  auto moved = publish_program("#!/bin/moved\n", 128, true);
  auto c = host();
  c.env = env;
  // Records of an older version name no owner: the first CCN to confirm decides.
  c.resume = {{allocation{1, kept, "program", 5, 1, 128, 0, "", ""}, true},
              {allocation{1, moved, "program", 5, 1, 128, 0, "", ""}, true}};
  auto restarted = spawn(job_broker, c);
  sched.run();
  auto& ex = state_of<job_broker_state>(restarted).executions;
  EXPECT_TRUE(ex.empty()) << "resumed before the link could fetch anything";
  caf::anon_send(restarted, atom::connect_v, link);
  sched.run();
  ASSERT_EQ(ex.size(), 2u);
  EXPECT_TRUE(ex.at(kept).unconfirmed);
  EXPECT_TRUE(ex.at(moved).unconfirmed);
  auto phase = [&](const std::string& hash) {
    auto r = ask<std::vector<execution_info>>(restarted, atom::list_v);
    for (auto& x : r.value.value_or(std::vector<execution_info>{}))
      if (x.item_hash == hash)
        return x.phase;
    return std::string{"unknown"};
  };
  EXPECT_EQ(phase(kept), "running");
  EXPECT_EQ(phase(moved), "running");
  // The CCN still places `kept` here (at a newer epoch) and moved `moved` elsewhere.
  caf::anon_send(restarted, atom::confirm_v, std::string{"ccn"},
                 std::vector<placement>{placement{kept, "program", "crn", 6, "allocated", ""}});
  sched.run();
  EXPECT_FALSE(ex.at(kept).unconfirmed);
  EXPECT_EQ(ex.at(kept).alloc.epoch, 6u);
  EXPECT_EQ(phase(kept), "running");
  EXPECT_EQ(phase(moved), "stopped");
  // A later confirmation does not touch confirmed executions.
  caf::anon_send(restarted, atom::confirm_v, std::string{"ccn"}, std::vector<placement>{});
  sched.run();
  EXPECT_EQ(phase(kept), "running");
  caf::anon_send_exit(restarted, caf::exit_reason::user_shutdown);
  sched.run();
}

// A CRN that went to another CCN while its own was away keeps the workloads its own CCN placed;
// only the CCN that placed them confirms or stops them when the CRN comes back to it.
TEST_F(job_broker_test, only_the_ccn_that_placed_a_workload_can_fence_it) {
  auto a = publish_program("#!/bin/a\n", 128, true);
  auto b = publish_program("#!/bin/b\n", 128, true);
  auto placed = [&](const std::string& hash, const std::string& owner, uint64_t epoch) {
    allocation x = work(hash, "program", 128, 1, 0, epoch);
    x.message_json = ccn().messages.at(hash).json;
    x.owner = owner;
    return x;
  };
  ASSERT_TRUE(allocate(placed(a, "ccn-a", 2)).value->accepted);
  ASSERT_TRUE(allocate(placed(b, "ccn-b", 4)).value->accepted);
  sched.run();
  auto phase = [&](const std::string& hash) {
    for (auto& x : list())
      if (x.item_hash == hash)
        return x.phase;
    return std::string{"unknown"};
  };
  ASSERT_EQ(phase(a), "running");
  ASSERT_EQ(phase(b), "running");
  // Registered with ccn-b, which places only `b` here: `a` is not its to stop.
  caf::anon_send(broker, atom::confirm_v, std::string{"ccn-b"},
                 std::vector<placement>{placement{b, "program", "crn", 4, "allocated", ""}});
  sched.run();
  EXPECT_EQ(phase(a), "running");
  EXPECT_EQ(phase(b), "running");
  // Back with ccn-a, which moved `a` to another CRN meanwhile: it no longer lists it here.
  caf::anon_send(broker, atom::confirm_v, std::string{"ccn-a"}, std::vector<placement>{});
  sched.run();
  EXPECT_EQ(phase(a), "stopped");
  EXPECT_EQ(phase(b), "running");
  // ccn-b's word keeps `b` (an older epoch it no longer knows would stop it).
  caf::anon_send(broker, atom::confirm_v, std::string{"ccn-b"}, std::vector<placement>{});
  sched.run();
  EXPECT_EQ(phase(b), "stopped");
}

} // namespace job_broker_tests
