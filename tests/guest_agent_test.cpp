// Runs the real `alephd-guest` binary against a unix socket this test listens
// on, with tests/guest_test_app.cpp as the program it starts.

#include "guest/agent.hpp"
#include "runtime/guest_protocol.hpp"

#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>
#include <set>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#ifndef ALEPHD_GUEST_BINARY
#  error "ALEPHD_GUEST_BINARY must name the alephd-guest binary"
#endif
#ifndef ALEPHD_GUEST_TEST_APP
#  error "ALEPHD_GUEST_TEST_APP must name the guest_test_app binary"
#endif

namespace gp = alephd::guest;
namespace ag = alephd::guest::agent;
using namespace std::chrono_literals;
using clock_type = std::chrono::steady_clock;

namespace {

// A loopback port that was free a moment ago.
uint16_t free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    ::close(fd);
    return 0;
  }
  socklen_t len = sizeof addr;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  ::close(fd);
  return ntohs(addr.sin_port);
}

std::string read_file(const char* path) {
  std::ifstream in{path, std::ios::binary};
  return {std::istreambuf_iterator<char>{in}, {}};
}

class guest_agent : public ::testing::Test {
protected:
  /// Arguments for the agent after --socket and --work-dir.
  virtual std::vector<std::string> agent_extra_args() const { return {}; }

