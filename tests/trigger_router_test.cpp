#include "actors/trigger_router.hpp"

#include <chrono>
#include <fstream>
#include <map>
#include <set>

#include <nlohmann/json.hpp>

#include "messages/aleph_message.hpp"
#include "runtime/lmdb.hpp"
#include "tests/caf_fixture.hpp"
#include "tests/stored_message.hpp"

using namespace alephd;
using namespace alephd::test;
using namespace std::chrono_literals;

// Named so that the suites can share one unity-built test binary.
namespace trigger_router_tests {

namespace {

using json = nlohmann::ordered_json;

const std::string ccn_id = "ccn-1";
// machine.json's sender and the addresses its on.message filters name.
const std::string owner = "0x9319Ad3B7A8E0eE24f2E639c40D8eD124C5520Ba";
const std::string watched = "0xB31B787AdA86c6067701d4C0A250c89C7f1f29A5";
const std::string watched_ref = "4d4db19afca380fdf06ba7f916153d0f740db9de9eee23ad26ba96a90d8a2920";
const std::string alice = "0xA11CEA11CEA11CEA11CEA11CEA11CEA11CEA11CE";
const std::string bob = "0xB0bB0bB0bB0bB0bB0bB0bB0bB0bB0bB0bB0bB0bB";
const std::string carol = "0xCa201Ca201Ca201Ca201Ca201Ca201Ca201Ca201";

// How a CRN's link double answers a run.
enum class answer { ok, status_500, error, silent };

struct run_call {
  std::string program;
  stored_message event;
};

struct link_double_state {
  std::string crn_id;
  answer mode = answer::ok;
  std::vector<run_call> runs;
  std::vector<caf::typed_response_promise<uint16_t>> unanswered;
};

// A CRN's link as the router sees it: records runs and answers them as told.
ccn_link_actor::behavior_type link_double(ccn_link_actor::stateful_pointer<link_double_state> self,
                                          std::string crn_id, answer mode) {
  self->state.crn_id = std::move(crn_id);
  self->state.mode = mode;
  return {
    [=](atom::status, link_state) {},
    [=](atom::allocate, const allocation& a) {
      return allocation_ack{a.item_hash, a.epoch, self->state.crn_id, true, {}};
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
    [=](atom::run, const std::string& program,
        const stored_message& event) -> caf::result<uint16_t> {
      auto& st = self->state;
      st.runs.push_back(run_call{program, event});
      switch (st.mode) {
        case answer::ok:
          return uint16_t{200};
        case answer::status_500:
          return uint16_t{500};
        case answer::error:
          return make_error(ec::workload_failed, "test double: the program failed to start");
        case answer::silent:
          break;
      }
      auto rp = self->make_response_promise<uint16_t>();
      st.unanswered.push_back(rp);
      return rp;
    },
    [=](atom::exited, const execution_info&) {},
  };
}

json load(const std::string& file) {
  std::ifstream in{std::string{ALEPHD_PEER_DATA_DIR} + "/" + file};
  EXPECT_TRUE(in) << "cannot read " << ALEPHD_PEER_DATA_DIR << "/" << file;
  return json::parse(in);
}

/// A stored message as the message store publishes it.
stored_message stored(json doc, const std::string& origin = ccn_id) {
  return alephd::test::stored_from(std::move(doc), origin);
}

/// The real PROGRAM (machine.json): filters {sender: watched, channel: TEST} and
/// {content: {ref: watched_ref}}.
stored_message sample_program() {
  return stored(load("machine.json"));
}

/// machine.json with other filters (null = no on.message); `time` tells programs apart.
stored_message program(json filters, double time = 1619017773.0,
                       const std::string& origin = ccn_id) {
  auto doc = load("machine.json");
  if (filters.is_null())
    doc["content"]["on"].erase("message");
  else
    doc["content"]["on"]["message"] = std::move(filters);
  doc["content"]["time"] = time;
  return stored(std::move(doc), origin);
}

double next_time() {
  static double t = 1700000000.0;
  return t += 1.0;
}

/// A POST; every call makes a new message (another time).
stored_message post(const std::string& sender, const std::string& channel, json content = {},
                    const std::string& origin = ccn_id) {
  auto t = next_time();
  json doc{{"chain", "ETH"},
           {"sender", sender},
           {"type", "POST"},
           {"channel", channel},
           {"time", t},
           {"item_type", "inline"},
           {"content", {{"address", sender}, {"time", t}, {"type", "test"}}}};
  if (!content.is_null())
    doc["content"]["content"] = std::move(content);
  return stored(std::move(doc), origin);
}

/// A FORGET of `hashes` by `by` (sender and content.address).
stored_message forget(const std::vector<std::string>& hashes, const std::string& by = owner) {
  auto doc = load("forget.json");
  doc["sender"] = by;
  doc["content"]["address"] = by;
  doc["content"]["hashes"] = hashes;
  doc["content"]["time"] = next_time();
  return stored(std::move(doc));
}

crn_info crn(const std::string& id) {
  crn_info info;
  info.id = id;
  info.name = id;
  info.address = "http://" + id;
  info.vcpus = 4;
  info.memory_mib = 8192;
  info.disk_mib = 100000;
  return info;
}

struct trigger_router_test : caf_fixture {
  temp_dir dir;
  std::shared_ptr<lmdb::env> env = open_test_env(dir);
  trigger_router_config cfg = [this] {
    trigger_router_config c;
    c.ccn_id = ccn_id;
    c.env = env;
    c.retry = 2000ms;
    c.max_attempts = 3;
    c.run_timeout = 30000ms;
    c.max_pending = 10000;
    return c;
  }();
  trigger_router_actor router;
  std::map<std::string, ccn_link_actor> links;

  void start() {
    router = spawn(trigger_router, cfg);
  }

  /// Stops the router and starts a new one on the same LMDB environment (a CCN restart);
  /// the CRNs are announced again, as the registry does for a new listener.
  void restart() {
    caf::anon_send_exit(router, caf::exit_reason::user_shutdown);
    sched.run();
    start();
  }

  void add_crn(const std::string& id, link_state state = link_state::linked,
               answer mode = answer::ok) {
    links[id] = spawn(link_double, id, mode);
    node_event(id, state);
  }

  void node_event(const std::string& id, link_state state) {
    caf::anon_send(router, atom::node_v, crn(id), state, links[id]);
    sched.run();
  }

  void publish(const stored_message& m) {
    caf::anon_send(router, atom::published_v, m);
    sched.run();
  }

  std::vector<std::string> subscribed() {
    auto r = ask<std::vector<std::string>>(router, atom::list_v);
    EXPECT_TRUE(r.value) << describe(r.error);
    return r.value.value_or(std::vector<std::string>{});
  }

  link_double_state& crn_state(const std::string& id) {
    return state_of<link_double_state>(links[id]);
  }

  std::vector<run_call>& runs_at(const std::string& id) {
    return crn_state(id).runs;
  }

  size_t total_runs() {
    size_t n = 0;
    for (auto& [id, l] : links)
      n += runs_at(id).size();
    return n;
  }

  trigger_router_state& router_state() {
    return state_of<trigger_router_state>(router);
  }
};

// -- subscriptions ---------------------------------------------------------------------------

TEST_F(trigger_router_test, a_program_with_message_filters_is_subscribed) {
  start();
  EXPECT_TRUE(subscribed().empty());
  auto p = sample_program();
  publish(p);
  EXPECT_EQ(subscribed(), std::vector<std::string>{p.item_hash});
  ASSERT_EQ(router_state().subscriptions.count(p.item_hash), 1u);
  EXPECT_EQ(router_state().subscriptions.at(p.item_hash).filters.size(), 2u);
}

TEST_F(trigger_router_test, programs_without_filters_and_other_messages_do_not_subscribe) {
  start();
  publish(program(nullptr));             // no on.message
  publish(program(json::array(), 2.0)); // empty on.message
  publish(post(alice, "TEST"));
  publish(stored(load("instance_machine.json")));
  EXPECT_TRUE(subscribed().empty());
}

TEST_F(trigger_router_test, a_program_from_a_peer_ccn_subscribes_too) {
  start();
  auto p = program(json::array({{{"sender", alice}}}), 3.0, "ccn-2");
  publish(p);
  EXPECT_EQ(subscribed(), std::vector<std::string>{p.item_hash});
}

// -- matching --------------------------------------------------------------------------------

TEST_F(trigger_router_test, sender_and_channel_must_both_match) {
  start();
  add_crn("a");
  auto p = sample_program();
  publish(p);
  publish(post(watched, "OTHER")); // right sender, wrong channel
  publish(post(alice, "TEST"));    // right channel, wrong sender
  EXPECT_TRUE(runs_at("a").empty());
  auto m = post(watched, "TEST");
  publish(m);
  ASSERT_EQ(runs_at("a").size(), 1u);
  EXPECT_EQ(runs_at("a")[0].program, p.item_hash);
  EXPECT_EQ(runs_at("a")[0].event, m) << "the run carries the triggering message";
  EXPECT_EQ(router_state().succeeded, 1u);
}

TEST_F(trigger_router_test, nested_content_ref_matches) {
  start();
  add_crn("a");
  auto p = sample_program();
  publish(p);
  // A STORE-like reference inside the content: content.ref of the message.
  auto hit = post(carol, "ANY", nullptr);
  {
    auto doc = json::parse(hit.json);
    doc["content"]["ref"] = watched_ref;
    hit = stored(std::move(doc));
  }
  auto miss = post(carol, "ANY", nullptr);
  {
    auto doc = json::parse(miss.json);
    doc["content"]["ref"] = std::string(64, 'f');
    miss = stored(std::move(doc));
  }
  // The same key at the top level is not content.ref.
  auto top = post(carol, "ANY", nullptr);
  {
    auto doc = json::parse(top.json);
    doc["ref"] = watched_ref;
    top = stored(std::move(doc));
  }
  publish(miss);
  publish(top);
  EXPECT_TRUE(runs_at("a").empty());
  publish(hit);
  ASSERT_EQ(runs_at("a").size(), 1u);
  EXPECT_EQ(runs_at("a")[0].event.item_hash, hit.item_hash);
}

TEST_F(trigger_router_test, an_array_in_a_filter_matches_any_element) {
  start();
  add_crn("a");
  auto p = program(json::array({{{"sender", json::array({alice, bob})},
                                 {"content", {{"content", {{"tag", json::array({"x", "y"})}}}}}}}));
  publish(p);
  publish(post(alice, "C", {{"tag", "x"}}));
  publish(post(bob, "C", {{"tag", "y"}}));
  EXPECT_EQ(runs_at("a").size(), 2u);
  publish(post(carol, "C", {{"tag", "x"}})); // sender not listed
  publish(post(alice, "C", {{"tag", "z"}})); // tag not listed
  publish(post(alice, "C"));                 // no tag at all
  EXPECT_EQ(runs_at("a").size(), 2u);
}

TEST_F(trigger_router_test, the_matching_rule) {
  auto msg = json::parse(R"({"sender":"0xA","n":1,"nested":{"a":{"b":"c"},"k":[1,2]},"nul":null})");
  auto matches = [&](const char* filter) {
    return trigger_matches(msg, json::parse(filter));
  };
  EXPECT_TRUE(matches(R"({})")) << "an empty filter matches every message";
  EXPECT_TRUE(matches(R"({"sender":"0xA"})"));
  EXPECT_FALSE(matches(R"({"sender":"0xa"})")) << "strings compare exactly";
  EXPECT_FALSE(matches(R"({"missing":"x"})"));
  EXPECT_FALSE(matches(R"({"missing":null})")) << "a missing field never matches";
  EXPECT_TRUE(matches(R"({"nul":null})"));
  EXPECT_TRUE(matches(R"({"n":1.0})")) << "numbers compare by value";
  EXPECT_FALSE(matches(R"({"n":"1"})"));
  EXPECT_TRUE(matches(R"({"nested":{"a":{"b":"c"}}})"));
  EXPECT_FALSE(matches(R"({"nested":{"a":{"b":"d"}}})"));
  EXPECT_FALSE(matches(R"({"sender":{"x":1}})")) << "an object never matches a scalar";
  EXPECT_TRUE(matches(R"({"nested":{"k":[1,2]}})")) << "an equal array matches";
  EXPECT_TRUE(matches(R"({"n":[5,1]})"));
  EXPECT_FALSE(matches(R"({"n":[]})"));
  EXPECT_TRUE(matches(R"({"nested":[{"a":{"b":"x"}},{"a":{"b":"c"}}]})"))
    << "array elements may be objects";
  EXPECT_FALSE(trigger_matches(msg, json::array()));
  EXPECT_FALSE(trigger_matches(json::array(), json::object()));
}

TEST_F(trigger_router_test, non_matching_messages_do_nothing) {
  start();
  add_crn("a");
  publish(sample_program());
  for (int i = 0; i < 5; ++i)
    publish(post(carol, "TEST", {{"ref", watched_ref}})); // content.content.ref, not content.ref
  advance(60s);
  EXPECT_TRUE(runs_at("a").empty());
  EXPECT_TRUE(router_state().pending.empty());
  EXPECT_EQ(router_state().in_flight, 0u);
}

TEST_F(trigger_router_test, only_messages_this_ccn_accepted_trigger) {
  start();
  add_crn("a");
  publish(sample_program());
  publish(post(watched, "TEST", {}, "ccn-2"));
  EXPECT_TRUE(runs_at("a").empty()) << "the CCN that accepted it dispatches, not every peer";
  publish(post(watched, "TEST"));
  EXPECT_EQ(runs_at("a").size(), 1u);
}

TEST_F(trigger_router_test, a_program_never_triggers_itself_but_other_programs_may_trigger_it) {
  start();
  add_crn("a");
  auto watcher = program(json::array({{{"type", "PROGRAM"}}}), 10.0);
  publish(watcher);
  EXPECT_TRUE(runs_at("a").empty()) << "it matches its own filter but must not run for itself";
  auto other = program(json::array({{{"channel", "never"}}}), 11.0);
  publish(other);
  ASSERT_EQ(runs_at("a").size(), 1u);
  EXPECT_EQ(runs_at("a")[0].program, watcher.item_hash);
  EXPECT_EQ(runs_at("a")[0].event.item_hash, other.item_hash);
  EXPECT_EQ(subscribed().size(), 2u);
}

// -- dispatch --------------------------------------------------------------------------------

TEST_F(trigger_router_test, runs_go_to_linked_crns_only) {
  start();
  add_crn("a-waiting", link_state::waiting);
  add_crn("b-down", link_state::down);
  add_crn("c-linked", link_state::linked);
  add_crn("d-unlinked", link_state::unlinked);
  publish(sample_program());
  for (int i = 0; i < 4; ++i)
    publish(post(watched, "TEST"));
  EXPECT_EQ(runs_at("c-linked").size(), 4u);
  EXPECT_EQ(total_runs(), 4u);
}

TEST_F(trigger_router_test, runs_are_spread_round_robin_over_linked_crns) {
  start();
  add_crn("a");
  add_crn("b");
  publish(sample_program());
  std::vector<stored_message> sent;
  for (int i = 0; i < 4; ++i) {
    sent.push_back(post(watched, "TEST"));
    publish(sent.back());
  }
  ASSERT_EQ(runs_at("a").size(), 2u);
  ASSERT_EQ(runs_at("b").size(), 2u);
  EXPECT_EQ(runs_at("a")[0].event.item_hash, sent[0].item_hash);
  EXPECT_EQ(runs_at("b")[0].event.item_hash, sent[1].item_hash);
  EXPECT_EQ(runs_at("a")[1].event.item_hash, sent[2].item_hash);
  EXPECT_EQ(runs_at("b")[1].event.item_hash, sent[3].item_hash);
}

TEST_F(trigger_router_test, a_crn_that_leaves_gets_no_more_runs) {
  start();
  add_crn("a");
  add_crn("b");
  publish(sample_program());
  node_event("a", link_state::down);
  for (int i = 0; i < 3; ++i)
    publish(post(watched, "TEST"));
  EXPECT_TRUE(runs_at("a").empty());
  EXPECT_EQ(runs_at("b").size(), 3u);
}

class failing_crn_test : public trigger_router_test,
                         public ::testing::WithParamInterface<answer> {};

TEST_P(failing_crn_test, a_failed_run_is_retried_on_the_other_crn_after_the_retry_interval) {
  start();
  add_crn("a", link_state::linked, GetParam());
  add_crn("b");
  publish(sample_program());
  auto m = post(watched, "TEST");
  publish(m);
  ASSERT_EQ(runs_at("a").size(), 1u) << "round-robin starts with the first CRN";
  EXPECT_TRUE(runs_at("b").empty());
  advance(1999ms);
  EXPECT_TRUE(runs_at("b").empty()) << "retried before the retry interval";
  advance(1ms);
  ASSERT_EQ(runs_at("b").size(), 1u);
  EXPECT_EQ(runs_at("b")[0].event, m);
  EXPECT_EQ(runs_at("a").size(), 1u) << "the failed CRN is not tried again";
  EXPECT_EQ(router_state().succeeded, 1u);
  advance(60s);
  EXPECT_EQ(total_runs(), 2u);
  EXPECT_TRUE(router_state().pending.empty());
}

INSTANTIATE_TEST_SUITE_P(error_and_status_500, failing_crn_test,
                         ::testing::Values(answer::error, answer::status_500));

TEST_F(trigger_router_test, a_retry_avoids_the_crn_that_failed_it_even_when_its_turn_comes) {
  start();
  add_crn("a", link_state::linked, answer::status_500);
  add_crn("b");
  publish(sample_program());
  auto first = post(watched, "TEST");
  publish(first); // -> a, fails
  auto second = post(watched, "TEST");
  publish(second); // -> b; round-robin would now give the retry of `first` to a
  advance(2s);
  ASSERT_EQ(runs_at("a").size(), 1u);
  ASSERT_EQ(runs_at("b").size(), 2u);
  EXPECT_EQ(runs_at("b")[1].event.item_hash, first.item_hash);
  EXPECT_EQ(router_state().succeeded, 2u);
}

TEST_F(trigger_router_test, a_silent_crn_times_out_and_the_run_moves_on) {
  start();
  add_crn("a", link_state::linked, answer::silent);
  add_crn("b");
  publish(sample_program());
  publish(post(watched, "TEST"));
  ASSERT_EQ(runs_at("a").size(), 1u);
  advance(29s);
  EXPECT_TRUE(runs_at("b").empty());
  advance(1s);   // run_timeout
  advance(2s);   // retry
  EXPECT_EQ(runs_at("b").size(), 1u);
  EXPECT_EQ(router_state().succeeded, 1u);
}

TEST_F(trigger_router_test, after_max_attempts_the_run_is_dropped) {
  start();
  add_crn("a", link_state::linked, answer::status_500);
  add_crn("b", link_state::linked, answer::error);
  publish(sample_program());
  publish(post(watched, "TEST"));
  for (int i = 0; i < 10; ++i)
    advance(2s);
  EXPECT_EQ(runs_at("a").size(), 2u);
  EXPECT_EQ(runs_at("b").size(), 1u);
  EXPECT_EQ(total_runs(), 3u) << "max_attempts = 3";
  EXPECT_EQ(router_state().dropped, 1u);
  EXPECT_TRUE(router_state().pending.empty());
  EXPECT_EQ(router_state().in_flight, 0u);
}

TEST_F(trigger_router_test, a_lone_crn_is_retried_until_max_attempts) {
  cfg.max_attempts = 2;
  start();
  add_crn("a", link_state::linked, answer::status_500);
  publish(sample_program());
  publish(post(watched, "TEST"));
  for (int i = 0; i < 10; ++i)
    advance(2s);
  EXPECT_EQ(runs_at("a").size(), 2u);
  EXPECT_EQ(router_state().dropped, 1u);
}

TEST_F(trigger_router_test, runs_wait_while_no_crn_is_linked_and_go_when_one_links) {
  start();
  publish(sample_program());
  auto m = post(watched, "TEST");
  publish(m);
  EXPECT_EQ(router_state().pending.size(), 1u);
  add_crn("a", link_state::waiting);
  advance(10s);
  EXPECT_TRUE(runs_at("a").empty()) << "a waiting CRN runs nothing";
  node_event("a", link_state::linked);
  ASSERT_EQ(runs_at("a").size(), 1u);
  EXPECT_EQ(runs_at("a")[0].event, m);
  EXPECT_TRUE(router_state().pending.empty());
}

TEST_F(trigger_router_test, a_retry_waits_for_a_crn_when_every_crn_left) {
  start();
  add_crn("a", link_state::linked, answer::error);
  publish(sample_program());
  publish(post(watched, "TEST"));
  ASSERT_EQ(runs_at("a").size(), 1u);
  node_event("a", link_state::down);
  advance(10s);
  EXPECT_EQ(router_state().pending.size(), 1u);
  add_crn("b");
  EXPECT_EQ(runs_at("b").size(), 1u);
  EXPECT_EQ(router_state().succeeded, 1u);
}

TEST_F(trigger_router_test, the_queue_is_bounded_and_drops_the_oldest) {
  cfg.max_pending = 2;
  start();
  publish(sample_program());
  std::vector<stored_message> sent;
  for (int i = 0; i < 3; ++i) {
    sent.push_back(post(watched, "TEST"));
    publish(sent.back());
  }
  EXPECT_EQ(router_state().pending.size(), 2u);
  EXPECT_EQ(router_state().dropped, 1u);
  add_crn("a");
  ASSERT_EQ(runs_at("a").size(), 2u);
  EXPECT_EQ(runs_at("a")[0].event.item_hash, sent[1].item_hash);
  EXPECT_EQ(runs_at("a")[1].event.item_hash, sent[2].item_hash);
}

TEST_F(trigger_router_test, the_queue_is_bounded_in_bytes_too) {
  auto m = post(watched, "TEST");
  cfg.max_pending_bytes = 2 * m.json.size() + m.json.size() / 2; // room for two of them
  start();
  publish(sample_program());
  std::vector<stored_message> sent;
  for (int i = 0; i < 4; ++i) {
    sent.push_back(post(watched, "TEST"));
    ASSERT_EQ(sent.back().json.size(), m.json.size());
    publish(sent.back());
  }
  EXPECT_EQ(router_state().pending.size(), 2u);
  EXPECT_EQ(router_state().pending_bytes, 2 * m.json.size());
  EXPECT_EQ(router_state().dropped, 2u);
  add_crn("a");
  ASSERT_EQ(runs_at("a").size(), 2u);
  EXPECT_EQ(runs_at("a")[0].event.item_hash, sent[2].item_hash);
  EXPECT_EQ(runs_at("a")[1].event.item_hash, sent[3].item_hash);
  EXPECT_EQ(router_state().pending_bytes, 0u);
}

TEST_F(trigger_router_test, one_message_triggers_each_matching_program_once) {
  start();
  add_crn("a");
  auto p1 = program(json::array({{{"sender", watched}}, {{"channel", "TEST"}}}), 30.0);
  auto p2 = program(json::array({{{"channel", "TEST"}}}), 31.0);
  auto p3 = program(json::array({{{"channel", "OTHER"}}}), 32.0);
  publish(p1);
  publish(p2);
  publish(p3);
  auto m = post(watched, "TEST"); // both filters of p1 match
  publish(m);
  ASSERT_EQ(runs_at("a").size(), 2u);
  std::set<std::string> programs{runs_at("a")[0].program, runs_at("a")[1].program};
  EXPECT_EQ(programs, (std::set<std::string>{p1.item_hash, p2.item_hash}));
  EXPECT_EQ(runs_at("a")[0].event, m);
  EXPECT_EQ(runs_at("a")[1].event, m);
}

// -- forget ----------------------------------------------------------------------------------

TEST_F(trigger_router_test, a_forget_unsubscribes_the_program) {
  start();
  add_crn("a");
  auto p = sample_program();
  auto other = program(json::array({{{"sender", alice}}}), 20.0);
  publish(p);
  publish(other);
  EXPECT_EQ(subscribed().size(), 2u);
  publish(forget({p.item_hash}));
  EXPECT_EQ(subscribed(), std::vector<std::string>{other.item_hash});
  publish(post(watched, "TEST"));
  EXPECT_TRUE(runs_at("a").empty());
  restart();
  node_event("a", link_state::linked);
  EXPECT_EQ(subscribed(), std::vector<std::string>{other.item_hash}) << "the FORGET is durable";
  publish(post(watched, "TEST"));
  EXPECT_TRUE(runs_at("a").empty());
}

TEST_F(trigger_router_test, a_forget_by_someone_else_is_ignored) {
  start();
  auto p = sample_program();
  publish(p);
  publish(forget({p.item_hash}, carol));
  EXPECT_EQ(subscribed(), std::vector<std::string>{p.item_hash});
}

TEST_F(trigger_router_test, a_forget_drops_the_queued_runs_of_the_program) {
  start();
  auto p = sample_program();
  publish(p);
  publish(post(watched, "TEST"));
  EXPECT_EQ(router_state().pending.size(), 1u);
  publish(forget({p.item_hash}));
  EXPECT_TRUE(router_state().pending.empty());
  add_crn("a");
  EXPECT_TRUE(runs_at("a").empty());
}

// -- durability and config -------------------------------------------------------------------

TEST_F(trigger_router_test, subscriptions_survive_a_restart_and_still_trigger) {
  start();
  auto p = sample_program();
  publish(p);
  restart();
  EXPECT_EQ(subscribed(), std::vector<std::string>{p.item_hash});
  add_crn("a");
  auto m = post(watched, "TEST");
  publish(m);
  ASSERT_EQ(runs_at("a").size(), 1u);
  EXPECT_EQ(runs_at("a")[0].program, p.item_hash);
  EXPECT_EQ(runs_at("a")[0].event, m);
}

TEST_F(trigger_router_test, without_an_environment_subscriptions_live_in_memory) {
  cfg.env = nullptr;
  start();
  auto p = sample_program();
  publish(p);
  EXPECT_EQ(subscribed(), std::vector<std::string>{p.item_hash});
  restart();
  EXPECT_TRUE(subscribed().empty());
}

TEST_F(trigger_router_test, a_bad_config_stops_the_actor) {
  cfg.max_attempts = 0;
  start();
  auto r = ask<std::vector<std::string>>(router, atom::list_v);
  EXPECT_FALSE(r.value);
  EXPECT_TRUE(r.error);
}

} // namespace

} // namespace trigger_router_tests
