// Programs run for real: a CCN and a CRN as separate alephd processes, the
// test program (tests/guest_test_app.cpp) uploaded to the CCN, and calls
// through the CRN's /vm/{ref} into a bubblewrap sandbox. Needs bwrap and root
// (namespaces, cgroups), as CI has.
#include <atomic>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <future>
#include <iterator>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <sstream>
#include <thread>

#include <sys/mount.h>
#include <sys/wait.h>
#include <unistd.h>

#include <archive.h>
#include <archive_entry.h>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/websocket.hpp>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "runtime/cgroup.hpp"
#include "runtime/owner_auth.hpp"
#include "runtime/wall_clock.hpp"
#include "tests/http_client.hpp"
#include "tests/process.hpp"

#ifndef ALEPHD_GUEST_TEST_APP
#  error "ALEPHD_GUEST_TEST_APP must name the guest_test_app binary"
#endif

using namespace std::chrono_literals;
using nlohmann::json;
using alephd::test::eventually;
using alephd::test::http_request;
using alephd::test::process;

namespace {

const std::string localhost = "127.0.0.1";

std::string read_file(const std::string& path) {
  std::ifstream in{path, std::ios::binary};
  return {std::istreambuf_iterator<char>{in}, {}};
}

// Processes whose command line contains `needle` (bwrap sandboxes of a data dir).
std::vector<int> processes_with(const std::string& needle) {
  std::vector<int> out;
  for (auto& e : std::filesystem::directory_iterator{"/proc"}) {
    auto name = e.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos)
      continue;
    auto cmd = read_file(e.path().string() + "/cmdline");
    std::replace(cmd.begin(), cmd.end(), '\0', ' ');
    if (cmd.find(needle) != std::string::npos && cmd.find("execution_test") == std::string::npos)
      out.push_back(std::stoi(name));
  }
  return out;
}

// Processes other than `owner` that hold the socket listening on 127.0.0.1:`port`.
std::vector<int> other_holders_of_listener(uint16_t port, int owner) {
  std::string inode;
  std::istringstream tcp{read_file("/proc/net/tcp")};
  char want[16];
  std::snprintf(want, sizeof want, "0100007F:%04X", port);
  for (std::string line; std::getline(tcp, line);) {
    std::istringstream f{line};
    std::string sl, local, remote, st, queues, timer, retr, uid, timeout, ino;
    f >> sl >> local >> remote >> st >> queues >> timer >> retr >> uid >> timeout >> ino;
    if (local == want && st == "0A")
      inode = ino;
  }
  std::vector<int> out;
  if (inode.empty())
    return out;
  auto needle = "socket:[" + inode + "]";
  for (auto& e : std::filesystem::directory_iterator{"/proc"}) {
    auto name = e.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos || std::stoi(name) == owner)
      continue;
    std::error_code ec;
    for (auto& fd : std::filesystem::directory_iterator{e.path() / "fd", ec})
      if (std::filesystem::read_symlink(fd.path(), ec).string() == needle) {
        out.push_back(std::stoi(name));
        break;
      }
  }
  return out;
}

// "pid state cmdline" lines, for failure messages.
std::string describe_processes(const std::vector<int>& pids) {
  std::string out;
  for (int pid : pids) {
    auto stat = read_file("/proc/" + std::to_string(pid) + "/stat");
    auto paren = stat.rfind(')');
    auto cmd = read_file("/proc/" + std::to_string(pid) + "/cmdline");
    std::replace(cmd.begin(), cmd.end(), '\0', ' ');
    out += "\n  " + std::to_string(pid) + " "
           + (paren != std::string::npos && paren + 2 < stat.size() ? stat.substr(paren + 2, 1) : "?")
           + " " + cmd.substr(0, 200);
  }
  return out;
}

struct execution : ::testing::Test {
  std::filesystem::path dir;
  std::vector<std::unique_ptr<process>> procs;
  uint16_t ccn_http = 0;
  std::string ccn_node;
  std::string owner = "0xabc"; ///< sender and content.address of what the fixture publishes

  execution() {
    std::random_device rd;
    dir = std::filesystem::temp_directory_path()
          / ("alephd-ex-" + std::to_string(::getpid()) + "-" + std::to_string(rd()));
    std::filesystem::create_directories(dir);
  }

  ~execution() override {
    for (auto& p : procs)
      p->kill9();
    // Volume images a failed test left mounted under its dir.
    std::ifstream mounts{"/proc/self/mountinfo"};
    std::vector<std::string> points;
    for (std::string line; std::getline(mounts, line);) {
      std::istringstream fields{line};
      std::string id, parent, devs, root, point;
      fields >> id >> parent >> devs >> root >> point;
      if (point.rfind(dir.string() + "/", 0) == 0)
        points.push_back(point);
    }
    for (auto& p : points)
      ::umount2(p.c_str(), MNT_DETACH);
    // Sandboxes outlive a killed CRN for its adopt window: end them with the test. A sandbox's
    // process is the agent (bwrap execs it), whose command line does not name our dir: its
    // cgroup finds it; the command line finds QEMU.
    for (auto& p : procs)
      remove_crn_cgroups(*p);
    for (int pid : processes_with(dir.string()))
      ::kill(pid, SIGKILL);
    if (HasFailure())
      for (auto& p : procs)
        std::cerr << "---- log of pid " << p->pid() << " ----\n" << p->log() << '\n';
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }

  process& start(const std::string& name, std::vector<std::string> args) {
    args.push_back("--data-dir=" + (dir / name).string());
    args.push_back("--name=" + name);
    args.push_back("--ccn.heartbeat-interval=200ms");
    args.push_back("--ccn.failure-timeout=1s");
    procs.push_back(std::make_unique<process>(args, (dir / (name + ".log")).string()));
    auto& p = *procs.back();
    EXPECT_TRUE(p.wait_ready()) << name << " did not start:\n" << p.log();
    return p;
  }

  void start_ccn(std::vector<std::string> extra = {}) {
    // This suite posts unsigned messages; signature checks have their own tests.
    std::vector<std::string> args{"ccn", "--port=0", "--node-port=0", "--verify-signatures=false"};
    args.insert(args.end(), extra.begin(), extra.end());
    auto& ccn = start("ccn", args);
    ccn_http = ccn.port("http");
    ccn_node = ccn.ready.at("node");
  }

  process& start_crn(const std::string& name = "crn", std::vector<std::string> extra = {}) {
    std::vector<std::string> args{"crn", "--port=0", "--ccn=" + ccn_node};
    args.insert(args.end(), extra.begin(), extra.end());
    auto& p = start(name, args);
    // Linked before the test goes on.
    EXPECT_TRUE(eventually(
      [&] {
        auto r = http_request(localhost, p.port("http"), "GET", "/status/config", {}, {}, 2s);
        return r.status == 200 && json::parse(r.body, nullptr, false)["ccn"]["state"] == "linked";
      },
      10s));
    return p;
  }

  std::string token(const std::string& crn) {
    auto t = read_file((dir / crn / "login_token").string());
    return t.substr(0, t.find('\n'));
  }

  // Whether the instance `hash` comes up running on the CRN (a TCG boot takes seconds), rather
  // than failing or not starting within 90 s.
  bool boots_to_running(uint16_t crn_http, const std::string& hash) {
    eventually([&] {
      auto p = phase_of(crn_http, hash);
      return p == "running" || p == "failed";
    }, 90s);
    return phase_of(crn_http, hash) == "running";
  }

  struct published_instance {
    std::string hash; ///< the INSTANCE's; "" when it could not be published (a failure says why)
    std::string file; ///< the rootfs image's
  };

  // Makes a 16 MiB ext4 image of `content` at `image`, stores it at the CCN and posts an
  // INSTANCE (1 vCPU, 256 MiB) on it with `key`.
  published_instance publish_instance(const std::string& content, const std::string& image,
                                      const std::string& key, double time) {
    auto mkfs = "truncate -s 16M '" + image + "' && /sbin/mkfs.ext4 -q -F -d '" + content + "' '"
                + image + "' >/dev/null 2>&1";
    if (std::system(mkfs.c_str()) != 0) {
      ADD_FAILURE() << "mkfs.ext4 failed for " << content;
      return {};
    }
    auto up = http_request(localhost, ccn_http, "POST", "/api/v0/storage/add_file",
                           read_file(image), {}, 20s);
    if (up.status != 200) {
      ADD_FAILURE() << "add_file: " << up.status << " " << up.body;
      return {};
    }
    auto file = json::parse(up.body).value("hash", "");
    auto store = post_message(
      {{"chain", "ETH"}, {"sender", "0xabc"}, {"type", "STORE"}, {"item_type", "inline"},
       {"time", time},
       {"content", {{"address", "0xabc"}, {"time", time}, {"item_type", "storage"},
                    {"item_hash", file}}}});
    auto hash = post_message(
      {{"chain", "ETH"}, {"sender", "0xabc"}, {"type", "INSTANCE"}, {"item_type", "inline"},
       {"time", time},
       {"content",
        {{"address", "0xabc"}, {"time", time}, {"allow_amend", false},
         {"environment", {{"reproducible", false}, {"internet", false}, {"aleph_api", false},
                          {"shared_cache", false}}},
         {"resources", {{"vcpus", 1}, {"memory", 256}, {"seconds", 30}}},
         {"authorized_keys", {key}},
         {"rootfs", {{"parent", {{"ref", store}, {"use_latest", false}}}, {"persistence", "host"},
                     {"size_mib", 64}}},
         {"volumes", json::array()}}}});
    return {hash, file};
  }

  std::string post_message(const json& m) {
    auto r = http_request(localhost, ccn_http, "POST", "/api/v0/messages", m.dump(),
                          {{"Content-Type", "application/json"}});
    EXPECT_EQ(r.status, 200) << r.body;
    return json::parse(r.body, nullptr, false).value("item_hash", "");
  }