  void SetUp() override {
    char tmpl[] = "/tmp/guest_agent_test_XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    auto sock = dir_ + "/host.sock";
    listen_fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, sock.c_str(), sizeof addr.sun_path - 1);
    ASSERT_EQ(::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr),
                     sizeof addr),
              0);
    ASSERT_EQ(::listen(listen_fd_, 1), 0);
    app_port_ = free_port();
    ASSERT_NE(app_port_, 0);

    auto work = dir_ + "/work";
    std::vector<std::string> args{ALEPHD_GUEST_BINARY, "--socket", sock, "--work-dir", work};
    for (auto& a : agent_extra_args())
      args.push_back(a);
    std::vector<char*> argv;
    for (auto& a : args)
      argv.push_back(a.data());
    argv.push_back(nullptr);
    agent_ = ::fork();
    ASSERT_GE(agent_, 0);
    if (agent_ == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      ::execv(ALEPHD_GUEST_BINARY, argv.data());
      ::_exit(127);
    }
    pollfd pfd{listen_fd_, POLLIN, 0};
    ASSERT_EQ(::poll(&pfd, 1, 5000), 1) << "agent did not connect";
    conn_ = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    ASSERT_GE(conn_, 0);
  }

  void TearDown() override {
    if (agent_ > 0) {
      ::kill(agent_, SIGKILL);
      ::waitpid(agent_, nullptr, 0);
    }
    if (conn_ >= 0)
      ::close(conn_);
    if (listen_fd_ >= 0)
      ::close(listen_fd_);
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  void send(const gp::frame& f) {
    auto bytes = gp::encode(f);
    std::size_t off = 0;
    while (off < bytes.size()) {
      auto n = ::send(conn_, bytes.data() + off, bytes.size() - off,
                      MSG_NOSIGNAL);
      ASSERT_GT(n, 0) << "send to agent failed";
      off += static_cast<std::size_t>(n);
    }
  }

  // Reads from the agent until `until`; logs go to logs_, others to pending_.
  // Returns false at EOF or timeout.
  bool pump(clock_type::time_point until) {
    std::string error;
    auto before = pending_.size() + logs_.size();
    for (;;) {
      while (auto f = dec_.next(error)) {
        if (auto* l = std::get_if<gp::log>(&*f))
          logs_.push_back(*l);
        else
          pending_.push_back(std::move(*f));
      }
      EXPECT_EQ(error, "") << "agent sent a bad frame";
      if (!error.empty() || eof_)
        return false;
      if (pending_.size() + logs_.size() > before)
        return true;
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        until - clock_type::now());
      if (left.count() <= 0)
        return false;
      pollfd pfd{conn_, POLLIN, 0};
      if (::poll(&pfd, 1, static_cast<int>(left.count())) <= 0)
        continue;
      char buf[64 * 1024];
      auto n = ::read(conn_, buf, sizeof buf);
      if (n <= 0) {
        eof_ = true;
        continue;
      }
      dec_.feed(buf, static_cast<std::size_t>(n));
    }
  }

  // The next non-log frame, within `timeout`.
  std::optional<gp::frame> next(std::chrono::milliseconds timeout = 5000ms) {
    auto until = clock_type::now() + timeout;
    while (pending_.empty())
      if (!pump(until) && pending_.empty())
        return std::nullopt;
    auto f = std::move(pending_.front());
    pending_.pop_front();
    return f;
  }

  template <class T>
  std::optional<T> next_as(std::chrono::milliseconds timeout = 5000ms) {
    auto f = next(timeout);
    if (!f)
      return std::nullopt;
    if (auto* t = std::get_if<T>(&*f))
      return *t;
    ADD_FAILURE() << "unexpected frame " << gp::type_name(*f);
    return std::nullopt;
  }

  bool has_log(const std::string& stream, const std::string& needle) const {
    for (const auto& l : logs_)
      if (l.stream == stream && l.line.find(needle) != std::string::npos)
        return true;
    return false;
  }

  bool wait_log(const std::string& stream, const std::string& needle,
                std::chrono::milliseconds timeout = 5000ms) {
    auto until = clock_type::now() + timeout;
    while (!has_log(stream, needle))
      if (!pump(until) && !has_log(stream, needle))
        return false;
    return true;
  }

  // Waits for the agent to exit; returns its wait status.
  std::optional<int> wait_exit(std::chrono::milliseconds timeout) {
    auto until = clock_type::now() + timeout;
    while (clock_type::now() < until) {
      int status = 0;
      if (::waitpid(agent_, &status, WNOHANG) == agent_) {
        agent_ = -1;
        return status;
      }
      std::this_thread::sleep_for(10ms);
    }
    return std::nullopt;
  }

  gp::configure app_config() {
    gp::configure cfg;
    cfg.code = read_file(ALEPHD_GUEST_TEST_APP);
    cfg.encoding = "plain";
    cfg.entrypoint = "app";
    cfg.interface = "binary";
    cfg.variables = {{"APP_PORT", std::to_string(app_port_)},
                     {"GREETING", "hello-from-variables"}};
    cfg.app_port = app_port_;
    return cfg;
  }

  // ready + configure, expecting success.
  void start_app(gp::configure cfg) {
    auto r = next_as<gp::ready>();
    ASSERT_TRUE(r);
    send(cfg);
    auto res = next_as<gp::configure_result>();
    ASSERT_TRUE(res);
    ASSERT_TRUE(res->success) << res->error;
  }

  // Starts a program that ignores SIGTERM and halts it; when the halt was sent. The agent must
  // answer `halted` with SIGKILL's code within 6 s.
  clock_type::time_point halt_a_program_that_ignores_sigterm() {
    auto cfg = app_config();
    cfg.variables["IGNORE_SIGTERM"] = "1";
    start_app(cfg);
    EXPECT_TRUE(wait_log("stdout", "listening on"));
    auto t0 = clock_type::now();
    send(gp::halt{});
    auto halted = next_as<gp::halted>(6000ms);
    EXPECT_TRUE(halted);
    if (halted) {
      EXPECT_EQ(halted->exit_code, 128 + SIGKILL);
    }
    return t0;
  }

  void start_app() {
    start_app(app_config());
  }

  static gp::http_request get(uint64_t id, std::string path,
                              std::string query = "") {
    return {id, "GET", std::move(path), std::move(query), {}, ""};
  }

  // Sends `req` and returns the body of its answer, which must be a 200.
  std::string call(const gp::http_request& req) {
    send(req);
    auto resp = next_as<gp::http_response>();
    if (!resp) {
      ADD_FAILURE() << "no answer to request " << req.id;
      return "";
    }
    EXPECT_EQ(resp->status, 200) << resp->error << resp->body;
    return resp->body;
  }

  std::string dir_;
  int listen_fd_ = -1;
  int conn_ = -1;
  pid_t agent_ = -1;
  uint16_t app_port_ = 0;
  gp::decoder dec_;
  bool eof_ = false;
  std::deque<gp::frame> pending_;
  std::vector<gp::log> logs_;
};

} // namespace

TEST_F(guest_agent, ready_arrives_with_a_version) {
  auto r = next_as<gp::ready>();
  ASSERT_TRUE(r);
  EXPECT_FALSE(r->version.empty());
  // Over a socket the host has a directory the agent sees: the code may come as a file.
  EXPECT_EQ(r->features, std::vector<std::string>{"code_file"});
}

