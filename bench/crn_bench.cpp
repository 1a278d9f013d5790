// CRN benchmarks with real processes (issue 3):
//   2. warm calls through /vm/{ref} against calling the program's own server directly,
//      32 concurrent clients: throughput ratio (target >= 0.5) and p99 (target <= 5 ms);
//   4. memory overhead per idle sandbox execution on the CRN side (target <= 8 MiB).
// A CCN and a CRN run as `alephd` processes on loopback; the program is
// tests/guest_test_app.cpp. Warm calls are measured twice: with the program serving one
// request per connection, and with it keeping connections alive (KEEPALIVE=1, a thread per
// connection, as most real servers), each against its own direct baseline.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <arpa/inet.h>
#include <csignal>
#include <fcntl.h>
#include <netinet/in.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "tests/http_client.hpp"
#include "tests/process.hpp"

extern char** environ;

namespace {

using clock_type = std::chrono::steady_clock;
using namespace std::chrono_literals;
using nlohmann::json;
using alephd::test::http_request;

const std::string localhost = "127.0.0.1";

std::string read_file(const std::string& path) {
  std::ifstream in{path, std::ios::binary};
  return {std::istreambuf_iterator<char>{in}, {}};
}

uint16_t free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);
  return ntohs(a.sin_port);
}

// VmRSS of a process in KiB (0 if gone).
uint64_t rss_kib(int pid) {
  std::ifstream in{"/proc/" + std::to_string(pid) + "/status"};
  for (std::string line; std::getline(in, line);)
    if (line.rfind("VmRSS:", 0) == 0)
      return std::stoull(line.substr(6));
  return 0;
}

// Pids whose command line contains `needle`.
std::vector<int> pids_with(const std::string& needle) {
  std::vector<int> out;
  for (auto& e : std::filesystem::directory_iterator{"/proc"}) {
    auto name = e.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos)
      continue;
    auto cmd = read_file(e.path().string() + "/cmdline");
    std::replace(cmd.begin(), cmd.end(), '\0', ' ');
    if (cmd.find(needle) != std::string::npos)
      out.push_back(std::stoi(name));
  }
  return out;
}

struct load_result {
  double seconds = 0;
  uint64_t ok = 0, failed = 0;
  double p50 = 0, p99 = 0;
  double rps() const { return seconds > 0 ? static_cast<double>(ok) / seconds : 0; }
};

// `clients` threads call `one(thread)` (which returns success) for `duration`.
template <class F>
load_result load(int clients, std::chrono::milliseconds duration, F one) {
  std::vector<std::vector<double>> lat(static_cast<size_t>(clients));
  std::atomic<uint64_t> ok{0}, failed{0};
  auto t0 = clock_type::now();
  auto until = t0 + duration;
  std::vector<std::thread> ts;
  for (int c = 0; c < clients; ++c)
    ts.emplace_back([&, c] {
      while (clock_type::now() < until) {
        auto s = clock_type::now();
        bool good = one(c);
        auto ms = std::chrono::duration<double, std::milli>(clock_type::now() - s).count();
        if (good) {
          ++ok;
          lat[static_cast<size_t>(c)].push_back(ms);
        } else {
          ++failed;
        }
      }
    });
  for (auto& t : ts)
    t.join();
  load_result r;
  r.seconds = std::chrono::duration<double>(clock_type::now() - t0).count();
  r.ok = ok;
  r.failed = failed;
  std::vector<double> all;
  for (auto& l : lat)
    all.insert(all.end(), l.begin(), l.end());
  std::sort(all.begin(), all.end());
  if (!all.empty()) {
    r.p50 = all[all.size() / 2];
    r.p99 = all[std::min(all.size() - 1, all.size() * 99 / 100)];
  }
  return r;
}

struct network {
  std::filesystem::path dir;
  std::unique_ptr<alephd::test::process> ccn, crn;
  uint16_t ccn_http = 0, crn_http = 0;

  explicit network(const std::filesystem::path& d) : dir(d) {
    ccn = std::make_unique<alephd::test::process>(
      std::vector<std::string>{"ccn", "--port=0", "--node-port=0", "--data-dir=" + (dir / "ccn").string(),
                               "--verify-signatures=false",
                               "--log-level=warn"},
      (dir / "ccn.log").string());
    if (!ccn->wait_ready())
      throw std::runtime_error("the CCN did not start: " + ccn->log());
    ccn_http = ccn->port("http");
    crn = std::make_unique<alephd::test::process>(
      std::vector<std::string>{"crn", "--port=0", "--ccn=" + ccn->ready.at("node"),
                               "--data-dir=" + (dir / "crn").string(), "--http.threads=2",
                               "--crn.vcpus=8", // room for the idle executions (1 vCPU each)
                               "--log-level=warn"},
      (dir / "crn.log").string());
    if (!crn->wait_ready())
      throw std::runtime_error("the CRN did not start: " + crn->log());
    crn_http = crn->port("http");
    alephd::test::eventually(
      [&] {
        auto r = http_request(localhost, crn_http, "GET", "/status/config");
        return r.status == 200 && json::parse(r.body, nullptr, false)["ccn"]["state"] == "linked";
      },
      10s);
  }

