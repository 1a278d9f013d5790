// Durable message intake on a CCN over loopback, 8 concurrent keep-alive
// clients: group commit (through the write-ahead log, the default) against one
// LMDB commit per message (the baseline, `--ccn.group-commit=false` on the same
// binary), measured in the same run. Group commits straight into LMDB
// (`--ccn.wal=false`) are measured too, for reference.
#include <algorithm>
#include <csignal>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "runtime/crypto.hpp"
#include "tests/http_client.hpp"
#include "tests/process.hpp"

using namespace std::chrono;

namespace {

struct result {
  double msgs_per_s = 0;
  double p50_ms = 0;
  double p99_ms = 0;
  size_t failures = 0;
};

// Signed by a test wallet, as a real client would: the CCN checks every signature (its default).
std::string message(size_t i, const std::string& run) {
  static const std::string secret(32, '\x42');
  static const std::string sender = *alephd::crypto::eth_address(secret);
  nlohmann::json content{{"address", sender},
                         {"time", 1700000000.25},
                         {"type", "bench"},
                         {"content", {{"run", run}, {"i", i}, {"pad", std::string(200, 'x')}}}};
  auto item_content = content.dump();
  auto item_hash = alephd::crypto::to_hex(alephd::crypto::sha256(item_content));
  nlohmann::json m{{"chain", "ETH"},
                   {"sender", sender},
                   {"type", "POST"},
                   {"channel", "BENCH"},
                   {"item_type", "inline"},
                   {"time", 1700000000.25},
                   {"item_content", item_content},
                   {"item_hash", item_hash},
                   {"signature", alephd::crypto::eth_personal_sign(
                                   secret, alephd::crypto::message_verification_text(
                                             "ETH", sender, "POST", item_hash))}};
  return m.dump();
}

enum class mode { single, group_lmdb, group_wal };

result run_one(const std::filesystem::path& dir, mode m, size_t clients, size_t per_client) {
  const bool group_commit = m != mode::single;
  auto name = std::string{m == mode::single ? "single" : m == mode::group_lmdb ? "group-lmdb" : "group"};
  alephd::test::process ccn{{"ccn", "--port=0", "--node-port=0", "--http.threads=2",
                             "--data-dir=" + (dir / name).string(), "--log-level=warn",
                             std::string{"--ccn.group-commit="} + (group_commit ? "true" : "false"),
                             std::string{"--ccn.wal="} + (m == mode::group_wal ? "true" : "false")},
                            (dir / (name + ".log")).string()};
  if (!ccn.wait_ready()) {
    std::fprintf(stderr, "ccn did not start:\n%s\n", ccn.log().c_str());
    std::exit(1);
  }
  auto port = ccn.port("http");
  // Bodies are built before the clock starts.
  std::vector<std::vector<std::string>> bodies(clients);
  for (size_t c = 0; c < clients; ++c)
    for (size_t i = 0; i < per_client; ++i)
      bodies[c].push_back(message(c * per_client + i, name));
  std::vector<std::vector<double>> lat(clients);
  std::atomic<size_t> failures{0};
  auto t0 = steady_clock::now();
  std::vector<std::thread> threads;
  for (size_t c = 0; c < clients; ++c)
    threads.emplace_back([&, c] {
      alephd::test::http_connection conn{"127.0.0.1", port};
      for (auto& b : bodies[c]) {
        auto s = steady_clock::now();
        auto r = conn.request("POST", "/api/v0/messages", b, {{"Content-Type", "application/json"}});
        lat[c].push_back(duration<double, std::milli>(steady_clock::now() - s).count());
        if (r.status != 200)
          ++failures;
      }
    });
  for (auto& t : threads)
    t.join();
  auto secs = duration<double>(steady_clock::now() - t0).count();
  std::vector<double> all;
  for (auto& l : lat)
    all.insert(all.end(), l.begin(), l.end());
  std::sort(all.begin(), all.end());
  result r;
  r.msgs_per_s = static_cast<double>(all.size()) / secs;
  r.p50_ms = all[all.size() / 2];
  r.p99_ms = all[std::min(all.size() - 1, all.size() * 99 / 100)];
  r.failures = failures;
  ccn.signal(SIGTERM);
  ccn.wait_exit(seconds(10));
  return r;
}

} // namespace

int main(int argc, char** argv) {
  size_t clients = 8, per_client = 500;
  if (argc > 1)
    per_client = std::stoul(argv[1]);
  std::random_device rd;
  auto dir = std::filesystem::temp_directory_path() / ("alephd-bench-" + std::to_string(rd()));
  std::filesystem::create_directories(dir);
  std::printf("durable message intake: %zu clients x %zu messages, keep-alive HTTP over loopback\n",
              clients, per_client);
  // Warm-up run (page cache, binary), not reported.
  run_one(dir / "warm", mode::group_wal, clients, 50);
  auto base = run_one(dir, mode::single, clients, per_client);
  auto group = run_one(dir, mode::group_wal, clients, per_client);
  auto group_lmdb = run_one(dir, mode::group_lmdb, clients, per_client);
  std::printf("%-34s %10s %9s %9s %9s\n", "", "msgs/s", "p50 ms", "p99 ms", "failures");
  std::printf("%-34s %10.0f %9.3f %9.3f %9zu\n", "baseline: one commit per message", base.msgs_per_s,
              base.p50_ms, base.p99_ms, base.failures);
  std::printf("%-34s %10.0f %9.3f %9.3f %9zu\n", "alephd: group commit (log)", group.msgs_per_s,
              group.p50_ms, group.p99_ms, group.failures);
  std::printf("%-34s %10.0f %9.3f %9.3f %9zu\n", "  for reference: --ccn.wal=false", group_lmdb.msgs_per_s,
              group_lmdb.p50_ms, group_lmdb.p99_ms, group_lmdb.failures);
  std::printf("ratio (group / baseline): %.2fx  (target >= 5x); without the log %.2fx\n",
              group.msgs_per_s / base.msgs_per_s, group_lmdb.msgs_per_s / base.msgs_per_s);
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
  return base.failures + group.failures + group_lmdb.failures == 0 ? 0 : 1;
}