TEST_F(guest_agent, configure_succeeds_and_forwards_a_request) {
  start_app();
  send(get(1, "/echo", "x=42"));
  auto resp = next_as<gp::http_response>();
  ASSERT_TRUE(resp);
  EXPECT_EQ(resp->id, 1u);
  EXPECT_EQ(resp->status, 200);
  EXPECT_EQ(resp->error, "");
  EXPECT_EQ(resp->body, "x=42 hello-from-variables");
  bool has_app_header = false;
  for (const auto& [name, value] : resp->headers) {
    EXPECT_FALSE(ag::iequals(name, "content-length"));
    if (name == "X-App" && value == "guest-test")
      has_app_header = true;
  }
  EXPECT_TRUE(has_app_header);
}

TEST_F(guest_agent, chunked_and_not_found_responses) {
  start_app();
  send(get(5, "/chunked", "c"));
  auto resp = next_as<gp::http_response>();
  ASSERT_TRUE(resp);
  EXPECT_EQ(resp->status, 200);
  EXPECT_EQ(resp->body, "c hello-from-variables");
  send(get(6, "/nothing"));
  resp = next_as<gp::http_response>();
  ASSERT_TRUE(resp);
  EXPECT_EQ(resp->id, 6u);
  EXPECT_EQ(resp->status, 404);
}

TEST_F(guest_agent, twenty_concurrent_requests_get_their_own_answers) {
  start_app();
  for (uint64_t id = 100; id < 120; ++id)
    send(get(id, "/echo", "n=" + std::to_string(id)));
  std::set<uint64_t> seen;
  for (int i = 0; i < 20; ++i) {
    auto resp = next_as<gp::http_response>();
    ASSERT_TRUE(resp) << "only " << i << " answers";
    EXPECT_EQ(resp->status, 200);
    EXPECT_EQ(resp->body,
              "n=" + std::to_string(resp->id) + " hello-from-variables");
    EXPECT_TRUE(seen.insert(resp->id).second) << "duplicate id " << resp->id;
  }
  EXPECT_EQ(seen.size(), 20u);
  EXPECT_EQ(*seen.begin(), 100u);
  EXPECT_EQ(*seen.rbegin(), 119u);
}

TEST_F(guest_agent, slow_requests_do_not_starve_a_concurrent_program) {
  auto cfg = app_config();
  cfg.variables["THREADED"] = "1";
  start_app(cfg);
  // More slow requests than the pool starts threads for at once, then a fast one.
  for (uint64_t id = 1; id <= 12; ++id)
    send(get(id, "/sleep", "ms=1500"));
  auto t0 = clock_type::now();
  send(get(99, "/echo", "fast"));
  auto resp = next_as<gp::http_response>(1200ms);
  ASSERT_TRUE(resp) << "the fast request waited behind the slow ones";
  EXPECT_EQ(resp->id, 99u);
  EXPECT_EQ(resp->body, "fast hello-from-variables");
  EXPECT_LT(clock_type::now() - t0, 1000ms);
  std::set<uint64_t> slow;
  for (int i = 0; i < 12; ++i)
    if (auto r = next_as<gp::http_response>(5000ms))
      slow.insert(r->id);
  EXPECT_EQ(slow.size(), 12u);
}

TEST_F(guest_agent, connections_the_program_keeps_alive_carry_later_requests) {
  auto cfg = app_config();
  cfg.variables["KEEPALIVE"] = "1";
  start_app(cfg);
  auto post = [](uint64_t id) { return gp::http_request{id, "POST", "/conn", "", {}, "data"}; };
  EXPECT_EQ(call(get(1, "/conn")), "1 1");
  // Before a reuse has worked, a POST takes a new connection: it could not be sent again safely
  // if the program closed a pooled one under it.
  EXPECT_EQ(call(post(2)), "2 1");
  EXPECT_EQ(call(get(3, "/conn")), "2 2"); // the newest pooled connection
  EXPECT_EQ(call(post(4)), "2 3");
  // Concurrent requests take pooled connections or new ones, and leave them all in the pool.
  for (uint64_t id = 10; id < 13; ++id)
    send(get(id, "/sleep", "ms=200"));
  for (int i = 0; i < 3; ++i) {
    auto resp = next_as<gp::http_response>();
    ASSERT_TRUE(resp);
    EXPECT_EQ(resp->body, "slept");
  }
  for (uint64_t id = 20; id < 23; ++id)
    send(get(id, "/conn"));
  for (int i = 0; i < 3; ++i) {
    auto resp = next_as<gp::http_response>();
    ASSERT_TRUE(resp);
    EXPECT_LE(std::stoi(resp->body.substr(0, resp->body.find(' '))), 3)
      << "a new connection while three were pooled";
  }
}