  ~network() {
    // A clean stop removes the sandboxes and their cgroups.
    for (auto* p : {crn.get(), ccn.get()})
      if (p != nullptr && p->running()) {
        p->signal(SIGTERM);
        p->wait_exit(30s);
      }
  }

  std::string post(const json& m) {
    auto r = http_request(localhost, ccn_http, "POST", "/api/v0/messages", m.dump());
    return json::parse(r.body, nullptr, false).value("item_hash", "");
  }

  // A PROGRAM running the test app; `tag` makes distinct programs of the same code.
  std::string program(const std::string& code_store, const std::string& tag, bool keepalive = false) {
    json variables{{"GREETING", tag}, {"APP_PORT", "8080"}};
    if (keepalive)
      variables["KEEPALIVE"] = "1";
    return post({{"chain", "ETH"}, {"sender", "0xabc"}, {"type", "PROGRAM"}, {"item_type", "inline"},
                 {"time", 1700000000.0},
                 {"content",
                  {{"type", "vm-function"}, {"address", "0xabc"}, {"time", 1700000000.0},
                   {"allow_amend", false},
                   {"code", {{"encoding", "plain"}, {"entrypoint", "app"}, {"ref", code_store},
                             {"interface", "binary"}, {"use_latest", false}}},
                   {"variables", variables},
                   {"on", {{"http", true}, {"persistent", false}}},
                   {"environment", {{"reproducible", false}, {"internet", false},
                                    {"aleph_api", false}, {"shared_cache", false}}},
                   {"resources", {{"vcpus", 1}, {"memory", 128}, {"seconds", 10}}},
                   {"volumes", json::array()}}}});
  }

  std::string upload_code() {
    auto up = http_request(localhost, ccn_http, "POST", "/api/v0/storage/add_file",
                           read_file(ALEPHD_GUEST_TEST_APP), {}, 10s);
    auto file = json::parse(up.body, nullptr, false).value("hash", "");
    return post({{"chain", "ETH"}, {"sender", "0xabc"}, {"type", "STORE"}, {"item_type", "inline"},
                 {"time", 1700000000.0},
                 {"content", {{"address", "0xabc"}, {"time", 1700000000.0},
                              {"item_type", "storage"}, {"item_hash", file}}}});
  }
};

} // namespace

