// The reward ledger and reward epochs, measured on this machine:
//  1. durable ledger appends/s: samples through the reward_ledger actor (group commit) against
//     the baseline of one LMDB commit (one fsync) per entry, in the same run, same disk;
//  2. one reward epoch for 300 nodes (75 CCNs with 3 CRNs each) and 10,000 executions with
//     10 usage entries each: reading the usage book, both models, storing (target ≤ 1 s).
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include <caf/all.hpp>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include "actors/reward_ledger.hpp"
#include "runtime/ledger.hpp"
#include "runtime/lmdb.hpp"
#include "runtime/reward_epoch.hpp"

using namespace std::chrono;
using namespace alephd;
namespace fs = std::filesystem;

namespace {

struct config : caf::actor_system_config {
  config() {
    alephd::add_message_types(*this);
    // As `alephd` runs its actors (runtime/main.cpp).
    set("scheduler.max-threads", size_t{2});
    set("scheduler.policy", caf::atom("sharing"));
  }
};

usage_entry sample(uint64_t i) {
  usage_entry e;
  e.item_hash = "exec-" + std::to_string(i % 100);
  e.product = "program";
  e.wall_s = 60;
  e.vcpus = 1;
  e.memory_mib = 256;
  e.cpu_ns = 1000000 + i;
  e.mem_peak = 64 << 20;
  e.mem_avg = 48 << 20;
  e.requests = i % 7;
  return e;
}

double seconds_since(steady_clock::time_point t) {
  return duration<double>(steady_clock::now() - t).count();
}

// One commit per entry: the baseline.
double single_commits(const fs::path& dir, std::size_t n) {
  std::string err;
  auto store = ledger_store::open((dir / "single").string(), err);
  if (!store) {
    std::fprintf(stderr, "ledger_bench: %s\n", err.c_str());
    std::exit(1);
  }
  auto t = steady_clock::now();
  for (std::size_t i = 0; i < n; ++i) {
    std::vector<usage_entry> one{sample(i)};
    if (!store->append(one, err)) {
      std::fprintf(stderr, "ledger_bench: %s\n", err.c_str());
      std::exit(1);
    }
  }
  return static_cast<double>(n) / seconds_since(t);
}

// Samples sent to the reward_ledger actor as executions send them; done when all are durable.
double group_commits(caf::actor_system& sys, const fs::path& dir, std::size_t n) {
  std::string err;
  std::shared_ptr<ledger_store> store = ledger_store::open((dir / "group").string(), err);
  if (!store) {
    std::fprintf(stderr, "ledger_bench: %s\n", err.c_str());
    std::exit(1);
  }
  reward_ledger_config c;
  c.node = "bench";
  c.commit_delay = milliseconds(5);
  auto ledger = sys.spawn(reward_ledger, store, c);
  auto t = steady_clock::now();
  for (std::size_t i = 0; i < n; ++i)
    caf::anon_send(ledger, atom::sample_v, sample(i));
  uint64_t last = 0;
  caf::scoped_actor self{sys};
  while (last < n) {
    self->request(ledger, seconds(10), atom::status_v)
      .receive([&](uint64_t l, uint64_t) { last = l; }, [&](caf::error&) {});
    if (last < n)
      std::this_thread::sleep_for(milliseconds(1));
  }
  double rate = static_cast<double>(n) / seconds_since(t);
  caf::anon_send_exit(ledger, caf::exit_reason::user_shutdown);
  if (!store->verify().ok()) {
    std::fprintf(stderr, "ledger_bench: the group-committed chain does not verify\n");
    std::exit(1);
  }
  return rate;
}

// Fills a usage book like a CCN's: `crns` CRNs, `executions` spread over them, `per` entries each.
void fill_book(lmdb::env& env, const std::vector<std::string>& crns, std::size_t executions,
               std::size_t per) {
  MDB_dbi entries = 0, heads = 0;
  std::string err;
  env.open_db("usage", entries, err);
  env.open_db("usage.heads", heads, err);
  std::vector<std::vector<usage_entry>> chains(crns.size());
  for (std::size_t x = 0; x < executions; ++x) {
    auto c = x % crns.size();
    for (std::size_t k = 0; k < per; ++k) {
      usage_entry e;
      e.node = crns[c];
      e.item_hash = "exec-" + std::to_string(x);
      e.product = x % 3 == 0 ? "instance" : x % 3 == 1 ? "persistent_program" : "program";
      e.wall_s = 360;
      e.vcpus = 1 + x % 4;
      e.memory_mib = 2048;
      e.storage_bytes = 1ull << 28;
      chains[c].push_back(e);
    }
  }
  lmdb::txn t{env, true};
  for (std::size_t c = 0; c < crns.size(); ++c) {
    std::string prev = ledger_genesis;
    uint64_t seq = 0;
    for (auto& e : chains[c]) {
      ledger_chain(e, ++seq, prev);
      t.put(entries, usage_key(e.node, e.seq), ledger_encode(e));
    }
    t.put(heads, crns[c], nlohmann::json{{"seq", seq}, {"hash", prev}}.dump());
  }
  t.commit();
}

} // namespace