TEST_F(guest_agent, a_program_that_states_a_short_keep_alive_timeout_gets_its_connections_back_sooner) {
  auto cfg = app_config();
  cfg.variables["KEEPALIVE"] = "1";
  start_app(cfg);
  EXPECT_EQ(call(get(1, "/conn")), "1 1");
  // `Keep-Alive: timeout=1` in the last answer: kept 0.5 s (1 s less the margin), not 1.5 s.
  EXPECT_EQ(call(get(2, "/conn", "timeout=1")), "1 2");
  std::this_thread::sleep_for(1000ms);
  EXPECT_EQ(call(get(3, "/conn")), "2 1");
  // Without the header, a connection idle as long is still used.
  std::this_thread::sleep_for(1000ms);
  EXPECT_EQ(call(get(4, "/conn")), "2 2");
}

TEST_F(guest_agent, a_pooled_connection_closed_under_a_request_is_retried_on_a_new_one) {
  auto cfg = app_config();
  cfg.variables["KEEPALIVE"] = "1";
  cfg.variables["DROP_REUSED"] = "1"; // closes a connection, unanswered, at its 2nd request
  start_app(cfg);
  EXPECT_EQ(call(get(1, "/conn")), "1 1");
  EXPECT_EQ(call(get(2, "/conn")), "2 1"); // sent on connection 1, closed unanswered, sent again
  // A program that closes pooled connections is not pooled any more: one request each now.
  EXPECT_EQ(call(get(3, "/conn")), "3 1");
  EXPECT_EQ(call({4, "POST", "/conn", "", {}, "x"}), "4 1");
  // The program read request 2 twice and the others once (with pooling still on, request 3
  // would have been read twice as well).
  auto reads = [&] {
    return std::count_if(logs_.begin(), logs_.end(), [](const gp::log& l) {
      return l.line.find("request GET /conn") != std::string::npos
             || l.line.find("request POST /conn") != std::string::npos;
    });
  };
  auto until = clock_type::now() + 3000ms;
  while (reads() < 5 && pump(until)) {
  }
  pump(clock_type::now() + 200ms); // anything more would arrive now
  EXPECT_EQ(reads(), 5);
}

TEST_F(guest_agent, a_program_serving_one_connection_at_a_time_is_not_held_by_the_pool) {
  auto cfg = app_config();
  cfg.variables["KEEPALIVE"] = "serial"; // blocks reading its current connection
  start_app(cfg);
  EXPECT_EQ(call(get(1, "/conn")), "1 1");
  // A slow request takes the pooled connection (which the program is waiting on), the next a
  // new one, which the program accepts only once the pooled connection, back in the pool after
  // the slow answer, is closed. Pooling keeps a connection up to 1.5 s; the agent must close it
  // well before.
  send(get(2, "/sleep", "ms=200"));
  send(get(3, "/conn"));
  std::set<std::string> bodies;
  for (int i = 0; i < 2; ++i) {
    auto resp = next_as<gp::http_response>(1000ms);
    ASSERT_TRUE(resp) << "a call waited behind the pooled connection";
    bodies.insert(resp->body);
  }
  EXPECT_EQ(bodies, (std::set<std::string>{"slept", "2 1"}));
  EXPECT_EQ(call(get(4, "/conn")), "3 1"); // no pooling any more
}

TEST_F(guest_agent, a_program_that_closes_every_connection_unannounced_answers_every_call) {
  start_app(); // answers HTTP/1.1 without `Connection: close`, then closes
  for (uint64_t id = 1; id <= 30; ++id) {
    if (id % 2 == 1)
      EXPECT_EQ(call(get(id, "/echo", std::to_string(id))), std::to_string(id) + " hello-from-variables");
    else
      EXPECT_EQ(call({id, "POST", "/aleph/event", "", {}, "event-" + std::to_string(id)}), "stored");
  }
}

TEST_F(guest_agent, program_output_arrives_as_log_frames) {
  start_app();
  EXPECT_TRUE(wait_log("stdout", "listening on " + std::to_string(app_port_)));
  EXPECT_TRUE(wait_log("stderr", "ready"));
  send(get(2, "/echo", "logged"));
  ASSERT_TRUE(next_as<gp::http_response>());
  EXPECT_TRUE(wait_log("stdout", "request GET /echo?logged HTTP/1.1"));
}

TEST_F(guest_agent, request_before_the_program_listens_is_retried) {
  auto cfg = app_config();
  cfg.variables["START_DELAY_MS"] = "800";
  auto t0 = clock_type::now();
  start_app(cfg);
  send(get(3, "/echo", "early"));
  auto resp = next_as<gp::http_response>(8000ms);
  ASSERT_TRUE(resp);
  EXPECT_EQ(resp->status, 200) << resp->error;
  EXPECT_EQ(resp->body, "early hello-from-variables");
  EXPECT_GE(clock_type::now() - t0, 700ms);
}