  // Uploads the test app (or `code`), its STORE and a PROGRAM; returns the PROGRAM's item_hash.
  std::string publish_program(bool persistent = false, uint64_t memory = 128,
                              uint64_t seconds = 2, const std::string& greeting = "hi",
                              const std::string& encoding = "plain", std::string code = {},
                              const std::string& entrypoint = "app",
                              const json& volumes = json::array(),
                              const json& more_variables = json::object()) {
    if (code.empty())
      code = read_file(ALEPHD_GUEST_TEST_APP);
    auto up = http_request(localhost, ccn_http, "POST", "/api/v0/storage/add_file", code, {}, 10s);
    EXPECT_EQ(up.status, 200) << up.body;
    auto file = json::parse(up.body, nullptr, false).value("hash", "");
    auto store = post_message(
      {{"chain", "ETH"}, {"sender", owner}, {"type", "STORE"}, {"item_type", "inline"},
       {"time", 1700000000.0},
       {"content",
        {{"address", owner}, {"time", 1700000000.0}, {"item_type", "storage"},
         {"item_hash", file}}}});
    return post_message(
      {{"chain", "ETH"}, {"sender", owner}, {"type", "PROGRAM"}, {"item_type", "inline"},
       {"time", 1700000000.0},
       {"content",
        {{"type", "vm-function"}, {"address", owner}, {"time", 1700000000.0},
         {"allow_amend", false},
         {"code", {{"encoding", encoding}, {"entrypoint", entrypoint}, {"ref", store},
                   {"interface", "binary"}, {"use_latest", false}}},
         {"variables", [&] {
            json v = {{"GREETING", greeting}, {"APP_PORT", "8080"}};
            v.update(more_variables);
            return v;
          }()},
         {"on", {{"http", true}, {"persistent", persistent}}},
         {"environment", {{"reproducible", false}, {"internet", false}, {"aleph_api", false},
                          {"shared_cache", false}}},
         {"resources", {{"vcpus", 1}, {"memory", memory}, {"seconds", seconds}}},
         {"volumes", volumes}}}});
  }

  // A STORE for `bytes` (uploaded to the CCN); returns the STORE's item_hash.
  std::string store_file(const std::string& bytes) {
    auto up = http_request(localhost, ccn_http, "POST", "/api/v0/storage/add_file", bytes, {}, 10s);
    EXPECT_EQ(up.status, 200) << up.body;
    auto file = json::parse(up.body, nullptr, false).value("hash", "");
    return post_message(
      {{"chain", "ETH"}, {"sender", owner}, {"type", "STORE"}, {"item_type", "inline"},
       {"time", 1700000000.0},
       {"content", {{"address", owner}, {"time", 1700000000.0}, {"item_type", "storage"},
                    {"item_hash", file}}}});
  }

  static json executions(uint16_t crn_http) {
    auto r = http_request(localhost, crn_http, "GET", "/v2/about/executions/list", {}, {}, 5s);
    return r.status == 200 ? json::parse(r.body, nullptr, false) : json::object();
  }

  static std::string phase_of(uint16_t crn_http, const std::string& hash) {
    auto all = executions(crn_http);
    return all.contains(hash) ? all[hash].value("phase", "") : "";
  }
};

TEST_F(execution, a_program_uploaded_to_the_ccn_is_served_from_a_crn) {
  start_ccn();
  auto& crn = start_crn();
  auto http = crn.port("http");
  auto hash = publish_program();
  ASSERT_EQ(hash.size(), 64u);
  auto r = http_request(localhost, http, "GET", "/vm/" + hash + "/echo?first", {}, {}, 20s);
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.body, "first hi");
  EXPECT_EQ(r.headers["aleph-program-itemhash"], hash);
  EXPECT_EQ(r.headers["x-app"], "guest-test") << "the program's own headers pass through";
  EXPECT_EQ(r.headers["content-type"], "text/plain");
  // Variables reach the program as its environment.
  auto env = http_request(localhost, http, "GET", "/vm/" + hash + "/env?GREETING");
  EXPECT_EQ(env.body, "hi");
  // A POST body and the path below the program's ref reach it.
  auto post = http_request(localhost, http, "POST", "/vm/" + hash + "/echo?posted", "body");
  EXPECT_EQ(post.status, 200);
  EXPECT_EQ(post.body, "posted hi");
  EXPECT_EQ(phase_of(http, hash), "running");
  // The node's admin token never reaches the program; its own headers and cookies do.
  auto secret = token("crn");
  auto seen = http_request(localhost, http, "GET", "/vm/" + hash + "/headers", {},
                           {{"X-Auth-Token", secret}, {"Cookie", "token=" + secret + "; theme=dark"},
                            {"X-Custom", "kept"}});
  auto bearer = http_request(localhost, http, "GET", "/vm/" + hash + "/headers", {},
                             {{"Authorization", "Bearer " + secret}});
  EXPECT_EQ(bearer.body.find(secret), std::string::npos) << bearer.body;
  auto own = http_request(localhost, http, "GET", "/vm/" + hash + "/headers", {},
                          {{"Authorization", "Bearer the-programs-own"}});
  EXPECT_NE(own.body.find("the-programs-own"), std::string::npos) << own.body;
  ASSERT_EQ(seen.status, 200);
  EXPECT_EQ(seen.body.find(secret), std::string::npos) << seen.body;
  EXPECT_NE(seen.body.find("theme=dark"), std::string::npos) << seen.body;
  EXPECT_NE(seen.body.find("kept"), std::string::npos) << seen.body;
  // It runs in a real bubblewrap sandbox of this CRN.
  EXPECT_FALSE(processes_with((dir / "crn").string() + "/executions/" + hash).empty());
  // An absolute-form target (as a proxy sends it) reaches the program too.
  auto absolute = alephd::test::raw_exchange(
    localhost, http,
    "GET http://127.0.0.1:" + std::to_string(http) + "/vm/" + hash
      + "/echo?absolute HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  EXPECT_EQ(absolute.rfind("HTTP/1.1 200", 0), 0u) << absolute;
  EXPECT_NE(absolute.find("absolute hi"), std::string::npos) << absolute;
}

TEST_F(execution, concurrent_first_calls_share_one_cold_start) {
  start_ccn();
  auto& crn = start_crn();
  auto http = crn.port("http");
  auto hash = publish_program();
  std::vector<std::future<alephd::test::http_result>> calls;
  for (int i = 0; i < 8; ++i)
    calls.push_back(std::async(std::launch::async, [&, i] {
      return http_request(localhost, http, "GET", "/vm/" + hash + "/echo?n" + std::to_string(i),
                          {}, {}, 20s);
    }));
  for (int i = 0; i < 8; ++i) {
    auto r = calls[i].get();
    EXPECT_EQ(r.status, 200) << r.body;
    EXPECT_EQ(r.body, "n" + std::to_string(i) + " hi");
  }
  auto logs = http_request(localhost, http, "GET", "/control/machine/" + hash + "/logs", {},
                           {{"X-Auth-Token", token("crn")}});
  ASSERT_EQ(logs.status, 200) << logs.body;
  int starts = 0;
  for (auto& l : json::parse(logs.body))
    starts += l["message"].get<std::string>() == "listening on 8080" ? 1 : 0;
  EXPECT_EQ(starts, 1) << logs.body;
}

TEST_F(execution, timeouts_crashes_and_errors_get_clear_statuses) {
  start_ccn();
  auto& crn = start_crn();
  auto http = crn.port("http");
  auto hash = publish_program(false, 128, 1);
  ASSERT_EQ(http_request(localhost, http, "GET", "/vm/" + hash + "/echo", {}, {}, 20s).status, 200);
  // resources.seconds is 1: a call that takes 3 s gets 504 after about 1 s.
  auto t0 = std::chrono::steady_clock::now();
  auto slow = http_request(localhost, http, "GET", "/vm/" + hash + "/sleep?ms=3000", {}, {}, 10s);
  EXPECT_EQ(slow.status, 504) << slow.body;
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 2500ms);
  EXPECT_NE(json::parse(slow.body, nullptr, false).value("error", ""), "");
  std::this_thread::sleep_for(2500ms); // the test app serves one call at a time
  // A crash answers 502 and stops the execution; the next call starts a new one.
  auto crash = http_request(localhost, http, "GET", "/vm/" + hash + "/crash");
  EXPECT_EQ(crash.status, 502) << crash.body;
  EXPECT_TRUE(eventually([&] { return phase_of(http, hash) == "stopped"; }, 5s))
    << executions(http).dump();
  auto again = http_request(localhost, http, "GET", "/vm/" + hash + "/echo?again", {}, {}, 20s);
  EXPECT_EQ(again.status, 200) << again.body;
  // Unknown and malformed references.
  EXPECT_EQ(http_request(localhost, http, "GET", "/vm/" + std::string(64, 'e') + "/").status, 404);
  EXPECT_EQ(http_request(localhost, http, "GET", "/vm/xyz/").status, 400);
  // Too big for this CRN's program memory: 503 with the reason.
  auto big = publish_program(false, 1000000);
  auto refused = http_request(localhost, http, "GET", "/vm/" + big + "/echo", {}, {}, 10s);
  EXPECT_EQ(refused.status, 503) << refused.body;
  EXPECT_EQ(json::parse(refused.body, nullptr, false).value("error", "").rfind("Insufficient capacity", 0), 0u)
    << refused.body;
}

