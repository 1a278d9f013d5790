// Sandbox cold start to the first response of a trivial program (issue 3, benchmark 1),
// against posix_spawn of the same program plus a connect to it, measured in the same run.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
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

#include "runtime/sandbox.hpp"
#include "runtime/sandbox_pool.hpp"

extern char** environ;

namespace {

using clock_type = std::chrono::steady_clock;

double ms_since(clock_type::time_point t0) {
  return std::chrono::duration<double, std::milli>(clock_type::now() - t0).count();
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

// Connects (retrying while the program comes up), sends one GET and reads the whole answer.
bool get_once(uint16_t port, std::chrono::milliseconds budget) {
  auto deadline = clock_type::now() + budget;
  for (;;) {
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0) {
      std::string req = "GET /echo?x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
      ::send(fd, req.data(), req.size(), 0);
      std::string out;
      char buf[4096];
      for (ssize_t n; (n = ::recv(fd, buf, sizeof buf, 0)) > 0;)
        out.append(buf, static_cast<size_t>(n));
      ::close(fd);
      return out.rfind("HTTP/1.1 200", 0) == 0;
    }
    ::close(fd);
    if (clock_type::now() > deadline)
      return false;
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
}

double baseline_once() {
  auto port = free_port();
  auto port_env = "APP_PORT=" + std::to_string(port);
  std::string greeting = "GREETING=bench";
  char* envp[] = {port_env.data(), greeting.data(), nullptr};
  std::string path = ALEPHD_GUEST_TEST_APP;
  char* argv[] = {path.data(), nullptr};
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_addopen(&fa, STDERR_FILENO, "/dev/null", O_WRONLY, 0);
  auto t0 = clock_type::now();
  pid_t pid = 0;
  int rc = posix_spawn(&pid, path.c_str(), &fa, nullptr, argv, envp);
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0)
    return -1;
  bool ok = get_once(port, std::chrono::seconds(5));
  auto ms = ms_since(t0);
  ::kill(pid, SIGKILL);
  ::waitpid(pid, nullptr, 0);
  return ok ? ms : -1;
}

// The trivial program both sandbox modes start, and the request they time.
alephd::guest::configure program_config(const std::string& code) {
  alephd::guest::configure cfg;
  cfg.code = code;
  cfg.encoding = "plain";
  cfg.entrypoint = "app";
  cfg.variables = {{"GREETING", "bench"}, {"APP_PORT", "8080"}};
  cfg.app_port = 8080;
  return cfg;
}

alephd::guest::http_request first_request() {
  alephd::guest::http_request req;
  req.id = 1;
  req.method = "GET";
  req.path = "/echo";
  req.query_string = "x";
  return req;
}

double sandbox_once(const std::filesystem::path& dir, const std::string& code, int i) {
  alephd::sandbox_options o;
  o.guest_binary = ALEPHD_GUEST_BINARY;
  o.run_dir = (dir / ("run-" + std::to_string(i))).string();
  auto cfg = program_config(code);
  auto req = first_request();
  auto t0 = clock_type::now();
  alephd::sandbox sb{o};
  if (!sb.start(cfg).empty())
    return -1;
  auto resp = sb.request(req, std::chrono::seconds(5));
  auto ms = ms_since(t0);
  sb.stop(std::chrono::seconds(2));
  return resp.status == 200 ? ms : -1;
}

// Cold start with `execution.prealloc`: a pre-started sandbox is taken from the pool (not
// timed: the pool refills between calls), configured with the program and asked once.
double pooled_once(alephd::sandbox_pool& pool, const std::string& code) {
  if (!pool.wait_ready(1, std::chrono::seconds(10)))
    return -1;
  auto cfg = program_config(code);
  auto req = first_request();
  auto t0 = clock_type::now();
  auto sb = pool.take();
  if (!sb || !sb->configure(cfg, std::chrono::seconds(5)).empty())
    return -1;
  auto resp = sb->request(req, std::chrono::seconds(5));
  auto ms = ms_since(t0);
  sb->stop(std::chrono::seconds(2));
  return resp.status == 200 ? ms : -1;
}

struct stats {
  double p50 = 0, p99 = 0;
  size_t failures = 0;
};

stats summarize(std::vector<double> xs) {
  stats s;
  std::vector<double> ok;
  for (auto x : xs)
    (x < 0 ? s.failures++ : (ok.push_back(x), 0u));
  std::sort(ok.begin(), ok.end());
  if (!ok.empty()) {
    s.p50 = ok[ok.size() / 2];
    s.p99 = ok[std::min(ok.size() - 1, ok.size() * 99 / 100)];
  }
  return s;
}

} // namespace

int main(int argc, char** argv) {
  int n = argc > 1 ? std::stoi(argv[1]) : 40;
  std::random_device rd;
  auto dir = std::filesystem::temp_directory_path() / ("alephd-sandbox-bench-" + std::to_string(rd()));
  std::filesystem::create_directories(dir);
  std::ifstream in{ALEPHD_GUEST_TEST_APP, std::ios::binary};
  std::string code{std::istreambuf_iterator<char>{in}, {}};
  std::vector<double> base, sand;
  baseline_once();         // warm-up, not reported
  sandbox_once(dir, code, -1);
  for (int i = 0; i < n; ++i) { // interleaved, so both see the same machine state
    base.push_back(baseline_once());
    sand.push_back(sandbox_once(dir, code, i));
  }
  std::vector<double> pooled;
  {
    alephd::sandbox_options o;
    o.guest_binary = ALEPHD_GUEST_BINARY;
    alephd::sandbox_pool pool{o, 1, (dir / "pool").string()};
    pooled_once(pool, code); // warm-up
    for (int i = 0; i < n; ++i)
      pooled.push_back(pooled_once(pool, code));
  }
  auto b = summarize(base), s = summarize(sand), p = summarize(pooled);
  std::printf("cold start to first response of a trivial HTTP program, %d runs each\n", n);
  std::printf("%-40s %9s %9s %9s\n", "", "p50 ms", "p99 ms", "failures");
  std::printf("%-40s %9.2f %9.2f %9zu\n", "baseline: posix_spawn + connect", b.p50, b.p99, b.failures);
  std::printf("%-40s %9.2f %9.2f %9zu\n", "alephd sandbox (bwrap + guest agent)", s.p50, s.p99, s.failures);
  std::printf("%-40s %9.2f %9.2f %9zu\n", "alephd sandbox from the prealloc pool", p.p50, p.p99, p.failures);
  std::printf("ratio p50 (sandbox / baseline): %.2fx  (targets: p50 <= 25 ms, <= 3x)\n", s.p50 / b.p50);
  std::printf("prealloc p50: %.2f ms  (target <= 5 ms)\n", p.p50);
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
  return b.failures + s.failures + p.failures == 0 ? 0 : 1;
}