int main() {
  spdlog::set_level(spdlog::level::warn);
  auto dir = fs::temp_directory_path() / ("alephd-ledger-bench-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  config cfg;
  caf::actor_system sys{cfg};

  std::printf("ledger_bench: durable reward-ledger appends (LMDB, fsync per commit), %s\n",
              dir.c_str());
  const std::size_t single_n = 500, group_n = 20000;
  std::vector<double> ratios;
  for (int run = 1; run <= 3; ++run) {
    fs::remove_all(dir / "single");
    fs::remove_all(dir / "group");
    double single = single_commits(dir, single_n);
    double group = group_commits(sys, dir, group_n);
    ratios.push_back(group / single);
    std::printf("  run %d: one commit per entry %8.0f entries/s | group commit %9.0f entries/s | "
                "ratio %.1fx (target >= 5x)\n",
                run, single, group, group / single);
  }

  std::printf("ledger_bench: one reward epoch, 75 CCNs x 3 CRNs (300 nodes), 10,000 executions x "
              "10 usage entries\n");
  std::string err;
  auto env = lmdb::env::open((dir / "ccn").string(), err);
  if (!env) {
    std::fprintf(stderr, "ledger_bench: %s\n", err.c_str());
    return 1;
  }
  epoch_input in;
  in.epoch = 1;
  in.start = 0;
  in.end = 86400;
  std::vector<std::string> crn_ids;
  for (int c = 0; c < 75; ++c) {
    rewards::ccn_input ccn{"ccn-" + std::to_string(c), c % 10 != 9, 0.5 + (c % 5) * 0.1, {}, {}};
    for (int k = 0; k < 3; ++k) {
      auto id = "crn-" + std::to_string(c) + "-" + std::to_string(k);
      ccn.linked_crns.push_back(id);
      crn_ids.push_back(id);
      in.crns.push_back(rewards::crn_input{id, 0.3 + ((c + k) % 7) * 0.1, 0.5});
    }
    for (int s = 0; s < 4; ++s)
      ccn.stakes["staker-" + std::to_string((c * 4 + s) % 97)] = 10000.0 * (1 + s);
    in.ccns.push_back(std::move(ccn));
  }
  fill_book(*env, crn_ids, 10000, 10);
  std::vector<double> times;
  for (int run = 1; run <= 3; ++run) {
    in.epoch = static_cast<uint64_t>(run);
    auto t = steady_clock::now();
    in.ranges = usage_ranges(*env, {});
    std::vector<rewards::usage_input> usage;
    if (!collect_usage(*env, in.ranges, usage, err)) {
      std::fprintf(stderr, "ledger_bench: %s\n", err.c_str());
      return 1;
    }
    auto record = compute_epoch(in, usage);
    if (!store_epoch(*env, record, err)) {
      std::fprintf(stderr, "ledger_bench: %s\n", err.c_str());
      return 1;
    }
    double s = seconds_since(t);
    times.push_back(s);
    std::printf("  run %d: %zu executions, %zu payout lines, %.3f s (target <= 1 s: %s)\n", run,
                usage.size(),
                nlohmann::json::parse(record.legacy)["payouts"].size()
                  + nlohmann::json::parse(record.usage)["payouts"].size(),
                s, s <= 1.0 ? "met" : "NOT met");
  }
  if (auto diff = verify_epoch(*env, 3); !diff.empty()) {
    std::fprintf(stderr, "ledger_bench: the stored epoch does not recompute: %s\n", diff.c_str());
    return 1;
  }
  std::printf("  epoch 3 recomputed from the usage book: matches\n");
  fs::remove_all(dir);
  return 0;
}