TEST_F(execution, a_program_past_its_memory_is_killed_and_reported) {
  start_ccn();
  auto& crn = start_crn();
  auto http = crn.port("http");
  auto hash = publish_program(false, 64);
  auto small = http_request(localhost, http, "GET", "/vm/" + hash + "/alloc?mb=8", {}, {}, 20s);
  ASSERT_EQ(small.status, 200) << small.body;
  auto big = http_request(localhost, http, "GET", "/vm/" + hash + "/alloc?mb=512", {}, {}, 20s);
  EXPECT_EQ(big.status, 502) << big.body;
  ASSERT_TRUE(eventually([&] { return phase_of(http, hash) == "stopped"; }, 10s));
  EXPECT_NE(executions(http)[hash].value("detail", "").find("out of memory"), std::string::npos)
    << executions(http)[hash].dump();
}

TEST_F(execution, operator_endpoints_need_the_token_and_work_with_it) {
  start_ccn();
  auto& crn = start_crn();
  auto http = crn.port("http");
  auto hash = publish_program();
  ASSERT_EQ(http_request(localhost, http, "GET", "/vm/" + hash + "/echo?x", {}, {}, 20s).status, 200);
  auto base = "/control/machine/" + hash;
  EXPECT_EQ(http_request(localhost, http, "POST", base + "/stop").status, 401);
  EXPECT_EQ(http_request(localhost, http, "GET", base + "/logs").status, 401);
  EXPECT_EQ(phase_of(http, hash), "running") << "a refused stop must not stop it";
  std::map<std::string, std::string> auth{{"X-Auth-Token", token("crn")}};
  // The program's line travels from its stdout through the agent: it may trail the answer.
  alephd::test::http_result logs;
  EXPECT_TRUE(eventually([&] {
    logs = http_request(localhost, http, "GET", base + "/logs", {}, auth);
    return logs.status == 200 && logs.body.find("request GET /echo?x") != std::string::npos;
  }, 5s)) << logs.status << " " << logs.body;
  auto reboot = http_request(localhost, http, "POST", base + "/reboot", {}, auth, 20s);
  EXPECT_EQ(reboot.status, 200) << reboot.body;
  EXPECT_EQ(http_request(localhost, http, "GET", "/vm/" + hash + "/echo?y").status, 200);
  auto stop = http_request(localhost, http, "POST", base + "/stop", {}, auth, 20s);
  EXPECT_EQ(stop.status, 200) << stop.body;
  EXPECT_EQ(json::parse(stop.body).value("phase", ""), "stopped");
  EXPECT_TRUE(processes_with((dir / "crn").string() + "/executions/" + hash).empty());
  // Logs outlive the execution.
  auto after = http_request(localhost, http, "GET", base + "/logs", {}, auth);
  ASSERT_EQ(after.status, 200) << after.body;
  EXPECT_NE(after.body.find("request GET /echo?y"), std::string::npos) << after.body;
  auto erase = http_request(localhost, http, "POST", base + "/erase", {}, {{"Authorization", "Bearer " + token("crn")}});
  EXPECT_EQ(erase.status, 200) << erase.body;
  // The token went by in headers and in a query: no log line holds it, nor the program's
  // own output.
  EXPECT_EQ(http_request(localhost, http, "GET", "/about/login?token=" + token("crn")).status, 200);
  for (auto& p : procs)
    EXPECT_EQ(p->log().find(token("crn")), std::string::npos) << "the admin token is in a log";
  EXPECT_EQ(after.body.find(token("crn")), std::string::npos) << "the program saw the admin token";
}