TEST_F(guest_agent, crash_is_reported_as_halted_with_the_exit_code) {
  start_app();
  send(get(4, "/crash"));
  std::optional<gp::halted> halted;
  std::optional<gp::http_response> resp;
  while (!halted) {
    auto f = next(5000ms);
    ASSERT_TRUE(f) << "no halted frame";
    if (auto* h = std::get_if<gp::halted>(&*f))
      halted = *h;
    else if (auto* r = std::get_if<gp::http_response>(&*f))
      resp = *r;
  }
  EXPECT_EQ(halted->exit_code, 3);
  EXPECT_TRUE(has_log("system", "exited with code 3"));
  if (resp) { // the answer may or may not beat the exit
    EXPECT_EQ(resp->id, 4u);
    EXPECT_EQ(resp->status, 502);
  }
  auto status = wait_exit(3000ms);
  ASSERT_TRUE(status) << "agent still running";
  EXPECT_TRUE(WIFEXITED(*status));
}

TEST_F(guest_agent, halt_stops_the_program_and_the_agent) {
  start_app();
  ASSERT_TRUE(wait_log("stdout", "listening on"));
  auto t0 = clock_type::now();
  send(gp::halt{});
  auto halted = next_as<gp::halted>(6000ms);
  ASSERT_TRUE(halted);
  EXPECT_EQ(halted->exit_code, 128 + SIGTERM);
  auto left = 6000ms - std::chrono::duration_cast<std::chrono::milliseconds>(
                         clock_type::now() - t0);
  auto status = wait_exit(std::max(left, 1ms));
  ASSERT_TRUE(status) << "agent did not exit within 6 s";
  ASSERT_TRUE(WIFEXITED(*status));
  EXPECT_EQ(WEXITSTATUS(*status), 0);
}

TEST_F(guest_agent, halt_kills_a_program_that_ignores_sigterm) {
  auto t0 = halt_a_program_that_ignores_sigterm();
  EXPECT_GE(clock_type::now() - t0, 4900ms); // the grace period was given
  auto status = wait_exit(1000ms);
  ASSERT_TRUE(status);
  ASSERT_TRUE(WIFEXITED(*status));
  EXPECT_EQ(WEXITSTATUS(*status), 0);
  EXPECT_LE(clock_type::now() - t0, 6000ms);
}

// `--halt-grace` (what a microVM's kernel command line passes on): the agent waits that long.
class guest_agent_halt_grace : public guest_agent {
protected:
  std::vector<std::string> agent_extra_args() const override { return {"--halt-grace", "1"}; }
};

TEST_F(guest_agent_halt_grace, halt_kills_a_program_that_ignores_sigterm_after_the_given_grace) {
  auto t0 = halt_a_program_that_ignores_sigterm();
  EXPECT_GE(clock_type::now() - t0, 900ms);  // the grace period was given
  EXPECT_LT(clock_type::now() - t0, 3500ms); // and it was the one asked for, not the default 5 s
}

TEST(guest_agent_args, a_bad_halt_grace_is_a_usage_error) {
  for (const char* v : {"0", "x", "-1", "3601", "2s"}) {
    auto cmd = "'" + std::string{ALEPHD_GUEST_BINARY} + "' --socket /nonexistent/s --halt-grace '"
               + v + "' 2>/dev/null";
    auto rc = std::system(cmd.c_str());
    ASSERT_TRUE(WIFEXITED(rc)) << v;
    EXPECT_EQ(WEXITSTATUS(rc), 64) << v;
  }
}

TEST_F(guest_agent, program_that_never_listens_gives_503) {
  auto cfg = app_config();
  cfg.variables["START_DELAY_MS"] = "30000";
  start_app(cfg);
  auto t0 = clock_type::now();
  send(get(11, "/echo", "late"));
  auto resp = next_as<gp::http_response>(8000ms);
  ASSERT_TRUE(resp);
  EXPECT_EQ(resp->id, 11u);
  EXPECT_EQ(resp->status, 503);
  EXPECT_NE(resp->error, "");
  auto waited = clock_type::now() - t0;
  EXPECT_GE(waited, 4500ms);
  EXPECT_LE(waited, 6500ms);
}

