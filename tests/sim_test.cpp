// `alephd sim` end to end: real clusters of alephd processes with faults, the invariants it
// checks, the JSON report, and the HTML report opened in headless Chromium.
#include <algorithm>
#include <csignal>
#include <chrono>
#include <set>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <random>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include "tests/process.hpp"

namespace {

using namespace std::chrono_literals;
using json = nlohmann::json;
using alephd::test::process;
using alephd::test::eventually;

std::string read_file(const std::filesystem::path& p) {
  std::ifstream in{p};
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

struct sim_test : ::testing::Test {
  std::filesystem::path dir;

  sim_test() {
    std::random_device rd;
    dir = std::filesystem::temp_directory_path() / ("alephd-simtest-" + std::to_string(::getpid()) + "-" + std::to_string(rd()));
    std::filesystem::create_directories(dir);
  }

  ~sim_test() override {
    std::error_code ec;
    if (HasFailure())
      keep_logs();
    std::filesystem::remove_all(dir, ec);
  }

  // A failed test leaves its runs' node logs, reports and stderr in its working directory
  // (build/tests under ctest; the node data dirs go), so that a rare failure in CI can be read
  // afterwards.
  void keep_logs() {
    namespace fs = std::filesystem;
    std::error_code ec;
    auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    auto kept = fs::current_path() / ("sim_test-failed-" + std::string{info ? info->name() : "run"} + "-"
                                      + std::to_string(::getpid()));
    for (fs::recursive_directory_iterator it{dir, ec}, end; !ec && it != end; it.increment(ec)) {
      if (it.depth() >= 1 && it->is_directory(ec)) {
        it.disable_recursion_pending(); // a node's data dir: <run dir>/<node>.log is as deep as it goes
        continue;
      }
      auto ext = it->path().extension();
      if (!it->is_regular_file(ec) || (ext != ".log" && ext != ".json" && ext != ".err"))
        continue;
      auto to = kept / it->path().lexically_relative(dir);
      fs::create_directories(to.parent_path(), ec);
      fs::copy_file(it->path(), to, fs::copy_options::overwrite_existing, ec);
    }
    std::cerr << "sim_test: the failed runs' logs and reports are kept in " << kept.string() << "\n";
  }

  struct outcome {
    int code = -1;
    std::string err; ///< stderr
  };

  // Runs `alephd sim args...` to its end (bounded); its nodes die with it if the test dies.
  outcome sim(std::vector<std::string> args, std::chrono::seconds limit = 150s) {
    args.insert(args.begin(), "sim");
    auto log = dir / ("sim-" + std::to_string(runs++) + ".err");
    process p{args, log.string()};
    outcome o;
    o.code = p.wait_exit(limit);
    if (o.code < 0)
      p.kill9();
    o.err = read_file(log);
    return o;
  }

  int runs = 0;

  // Waits until a sim run printed `what` (its progress is on stdout, read while waiting for a
  // READY line it never prints).
  static bool printed(process& p, const std::string& what, std::chrono::seconds limit) {
    return eventually([&] { return p.wait_ready(200ms), p.output().find(what) != std::string::npos; }, limit);
  }

  // The processes whose command line has every one of `parts`.
  static std::vector<pid_t> pids_naming(const std::vector<std::string>& parts) {
    std::vector<pid_t> out;
    std::error_code ec;
    for (std::filesystem::directory_iterator it{"/proc", ec}, end; !ec && it != end; it.increment(ec)) {
      auto name = it->path().filename().string();
      if (name.find_first_not_of("0123456789") != std::string::npos)
        continue;
      auto cmd = read_file(it->path() / "cmdline");
      std::replace(cmd.begin(), cmd.end(), '\0', ' ');
      if (std::all_of(parts.begin(), parts.end(), [&](auto& x) { return cmd.find(x) != std::string::npos; }))
        out.push_back(std::stoi(name));
    }
    return out;
  }

  // The page of an HTML report after its scripts ran in headless Chromium; empty if it failed.
  std::string rendered(const std::filesystem::path& html) {
    auto dom = dir / (html.stem().string() + "-dom.html");
    auto cmd = "timeout 60 chromium --headless --no-sandbox --disable-gpu --user-data-dir=" + (dir / "chromium").string()
               + " --dump-dom file://" + html.string() + " > " + dom.string() + " 2>/dev/null";
    return std::system(cmd.c_str()) == 0 ? read_file(dom) : std::string{};
  }
};

TEST_F(sim_test, bad_options_exit_2_with_one_line_naming_them) {
  struct bad {
    std::vector<std::string> args;
    std::string says;
  };
  auto ini = dir / "broken.ini";
  std::ofstream{ini} << "[cluster]\nccns = 2\nnot a setting\n";
  for (auto& b : std::vector<bad>{
         {{"--faults.kinds=crn-kill,meteor"}, "unknown fault kind 'meteor'"},
         {{"--cluster.ccns=11"}, "at most 10 CCNs"},
         {{"--cluster.ccns=1001", "--in-process"}, "cluster.ccns: must be between 1 and 1000"},
         {{"--in-process", "--faults.kinds=crn-kill,ccn-wipe"}, "ccn-wipe is not simulated in-process"},
         {{"--in-process", "--workload.instances=1"}, "microVMs need real processes"},
         {{"--workload.instances=5"}, "workload.instances: must be between 0 and 4"},
         {{"--run.duration=soon"}, "run.duration: must be a duration"},
         {{"--bogus=1"}, "unknown option 'bogus'"},
         {{"--config", (dir / "missing.ini").string()}, "cannot read"},
         {{"--config", ini.string()}, "broken.ini:3: expected `name = value`"},
         {{"--seed"}, "--seed needs a value"},
         {{"--faults.only=2,x"}, "faults.only: expected fault numbers from 1"},
         {{"--faults.only=0"}, "faults.only: expected fault numbers from 1"},
         {{"--faults.only=3,99", "--in-process"}, "faults.only: fault 99 is not in the schedule (it has 11"},
         {{"--run.minimise-runs=-1"}, "run.minimise-runs: must be auto or a whole number from 0 to 1000"},
         {{"--run.minimise-time=0s"}, "run.minimise-time: must be at least 1000ms"},
       }) {
    auto o = sim(b.args, 10s);
    EXPECT_EQ(o.code, 2) << b.args[0];
    EXPECT_NE(o.err.find("alephd: sim: "), std::string::npos) << o.err;
    EXPECT_NE(o.err.find(b.says), std::string::npos) << o.err;
    EXPECT_EQ(std::count(o.err.begin(), o.err.end(), '\n'), 1) << o.err;
  }
}

TEST_F(sim_test, the_shipped_config_parses_and_a_seed_fixes_the_fault_schedule) {
  auto plan = [&](const std::string& seed) {
    auto out = dir / ("plan-" + seed);
    process p{{"sim", "--config", ALEPHD_SIM_INI, "--plan", "--seed", seed}, (dir / "plan.err").string()};
    // --plan writes to stdout: read it through the READY-less pipe by waiting for the exit.
    EXPECT_FALSE(p.wait_ready(10s)); // no READY line; reads everything until the pipe closes
    EXPECT_EQ(p.wait_exit(10s), 0) << read_file(dir / "plan.err");
    return p.output();
  };
  auto a = plan("3");
  EXPECT_NE(a.find("fault schedule of seed 3"), std::string::npos) << a;
  EXPECT_GE(std::count(a.begin(), a.end(), '#'), 5) << a;
  auto again = plan("3");
  auto other = plan("4");
  EXPECT_EQ(a, again);
  EXPECT_NE(a.substr(a.find('\n')), other.substr(other.find('\n')));
}

// Two CCNs × 3 CRNs and an extra CRN that waits; seed 5 draws kills (a CRN, the CRN that runs a
// persistent program, a CCN), pauses, a partition and a slow link. Every invariant must hold,
// and the report must show it; the HTML report must render in Chromium.
TEST_F(sim_test, a_cluster_under_faults_keeps_every_invariant_and_reports_it) {
  auto report = dir / "report.json";
  auto html = dir / "report.html";
  auto o = sim({"--config", ALEPHD_SIM_INI, "--seed", "5", "--cluster.ccns=2", "--cluster.extra-crns=1",
                "--run.duration=27s", "--faults.interval=3s", "--faults.down-time=2s", "--faults.pause-time=2s",
                "--faults.partition-time=2s", "--run.converge-timeout=40s", "--run.minimise-runs=0",
                "--report", report.string(), "--html", html.string(), "--dir", (dir / "work").string()});
  auto r = json::parse(read_file(report), nullptr, false);
  ASSERT_TRUE(r.is_object()) << o.err;
  EXPECT_EQ(o.code, 0) << o.err << "\nviolations: " << r["violations"].dump(2);
  EXPECT_EQ(r["result"], "pass");
  EXPECT_EQ(r["seed"], 5);
  EXPECT_EQ(r["nodes"].size(), 9u);
  // The faults of the plan ran (a host-kill is skipped only when no CRN runs its program).
  std::set<std::string> kinds;
  for (auto& e : r["events"])
    if (e["kind"] == "fault")
      kinds.insert(e["what"].get<std::string>());
  EXPECT_GE(r["faults"].get<int>(), 7) << r["events"].dump(1);
  for (auto k : {"crn-kill", "ccn-kill", "crn-pause", "ccn-pause", "partition", "slow-link"})
    EXPECT_TRUE(kinds.count(k)) << "no " << k << " fault ran: " << r["events"].dump(1);
  // Every invariant was checked, none failed.
  for (auto name : {"max-linked-crns", "cluster-converges", "acked-messages-everywhere", "stored-files-everywhere",
                    "replica-count", "persistent-exactly-once", "metering-exactly-once", "rewards-sum-to-pools",
                    "acked-messages-survive"}) {
    ASSERT_TRUE(r["invariants"].contains(name)) << name << " was never checked: " << r["invariants"].dump(1);
    EXPECT_GE(r["invariants"][name]["checked"].get<int>(), 1) << name;
    EXPECT_FALSE(r["invariants"][name].contains("failed")) << name << ": " << r["invariants"][name].dump();
  }
  // The extra CRN waited: a CCN had its three linked, never more.
  for (auto& [ccn, most] : r["max_linked_seen"].items())
    EXPECT_LE(most.get<int>(), 3) << ccn;
  EXPECT_GT(r["workload"]["messages_acked"].get<int>(), 20);
  EXPECT_GT(r["workload"]["files_acked"].get<int>(), 0);
  EXPECT_GT(r["memory_peak_mib"].get<double>(), 10.0);
  // The work dir of a passing run given with --dir stays; the nodes are gone.
  EXPECT_TRUE(std::filesystem::exists(dir / "work" / "ccn-0.log"));

  // The HTML report, rendered by headless Chromium: its script drew the plots.
  auto page = rendered(html);
  ASSERT_FALSE(page.empty()) << "chromium did not render " << html;
  EXPECT_NE(page.find("data-rendered=\"ok\""), std::string::npos) << page.substr(0, 2000);
  auto count = [&](const std::string& needle) {
    std::size_t n = 0;
    for (auto at = page.find(needle); at != std::string::npos; at = page.find(needle, at + 1))
      ++n;
    return n;
  };
  std::size_t faults = 0;
  for (auto& e : r["events"])
    faults += e["kind"] == "fault" ? 1 : 0;
  EXPECT_EQ(count("class=\"fault\""), faults) << "one bar per fault on the timeline";
  EXPECT_EQ(count("class=\"up\""), 9u) << "one row per node";
  EXPECT_GE(count("class=\"placement\""), 2u);
  EXPECT_EQ(count("class=\"failure-timeout\""), 1u);
  if (!r["reschedules"].empty()) {
    EXPECT_EQ(count("class=\"cdf\""), 1u);
  }
  EXPECT_NE(page.find("PASS (seed 5)"), std::string::npos);
}

// The named scenarios as processes, each once (seeds 1 and 2 in turn; the in-process test below
// runs each over three seeds), on a small cluster: every invariant holds.
TEST_F(sim_test, the_named_scenarios_keep_every_invariant) {
  int n = 0;
  for (std::string scenario : {"crn-crash", "ccn-crash", "partition-heal", "flapping-node", "rolling-restart", "disk-full"})
    for (std::string seed : {std::to_string(1 + n++ % 2)}) {
      if (scenario == "disk-full" && ::geteuid() != 0) {
        std::cerr << "disk-full skipped: it mounts a tmpfs, which needs root\n";
        continue;
      }
      auto report = dir / (scenario + "-" + seed + ".json");
      auto o = sim({"--seed", seed, "--run.scenario=" + scenario, "--cluster.ccns=2", "--cluster.crns-per-ccn=2",
                    "--workload.persistent-programs=2", "--workload.messages-per-second=8",
                    "--workload.uploads-per-second=1", "--run.duration=6s", "--faults.interval=1500ms",
                    "--faults.down-time=1s", "--faults.partition-time=1500ms", "--run.converge-timeout=40s",
                    "--run.minimise-runs=0", "--report", report.string(), "--dir", (dir / (scenario + seed)).string()});
      auto r = json::parse(read_file(report), nullptr, false);
      ASSERT_TRUE(r.is_object()) << scenario << " seed " << seed << ": " << o.err;
      EXPECT_EQ(o.code, 0) << scenario << " seed " << seed << ": " << o.err << r["violations"].dump(1);
      EXPECT_EQ(r["config"]["scenario"], scenario);
      EXPECT_GE(r["faults"].get<int>(), 3) << scenario << " seed " << seed;
      std::set<std::string> targets;
      for (auto& e : r["events"])
        if (e["kind"] == "fault")
          targets.insert(e["node"].get<std::string>());
      if (scenario == "flapping-node") {
        EXPECT_EQ(targets.size(), 1u) << "one node flaps";
      }
      if (scenario == "rolling-restart") {
        EXPECT_EQ(targets.size(), 6u) << "every node restarts once";
      }
      for (auto name : {"acked-messages-everywhere", "persistent-exactly-once", "metering-exactly-once",
                        "cluster-converges"})
        EXPECT_FALSE(r["invariants"][name].contains("failed")) << scenario << " " << name;
      if (scenario == "disk-full") {
        EXPECT_GE(r["invariants"]["serves-with-a-full-disk"].value("checked", 0), 3);
        EXPECT_GE(r["invariants"]["full-disk-answers-507"].value("checked", 0), 3);
        bool saw_507 = false;
        for (auto& e : r["events"])
          if (e["kind"] == "heal" && e["what"] == "disk-full")
            saw_507 |= e["detail"].get<std::string>().rfind("0 of", 0) != 0;
        EXPECT_TRUE(saw_507) << "no upload was refused: the disk was not full";
      }
    }
}

// SIGTERM (or Ctrl-C) ends a run at once: every node stopped, exit 130, and nothing reported
// against nodes that were being stopped.
TEST_F(sim_test, sigterm_stops_the_run_and_every_node_with_130) {
  auto work = dir / "stopped";
  auto log = dir / "stopped.log";
  process p{{"sim", "--seed", "3", "--cluster.ccns=1", "--cluster.crns-per-ccn=2", "--workload.persistent-programs=1",
             "--run.duration=120s", "--faults.interval=2s", "--run.converge-timeout=60s", "--run.minimise-runs=0",
             "--dir", work.string()},
            log.string()};
  ASSERT_TRUE(printed(p, "] fault ", 90s)) << p.output() << p.log();
  auto sent = std::chrono::steady_clock::now();
  p.signal(SIGTERM);
  int code = p.wait_exit(60s);
  if (code < 0)
    p.kill9();
  auto took = std::chrono::steady_clock::now() - sent;
  p.wait_ready(1s); // the rest of stdout
  auto out = p.output() + p.log();
  EXPECT_EQ(code, 130) << out;
  EXPECT_LT(took, 30s) << "a fault's hold and the teardown, not the rest of the run";
  EXPECT_NE(out.find("interrupted"), std::string::npos) << out;
  EXPECT_EQ(out.find("INVARIANT VIOLATED"), std::string::npos) << out;
  EXPECT_EQ(pids_naming({work.string()}).size(), 0u) << "node processes outlived the run";
}

// The same in the final checks, with a CRN frozen so that they cannot end by themselves: the
// run stops at once, exit 130, nothing judged on the way (it used to wait out converge-timeout
// and report what it had not checked as violations).
TEST_F(sim_test, sigterm_during_the_final_checks_stops_them_at_once) {
  auto work = dir / "checking";
  process p{{"sim", "--seed", "5", "--cluster.ccns=1", "--cluster.crns-per-ccn=2", "--workload.persistent-programs=0",
             "--workload.on-demand-programs=0", "--workload.messages-per-second=10", "--run.duration=4s",
             "--faults.interval=3600s", "--run.converge-timeout=90s", "--run.minimise-runs=0", "--dir", work.string()},
            (dir / "checking.log").string()};
  ASSERT_TRUE(printed(p, "] start workload", 90s)) << p.output() << p.log();
  // Freeze one CRN: it goes down at its CCN, and the checks wait for it to link again.
  auto crns = pids_naming({" crn ", (work / "crn-0-0").string()});
  ASSERT_EQ(crns.size(), 1u) << "crn-0-0 not found";
  pid_t frozen = crns[0];
  ::kill(frozen, SIGSTOP);
  bool converging = printed(p, "] start converge", 90s);
  std::this_thread::sleep_for(1s);
  auto sent = std::chrono::steady_clock::now();
  p.signal(SIGTERM); // the CRN stays frozen: the sim's teardown continues it to stop it
  bool stopping = eventually([&] { return p.log().find("interrupted; stopping") != std::string::npos; }, 10s);
  auto noticed = std::chrono::steady_clock::now() - sent;
  int code = p.wait_exit(120s);
  if (code < 0)
    p.kill9();
  if (read_file("/proc/" + std::to_string(frozen) + "/cmdline").find("crn-0-0") != std::string::npos)
    ::kill(frozen, SIGCONT); // still there (the sim was killed): it dies of its parent's death
  p.wait_ready(1s);
  auto out = p.output() + p.log();
  ASSERT_TRUE(converging) << out;
  EXPECT_EQ(code, 130) << out;
  EXPECT_TRUE(stopping) << "the checks went on after the signal\n" << out;
  EXPECT_LT(noticed, 10s);
  EXPECT_EQ(out.find("] violation "), std::string::npos) << out;
  EXPECT_EQ(out.find("INVARIANT VIOLATED"), std::string::npos) << out;
}

// A CCN that loses its disk loses what it acknowledged: the simulator must catch it, exit 1 and
// print the seed and the events that show it.
TEST_F(sim_test, a_lost_acknowledged_message_fails_the_run_with_the_seed_and_its_events) {
  auto report = dir / "lost.json";
  auto o = sim({"--seed", "11", "--cluster.ccns=1", "--cluster.crns-per-ccn=1", "--workload.persistent-programs=0",
                "--workload.on-demand-programs=0", "--workload.messages-per-second=20", "--workload.uploads-per-second=0",
                "--workload.calls-per-second=0", "--run.duration=5s", "--faults.interval=2s", "--faults.kinds=ccn-wipe",
                "--faults.down-time=200ms", "--run.minimise-runs=1", "--report", report.string(),
                "--dir", (dir / "lost").string()});
  EXPECT_EQ(o.code, 1) << o.err;
  EXPECT_NE(o.err.find("INVARIANT VIOLATED: acked-messages-survive"), std::string::npos) << o.err;
  EXPECT_NE(o.err.find("--seed 11"), std::string::npos) << o.err;
  EXPECT_NE(o.err.find("fault ccn-wipe ccn-0"), std::string::npos) << o.err;
  auto r = json::parse(read_file(report), nullptr, false);
  ASSERT_TRUE(r.is_object());
  EXPECT_EQ(r["result"], "fail");
  ASSERT_FALSE(r["violations"].empty());
  EXPECT_EQ(r["violations"][0]["invariant"], "acked-messages-survive");
  // One re-run to shorten the history (the limit here; each is a whole cluster run): the cluster
  // again without any fault keeps what it acknowledged, so the first wipe (the run stops there)
  // is the shortest history.
  auto h = r["shortest_history"];
  EXPECT_EQ(h["minimised"], true) << h;
  EXPECT_EQ(h["runs"], 1) << h;
  EXPECT_EQ(h["faults_in_run"], json::array({1})) << h;
  EXPECT_EQ(h["faults"], json::array({1})) << h;
  EXPECT_EQ(h["minimal"], true) << h;
  EXPECT_EQ(h["exact_replay"], false) << h;
  EXPECT_NE(o.err.find("without any one of them a re-run held (once each)"), std::string::npos) << o.err;
  EXPECT_NE(o.err.find("repeats the schedule, not the timing: alephd sim --seed 11 --cluster.ccns=1"), std::string::npos)
    << o.err;
  EXPECT_EQ(h["repeat"].get<std::string>().find("--report"), std::string::npos) << h;
  EXPECT_NE(h["repeat"].get<std::string>().find("--faults.kinds=ccn-wipe --faults.down-time=200ms --faults.only=1 "
                                                 "--run.minimise-runs=0"),
            std::string::npos)
    << h;
}

// An instance (a QEMU microVM) in the mix, on a CCN with two CRNs: the CRN running it is killed;
// the CCN boots it again on the other CRN, and after convergence it runs exactly once.
TEST_F(sim_test, an_instance_in_the_mix_runs_exactly_once_after_its_crn_is_killed) {
  if (::access("/usr/bin/qemu-system-x86_64", X_OK) != 0 || ::access("/sbin/mkfs.ext4", X_OK) != 0)
    GTEST_SKIP() << "needs qemu-system-x86 and e2fsprogs (scripts/install-deps installs them)";
  auto report = dir / "instance.json";
  auto o = sim({"--seed", "1", "--cluster.ccns=1", "--cluster.crns-per-ccn=2", "--workload.persistent-programs=0",
                "--workload.on-demand-programs=0", "--workload.instances=1", "--workload.uploads-per-second=0",
                "--workload.calls-per-second=0", "--run.duration=14s", "--faults.kinds=host-kill",
                "--faults.interval=12s", "--faults.down-time=4s", "--run.converge-timeout=90s",
                "--run.reschedule-deadline=60s", "--run.minimise-runs=0", "--report", report.string(),
                "--dir", (dir / "instance").string()},
               300s);
  auto r = json::parse(read_file(report), nullptr, false);
  ASSERT_TRUE(r.is_object()) << o.err;
  EXPECT_EQ(o.code, 0) << o.err << r["violations"].dump(1);
  ASSERT_EQ(r["workload"]["instances"].size(), 1u);
  auto vm = r["workload"]["instances"][0].get<std::string>();
  std::set<std::string> ran_on;
  for (auto& p : r["placements"])
    if (p["program"] == vm)
      for (auto& c : p["crns"])
        ran_on.insert(c.get<std::string>());
  EXPECT_EQ(ran_on.size(), 2u) << "it ran on one CRN, then on the other after the kill: " << r["placements"].dump();
  EXPECT_GE(r["faults"].get<int>(), 1);
  for (auto name : {"persistent-exactly-once", "cluster-converges"}) {
    ASSERT_TRUE(r["invariants"].contains(name)) << name << " was never checked";
    EXPECT_GE(r["invariants"][name].value("checked", 0), 1) << name;
    EXPECT_FALSE(r["invariants"][name].contains("failed")) << name;
  }
  bool moved = false; // placed again on the other CRN after the kill, within the deadline
  for (auto& m : r["reschedules"])
    moved |= m["program"] == vm && !m["to"].empty() && m["to"][0] != m["from"];
  EXPECT_TRUE(moved) << r["reschedules"].dump();
  EXPECT_FALSE(r["invariants"].contains("reschedule-deadline")) << "only a late one is recorded";
}

// ---- --in-process: the same actors on the deterministic scheduler, in virtual time ----------

struct in_process_run {
  int code = -1;
  std::string err;
  json report;
};

// Three CCNs x 3 CRNs and an extra CRN that waits, 30 persistent programs, a fault every 3 s of
// virtual time for two minutes: kills, pauses and partitions of CRNs and CCNs, and restarts.
TEST_F(sim_test, in_process_a_seed_replays_exactly_and_every_invariant_holds) {
  auto run = [&](const std::string& seed, const std::string& name) {
    auto report = dir / (name + ".json");
    auto o = sim({"--in-process", "--config", ALEPHD_SIM_INI, "--seed", seed, "--cluster.extra-crns=1",
                  "--workload.persistent-programs=30", "--workload.on-demand-programs=2", "--run.duration=120s",
                  "--faults.interval=3s",
                  "--faults.kinds=crn-kill,ccn-kill,host-kill,crn-pause,ccn-pause,partition,slow-link,restart,disk-full",
                  "--report", report.string(), "--html", (dir / (name + ".html")).string()},
                 120s);
    return in_process_run{o.code, o.err, json::parse(read_file(report), nullptr, false)};
  };
  auto a = run("3", "a");
  ASSERT_TRUE(a.report.is_object()) << a.err;
  EXPECT_EQ(a.code, 0) << a.err << a.report["violations"].dump(1);
  EXPECT_EQ(a.report["mode"], "in-process");
  EXPECT_GE(a.report["faults"].get<int>(), 25);
  EXPECT_GE(a.report["duration_s"].get<double>(), 120.0) << "virtual seconds";
  std::set<std::string> kinds;
  for (auto& e : a.report["events"])
    if (e["kind"] == "fault" && e["detail"].get<std::string>().find("skipped") == std::string::npos)
      kinds.insert(e["what"].get<std::string>());
  for (auto k : {"crn-kill", "ccn-kill", "crn-pause", "ccn-pause", "partition", "restart", "disk-full"})
    EXPECT_EQ(kinds.count(k), 1u) << "no " << k << " fault applied";
  for (auto name : {"max-linked-crns", "persistent-exactly-once", "cluster-converges", "acked-messages-everywhere",
                    "metering-exactly-once", "reschedule-deadline", "stored-files-everywhere", "replica-count",
                    "serves-with-a-full-disk", "full-disk-answers-507"}) {
    EXPECT_GE(a.report["invariants"][name].value("checked", 0), 1) << name << " was never checked";
    EXPECT_FALSE(a.report["invariants"][name].contains("failed")) << name;
  }
  EXPECT_GE(a.report["workload"]["messages_acked"].get<int>(), 400);
  EXPECT_GE(a.report["workload"]["files_acked"].get<int>(), 20) << "uploads with replicas";
  ASSERT_FALSE(a.report["reschedules"].empty()) << "no program was placed again after its CRN went";
  for (auto& r : a.report["reschedules"])
    for (auto& to : r["to"])
      EXPECT_NE(to, r["from"]) << "a reschedule is a move to another CRN";
  EXPECT_NE(read_file(dir / "a.html").find("<svg"), std::string::npos);
  // The same seed: the same events at the same virtual times, the same digest of the whole run.
  auto b = run("3", "b");
  ASSERT_TRUE(b.report.is_object()) << b.err;
  EXPECT_EQ(b.code, 0) << b.err;
  EXPECT_EQ(a.report["events"], b.report["events"]);
  EXPECT_EQ(a.report["actor_jobs"], b.report["actor_jobs"]);
  EXPECT_EQ(a.report["trace_digest"], b.report["trace_digest"]);
  // Another seed: another run.
  auto c = run("4", "c");
  ASSERT_TRUE(c.report.is_object()) << c.err;
  EXPECT_EQ(c.code, 0) << c.err << c.report["violations"].dump(1);
  EXPECT_NE(a.report["trace_digest"], c.report["trace_digest"]);
}

TEST_F(sim_test, in_process_the_named_scenarios_keep_every_invariant) {
  for (std::string scenario : {"crn-crash", "ccn-crash", "partition-heal", "flapping-node", "rolling-restart", "disk-full"})
    for (std::string seed : {"1", "2", "3"}) {
      auto report = dir / (scenario + "-" + seed + ".json");
      auto o = sim({"--in-process", "--seed", seed, "--run.scenario=" + scenario, "--cluster.ccns=3",
                    "--workload.persistent-programs=12", "--run.duration=40s", "--faults.interval=2s",
                    "--report", report.string()},
                   60s);
      auto r = json::parse(read_file(report), nullptr, false);
      ASSERT_TRUE(r.is_object()) << scenario << " seed " << seed << ": " << o.err;
      EXPECT_EQ(o.code, 0) << scenario << " seed " << seed << ": " << o.err << r["violations"].dump(1);
      EXPECT_GE(r["faults"].get<int>(), 3) << scenario << " seed " << seed;
      std::set<std::string> targets; // of the faults applied (not skipped)
      for (auto& e : r["events"])
        if (e["kind"] == "fault" && e["detail"].get<std::string>().find("skipped") == std::string::npos)
          targets.insert(e["node"].get<std::string>());
      if (scenario == "flapping-node") {
        EXPECT_EQ(targets.size(), 1u) << "one node flaps";
      }
      if (scenario == "rolling-restart") {
        EXPECT_EQ(targets.size(), 12u) << "every node restarts once";
      }
      if (scenario == "disk-full") {
        // The disks were really full (posts refused), and the CCNs kept answering.
        int refused = 0;
        for (auto& e : r["events"])
          if (e["kind"] == "heal" && e["what"] == "disk-full")
            refused += std::atoi(e["detail"].get<std::string>().c_str());
        EXPECT_GE(refused, 3) << scenario << " seed " << seed;
        for (auto name : {"serves-with-a-full-disk", "full-disk-answers-507"}) {
          EXPECT_GE(r["invariants"][name].value("checked", 0), 3) << scenario << " " << name;
          EXPECT_FALSE(r["invariants"][name].contains("failed")) << scenario << " " << name;
        }
      }
      for (auto name : {"persistent-exactly-once", "cluster-converges", "acked-messages-everywhere", "metering-exactly-once"}) {
        EXPECT_GE(r["invariants"][name].value("checked", 0), 1) << scenario << " " << name;
        EXPECT_FALSE(r["invariants"][name].contains("failed")) << scenario << " " << name;
      }
    }
}

// A deadline shorter than the failure timeout cannot be met after a pause (the CCN only sees a
// frozen CRN by its silence): the run must fail, with the seed and the pause that shows it.
TEST_F(sim_test, in_process_a_missed_reschedule_deadline_fails_the_run) {
  auto report = dir / "late.json";
  auto o = sim({"--in-process", "--seed", "2", "--cluster.ccns=2", "--workload.persistent-programs=6",
                "--faults.kinds=host-pause", "--faults.interval=5s", "--faults.pause-time=12s",
                "--cluster.failure-timeout=5s", "--run.reschedule-deadline=2s", "--run.duration=20s",
                "--report", report.string()},
               60s);
  EXPECT_EQ(o.code, 1) << o.err;
  EXPECT_NE(o.err.find("INVARIANT VIOLATED: reschedule-deadline"), std::string::npos) << o.err;
  EXPECT_NE(o.err.find("--in-process --seed 2"), std::string::npos) << o.err;
  EXPECT_NE(o.err.find("fault crn-pause"), std::string::npos) << o.err;
  auto r = json::parse(read_file(report), nullptr, false);
  ASSERT_TRUE(r.is_object());
  EXPECT_EQ(r["result"], "fail");
  ASSERT_FALSE(r["violations"].empty());
  EXPECT_EQ(r["violations"][0]["invariant"], "reschedule-deadline");
}

// A violation is shown with the fewest faults that still cause it: the seed is replayed with
// fewer of its faults (exactly, in-process) until none can go, and that list replays it again.
TEST_F(sim_test, in_process_a_violation_is_shown_with_the_fewest_faults_that_still_cause_it) {
  auto report = dir / "short.json";
  std::vector<std::string> args{"--in-process", "--seed", "5", "--cluster.ccns=2", "--workload.persistent-programs=6",
                                "--faults.kinds=ccn-pause,partition,host-pause", "--faults.interval=3s",
                                "--faults.pause-time=12s", "--cluster.failure-timeout=5s",
                                "--run.reschedule-deadline=2s", "--run.duration=30s"};
  auto with = [&](std::vector<std::string> more) {
    auto a = args;
    a.insert(a.end(), more.begin(), more.end());
    return a;
  };
  auto html = dir / "short.html";
  auto o = sim(with({"--report", report.string(), "--html", html.string()}), 60s);
  EXPECT_EQ(o.code, 1) << o.err;
  EXPECT_NE(o.err.find("INVARIANT VIOLATED: reschedule-deadline"), std::string::npos) << o.err;
  auto r = json::parse(read_file(report), nullptr, false);
  ASSERT_TRUE(r.is_object());
  auto h = r["shortest_history"];
  ASSERT_TRUE(h.is_object()) << r.dump().substr(0, 400);
  EXPECT_EQ(h["minimised"], true);
  EXPECT_EQ(h["minimal"], true) << h;
  EXPECT_EQ(h["violation"]["invariant"], "reschedule-deadline");
  auto in_run = h["faults_in_run"].get<std::vector<std::size_t>>();
  auto left = h["faults"].get<std::vector<std::size_t>>();
  ASSERT_GE(in_run.size(), 3u) << "the faults before the one that matters make the history long";
  EXPECT_LT(left.size(), in_run.size()) << h;
  EXPECT_GE(left.size(), 1u) << "the run holds without faults: " << h;
  EXPECT_LE(h["runs"].get<std::size_t>(), 30u);
  // The history printed and reported is those faults (each once, by its number), then the violation.
  std::vector<std::string> shown;
  for (auto& e : h["events"])
    if (e["kind"] == "fault")
      shown.push_back(e["detail"].get<std::string>().substr(0, e["detail"].get<std::string>().find(' ')));
  ASSERT_EQ(shown.size(), left.size()) << h;
  for (std::size_t i = 0; i < left.size(); ++i)
    EXPECT_EQ(shown[i], "#" + std::to_string(left[i])) << h;
  EXPECT_EQ(h["events"].back()["kind"], "violation");
  std::string only;
  for (auto n : left)
    only += (only.empty() ? "" : ",") + std::to_string(n);
  // The command printed repeats it: the run's own options, those faults, no search.
  auto command = h["repeat"].get<std::string>();
  EXPECT_NE(o.err.find("replays exactly: " + command), std::string::npos) << o.err;
  ASSERT_EQ(command.rfind("alephd sim --in-process --seed 5 --cluster.ccns=2", 0), 0u) << command;
  EXPECT_NE(command.find(" --faults.only=" + only + " --run.minimise-runs=0"), std::string::npos) << command;
  EXPECT_EQ(command.find("--report"), std::string::npos) << command;
  EXPECT_EQ(command.find("--html"), std::string::npos) << command;
  // The HTML report shows it too (rendered by headless Chromium).
  auto page = rendered(html);
  ASSERT_FALSE(page.empty()) << "chromium did not render " << html;
  EXPECT_NE(page.find("data-rendered=\"ok\""), std::string::npos) << page.substr(0, 2000);
  EXPECT_NE(page.find("Shortest history: " + std::to_string(left.size()) + " of " + std::to_string(in_run.size()) +
                      " faults after " + std::to_string(h["runs"].get<std::size_t>()) + " re-runs, none of which can go"),
            std::string::npos);
  EXPECT_NE(page.find("repeat with " + command), std::string::npos);
  // Replayed by that command (no more shortening): the same violation, at the same time.
  std::vector<std::string> words;
  std::istringstream in{command.substr(std::string{"alephd sim "}.size())};
  for (std::string w; in >> w;)
    words.push_back(w);
  auto replay = dir / "replay.json";
  words.insert(words.end(), {"--report", replay.string()});
  auto again = sim(words, 60s);
  EXPECT_EQ(again.code, 1) << again.err;
  auto r2 = json::parse(read_file(replay), nullptr, false);
  ASSERT_TRUE(r2.is_object());
  ASSERT_FALSE(r2["violations"].empty());
  EXPECT_EQ(r2["violations"][0], h["violation"]);
  EXPECT_EQ(r2["shortest_history"]["minimised"], false);
  EXPECT_EQ(r2["shortest_history"]["faults"].get<std::vector<std::size_t>>(), left);
}

} // namespace