std::pair<int, std::string> alephd_cli(const std::string& args) {
  std::string out;
  auto cmd = std::string{ALEPHD_BINARY} + " " + args + " 2>&1";
  FILE* p = ::popen(cmd.c_str(), "r");
  if (p == nullptr)
    return {-1, ""};
  char buf[4096];
  for (size_t n; (n = std::fread(buf, 1, sizeof buf, p)) > 0;)
    out.append(buf, n);
  int status = ::pclose(p);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

// A websocket client of stream_logs; reads time out after 10 s.
struct log_stream {
  boost::asio::io_context ioc;
  boost::beast::websocket::stream<boost::asio::ip::tcp::socket> ws{ioc};
  boost::beast::websocket::response_type answer;
  boost::beast::error_code ec;

  log_stream(uint16_t port, const std::string& hash, const std::string& token) {
    ws.next_layer().connect({boost::asio::ip::make_address("127.0.0.1"), port});
    timeval tv{10, 0};
    ::setsockopt(ws.next_layer().native_handle(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ws.set_option(boost::beast::websocket::stream_base::decorator(
      [token](boost::beast::websocket::request_type& r) {
        if (!token.empty())
          r.set("X-Auth-Token", token);
      }));
    // The asynchronous handshake: Boost 1.74's blocking one leaves `answer` empty on a refusal.
    ws.async_handshake(answer, "127.0.0.1", "/control/machine/" + hash + "/stream_logs",
                       [this](boost::beast::error_code e) { ec = e; });
    ioc.run();
  }

  void send(const std::string& text) {
    ws.text(true);
    ws.write(boost::asio::buffer(text), ec);
  }

  // The next line's JSON; a discarded value once the stream ends (then `ec` says why).
  json next() {
    boost::beast::flat_buffer buf;
    ws.read(buf, ec);
    if (ec)
      return json::value_t::discarded;
    return json::parse(boost::beast::buffers_to_string(buf.data()), nullptr, false);
  }

  // Reads until a message holds `text`; false if the stream ended first.
  bool until(const std::string& text) {
    for (int i = 0; i < 1000; ++i) {
      auto j = next();
      if (j.is_discarded())
        return false;
      if (j.value("message", "").find(text) != std::string::npos)
        return true;
    }
    return false;
  }
};

TEST_F(execution, owners_control_their_own_workloads_and_only_theirs) {
  namespace oa = alephd::owner_auth;
  namespace crypto = alephd::crypto;
  start_ccn();
  auto& crn = start_crn();
  auto http = crn.port("http");
  auto alice = std::string(31, '\0') + "\x0a";
  auto bob = std::string(31, '\0') + "\x0b";
  owner = *crypto::eth_address(alice);
  auto hash = publish_program();
  ASSERT_EQ(http_request(localhost, http, "GET", "/vm/" + hash + "/echo?x", {}, {}, 20s).status, 200);
  auto base = "/control/machine/" + hash;
  // What a client sends: a fresh key vouched for by the wallet, the operation signed by it.
  auto proof = [&](const std::string& wallet, const std::string& method, const std::string& path,
                   double at_offset = 0, const std::string& domain = "127.0.0.1",
                   double expires_in = 600) {
    auto key = *oa::p256_generate();
    auto now = alephd::unix_seconds();
    return std::map<std::string, std::string>{
      {"X-SignedPubKey", oa::signed_pubkey_eth(wallet, key, domain, now + expires_in)},
      {"X-SignedOperation", oa::signed_operation(key, method, path, domain, now + at_offset)}};
  };
  auto error_of = [](const alephd::test::http_result& r) {
    auto j = json::parse(r.body, nullptr, false);
    return j.is_object() ? j.value("error", r.body) : r.body;
  };
  // Bob proves who he is, but the workload is Alice's.
  auto r = http_request(localhost, http, "POST", base + "/stop", {}, proof(bob, "POST", base + "/stop"), 20s);
  EXPECT_EQ(r.status, 403) << r.body;
  EXPECT_NE(error_of(r).find("does not own"), std::string::npos) << r.body;
  EXPECT_EQ(http_request(localhost, http, "GET", base + "/logs", {}, proof(bob, "GET", base + "/logs")).status, 403);
  EXPECT_EQ(http_request(localhost, http, "POST", base + "/erase", {}, proof(bob, "POST", base + "/erase")).status, 403);
  EXPECT_EQ(phase_of(http, hash), "running") << "a refused stop must not stop it";
  // Alice's proofs, each wrong in one way.
  auto stale = proof(alice, "POST", base + "/stop", -300);
  EXPECT_EQ(http_request(localhost, http, "POST", base + "/stop", {}, stale).status, 401);
  // (The program's log line may trail its answer: wait for it with the admin token.)
  EXPECT_TRUE(eventually([&] {
    auto r = http_request(localhost, http, "GET", base + "/logs", {}, {{"X-Auth-Token", token("crn")}});
    return r.status == 200 && r.body.find("request GET /echo?x") != std::string::npos;
  }, 5s));
  auto elsewhere = proof(alice, "POST", base + "/stop", 0, "crn.example.org");
  EXPECT_EQ(http_request(localhost, http, "POST", base + "/stop", {}, elsewhere).status, 401);
  auto expired = proof(alice, "POST", base + "/stop", 0, "127.0.0.1", -1);
  EXPECT_EQ(http_request(localhost, http, "POST", base + "/stop", {}, expired).status, 401);
  auto for_logs = proof(alice, "GET", base + "/logs");
  EXPECT_EQ(http_request(localhost, http, "POST", base + "/stop", {}, for_logs).status, 401);
  EXPECT_EQ(phase_of(http, hash), "running");
  // Her logs, once; the same proof again is a replay.
  auto logs = http_request(localhost, http, "GET", base + "/logs", {}, for_logs);
  ASSERT_EQ(logs.status, 200) << logs.body;
  EXPECT_NE(logs.body.find("request GET /echo?x"), std::string::npos) << logs.body;
  auto again = http_request(localhost, http, "GET", base + "/logs", {}, for_logs);
  EXPECT_EQ(again.status, 401);
  EXPECT_NE(error_of(again).find("replay"), std::string::npos) << again.body;
  // A browser's way: stream_logs with the proof in the first message.
  {
    auto path = base + "/stream_logs";
    auto key = *oa::p256_generate();
    auto now = alephd::unix_seconds();
    auto auth_message = [&](const std::string& wallet) {
      return json{{"auth", {{"X-SignedPubKey", json::parse(oa::signed_pubkey_eth(wallet, key, "127.0.0.1", now + 600))},
                            {"X-SignedOperation", json::parse(oa::signed_operation(key, "GET", path, "127.0.0.1", now))}}}}
        .dump();
    };
    log_stream as_bob{http, hash, ""};
    ASSERT_FALSE(as_bob.ec) << as_bob.ec.message();
    as_bob.send(auth_message(bob));
    auto refused = as_bob.next();
    EXPECT_EQ(refused.value("status", ""), "failed") << refused;
    EXPECT_NE(refused.value("reason", "").find("does not own"), std::string::npos) << refused;
    log_stream as_alice{http, hash, ""};
    ASSERT_FALSE(as_alice.ec) << as_alice.ec.message();
    as_alice.send(auth_message(alice));
    auto welcome = as_alice.next();
    EXPECT_EQ(welcome.value("status", ""), "connected") << welcome;
    EXPECT_TRUE(as_alice.until("request GET /echo?x"));
  }
  // `alephd stop --key` signs as the owner.
  auto key_file = dir / "alice.key";
  std::ofstream{key_file} << crypto::to_hex(alice) << "\n";
  auto crn_url = "http://127.0.0.1:" + std::to_string(http);
  auto [rc, text] = alephd_cli("stop " + hash + " --crn " + crn_url + " --key " + key_file.string());
  EXPECT_EQ(rc, 0) << text;
  EXPECT_NE(text.find("stopped"), std::string::npos) << text;
  EXPECT_EQ(phase_of(http, hash), "stopped");
  auto bob_file = dir / "bob.key";
  std::ofstream{bob_file} << "0x" << crypto::to_hex(bob) << "\n";
  auto [rc2, text2] = alephd_cli("erase " + hash + " --crn " + crn_url + " --key " + bob_file.string());
  EXPECT_EQ(rc2, 1) << text2;
  EXPECT_NE(text2.find("does not own"), std::string::npos) << text2;
  auto [rc3, text3] = alephd_cli("logs " + hash + " --crn " + crn_url + " --key " + key_file.string());
  EXPECT_EQ(rc3, 0) << text3;
  // The node's operator keeps the admin token.
  auto erase = http_request(localhost, http, "POST", base + "/erase", {}, {{"X-Auth-Token", token("crn")}});
  EXPECT_EQ(erase.status, 200) << erase.body;
}


TEST_F(execution, stream_logs_follows_an_execution_live_until_it_ends) {
  start_ccn();
  auto& crn = start_crn();
  auto http = crn.port("http");
  auto hash = publish_program();
  ASSERT_EQ(http_request(localhost, http, "GET", "/vm/" + hash + "/echo?first", {}, {}, 20s).status, 200);
  auto base = "/control/machine/" + hash;
  // Without credentials the first message must prove the owner (a browser cannot set headers
  // on a websocket); anything else fails and closes.
  {
    log_stream anonymous{http, hash, ""};
    ASSERT_FALSE(anonymous.ec) << anonymous.ec.message();
    anonymous.send(R"({"hello": "let me in"})");
    auto answer = anonymous.next();
    EXPECT_EQ(answer.value("status", ""), "failed") << answer;
    anonymous.next();
    EXPECT_EQ(anonymous.ec, boost::beast::websocket::error::closed) << anonymous.ec.message();
  }
  std::map<std::string, std::string> auth{{"X-Auth-Token", token("crn")}};
  EXPECT_EQ(http_request(localhost, http, "GET", base + "/stream_logs", {}, auth).status, 426);
  log_stream stream{http, hash, token("crn")};
  ASSERT_FALSE(stream.ec) << stream.ec.message();
  // The kept lines first, as {"time", "type", "message"}.
  auto first = stream.next();
  ASSERT_TRUE(first.is_object());
  EXPECT_TRUE(first.contains("time") && first.contains("type") && first.contains("message")) << first;
  ASSERT_TRUE(stream.until("request GET /echo?first"));
  // A line written after the stream opened arrives on it.
  ASSERT_EQ(http_request(localhost, http, "GET", "/vm/" + hash + "/echo?live", {}, {}, 20s).status, 200);
  ASSERT_TRUE(stream.until("request GET /echo?live"));
  // The CLI follows the same stream (in the background), and both end with the execution.
  auto follow = std::async(std::launch::async, [&] {
    return alephd_cli("logs " + hash + " --follow --crn http://127.0.0.1:" + std::to_string(http)
                      + " --token " + token("crn"));
  });
  std::this_thread::sleep_for(500ms);
  ASSERT_EQ(http_request(localhost, http, "GET", "/vm/" + hash + "/echo?seen-by-cli", {}, {}, 20s).status, 200);
  ASSERT_EQ(http_request(localhost, http, "POST", base + "/stop", {}, auth, 20s).status, 200);
  EXPECT_TRUE(stream.until("execution stopped"));
  stream.next();
  EXPECT_EQ(stream.ec, boost::beast::websocket::error::closed) << stream.ec.message();
  ASSERT_EQ(follow.wait_for(15s), std::future_status::ready);
  auto [rc, out] = follow.get();
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("request GET /echo?seen-by-cli"), std::string::npos) << out;
  EXPECT_NE(out.find("stopped following: the execution ended"), std::string::npos) << out;
  // A finished execution: what was kept, then the end.
  log_stream after{http, hash, token("crn")};
  ASSERT_FALSE(after.ec) << after.ec.message();
  EXPECT_TRUE(after.until("request GET /echo?live"));
  EXPECT_TRUE(after.until("execution stopped"));
  after.next();
  EXPECT_EQ(after.ec, boost::beast::websocket::error::closed);
  // An unknown execution is a 404 before any upgrade.
  log_stream unknown{http, std::string(64, 'e'), token("crn")};
  EXPECT_EQ(unknown.ec, boost::beast::websocket::error::upgrade_declined);
  EXPECT_EQ(unknown.answer.result_int(), 404u);
}

TEST_F(execution, sigterm_drains_calls_in_flight_and_refuses_new_ones) {
  start_ccn();
  auto& crn = start_crn("crn", {"--execution.drain-timeout=10s"});
  auto http = crn.port("http");
  auto hash = publish_program(false, 128, 10);
  ASSERT_EQ(http_request(localhost, http, "GET", "/vm/" + hash + "/echo", {}, {}, 20s).status, 200);
  auto slow = std::async(std::launch::async, [&] {
    return http_request(localhost, http, "GET", "/vm/" + hash + "/sleep?ms=1500", {}, {}, 10s);
  });
  // A call that waits for a cold start is in flight too (its program takes 2.5 s to listen:
  // longer than the slow call, so the drain must wait for it by itself).
  auto late = publish_program(false, 128, 10, "late", "plain", {}, "app", json::array(),
                              {{"START_DELAY_MS", "2500"}});
  auto cold = std::async(std::launch::async, [&] {
    return http_request(localhost, http, "GET", "/vm/" + late + "/echo?cold", {}, {}, 10s);
  });
  std::this_thread::sleep_for(300ms); // both calls are in flight
  crn.signal(SIGTERM);
  std::this_thread::sleep_for(100ms); // a call racing the signal is still accepted
  std::string last;
  ASSERT_TRUE(eventually(
    [&] {
      auto r = http_request(localhost, http, "GET", "/vm/" + hash + "/echo", {}, {}, 2s);
      last += std::to_string(r.status) + " " + r.body + r.error + "\n";
      return r.status == 503 && r.body.find("Server is draining") != std::string::npos;
    },
    3s)) << last;
  auto done = slow.get();
  EXPECT_EQ(done.status, 200) << done.body;
  EXPECT_EQ(done.body, "slept");
  auto started = cold.get();
  EXPECT_EQ(started.status, 200) << started.body;
  EXPECT_EQ(started.body, "cold late");
  EXPECT_EQ(crn.wait_exit(20s), 0);
  EXPECT_TRUE(processes_with((dir / "crn").string()).empty()) << "a sandbox outlived its CRN";
}

TEST_F(execution, a_persistent_program_runs_where_the_scheduler_puts_it_and_comes_back) {
  start_ccn({"--ccn.replicas=0"}); // the cache's pins are the execution's own
  auto* crn = &start_crn();
  auto hash = publish_program(true);
  ASSERT_TRUE(eventually([&] { return phase_of(crn->port("http"), hash) == "running"; }, 20s))
    << executions(crn->port("http")).dump();
  auto r = http_request(localhost, crn->port("http"), "GET", "/vm/" + hash + "/echo?p");
  EXPECT_EQ(r.status, 200) << r.body;
  // The sandbox holds none of the CRN's sockets: one that outlives a killed CRN would keep its
  // HTTP port, and the CRN could not start again on it.
  auto holders = other_holders_of_listener(crn->port("http"), crn->pid());
  EXPECT_TRUE(holders.empty()) << "the CRN's HTTP listener leaked into:" << describe_processes(holders);
  // Its program crashes: restarted after back-off, not dropped.
  auto first_start = executions(crn->port("http"))[hash]["status"]["started_at"];
  EXPECT_EQ(http_request(localhost, crn->port("http"), "GET", "/vm/" + hash + "/crash").status, 502);
  EXPECT_TRUE(eventually([&] {
    auto x = executions(crn->port("http"));
    return x.contains(hash) && x[hash]["phase"] == "running"
           && x[hash]["status"]["started_at"] != first_start;
  }, 10s)) << executions(crn->port("http")).dump();
  EXPECT_EQ(http_request(localhost, crn->port("http"), "GET", "/vm/" + hash + "/echo?q").status, 200);
  // kill -9 of the CRN: the sandbox and its program live on, and the restarted CRN re-adopts
  // them (the same program instance answers) instead of starting the program again.
  auto instance = http_request(localhost, crn->port("http"), "GET", "/vm/" + hash + "/instance");
  ASSERT_EQ(instance.status, 200) << instance.body;
  crn->kill9();
  EXPECT_FALSE(processes_with((dir / "crn").string()).empty()) << "the sandbox died with its CRN";
  crn = &start_crn();
  EXPECT_TRUE(eventually([&] { return phase_of(crn->port("http"), hash) == "running"; }, 30s))
    << executions(crn->port("http")).dump();
  auto again = http_request(localhost, crn->port("http"), "GET", "/vm/" + hash + "/instance");
  EXPECT_EQ(again.status, 200) << again.body;
  EXPECT_EQ(again.body, instance.body) << "the program was started again, not re-adopted";
  auto logs = http_request(localhost, crn->port("http"), "GET", "/control/machine/" + hash + "/logs",
                           {}, {{"X-Auth-Token", token("crn")}});
  EXPECT_NE(logs.body.find("re-adopting"), std::string::npos) << logs.body;
  // Its code is pinned in the cache again: a running execution's files are never evicted.
  EXPECT_TRUE(eventually([&] {
    auto u = http_request(localhost, crn->port("http"), "GET", "/about/usage/system", {}, {}, 5s);
    auto cache = json::parse(u.body, nullptr, false)["cache"];
    return cache.is_object() && cache.value("pinned_bytes", uint64_t{0}) > 0;
  }, 5s));
  // The CCN keeps it on this CRN.
  EXPECT_TRUE(eventually([&] {
    auto r = http_request(localhost, ccn_http, "GET", "/api/v0/allocations", {}, {}, 5s);
    for (auto& p : json::parse(r.body, nullptr, false).value("allocations", json::array()))
      if (p.value("item_hash", "") == hash)
        return p.value("state", "") == "allocated";
    return false;
  }, 10s));
}

// A zip with `files` (name -> (bytes, mode)), made with libarchive.
std::string make_zip(const std::map<std::string, std::pair<std::string, int>>& files) {
  std::string out;
  auto* a = archive_write_new();
  archive_write_set_format_zip(a);
  archive_write_open(
    a, &out, nullptr,
    [](archive*, void* ctx, const void* buf, size_t n) -> la_ssize_t {
      static_cast<std::string*>(ctx)->append(static_cast<const char*>(buf), n);
      return static_cast<la_ssize_t>(n);
    },
    nullptr);
  for (auto& [name, file] : files) {
    auto* e = archive_entry_new();
    archive_entry_set_pathname(e, name.c_str());
    archive_entry_set_filetype(e, AE_IFREG);
    archive_entry_set_perm(e, static_cast<mode_t>(file.second));
    archive_entry_set_size(e, static_cast<la_int64_t>(file.first.size()));
    archive_write_header(a, e);
    archive_write_data(a, file.first.data(), file.first.size());
    archive_entry_free(e);
  }
  archive_write_close(a);
  archive_write_free(a);
  return out;
}

// Runs `alephd args` and returns its exit code and stdout (stderr goes to stdout too).

TEST_F(execution, a_copy_re_adopted_after_the_ccn_moved_the_workload_is_stopped) {
  start_ccn();
  auto* a = &start_crn("crn-a");
  auto hash = publish_program(true);
  ASSERT_TRUE(eventually([&] { return phase_of(a->port("http"), hash) == "running"; }, 20s))
    << executions(a->port("http")).dump();
  auto& b = start_crn("crn-b");
  // CRN A dies; the CCN moves the workload to B while A is away.
  a->kill9();
  ASSERT_TRUE(eventually([&] { return phase_of(b.port("http"), hash) == "running"; }, 20s))
    << executions(b.port("http")).dump();
  EXPECT_FALSE(processes_with((dir / "crn-a" / "executions").string()).empty());
  // A comes back and re-adopts its copy, but the CCN no longer places it there: A stops it.
  a = &start_crn("crn-a");
  auto sandboxes_of_a = [&] { return processes_with((dir / "crn-a" / "executions").string()); };
  EXPECT_TRUE(eventually([&] { return sandboxes_of_a().empty(); }, 20s))
    << "two copies of one persistent workload: " << executions(a->port("http")).dump()
    << describe_processes(sandboxes_of_a());
  EXPECT_NE(phase_of(a->port("http"), hash), "running");
  EXPECT_EQ(phase_of(b.port("http"), hash), "running");
  EXPECT_EQ(http_request(localhost, b.port("http"), "GET", "/vm/" + hash + "/echo?b").status, 200);
}

TEST_F(execution, keep_on_shutdown_leaves_persistent_sandboxes_for_the_next_crn_process) {
  start_ccn();
  auto* crn = &start_crn("crn", {"--execution.keep-on-shutdown=true"});
  auto hash = publish_program(true);
  auto od = publish_program(false, 128, 2, "on-demand");
  ASSERT_TRUE(eventually([&] { return phase_of(crn->port("http"), hash) == "running"; }, 20s));
  ASSERT_EQ(http_request(localhost, crn->port("http"), "GET", "/vm/" + od + "/echo?x", {}, {}, 20s).status, 200);
  auto instance = http_request(localhost, crn->port("http"), "GET", "/vm/" + hash + "/instance").body;
  ASSERT_FALSE(instance.empty());
  crn->signal(SIGTERM);
  ASSERT_EQ(crn->wait_exit(30s), 0) << crn->log();
  // The persistent sandbox is still there; the on-demand one was stopped.
  EXPECT_FALSE(processes_with((dir / "crn" / "executions" / hash).string()).empty());
  EXPECT_TRUE(processes_with((dir / "crn" / "executions" / od).string()).empty());
  crn = &start_crn("crn", {"--execution.keep-on-shutdown=true"});
  EXPECT_TRUE(eventually([&] { return phase_of(crn->port("http"), hash) == "running"; }, 20s));
  EXPECT_EQ(http_request(localhost, crn->port("http"), "GET", "/vm/" + hash + "/instance").body,
            instance);
  // A CRN without keep-on-shutdown stops it on SIGTERM.
  crn->signal(SIGTERM);
  ASSERT_EQ(crn->wait_exit(30s), 0);
  crn = &start_crn("crn");
  EXPECT_TRUE(eventually([&] { return phase_of(crn->port("http"), hash) == "running"; }, 20s));
  crn->signal(SIGTERM);
  ASSERT_EQ(crn->wait_exit(30s), 0);
  EXPECT_TRUE(eventually([&] { return processes_with((dir / "crn").string()).empty(); }, 10s));
}

TEST_F(execution, the_client_verbs_call_list_read_logs_and_stop) {
  start_ccn();
  auto& crn = start_crn();
  auto url = "--crn http://127.0.0.1:" + std::to_string(crn.port("http"));
  auto token_file = "--token-file " + (dir / "crn" / "login_token").string();
  auto hash = publish_program();
  auto [rc, out] = alephd_cli("call " + hash + " '/echo?from-cli' " + url);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_EQ(out, "from-cli hi");
  std::tie(rc, out) = alephd_cli("ls " + url);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find(hash.substr(0, 16)), std::string::npos) << out;
  EXPECT_NE(out.find("running"), std::string::npos) << out;
  std::tie(rc, out) = alephd_cli("logs " + hash + " " + url + " " + token_file);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("request GET /echo?from-cli"), std::string::npos) << out;
  std::tie(rc, out) = alephd_cli("logs " + hash + " " + url + " --token wrong");
  EXPECT_EQ(rc, 1) << out;
  std::tie(rc, out) = alephd_cli("stop " + hash + " " + url + " " + token_file);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("stopped"), std::string::npos) << out;
  EXPECT_EQ(phase_of(crn.port("http"), hash), "stopped");
  std::tie(rc, out) = alephd_cli("call not-a-hash " + url);
  EXPECT_EQ(rc, 2) << out;
}