TEST_F(guest_agent, oversize_or_garbage_answers_give_502) {
  start_app();
  send(get(12, "/big", std::to_string(17 * 1024 * 1024)));
  auto resp = next_as<gp::http_response>();
  ASSERT_TRUE(resp);
  EXPECT_EQ(resp->id, 12u);
  EXPECT_EQ(resp->status, 502);
  EXPECT_NE(resp->error.find("too large"), std::string::npos) << resp->error;
  send(get(13, "/garbage"));
  resp = next_as<gp::http_response>();
  ASSERT_TRUE(resp);
  EXPECT_EQ(resp->status, 502);
  // A large but acceptable body still goes through whole.
  send(get(14, "/big", std::to_string(4 * 1024 * 1024)));
  resp = next_as<gp::http_response>();
  ASSERT_TRUE(resp);
  EXPECT_EQ(resp->status, 200);
  EXPECT_EQ(resp->body, std::string(4 * 1024 * 1024, 'z'));
}

TEST_F(guest_agent, halt_before_configure_exits_cleanly) {
  ASSERT_TRUE(next_as<gp::ready>());
  send(gp::halt{});
  ASSERT_TRUE(next_as<gp::halted>());
  auto status = wait_exit(3000ms);
  ASSERT_TRUE(status);
  EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 0);
}

TEST_F(guest_agent, the_code_can_come_as_a_file_in_the_host_directory) {
  // The host directory is where the agent's socket is (a sandbox's /run/alephd).
  auto cfg = app_config();
  {
    std::ofstream out{dir_ + "/program", std::ios::binary};
    out << cfg.code;
  }
  auto size = cfg.code.size();
  cfg.code.clear();
  cfg.code_file = "program";
  start_app(cfg);
  // Copied in: the program runs from the agent's work dir, whole.
  std::error_code ec;
  EXPECT_EQ(std::filesystem::file_size(dir_ + "/work/code/app", ec), size);
  send(get(1, "/echo", "f=1"));
  auto resp = next_as<gp::http_response>();
  ASSERT_TRUE(resp);
  EXPECT_EQ(resp->status, 200);
  EXPECT_EQ(resp->body, "f=1 hello-from-variables");
}

TEST_F(guest_agent, a_bad_code_file_is_refused_with_a_reason) {
  ASSERT_TRUE(next_as<gp::ready>());
  {
    std::ofstream out{dir_ + "/empty"};
  }
  std::filesystem::create_directory(dir_ + "/adir");
  std::filesystem::create_symlink(ALEPHD_GUEST_TEST_APP, dir_ + "/link");
  auto code = app_config().code;
  struct bad_case {
    std::string file;
    bool with_code;
    std::string why;
  };
  for (const auto& c : std::vector<bad_case>{{"../program", false, "must be a file name"},
                                             {"sub/program", false, "must be a file name"},
                                             {"..", false, "must be a file name"},
                                             {"missing", false, "cannot open"},
                                             {"link", false, "cannot open"}, // no symlinks out
                                             {"adir", false, "not a regular file"},
                                             {"empty", false, "empty"},
                                             {"empty", true, "both set"}}) {
    auto cfg = app_config();
    cfg.code = c.with_code ? code : std::string{};
    cfg.code_file = c.file;
    send(cfg);
    auto res = next_as<gp::configure_result>();
    ASSERT_TRUE(res) << c.file;
    EXPECT_FALSE(res->success) << c.file;
    EXPECT_NE(res->error.find(c.why), std::string::npos) << c.file << ": " << res->error;
  }
  // Still usable after refusals.
  send(app_config());
  auto res = next_as<gp::configure_result>();
  ASSERT_TRUE(res);
  EXPECT_TRUE(res->success) << res->error;
}