int main(int argc, char** argv) {
  int clients = 32;
  auto duration = std::chrono::milliseconds(argc > 1 ? std::stoi(argv[1]) : 3000);
  int idle_n = argc > 2 ? std::stoi(argv[2]) : 20;
  std::random_device rd;
  auto dir = std::filesystem::temp_directory_path() / ("alephd-crn-bench-" + std::to_string(rd()));
  std::filesystem::create_directories(dir);
  int rc = 0;
  try {
    // ---- 2. warm calls ----
    // Baseline: the program's own server on the host, called by the same clients: one connection
    // per call when the program closes each (the default), kept-alive connections when it keeps
    // them (KEEPALIVE=1).
    auto direct = [&](bool keepalive) {
      auto port = free_port();
      auto port_env = "APP_PORT=" + std::to_string(port);
      std::string greeting = "GREETING=bench";
      std::string keepalive_env = std::string{"KEEPALIVE="} + (keepalive ? "1" : "0");
      char* envp[] = {port_env.data(), greeting.data(), keepalive_env.data(), nullptr};
      std::string path = ALEPHD_GUEST_TEST_APP;
      char* args[] = {path.data(), nullptr};
      posix_spawn_file_actions_t fa;
      posix_spawn_file_actions_init(&fa);
      posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, "/dev/null", O_WRONLY, 0);
      posix_spawn_file_actions_addopen(&fa, STDERR_FILENO, "/dev/null", O_WRONLY, 0);
      pid_t app = 0;
      posix_spawn(&app, path.c_str(), &fa, nullptr, args, envp);
      posix_spawn_file_actions_destroy(&fa);
      alephd::test::eventually([&] { return http_request(localhost, port, "GET", "/echo").status == 200; }, 5s);
      load_result r;
      if (keepalive) {
        std::vector<std::unique_ptr<alephd::test::http_connection>> conns;
        for (int c = 0; c < clients; ++c)
          conns.push_back(std::make_unique<alephd::test::http_connection>(localhost, port, 10s));
        r = load(clients, duration, [&](int c) {
          return conns[static_cast<size_t>(c)]->request("GET", "/echo?x").status == 200;
        });
      } else {
        r = load(clients, duration, [&](int) {
          return http_request(localhost, port, "GET", "/echo?x", {}, {}, 10s).status == 200;
        });
      }
      ::kill(app, SIGKILL);
      ::waitpid(app, nullptr, 0);
      return r;
    };
    auto direct_close = direct(false);
    auto direct_keepalive = direct(true);

    network net{dir};
    auto store = net.upload_code();
    // Through the CRN: clients keep their connections to it alive in both cases.
    auto via = [&](const std::string& tag, bool keepalive) {
      auto hash = net.program(store, tag, keepalive);
      auto first = http_request(localhost, net.crn_http, "GET", "/vm/" + hash + "/echo?x", {}, {}, 20s);
      if (first.status != 200)
        throw std::runtime_error("the first call failed: " + std::to_string(first.status) + " " + first.body);
      std::vector<std::unique_ptr<alephd::test::http_connection>> conns;
      for (int c = 0; c < clients; ++c)
        conns.push_back(std::make_unique<alephd::test::http_connection>(localhost, net.crn_http, 10s));
      auto target = "/vm/" + hash + "/echo?x";
      return load(clients, duration, [&](int c) {
        return conns[static_cast<size_t>(c)]->request("GET", target).status == 200;
      });
    };
    auto via_close = via("bench", false);
    auto via_keepalive = via("bench-keepalive", true);
    auto report = [&](const char* title, const load_result& d, const load_result& v) {
      std::printf("warm calls, %s: %d concurrent clients, %.1f s each\n", title, clients,
                  duration.count() / 1000.0);
      std::printf("%-44s %10s %9s %9s %8s\n", "", "calls/s", "p50 ms", "p99 ms", "failed");
      std::printf("%-44s %10.0f %9.2f %9.2f %8llu\n", "baseline: the program's server directly",
                  d.rps(), d.p50, d.p99, static_cast<unsigned long long>(d.failed));
      std::printf("%-44s %10.0f %9.2f %9.2f %8llu\n", "through the CRN: /vm/{ref} (keep-alive)",
                  v.rps(), v.p50, v.p99, static_cast<unsigned long long>(v.failed));
      std::printf("throughput ratio (CRN / direct): %.2f  (target >= 0.5; p99 target <= 5 ms)\n\n",
                  v.rps() / d.rps());
      if (d.failed + v.failed > 0)
        rc = 1;
    };
    report("a program that closes each connection", direct_close, via_close);
    report("a program that keeps connections alive", direct_keepalive, via_keepalive);

    // ---- 4. memory per idle execution ----
    auto crn_pid = net.crn->pid();
    std::this_thread::sleep_for(500ms);
    auto before = rss_kib(crn_pid);
    auto sandboxes_before = pids_with((dir / "crn").string() + "/executions/").size();
    for (int i = 0; i < idle_n; ++i) {
      auto h = net.program(store, "idle-" + std::to_string(i));
      auto r = http_request(localhost, net.crn_http, "GET", "/vm/" + h + "/echo", {}, {}, 20s);
      if (r.status != 200)
        throw std::runtime_error("idle program " + std::to_string(i) + " failed: " + r.body);
    }
    std::this_thread::sleep_for(1s);
    auto after = rss_kib(crn_pid);
    // bwrap's own process per sandbox stays on the host side too (the agent and the program
    // are the workload's, in its cgroup).
    uint64_t bwrap_kib = 0;
    size_t bwraps = 0;
    for (int pid : pids_with("/usr/bin/bwrap"))
      if (read_file("/proc/" + std::to_string(pid) + "/cmdline").find((dir / "crn").string())
          != std::string::npos) {
        bwrap_kib += rss_kib(pid);
        ++bwraps;
      }
    double per_crn = static_cast<double>(after - before) / 1024.0 / idle_n;
    // One bwrap process per sandbox (its monitor; the agent is the namespace's init); the
    // two warm-call programs' sandboxes are running too. RSS counts shared pages: an upper bound.
    auto sandboxes = static_cast<double>(idle_n + 2);
    double per_bwrap = static_cast<double>(bwrap_kib) / 1024.0 / sandboxes;
    std::printf("memory per idle sandbox execution (%d executions, %zu sandbox processes before)\n",
                idle_n, sandboxes_before);
    std::printf("  alephd crn RSS: %.1f MiB -> %.1f MiB = %.2f MiB per execution\n", before / 1024.0,
                after / 1024.0, per_crn);
    std::printf("  bwrap processes: %.2f MiB RSS per sandbox (%zu processes for %.0f sandboxes)\n",
                per_bwrap, bwraps, sandboxes);
    std::printf("  CRN-side total: %.2f MiB per execution (target <= 8 MiB)\n", per_crn + per_bwrap);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "crn_bench: %s\n", e.what());
    rc = 1;
  }
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
  return rc;
}