TEST_F(execution, prealloc_keeps_sandboxes_ready_and_gives_them_the_programs_limits) {
  start_ccn();
  auto& crn = start_crn("crn", {"--execution.prealloc=2"});
  auto http = crn.port("http");
  auto pool = (dir / "crn" / "pool").string();
  ASSERT_TRUE(eventually([&] { return processes_with(pool).size() >= 2; }, 10s))
    << "no pre-started sandboxes";
  auto hash = publish_program(false, 64);
  auto r = http_request(localhost, http, "GET", "/vm/" + hash + "/env?GREETING", {}, {}, 20s);
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.body, "hi") << "the pooled sandbox runs this program with its variables";
  // The pool is refilled: two ready plus the one in use.
  EXPECT_TRUE(eventually([&] { return processes_with(pool).size() >= 3; }, 10s));
  // The program's memory limit (64 MiB), not the pool's default, applies.
  auto big = http_request(localhost, http, "GET", "/vm/" + hash + "/alloc?mb=100", {}, {}, 20s);
  EXPECT_EQ(big.status, 502) << big.body;
  ASSERT_TRUE(eventually([&] { return phase_of(http, hash) == "stopped"; }, 10s));
  EXPECT_NE(executions(http)[hash].value("detail", "").find("out of memory"), std::string::npos)
    << executions(http)[hash].dump();
  // The CRN's parent of its executions' groups, where this process's hierarchies have it.
  std::vector<std::string> roots;
  auto layout = alephd::cgroup_layout::detect();
  auto root_name = alephd::cgroup::root_name_for(crn.ready.at("id"));
  for (const auto& [controller, dir] : layout.v1)
    roots.push_back(dir + "/" + root_name);
  if (!layout.v2_self.empty()) {
    roots.push_back(layout.v2_self + "/" + root_name);
    roots.push_back(layout.v2_self.substr(0, layout.v2_self.rfind('/')) + "/" + root_name);
  }
  auto any_root = [&] {
    return std::any_of(roots.begin(), roots.end(),
                       [](const std::string& r) { return std::filesystem::is_directory(r); });
  };
  EXPECT_TRUE(any_root()) << "the executions ran without a cgroup";
  crn.signal(SIGTERM);
  EXPECT_EQ(crn.wait_exit(30s), 0);
  EXPECT_TRUE(processes_with(pool).empty()) << "a pre-started sandbox outlived its CRN";
  EXPECT_FALSE(any_root()) << "a CRN that stopped left its empty cgroup root behind";
}