TEST_F(guest_agent, bad_configures_are_refused_with_a_reason) {
  ASSERT_TRUE(next_as<gp::ready>());
  // Not executable: text without a shebang.
  auto cfg = app_config();
  cfg.code = "this is not a program\n";
  send(cfg);
  auto res = next_as<gp::configure_result>();
  ASSERT_TRUE(res);
  EXPECT_FALSE(res->success);
  EXPECT_NE(res->error.find("cannot execute app"), std::string::npos)
    << res->error;
  // No entrypoint named.
  cfg = app_config();
  cfg.entrypoint = "";
  send(cfg);
  res = next_as<gp::configure_result>();
  ASSERT_TRUE(res);
  EXPECT_FALSE(res->success);
  EXPECT_NE(res->error.find("entrypoint"), std::string::npos) << res->error;
  // No code, so no entrypoint file.
  cfg = app_config();
  cfg.code.clear();
  send(cfg);
  res = next_as<gp::configure_result>();
  ASSERT_TRUE(res);
  EXPECT_FALSE(res->success);
  EXPECT_NE(res->error.find("missing"), std::string::npos) << res->error;
  // Escaping the code directory.
  cfg = app_config();
  cfg.entrypoint = "../escape";
  send(cfg);
  res = next_as<gp::configure_result>();
  ASSERT_TRUE(res);
  EXPECT_FALSE(res->success);
  // zip is not there yet.
  cfg = app_config();
  cfg.encoding = "zip";
  send(cfg);
  res = next_as<gp::configure_result>();
  ASSERT_TRUE(res);
  EXPECT_FALSE(res->success);
  EXPECT_EQ(res->error, "zip archives are unpacked by the host (encoding 'mounted')");
  // Still usable after refusals.
  send(app_config());
  res = next_as<gp::configure_result>();
  ASSERT_TRUE(res);
  EXPECT_TRUE(res->success) << res->error;
  send(app_config());
  res = next_as<gp::configure_result>();
  ASSERT_TRUE(res);
  EXPECT_FALSE(res->success);
  EXPECT_EQ(res->error, "already configured");
}

TEST_F(guest_agent, requests_and_events_without_a_program) {
  ASSERT_TRUE(next_as<gp::ready>());
  send(get(9, "/echo"));
  auto resp = next_as<gp::http_response>();
  ASSERT_TRUE(resp);
  EXPECT_EQ(resp->id, 9u);
  EXPECT_EQ(resp->status, 503);
  send(gp::event{"{}"});
  resp = next_as<gp::http_response>();
  ASSERT_TRUE(resp);
  EXPECT_EQ(resp->id, 0u);
  EXPECT_EQ(resp->status, 503);
}

TEST_F(guest_agent, an_event_is_posted_to_the_program_as_aleph_event) {
  start_app();
  send(gp::event{R"({"item_hash":"abc","type":"POST"})"});
  auto resp = next_as<gp::http_response>();
  ASSERT_TRUE(resp);
  EXPECT_EQ(resp->id, 0u) << "an event's answer carries no caller's id";
  EXPECT_EQ(resp->status, 200) << resp->error;
  EXPECT_EQ(resp->body, "stored");
  send(get(5, "/last-event"));
  resp = next_as<gp::http_response>();
  ASSERT_TRUE(resp);
  EXPECT_EQ(resp->id, 5u);
  EXPECT_EQ(resp->body, R"({"item_hash":"abc","type":"POST"})");
}

TEST_F(guest_agent, garbage_from_the_host_ends_the_agent) {
  ASSERT_TRUE(next_as<gp::ready>());
  std::string bad = "\xff\xff\xff\xff";
  ASSERT_EQ(::send(conn_, bad.data(), bad.size(), MSG_NOSIGNAL), 4);
  auto status = wait_exit(3000ms);
  ASSERT_TRUE(status);
  EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 2);
}

// --- the agent's HTTP response parser ----------------------------------------

namespace {

ag::response_parser parse_all(std::string_view raw, std::size_t step,
                              bool eof = true) {
  ag::response_parser p;
  for (std::size_t i = 0; i < raw.size(); i += step)
    p.feed(raw.substr(i, step));
  if (eof)
    p.eof();
  return p;
}

} // namespace

TEST(guest_agent_parser, content_length_chunked_and_close) {
  using state = ag::response_parser::state;
  for (std::size_t step : {1u, 3u, 1000u}) {
    auto a = parse_all("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX: y\r\n\r\nhello",
                       step, false);
    EXPECT_EQ(a.current(), state::done);
    EXPECT_EQ(a.body(), "hello");
    ASSERT_EQ(a.headers().size(), 1u);
    auto c = parse_all("HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n"
                       "5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nT: 1\r\n\r\n",
                       step, false);
    EXPECT_EQ(c.current(), state::done) << c.error();
    EXPECT_EQ(c.status(), 201);
    EXPECT_EQ(c.body(), "hello world");
    auto k = parse_all("HTTP/1.0 200 OK\r\n\r\nuntil close", step);
    EXPECT_EQ(k.current(), state::done);
    EXPECT_EQ(k.body(), "until close");
    auto i = parse_all("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
                       step, false);
    EXPECT_EQ(i.current(), state::done);
    EXPECT_EQ(i.status(), 204);
  }
}

