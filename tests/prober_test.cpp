// The CCN's prober on the deterministic scheduler, with probes a test double makes up.
#include "actors/prober.hpp"

#include "caf_fixture.hpp"
#include "runtime/wall_clock.hpp"

using namespace alephd;
using namespace alephd::test;
using namespace std::chrono_literals;

// Named so that the suites can share one unity-built test binary.
namespace prober_tests {

namespace {

crn_info crn(const std::string& id, const std::string& asn) {
  crn_info c;
  c.id = id;
  c.name = "name-" + id;
  c.address = "http://127.0.0.1:1";
  c.asn = asn;
  return c;
}

struct prober_test : caf_fixture {
  temp_dir dir;
  std::shared_ptr<lmdb::env> env = open_test_env(dir);
  /// What each CRN answers: base, diag, full latencies and version.
  std::map<std::string, rewards::crn_probe> answers;
  std::vector<std::string> probed;

  prober_config config() {
    prober_config c;
    c.env = env;
    c.interval = 1000ms;
    c.window = std::chrono::seconds(3600);
    c.accepted_versions = {"0.1.0"};
    c.threaded = false;
    c.probe = [this](const crn_info& n) {
      probed.push_back(n.id);
      auto p = answers[n.id];
      p.time = unix_seconds();
      return p;
    };
    return c;
  }

  void tell(const prober_actor& p, const crn_info& c, link_state s) {
    caf::anon_send(p, atom::node_v, c, s, ccn_link_actor{});
    sched.run();
  }

  std::map<std::string, node_score> scores(const prober_actor& p) {
    auto r = ask<std::vector<node_score>>(p, atom::list_v);
    EXPECT_TRUE(r.value) << describe(r.error);
    std::map<std::string, node_score> out;
    for (auto& s : r.value.value_or(std::vector<node_score>{}))
      out[s.id] = s;
    return out;
  }
};

} // namespace

TEST_F(prober_test, linked_crns_are_probed_every_interval_and_scored) {
  auto p = spawn(prober, config());
  answers["a"] = rewards::crn_probe{0, 0.5, 0.5, 1.0, "0.1.0"};
  answers["b"] = rewards::crn_probe{0, std::nullopt, std::nullopt, std::nullopt, ""}; // down
  tell(p, crn("a", "AS1"), link_state::linked);
  tell(p, crn("b", "AS2"), link_state::down);
  tell(p, crn("c", "AS3"), link_state::waiting); // not linked here: not probed
  advance(1000ms);
  advance(1000ms);
  EXPECT_EQ(probed, (std::vector<std::string>{"a", "b", "a", "b"}));
  auto s = scores(p);
  ASSERT_EQ(s.size(), 2u);
  EXPECT_EQ(s["a"].samples, 2u);
  // Hand-computed in rewards_test: 0.5 s base, 0.5 s diag, 1 s full → 0.873.
  EXPECT_NEAR(s["a"].total, 0.8730401607210988, 1e-12);
  EXPECT_DOUBLE_EQ(s["a"].multiplier, 1);
  EXPECT_DOUBLE_EQ(s["b"].total, 0);
  EXPECT_DOUBLE_EQ(s["b"].multiplier, 0);
  // Two nodes, two ASNs: (1 − 1/2)² each.
  EXPECT_DOUBLE_EQ(s["a"].decentralization, 0.25);
  EXPECT_EQ(s["a"].asn, "AS1");
  EXPECT_EQ(s["a"].name, "name-a");
}

TEST_F(prober_test, sharing_an_asn_lowers_decentralization) {
  auto p = spawn(prober, config());
  for (auto id : {"a", "b", "c", "d"})
    tell(p, crn(id, id == std::string{"d"} ? "AS9" : "AS1"), link_state::linked);
  auto s = scores(p);
  EXPECT_NEAR(s["a"].decentralization, (1 - 3.0 / 4) * (1 - 3.0 / 4), 1e-12);
  EXPECT_NEAR(s["d"].decentralization, (1 - 1.0 / 4) * (1 - 1.0 / 4), 1e-12);
}

TEST_F(prober_test, an_unlinked_crn_is_dropped_and_probes_survive_a_restart) {
  auto p = spawn(prober, config());
  answers["a"] = rewards::crn_probe{0, 0.1, 0.1, 0.1, "0.1.0"};
  tell(p, crn("a", ""), link_state::linked);
  tell(p, crn("b", ""), link_state::linked);
  advance(1000ms);
  tell(p, crn("b", ""), link_state::unlinked);
  EXPECT_EQ(scores(p).count("b"), 0u);
  caf::anon_send_exit(p, caf::exit_reason::kill);
  sched.run();
  auto again = spawn(prober, config());
  tell(again, crn("a", ""), link_state::linked);
  auto s = scores(again);
  EXPECT_EQ(s["a"].samples, 1u) << "the probe made before the restart still counts";
  EXPECT_GT(s["a"].total, 0.9);
}

TEST(probe_codec, roundtrip_and_hostile_text) {
  rewards::crn_probe p{1700000000.5, 0.25, std::nullopt, 1.5, "0.1.0"};
  auto back = decode_probe(encode_probe(p));
  ASSERT_TRUE(back);
  EXPECT_EQ(back->time, p.time);
  EXPECT_EQ(back->base_s, p.base_s);
  EXPECT_FALSE(back->diag_s);
  EXPECT_EQ(back->full_s, p.full_s);
  EXPECT_EQ(back->version, "0.1.0");
  for (std::string bad : {"", "[]", "{}", "{\"t\":\"x\"}", "nope"})
    EXPECT_FALSE(decode_probe(bad)) << bad;
}

} // namespace prober_tests