TEST_F(execution, a_zipped_program_is_unpacked_and_mounted_read_only) {
  start_ccn();
  auto& crn = start_crn();
  auto http = crn.port("http");
  auto zip = make_zip({{"bin/app", {read_file(ALEPHD_GUEST_TEST_APP), 0755}},
                       {"data/motd.txt", {"shipped with the code\n", 0644}}});
  auto hash = publish_program(false, 128, 2, "zipped", "zip", zip, "bin/app");
  auto r = http_request(localhost, http, "GET", "/vm/" + hash + "/echo?z", {}, {}, 20s);
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.body, "z zipped");
  // The program reads its own files from /opt/code.
  auto motd = http_request(localhost, http, "GET", "/vm/" + hash + "/read?opt/code/data/motd.txt");
  EXPECT_EQ(motd.status, 200);
  EXPECT_EQ(motd.body, "shipped with the code\n");
  // A hostile archive fails clearly, and nothing escapes the code dir.
  auto evil = make_zip({{"../../escaped", {"x", 0755}}});
  auto bad = publish_program(false, 128, 2, "evil", "zip", evil, "app");
  auto e = http_request(localhost, http, "GET", "/vm/" + bad + "/", {}, {}, 20s);
  EXPECT_EQ(e.status, 502) << e.body;
  EXPECT_NE(e.body.find("unpack"), std::string::npos) << e.body;
  EXPECT_FALSE(std::filesystem::exists(dir / "crn" / "executions" / "escaped"));
  EXPECT_FALSE(std::filesystem::exists(dir / "crn" / "escaped"));
}

TEST_F(execution, volumes_are_mounted_as_the_program_asks) {
  start_ccn();
  auto& crn = start_crn();
  auto http = crn.port("http");
  auto token = std::map<std::string, std::string>{{"X-Auth-Token", this->token("crn")}};
  auto lib = store_file(make_zip({{"lib/version.txt", {"v1\n", 0644}}}));
  json volumes = json::array({
    {{"mount", "/opt/lib"}, {"ref", lib}, {"use_latest", false}},
    {{"mount", "/var/cache"}, {"ephemeral", true}, {"size_mib", 5}},
    {{"mount", "/var/lib/state"}, {"name", "state"}, {"persistence", "host"}, {"size_mib", 10}},
  });
  auto hash = publish_program(false, 128, 5, "vol", "plain", {}, "app", volumes);
  auto vm = [&](const std::string& target) {
    return http_request(localhost, http, "GET", "/vm/" + hash + target, {}, {}, 20s);
  };
  // Immutable: readable, not writable.
  auto v = vm("/read?opt/lib/lib/version.txt");
  ASSERT_EQ(v.status, 200) << v.body;
  EXPECT_EQ(v.body, "v1\n");
  EXPECT_EQ(vm("/write?0:opt/lib/lib/version.txt").status, 507);
  // Ephemeral: writable, size-limited.
  EXPECT_EQ(vm("/write?0:var/cache/scratch").status, 200);
  auto big = vm("/write?10:var/cache/big");
  EXPECT_EQ(big.status, 507) << "a 10 MiB write fit in a 5 MiB volume";
  // Persistent: writable, and limited to its size_mib (an ext4 image mounted there).
  EXPECT_EQ(vm("/write?0:var/lib/state/kept").status, 200);
  EXPECT_EQ(vm("/write?12:var/lib/state/big").status, 507) << "12 MiB fit in a 10 MiB volume";
  EXPECT_EQ(vm("/write?0:var/lib/state/still-writable").status, 200);
  // After a stop and a new start: the persistent file is there, the ephemeral one is not.
  ASSERT_EQ(http_request(localhost, http, "POST", "/control/machine/" + hash + "/stop", {}, token, 20s).status, 200);
  EXPECT_EQ(vm("/read?var/lib/state/kept").body, "data");
  EXPECT_EQ(vm("/read?var/cache/scratch").status, 404);
  // Erase deletes the persistent volume.
  ASSERT_EQ(http_request(localhost, http, "POST", "/control/machine/" + hash + "/erase", {}, token, 20s).status, 200);
  EXPECT_FALSE(std::filesystem::exists(dir / "crn" / "volumes" / hash));
  EXPECT_EQ(vm("/read?var/lib/state/kept").status, 404);
  // A mount over the sandbox's own directories is refused with the reason.
  auto bad = publish_program(false, 128, 5, "bad", "plain", {}, "app",
                             json::array({{{"mount", "/usr/bin"}, {"ephemeral", true}, {"size_mib", 1}}}));
  auto r = http_request(localhost, http, "GET", "/vm/" + bad + "/", {}, {}, 20s);
  EXPECT_EQ(r.status, 502);
  EXPECT_NE(r.body.find("reserved"), std::string::npos) << r.body;
}

TEST_F(execution, the_cache_evicts_unpinned_files_only_and_downloads_each_file_once) {
  start_ccn({"--ccn.replicas=0"}); // only executions put files in this CRN's cache
  // 8 MiB of cache: eviction starts above 7.2 MiB and stops at 6.4 MiB.
  auto& crn = start_crn("crn", {"--cache.max-bytes=8388608"});
  auto http = crn.port("http");
  auto token = std::map<std::string, std::string>{{"X-Auth-Token", this->token("crn")}};
  auto usage = [&] {
    auto r = http_request(localhost, http, "GET", "/about/usage/system", {}, {}, 5s);
    return json::parse(r.body, nullptr, false)["cache"];
  };
  auto cached = [&](const std::string& file) {
    return http_request(localhost, http, "GET", "/api/v0/storage/raw/" + file, {}, {}, 5s).status == 200;
  };
  std::map<std::string, std::string> file_of; // STORE -> file hash
  auto volume = [&](char fill, size_t bytes) {
    std::string data(bytes, fill);
    auto up = http_request(localhost, ccn_http, "POST", "/api/v0/storage/add_file", data, {}, 10s);
    auto store = store_file(data);
    file_of[store] = json::parse(up.body, nullptr, false).value("hash", "");
    return store;
  };
  auto program_with = [&](const std::string& store, const std::string& name) {
    return publish_program(false, 128, 5, name, "plain", {}, "app",
                           json::array({{{"mount", "/opt/v"}, {"ref", store}, {"use_latest", false}}}));
  };
  auto call = [&](const std::string& hash) {
    return http_request(localhost, http, "GET", "/vm/" + hash + "/read?opt/v", {}, {}, 30s);
  };
  auto v1 = volume('1', 3 << 20), v2 = volume('2', 3 << 20), v3 = volume('3', 3 << 20);
  auto p1 = program_with(v1, "p1"), p2 = program_with(v2, "p2"), p3 = program_with(v3, "p3");
  ASSERT_EQ(call(p1).status, 200);
  ASSERT_EQ(call(p2).status, 200);
  EXPECT_TRUE(cached(file_of[v1]) && cached(file_of[v2]));
  EXPECT_EQ(usage()["evicted"], 0);
  ASSERT_EQ(http_request(localhost, http, "POST", "/control/machine/" + p2 + "/stop", {}, token, 20s).status, 200);
  // p3's volume pushes the cache over the high watermark: only p2's (stopped) volume may go.
  auto r3 = call(p3);
  ASSERT_EQ(r3.status, 200);
  EXPECT_EQ(r3.body.substr(0, 64), std::string(64, '3'));
  EXPECT_TRUE(eventually([&] { return !cached(file_of[v2]); }, 10s)) << usage().dump();
  EXPECT_TRUE(cached(file_of[v1])) << "a running program's volume is never evicted";
  EXPECT_TRUE(cached(file_of[v3]));
  EXPECT_EQ(usage()["evicted"], 1);
  auto r1 = call(p1);
  EXPECT_EQ(r1.status, 200);
  EXPECT_EQ(r1.body.substr(0, 64), std::string(64, '1'));
  // Two programs starting together on one new volume: one download.
  auto before = usage()["downloads"].get<uint64_t>();
  auto v4 = volume('4', 1 << 20);
  auto p4 = program_with(v4, "p4"), p5 = program_with(v4, "p5");
  std::thread other([&] { EXPECT_EQ(call(p5).status, 200); });
  EXPECT_EQ(call(p4).status, 200);
  other.join();
  EXPECT_EQ(usage()["downloads"].get<uint64_t>(), before + 1) << usage().dump();
  auto u = usage();
  EXPECT_EQ(u["max_bytes"], 8388608);
  EXPECT_GT(u["pinned_bytes"].get<uint64_t>(), 7u << 20);
}