TEST(guest_agent_parser, hostile_responses_are_errors) {
  using state = ag::response_parser::state;
  for (std::string raw : {
         "garbage\r\n\r\n",
         "HTTP/1.1 2x0 OK\r\n\r\n",
         "HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
         "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
         "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
         "HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n",
         "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
         "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
         "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n",
         "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffff\r\n",
         "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
       }) {
    auto p = parse_all(raw, 7);
    EXPECT_EQ(p.current(), state::error) << raw;
  }
  // An endless head or body is cut at the limit, not buffered forever.
  ag::response_parser head;
  std::string chunk(4096, 'a');
  head.feed("HTTP/1.1 200 OK\r\nX: ");
  for (int i = 0; i < 100 && head.current() != state::error; ++i)
    head.feed(chunk);
  EXPECT_EQ(head.current(), state::error);
  ag::response_parser body{false, 1000};
  body.feed("HTTP/1.1 200 OK\r\n\r\n");
  for (int i = 0; i < 10; ++i)
    body.feed(std::string(200, 'b'));
  EXPECT_EQ(body.current(), state::error);
}

TEST(guest_agent_parser, request_builder_refuses_injection) {
  EXPECT_FALSE(ag::build_request("GET", "/a\r\nX: y", "", {}, "", 80));
  EXPECT_FALSE(ag::build_request("GE T", "/", "", {}, "", 80));
  EXPECT_FALSE(ag::build_request("GET", "/", "", {{"X", "a\r\nb"}}, "", 80));
  EXPECT_FALSE(ag::build_request("GET", "/", "", {{"X Y", "a"}}, "", 80));
  EXPECT_EQ(*ag::build_request("PUT", "/", "", {{"Expect", "100-continue"}}, "", 80),
            "PUT / HTTP/1.1\r\nHost: 127.0.0.1:80\r\nContent-Length: 0\r\n\r\n");
  auto ok = ag::build_request("POST", "/p", "q=1",
                              {{"Content-Length", "999"}, {"X", "1"}}, "body", 81);
  ASSERT_TRUE(ok);
  EXPECT_EQ(*ok, "POST /p?q=1 HTTP/1.1\r\nX: 1\r\nHost: 127.0.0.1:81\r\n"
                 "Content-Length: 4\r\n\r\nbody");
}

TEST(guest_agent_parser, keep_alive_only_after_a_complete_framed_http11_answer) {
  for (std::size_t step : {1u, 5u, 1000u}) {
    EXPECT_TRUE(parse_all("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", step, false)
                  .keep_alive());
    EXPECT_TRUE(parse_all("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                          "2\r\nhi\r\n0\r\n\r\n", step, false)
                  .keep_alive());
    EXPECT_TRUE(parse_all("HTTP/1.1 204 No Content\r\nConnection: keep-alive\r\n\r\n", step, false)
                  .keep_alive());
    // Asked to close, HTTP/1.0, ended by the close, incomplete, or followed by stray bytes.
    EXPECT_FALSE(parse_all("HTTP/1.1 200 OK\r\nConnection: Keep-Alive, CLOSE\r\n"
                           "Content-Length: 2\r\n\r\nhi", step, false)
                   .keep_alive());
    EXPECT_FALSE(parse_all("HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nhi", step, false)
                   .keep_alive());
    EXPECT_FALSE(parse_all("HTTP/1.1 200 OK\r\n\r\nuntil close", step).keep_alive());
    EXPECT_FALSE(parse_all("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel", step, false)
                   .keep_alive());
    EXPECT_FALSE(parse_all("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhiHTTP/1.1", step, false)
                   .keep_alive());
    EXPECT_FALSE(parse_all("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n"
                           "2\r\nhi\r\n0\r\n\r\n", step, false)
                   .keep_alive());
    EXPECT_FALSE(parse_all("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                           "2\r\nhi\r\n0\r\nT: 1\r\n\r\nX", step, false)
                   .keep_alive());
    EXPECT_TRUE(parse_all("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi",
                          step, false)
                  .keep_alive());
  }
  auto t = parse_all("HTTP/1.1 200 OK\r\nKeep-Alive: max=100, Timeout=3\r\nContent-Length: 0\r\n\r\n", 4,
                     false);
  EXPECT_TRUE(t.keep_alive());
  EXPECT_EQ(t.keep_alive_timeout(), 3u);
  EXPECT_FALSE(parse_all("HTTP/1.1 200 OK\r\nKeep-Alive: timeout=x\r\nContent-Length: 0\r\n\r\n", 4, false)
                 .keep_alive_timeout());
  ag::response_parser none;
  EXPECT_EQ(none.received(), 0u);
  none.feed("HTTP/1.1");
  EXPECT_EQ(none.received(), 8u);
}