TEST_F(execution, a_matching_message_runs_a_message_triggered_program_with_it) {
  start_ccn();
  auto& crn = start_crn();
  auto http = crn.port("http");
  // A program subscribed to messages on channel TRIGGER from 0xfeed.
  auto up = http_request(localhost, ccn_http, "POST", "/api/v0/storage/add_file",
                         read_file(ALEPHD_GUEST_TEST_APP), {}, 10s);
  auto store = post_message(
    {{"chain", "ETH"}, {"sender", "0xabc"}, {"type", "STORE"}, {"item_type", "inline"},
     {"time", 1700000000.0},
     {"content", {{"address", "0xabc"}, {"time", 1700000000.0}, {"item_type", "storage"},
                  {"item_hash", json::parse(up.body).value("hash", "")}}}});
  auto program = post_message(
    {{"chain", "ETH"}, {"sender", "0xabc"}, {"type", "PROGRAM"}, {"item_type", "inline"},
     {"time", 1700000000.0},
     {"content",
      {{"type", "vm-function"}, {"address", "0xabc"}, {"time", 1700000000.0},
       {"allow_amend", false},
       {"code", {{"encoding", "plain"}, {"entrypoint", "app"}, {"ref", store},
                 {"interface", "binary"}, {"use_latest", false}}},
       {"variables", {{"GREETING", "hi"}, {"APP_PORT", "8080"}}},
       {"on", {{"http", true}, {"persistent", false},
               {"message", json::array({{{"channel", "TRIGGER"}, {"sender", "0xfeed"}}})}}},
       {"environment", {{"reproducible", false}, {"internet", false}, {"aleph_api", false},
                        {"shared_cache", false}}},
       {"resources", {{"vcpus", 1}, {"memory", 128}, {"seconds", 5}}},
       {"volumes", json::array()}}}});
  auto post_on = [&](const std::string& channel, const std::string& text) {
    return post_message({{"chain", "ETH"}, {"sender", "0xfeed"}, {"type", "POST"},
                         {"channel", channel}, {"item_type", "inline"}, {"time", 1700000001.0},
                         {"content", {{"address", "0xfeed"}, {"time", 1700000001.0},
                                      {"type", "note"}, {"content", {{"text", text}}}}}});
  };
  auto other = post_on("ELSEWHERE", "not for the program");
  auto hit = post_on("TRIGGER", "for the program");
  auto last_event = [&] {
    return http_request(localhost, http, "GET", "/vm/" + program + "/last-event", {}, {}, 10s).body;
  };
  ASSERT_TRUE(eventually([&] { return last_event().find(hit) != std::string::npos; }, 20s))
    << "the program never got the message: " << last_event();
  EXPECT_EQ(last_event().find(other), std::string::npos);
  EXPECT_NE(last_event().find("for the program"), std::string::npos);
}

TEST_F(execution, an_instance_boots_as_a_microvm_survives_a_crn_restart_and_stops_cleanly) {
  if (::access("/usr/bin/qemu-system-x86_64", X_OK) != 0 || ::access("/sbin/mkfs.ext4", X_OK) != 0)
    GTEST_SKIP() << "needs qemu-system-x86 and e2fsprogs (scripts/install-deps installs them)";
  start_ccn();
  auto* crn = &start_crn();
  auto http = crn->port("http");
  // A 16 MiB ext4 disk with one file on it, as the instance's rootfs.
  auto image = (dir / "rootfs.ext4").string();
  auto content = (dir / "rootfs-content").string();
  std::filesystem::create_directories(content + "/etc");
  std::ofstream{content + "/etc/motd"} << "hello from the rootfs\n";
  auto published = publish_instance(
    content, image,
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGULT6A41Msmw2KEu0R9MvUjhuWNAsbdeZ0DOwYbt4Qt test@alephd",
    1700000000.0);
  auto hash = published.hash, file = published.file;
  ASSERT_FALSE(hash.empty());
  ASSERT_TRUE(boots_to_running(http, hash)) << executions(http).dump();
  auto index = http_request(localhost, http, "GET", "/vm/" + hash + "/", {}, {}, 30s);
  EXPECT_EQ(index.status, 200) << index.body;
  EXPECT_EQ(index.body, "instance vm-" + hash.substr(0, 12) + "\n");
  auto listing = http_request(localhost, http, "GET", "/vm/" + hash + "/rootfs.txt", {}, {}, 30s);
  EXPECT_NE(listing.body.find("etc"), std::string::npos) << "the rootfs is mounted: " << listing.body;
  auto qemu = processes_with((dir / "crn").string() + "/executions/" + hash);
  EXPECT_FALSE(qemu.empty()) << "no QEMU process for the instance";
  // kill -9 of the CRN: the VM keeps running, and the restarted CRN re-adopts it (the same QEMU
  // process, no second boot).
  crn->kill9();
  EXPECT_EQ(processes_with((dir / "crn").string() + "/executions/" + hash), qemu);
  crn = &start_crn();
  http = crn->port("http");
  ASSERT_TRUE(eventually([&] { return phase_of(http, hash) == "running"; }, 30s))
    << executions(http).dump();
  EXPECT_EQ(processes_with((dir / "crn").string() + "/executions/" + hash), qemu);
  auto again = http_request(localhost, http, "GET", "/vm/" + hash + "/", {}, {}, 30s);
  EXPECT_EQ(again.status, 200) << again.body;
  EXPECT_EQ(again.body, "instance vm-" + hash.substr(0, 12) + "\n");
  auto stop = http_request(localhost, http, "POST", "/control/machine/" + hash + "/stop", {},
                           {{"X-Auth-Token", token("crn")}}, 30s);
  EXPECT_EQ(stop.status, 200) << stop.body;
  EXPECT_TRUE(eventually(
    [&] { return processes_with((dir / "crn").string() + "/executions/" + hash).empty(); }, 10s));
  // Its use was metered from the QEMU process as an instance: the sample taken as it stopped
  // (committed within the ledger's commit delay) holds the call and the VM's memory. Its CPU
  // over those few milliseconds may round to 0 clock ticks; process_usage is tested on its own.
  json records;
  uint64_t requests = 0, peak = 0;
  EXPECT_TRUE(eventually([&] {
    records = json::parse(
      http_request(localhost, http, "GET", "/about/executions/records", {}, {}, 10s).body, nullptr, false);
    requests = peak = 0;
    for (auto& r : records.value("records", json::array())) {
      if (r.value("item_hash", "") != hash)
        continue;
      EXPECT_EQ(r.value("product", ""), "instance");
      requests += r.value("requests", uint64_t{0});
      peak = std::max(peak, r.value("mem_peak", uint64_t{0}));
    }
    return requests > 0;
  }, 5s)) << records.dump();
  EXPECT_EQ(requests, 1u) << "the one call after the restart: " << records.dump();
  EXPECT_GT(peak, 16u << 20) << "a VM's resident memory is more than 16 MiB: " << records.dump();
  // The base image in the CRN's cache is never written: writes go to the overlay.
  auto cached = read_file((dir / "crn" / "cache" / file.substr(0, 2) / file.substr(2)).string());
  EXPECT_FALSE(cached.empty());
  EXPECT_TRUE(cached == read_file(image)) << "the base image in the cache changed";
}

// An instance whose disk has an init of its own (busybox's, from the project's microVM assets):
// the CRN boots it with the owner's keys and the VM's hostname written into the disk, serves
// its web server through /vm/{ref}, and a stop through the CRN gives its shutdown more than
// the agent's default 5 s (the instance's own grace reaches the VM).
TEST_F(execution, an_instance_disk_with_an_init_boots_it_and_a_stop_lets_it_shut_down) {
  for (const char* tool : {"/usr/bin/qemu-system-x86_64", "/sbin/mkfs.ext4", "/sbin/debugfs",
                           "/usr/bin/qemu-img"})
    if (::access(tool, X_OK) != 0)
      GTEST_SKIP() << "needs " << tool << " (scripts/install-deps installs it)";
  auto busybox = std::filesystem::path{ALEPHD_BINARY}.parent_path() / "microvm" / "busybox";
  ASSERT_TRUE(std::filesystem::exists(busybox)) << busybox << " (made by build-microvm-assets)";
  start_ccn();
  auto& crn = start_crn();
  auto http = crn.port("http");
  auto content = dir / "init-disk";
  for (auto d : {"bin", "sbin", "etc", "www/cgi-bin"})
    std::filesystem::create_directories(content / d);
  std::filesystem::copy_file(busybox, content / "bin/busybox");
  std::filesystem::permissions(content / "bin/busybox", std::filesystem::perms(0755));
  std::filesystem::create_symlink("/bin/busybox", content / "sbin/init");
  for (auto applet : {"sh", "cat", "hostname", "printf", "sleep", "sync"})
    std::filesystem::create_symlink("busybox", content / "bin" / applet);
  std::ofstream{content / "etc/inittab"}
    << "::respawn:/bin/busybox httpd -f -p 8080 -h /www\n"
       "::shutdown:/bin/sh -c 'sleep 6; echo clean >/shutdown-ran; sync'\n";
  std::ofstream{content / "www/cgi-bin/who"}
    << "#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\n'\n"
       "printf '%s|%s|%s' \"$(cat /proc/1/comm)\" \"$(hostname)\" \"$(cat /root/.ssh/authorized_keys)\"\n";
  std::filesystem::permissions(content / "www/cgi-bin/who", std::filesystem::perms(0755));
  const std::string key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGULT6A41Msmw2KEu0R9MvUjhuWNAsbdeZ0DOwYbt4Qt owner@alephd";
  auto hash = publish_instance(content.string(), (dir / "init-disk.ext4").string(), key,
                               1700000001.0).hash;
  ASSERT_FALSE(hash.empty());
  ASSERT_TRUE(boots_to_running(http, hash)) << executions(http).dump();
  alephd::sim::http_result who;
  EXPECT_TRUE(eventually([&] {
    who = http_request(localhost, http, "GET", "/vm/" + hash + "/cgi-bin/who", {}, {}, 30s);
    return who.status == 200;
  }, 30s)) << who.status << " " << who.body;
  EXPECT_EQ(who.body, "init|vm-" + hash.substr(0, 12) + "|" + key);
  auto runs = dir / "crn" / "executions" / hash;
  auto t0 = std::chrono::steady_clock::now();
  auto stop = http_request(localhost, http, "POST", "/control/machine/" + hash + "/stop", {},
                           {{"X-Auth-Token", token("crn")}}, 70s);
  EXPECT_EQ(stop.status, 200) << stop.body;
  EXPECT_TRUE(eventually([&] { return processes_with(runs.string()).empty(); }, 60s));
  EXPECT_GT(std::chrono::steady_clock::now() - t0, 5s) << "the disk's 6 s shutdown was cut short";
  // The disk's shutdown action ran to its end and reached the overlay.
  std::string overlay;
  for (auto& e : std::filesystem::recursive_directory_iterator{runs})
    if (e.path().filename() == "rootfs.qcow2")
      overlay = e.path().string();
  ASSERT_FALSE(overlay.empty()) << "no overlay under " << runs;
  auto flat = (dir / "init-disk-after.raw").string();
  ASSERT_EQ(std::system(("/usr/bin/qemu-img convert -O raw '" + overlay + "' '" + flat + "'").c_str()), 0);
  auto out = (dir / "shutdown-ran").string();
  ASSERT_EQ(std::system(("/sbin/debugfs -R 'cat /shutdown-ran' '" + flat + "' >'" + out
                         + "' 2>/dev/null").c_str()), 0);
  EXPECT_EQ(read_file(out), "clean\n") << "the disk's init did not shut down cleanly";
}

} // namespace

// Metering: a persistent program's calls and bytes are sampled into the CRN's hash-chained
// ledger and reach the CCN's usage book exactly once, across a kill -9 of the CCN and then
// of the CRN; `alephd ledger verify` finds the chain intact.
TEST_F(execution, metering_reaches_the_ccn_exactly_once_across_kill9_of_either_side) {
  auto get_json = [](uint16_t port, const std::string& target) {
    auto r = http_request(localhost, port, "GET", target, {}, {}, 5s);
    return r.status == 200 ? json::parse(r.body, nullptr, false) : json::object();
  };
  // Short reward epochs and frequent probes: the CCN scores the CRN and pays for its usage.
  const std::vector<std::string> ccn_flags{"--ccn.replicas=0", "--rewards.epoch-seconds=2",
                                           "--scoring.probe-interval=300ms"};
  start_ccn(ccn_flags);
  auto ccn_node_port = procs.back()->port("node");
  auto* crn = &start_crn("crn", {"--ledger.sample-interval=300ms", "--asn=AS64500"});
  auto crn_id = get_json(crn->port("http"), "/").value("id", "");
  ASSERT_FALSE(crn_id.empty());
  auto hash = publish_program(true);
  ASSERT_TRUE(eventually([&] { return phase_of(crn->port("http"), hash) == "running"; }, 20s))
    << executions(crn->port("http")).dump();
  auto call = [&](int n) {
    for (int i = 0; i < n; ++i) {
      auto r = http_request(localhost, crn->port("http"), "POST", "/vm/" + hash + "/big?1000",
                            std::string(100, 'x'));
      EXPECT_EQ(r.status, 200) << r.body;
    }
  };
  // The CCN's copy of this CRN's entries, in order.
  auto at_ccn = [&] {
    json all = json::array();
    for (uint64_t after = 0;;) {
      auto page = get_json(ccn_http, "/api/v0/usage/" + crn_id + "?after=" + std::to_string(after) + "&limit=1000");
      auto records = page.value("records", json::array());
      if (records.empty())
        return all;
      for (auto& r : records)
        all.push_back(r);
      after = page.value("next", after + records.size());
    }
  };
  auto at_crn = [&] {
    return get_json(crn->port("http"), "/about/executions/records?limit=1000").value("records", json::array());
  };
  // The calls metered so far in the CRN's ledger (a kill -9 loses what is not sampled yet, so
  // each kill waits until the calls before it are in).
  auto metered_calls = [&] {
    uint64_t n = 0;
    for (auto& r : at_crn())
      n += r.value("requests", uint64_t{0});
    return n;
  };
  call(4);
  ASSERT_TRUE(eventually([&] { return metered_calls() == 4; }, 10s)) << at_crn().dump();
  ASSERT_TRUE(eventually([&] { return at_ccn().size() >= 2; }, 10s)) << at_crn().dump();

  // kill -9 of the CCN; it comes back on the same node port and the CRN ships again.
  auto& old_ccn = *procs.front();
  old_ccn.kill9();
  auto held_before = at_crn().size();
  {
    std::vector<std::string> args{"ccn", "--port=0", "--node-port=" + std::to_string(ccn_node_port),
                                  "--verify-signatures=false"};
    args.insert(args.end(), ccn_flags.begin(), ccn_flags.end());
    start("ccn", args);
  }
  ccn_http = procs.back()->port("http");
  call(3);
  ASSERT_TRUE(eventually([&] { return metered_calls() == 7; }, 10s)) << at_crn().dump();
  ASSERT_TRUE(eventually([&] { return at_ccn().size() > held_before; }, 20s)) << at_crn().size();

  // The prober scored the CRN from its probes (it answers fast, with this alephd's version;
  // probes are kept across the CCN's restart).
  auto scores = get_json(ccn_http, "/api/v0/scores").value("scores", json::array());
  ASSERT_EQ(scores.size(), 1u) << scores.dump();
  EXPECT_EQ(scores[0].value("node_id", ""), crn_id);
  EXPECT_EQ(scores[0].value("asn", ""), "AS64500");
  EXPECT_GT(scores[0].value("samples", 0), 0);
  EXPECT_GT(scores[0].value("total_score", 0.0), 0.8) << scores.dump();

  // kill -9 of the CRN while it samples and ships; it re-adopts the sandbox and goes on.
  crn->kill9();
  crn = &start_crn("crn", {"--ledger.sample-interval=300ms", "--asn=AS64500"});
  ASSERT_TRUE(eventually([&] { return phase_of(crn->port("http"), hash) == "running"; }, 30s));
  call(2);

  // Stop the program (its last sample is written as it stops): then whatever the CRN's
  // ledger holds, the CCN holds the same entries once each, in order.
  json ccn_view, crn_view;
  auto stop = http_request(localhost, crn->port("http"), "POST", "/control/machine/" + hash + "/stop",
                           {}, {{"X-Auth-Token", token("crn")}});
  EXPECT_EQ(stop.status, 200) << stop.body;
  ASSERT_TRUE(eventually([&] { return metered_calls() == 9; }, 10s))
    << "the sample taken at the stop holds the last calls: " << at_crn().dump();
  ASSERT_TRUE(eventually([&] {
    crn_view = at_crn();
    ccn_view = at_ccn();
    return !crn_view.empty() && ccn_view == crn_view;
  }, 10s)) << "CCN " << ccn_view.size() << " entries, CRN " << crn_view.size();
  uint64_t requests = 0, bytes_in = 0, bytes_out = 0, cpu = 0;
  for (std::size_t i = 0; i < ccn_view.size(); ++i) {
    ASSERT_EQ(ccn_view[i].value("seq", uint64_t{0}), i + 1) << "a gap or a double at " << i;
    if (ccn_view[i].value("item_hash", "") != hash)
      continue;
    requests += ccn_view[i].value("requests", uint64_t{0});
    bytes_in += ccn_view[i].value("bytes_in", uint64_t{0});
    bytes_out += ccn_view[i].value("bytes_out", uint64_t{0});
    cpu += ccn_view[i].value("cpu_ns", uint64_t{0});
    EXPECT_EQ(ccn_view[i].value("product", ""), "persistent_program");
  }
  // Before the CRN restart its code file was pinned, and metered as storage.
  EXPECT_EQ(ccn_view[0].value("storage_bytes", uint64_t{0}), read_file(ALEPHD_GUEST_TEST_APP).size());
  EXPECT_EQ(requests, 9u) << "every call counted once";
  EXPECT_EQ(bytes_in, 900u);
  EXPECT_EQ(bytes_out, 9000u);
  EXPECT_GT(cpu, 0u);
  auto [code, out] = alephd_cli("ledger verify --data-dir " + (dir / "crn").string());
  EXPECT_EQ(code, 0) << out;
  EXPECT_NE(out.find(std::to_string(crn_view.size()) + " entries, chain intact"), std::string::npos) << out;

  // Reward epochs: every entry of the CRN counted in exactly one epoch, each epoch
  // recomputed from the usage book by `alephd rewards` to the same figures.
  const auto last_seq = ccn_view.size();
  std::map<uint64_t, json> epochs;
  ASSERT_TRUE(eventually([&] {
    epochs.clear();
    auto latest = get_json(ccn_http, "/api/v0/rewards");
    if (!latest.contains("epoch"))
      return false;
    for (auto n = latest["epoch"].get<uint64_t>(); n > 0; --n) {
      auto e = get_json(ccn_http, "/api/v0/rewards?epoch=" + std::to_string(n));
      if (!e.contains("epoch"))
        break;
      epochs[n] = e;
    }
    uint64_t counted = 0;
    for (auto& [n, e] : epochs)
      if (e["ranges"].contains(crn_id))
        counted = std::max<uint64_t>(counted, e["ranges"][crn_id][1].get<uint64_t>());
    return counted == last_seq;
  }, 15s)) << "the epochs did not count every entry";
  uint64_t next = 0;
  double paid_to_crn = 0;
  for (auto& [n, e] : epochs) {
    if (!e["ranges"].contains(crn_id))
      continue;
    EXPECT_EQ(e["ranges"][crn_id][0].get<uint64_t>(), next) << "epoch " << n << " skips or repeats entries";
    next = e["ranges"][crn_id][1].get<uint64_t>();
    for (auto& p : e["usage"]["payouts"])
      if (p["recipient"] == crn_id)
        paid_to_crn += p["amount"].get<double>();
    auto [rc, text] = alephd_cli("rewards --data-dir " + (dir / "ccn").string() + " --epoch " + std::to_string(n));
    EXPECT_EQ(rc, 0) << text;
    EXPECT_NE(text.find("matches what was stored"), std::string::npos) << text;
  }
  EXPECT_EQ(next, last_seq);
  EXPECT_GT(paid_to_crn, 0.0) << "the CRN earns 60 % of what its executions cost";
}
