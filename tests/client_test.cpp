// The client verbs (call, ls, logs, stop, reboot, erase) against a fake CRN on loopback that
// records every request and answers canned responses.
#include "runtime/client.hpp"

#include <array>
#include <atomic>
#include <csignal>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <future>
#include <map>
#include <mutex>
#include <sstream>
#include <thread>

#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

namespace {

namespace asio = boost::asio;
namespace bhttp = boost::beast::http;
using tcp = asio::ip::tcp;
using json = nlohmann::json;
using namespace std::chrono_literals;
using alephd::run_client;

const std::string ref = "8f1b4d0c9e2a7f6b5c3d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b";
const std::string ref2 = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

struct recorded {
  std::string method;
  std::string target;
  std::string body;
  std::map<std::string, std::string> headers; // lower-case names
  std::string header(const std::string& name) const {
    auto i = headers.find(name);
    return i == headers.end() ? std::string{} : i->second;
  }
  bool has(const std::string& name) const {
    return headers.count(name) > 0;
  }
};

struct canned {
  enum mode_t { answer, hang, drop } mode = answer;
  unsigned status = 200;
  std::string body;
  std::string content_type = "application/json";
  std::vector<std::pair<std::string, std::string>> headers;
};

canned json_answer(unsigned status, const json& doc) {
  canned c;
  c.status = status;
  c.body = doc.dump();
  return c;
}

// A one-thread HTTP/1.1 server on 127.0.0.1 (port chosen by the OS), one request per
// connection. `hang` holds the connection open without answering until the server stops.
class fake_crn {
public:
  using handler = std::function<canned(const recorded&, std::size_t index)>;

  explicit fake_crn(handler h) : handler_(std::move(h)) {
    acceptor_.open(tcp::v4());
    acceptor_.set_option(tcp::acceptor::reuse_address(true));
    acceptor_.bind({asio::ip::make_address("127.0.0.1"), 0});
    acceptor_.listen();
    port_ = acceptor_.local_endpoint().port();
    thread_ = std::thread([this] { run(); });
  }

  ~fake_crn() {
    stop_ = true;
    // Wake the blocking accept with a connection of our own.
    boost::system::error_code ec;
    asio::io_context ioc;
    tcp::socket s{ioc};
    s.connect({asio::ip::make_address("127.0.0.1"), port_}, ec);
    thread_.join();
  }

  uint16_t port() const {
    return port_;
  }
  std::string url() const {
    return "http://127.0.0.1:" + std::to_string(port_);
  }
  std::vector<recorded> requests() const {
    std::lock_guard<std::mutex> guard{mtx_};
    return requests_;
  }
  std::size_t count() const {
    std::lock_guard<std::mutex> guard{mtx_};
    return requests_.size();
  }

private:
  void run() {
    while (!stop_) {
      tcp::socket sock{ioc_};
      boost::system::error_code ec;
      acceptor_.accept(sock, ec);
      if (stop_ || ec)
        break;
      boost::beast::flat_buffer buffer;
      bhttp::request<bhttp::string_body> req;
      bhttp::read(sock, buffer, req, ec);
      if (ec)
        continue;
      recorded r;
      r.method = std::string{req.method_string()};
      r.target = std::string{req.target()};
      r.body = req.body();
      for (const auto& f : req) {
        std::string name{f.name_string()};
        for (auto& c : name)
          c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        auto& slot = r.headers[name];
        slot = slot.empty() ? std::string{f.value()} : slot + ", " + std::string{f.value()};
      }
      std::size_t index;
      {
        std::lock_guard<std::mutex> guard{mtx_};
        index = requests_.size();
        requests_.push_back(r);
      }
      auto c = handler_(r, index);
      if (c.mode == canned::hang) {
        while (!stop_)
          std::this_thread::sleep_for(10ms);
        break;
      }
      if (c.mode == canned::drop)
        continue; // the socket closes here
      bhttp::response<bhttp::string_body> res;
      res.result(c.status);
      res.version(11);
      if (!c.content_type.empty())
        res.set(bhttp::field::content_type, c.content_type);
      for (auto& [n, v] : c.headers)
        res.insert(n, v);
      res.body() = c.body;
      res.prepare_payload();
      res.keep_alive(false);
      bhttp::write(sock, res, ec);
      sock.shutdown(tcp::socket::shutdown_send, ec);
    }
  }

  handler handler_;
  asio::io_context ioc_;
  tcp::acceptor acceptor_{ioc_};
  uint16_t port_ = 0;
  std::atomic<bool> stop_{false};
  mutable std::mutex mtx_;
  std::vector<recorded> requests_;
  std::thread thread_;
};

struct result {
  int code = -1;
  std::string out;
  std::string err;
};

result client(const std::string& verb, const std::vector<std::string>& args) {
  std::ostringstream out;
  std::ostringstream err;
  result r;
  r.code = run_client(verb, args, out, err);
  r.out = out.str();
  r.err = err.str();
  return r;
}

// One line on err, starting with "alephd: ".
void expect_one_error_line(const result& r) {
  ASSERT_FALSE(r.err.empty());
  EXPECT_EQ(r.err.rfind("alephd: ", 0), 0u) << r.err;
  EXPECT_EQ(r.err.find('\n'), r.err.size() - 1) << r.err;
}

// Every test starts without the client's environment variables and with a private directory.
class client_test : public ::testing::Test {
protected:
  void SetUp() override {
    unsetenv("ALEPHD_CRN");
    unsetenv("ALEPHD_TOKEN");
    char tmpl[] = "/tmp/alephd-client-test-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    unsetenv("ALEPHD_CRN");
    unsetenv("ALEPHD_TOKEN");
    std::string cmd = "rm -rf '" + dir_ + "'";
    EXPECT_EQ(std::system(cmd.c_str()), 0);
  }
  std::string write(const std::string& name, const std::string& content) {
    auto path = dir_ + "/" + name;
    std::ofstream f{path, std::ios::binary};
    f << content;
    return path;
  }
  std::string dir_;
};

// ---- parsers ------------------------------------------------------------------------------

TEST(client_parsers, crn_urls) {
  alephd::client::crn_url u;
  ASSERT_EQ(alephd::client::parse_crn_url("http://127.0.0.1:4020", u), "");
  EXPECT_EQ(u.host, "127.0.0.1");
  EXPECT_EQ(u.port, 4020);
  EXPECT_EQ(u.prefix, "");
  ASSERT_EQ(alephd::client::parse_crn_url("HTTP://crn.example.org/api/v1//", u), "");
  EXPECT_EQ(u.host, "crn.example.org");
  EXPECT_EQ(u.port, 80);
  EXPECT_EQ(u.prefix, "/api/v1");
  ASSERT_EQ(alephd::client::parse_crn_url("localhost:4021", u), "");
  EXPECT_EQ(u.host, "localhost");
  EXPECT_EQ(u.port, 4021);
  ASSERT_EQ(alephd::client::parse_crn_url("http://[::1]:4022/p", u), "");
  EXPECT_EQ(u.host, "::1");
  EXPECT_EQ(u.port, 4022);
  EXPECT_EQ(u.prefix, "/p");
  EXPECT_EQ(u.to_string(), "http://[::1]:4022/p");

  EXPECT_EQ(alephd::client::parse_crn_url("https://crn.example.org", u),
            "https is not supported yet; use an SSH tunnel or a reverse proxy");
  for (const char* bad : {"", "ftp://h", "http://", "http://:80", "http://h:", "http://h:0",
                          "http://h:65536", "http://h:12a", "http://h:999999", "http://u:p@h",
                          "http://h/x?q=1", "http://h#f", "http://[::1", "http://[::1]x",
                          "http://[zz]:1", "http://h a", "http://h\n", "http://h\x7f",
                          "http://h%41", "http://h\xc3\xa9"}) {
    EXPECT_NE(alephd::client::parse_crn_url(bad, u), "") << bad;
  }
  EXPECT_NE(alephd::client::parse_crn_url("http://" + std::string(5000, 'a'), u), "");
}

TEST(client_parsers, durations) {
  std::chrono::milliseconds d{};
  ASSERT_EQ(alephd::client::parse_client_duration("500ms", d), "");
  EXPECT_EQ(d, 500ms);
  ASSERT_EQ(alephd::client::parse_client_duration("30s", d), "");
  EXPECT_EQ(d, 30s);
  ASSERT_EQ(alephd::client::parse_client_duration("2m", d), "");
  EXPECT_EQ(d, 2min);
  ASSERT_EQ(alephd::client::parse_client_duration("1h", d), "");
  EXPECT_EQ(d, 1h);
  EXPECT_NE(alephd::client::parse_client_duration("30", d).find("needs a unit"),
            std::string::npos);
  for (const char* bad : {"", "s", "0s", "0ms", "-1s", "1.5s", "25h", "99999999999s", "5 s",
                          "5sec", "ms5", "1e3ms", " 5s"})
    EXPECT_NE(alephd::client::parse_client_duration(bad, d), "") << bad;
}

TEST(client_parsers, log_overlap) {
  using alephd::client::log_entry;
  using alephd::client::log_overlap;
  log_entry a{"t1", "stdout", "a"}, b{"t2", "stdout", "b"}, c{"t3", "stderr", "c"},
    d{"t4", "system", "d"};
  EXPECT_EQ(log_overlap({}, {a, b}), 0u);
  EXPECT_EQ(log_overlap({a, b}, {}), 0u);
  EXPECT_EQ(log_overlap({a, b}, {a, b}), 2u);
  EXPECT_EQ(log_overlap({a, b}, {a, b, c}), 2u);
  EXPECT_EQ(log_overlap({a, b, c}, {b, c, d}), 2u); // the oldest entry fell off
  EXPECT_EQ(log_overlap({a, b}, {c, d}), 0u);        // nothing in common: all new
  // Same time, type and message twice: position decides.
  EXPECT_EQ(log_overlap({a, a}, {a, a, a}), 2u);
  EXPECT_EQ(log_overlap({b, a}, {a, a}), 1u);
  EXPECT_EQ(log_overlap({a, b, a}, {a, b, a, c}), 3u);
  EXPECT_EQ(log_overlap({a, b, a, b}, {a, b, a, b, c}), 4u);
  EXPECT_EQ(log_overlap({a, b, a, b}, {a, b, c}), 2u);
  // A field differing is a different entry.
  EXPECT_EQ(log_overlap({a}, {log_entry{"t1", "stderr", "a"}}), 0u);
}

TEST(client_parsers, verbs_and_help) {
  for (const char* v : {"call", "ls", "logs", "stop", "reboot", "erase"})
    EXPECT_TRUE(alephd::is_client_verb(v)) << v;
  for (const char* v : {"crn", "ccn", "dev", "", "LS", "start"})
    EXPECT_FALSE(alephd::is_client_verb(v)) << v;
  auto help = alephd::client_help();
  for (const char* word : {"alephd call", "alephd ls", "alephd logs", "stop|reboot|erase",
                           "--crn", "--token", "--token-file", "--data-dir", "--timeout"})
    EXPECT_NE(help.find(word), std::string::npos) << word;
  auto r = client("logs", {"--help"});
  EXPECT_EQ(r.code, 0);
  EXPECT_EQ(r.out, help);
  r = client("start", {});
  EXPECT_EQ(r.code, 2);
  expect_one_error_line(r);
}

// ---- call ---------------------------------------------------------------------------------

TEST_F(client_test, call_get_prints_the_body) {
  fake_crn crn{[](const recorded&, std::size_t) {
    canned c;
    c.body = "hello from the program\n";
    c.content_type = "text/plain";
    c.headers = {{"Aleph-Program-ItemHash", ref}};
    return c;
  }};
  auto r = client("call", {ref, "--crn", crn.url()});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, "hello from the program\n");
  EXPECT_EQ(r.err, "");
  auto reqs = crn.requests();
  ASSERT_EQ(reqs.size(), 1u);
  EXPECT_EQ(reqs[0].method, "GET");
  EXPECT_EQ(reqs[0].target, "/vm/" + ref + "/");
  EXPECT_EQ(reqs[0].header("host"), "127.0.0.1:" + std::to_string(crn.port()));
  EXPECT_FALSE(reqs[0].has("x-auth-token"));
  EXPECT_FALSE(reqs[0].has("content-length"));
  EXPECT_EQ(reqs[0].body, "");
}

TEST_F(client_test, call_post_with_data_headers_query_and_prefix) {
  fake_crn crn{[](const recorded&, std::size_t) { return json_answer(201, {{"ok", true}}); }};
  auto r = client("call", {"--crn", crn.url() + "/proxy/", ref, "api/items?limit=5&x=%20y", "-d",
                           R"({"name":"x"})", "-H", "Content-Type: application/json", "-H",
                           "X-Trace:  abc  ", "--timeout", "2s"});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, R"({"ok":true})");
  auto reqs = crn.requests();
  ASSERT_EQ(reqs.size(), 1u);
  EXPECT_EQ(reqs[0].method, "POST");
  EXPECT_EQ(reqs[0].target, "/proxy/vm/" + ref + "/api/items?limit=5&x=%20y");
  EXPECT_EQ(reqs[0].body, R"({"name":"x"})");
  EXPECT_EQ(reqs[0].header("content-length"), "12");
  EXPECT_EQ(reqs[0].header("content-type"), "application/json");
  EXPECT_EQ(reqs[0].header("x-trace"), "abc");
}

TEST_F(client_test, call_method_data_file_and_binary_body) {
  std::string payload{"\x00\x01\xff\r\n\x00tail", 10};
  std::string answer{"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff", 18};
  fake_crn crn{[&](const recorded&, std::size_t) {
    canned c;
    c.body = answer;
    c.content_type = "image/png";
    return c;
  }};
  auto file = write("payload.bin", payload);
  auto r = client("call", {ref, "/upload", "-XPUT", "--data-file", file, "--crn", crn.url()});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, answer); // byte for byte, NULs included
  auto reqs = crn.requests();
  ASSERT_EQ(reqs.size(), 1u);
  EXPECT_EQ(reqs[0].method, "PUT");
  EXPECT_EQ(reqs[0].target, "/vm/" + ref + "/upload");
  EXPECT_EQ(reqs[0].body, payload);

  r = client("call", {ref, "--data-file", dir_ + "/missing", "--crn", crn.url()});
  EXPECT_EQ(r.code, 2);
  expect_one_error_line(r);
  EXPECT_EQ(crn.count(), 1u);
}

TEST_F(client_test, call_include_prints_status_and_headers_first) {
  fake_crn crn{[](const recorded&, std::size_t) {
    canned c;
    c.body = "body";
    c.content_type = "text/plain";
    c.headers = {{"Aleph-Program-ItemHash", ref}};
    return c;
  }};
  auto r = client("call", {ref, "-i", "--crn", crn.url()});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out.rfind("HTTP/1.1 200 OK\n", 0), 0u) << r.out;
  EXPECT_NE(r.out.find("\nAleph-Program-ItemHash: " + ref + "\n"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("\nContent-Type: text/plain\n"), std::string::npos) << r.out;
  auto split = r.out.find("\n\n");
  ASSERT_NE(split, std::string::npos);
  EXPECT_EQ(r.out.substr(split + 2), "body");
}

TEST_F(client_test, call_error_answers_exit_1_with_the_error_text) {
  fake_crn crn{[](const recorded& req, std::size_t) {
    if (req.target.find("/json") != std::string::npos)
      return json_answer(404, {{"error", "no such program"}});
    canned c;
    c.status = 500;
    c.content_type = "text/plain";
    c.body = "Traceback (most recent call last):\n  File x\n";
    return c;
  }};
  auto r = client("call", {ref, "/json", "--crn", crn.url()});
  EXPECT_EQ(r.code, 1);
  EXPECT_EQ(r.out, "");
  EXPECT_EQ(r.err, "alephd: HTTP 404: no such program\n");
  r = client("call", {ref, "/text", "--crn", crn.url()});
  EXPECT_EQ(r.code, 1);
  EXPECT_EQ(r.out, "");
  EXPECT_EQ(r.err, "alephd: HTTP 500: Traceback (most recent call last):\n");
}

TEST_F(client_test, crn_from_environment_and_flag_overrides_it) {
  fake_crn crn{[](const recorded&, std::size_t) { return json_answer(200, json::object()); }};
  setenv("ALEPHD_CRN", crn.url().c_str(), 1);
  auto r = client("ls", {});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(crn.count(), 1u);
  r = client("ls", {"--crn", "https://127.0.0.1:1"});
  EXPECT_EQ(r.code, 2);
  EXPECT_EQ(r.err, "alephd: https is not supported yet; use an SSH tunnel or a reverse proxy\n");
  EXPECT_EQ(crn.count(), 1u);
  setenv("ALEPHD_CRN", "https://example.org", 1);
  r = client("call", {ref});
  EXPECT_EQ(r.code, 2);
  EXPECT_EQ(r.err, "alephd: https is not supported yet; use an SSH tunnel or a reverse proxy\n");
}

TEST_F(client_test, bad_usage_exits_2_with_one_line) {
  fake_crn crn{[](const recorded&, std::size_t) { return json_answer(200, json::object()); }};
  auto u = crn.url();
  const std::string bad_ref = "alephd: REF must be a 64-digit hex item hash\n";
  std::string upper = ref;
  upper[0] = 'F';
  for (const auto& [verb, args] : std::vector<std::pair<std::string, std::vector<std::string>>>{
         {"call", {"abc", "--crn", u}},
         {"call", {upper, "--crn", u}},
         {"call", {ref + "0", "--crn", u}},
         {"logs", {"../" + ref.substr(3), "--crn", u, "--token", "t"}},
         {"stop", {"", "--crn", u, "--token", "t"}}}) {
    auto r = client(verb, args);
    EXPECT_EQ(r.code, 2) << verb;
    EXPECT_EQ(r.err, bad_ref) << verb;
  }
  for (const auto& [verb, args] : std::vector<std::pair<std::string, std::vector<std::string>>>{
         {"call", {"--crn", u}},                                // no REF
         {"call", {ref, "/", "extra", "--crn", u}},             // too many arguments
         {"call", {ref, "/a b", "--crn", u}},                   // space in PATH
         {"call", {ref, "--token", "t", "--crn", u}},           // the token is never sent to a program
         {"call", {ref, "-X", "GE T", "--crn", u}},             // malformed method
         {"call", {ref, "-H", "NoColon", "--crn", u}},          // malformed header
         {"call", {ref, "-H", "Content-Length: 5", "--crn", u}}, // framing is ours
         {"call", {ref, "-d", "x", "--data-file", "f", "--crn", u}},
         {"call", {ref, "--crn"}},                              // missing value
         {"call", {ref, "--timeout", "30", "--crn", u}},        // no unit
         {"call", {ref, "-iv", "--crn", u}},                    // no flag bundling
         {"ls", {"--json=yes", "--crn", u}},
         {"ls", {"extra", "--crn", u}},
         {"ls", {"--follow", "--crn", u}},
         {"ls", {"--crn", "ftp://x"}},
         {"logs", {ref, "--interval", "10ms", "--token", "t", "--crn", u}},
         {"stop", {ref, "--token", "a", "--token-file", "b", "--crn", u}},
         {"erase", {ref, ref, "--token", "t", "--crn", u}}}) {
    auto r = client(verb, args);
    EXPECT_EQ(r.code, 2) << verb << " " << args[0] << " " << r.err;
    expect_one_error_line(r);
    EXPECT_EQ(r.out, "");
  }
  EXPECT_EQ(crn.count(), 0u); // nothing reached the node
}

TEST_F(client_test, unreachable_node_exits_1_with_one_line) {
  uint16_t port = 0;
  {
    asio::io_context ioc;
    tcp::acceptor a{ioc, {asio::ip::make_address("127.0.0.1"), 0}};
    port = a.local_endpoint().port();
  } // closed: nothing listens there now
  auto url = "http://127.0.0.1:" + std::to_string(port);
  auto r = client("call", {ref, "--crn", url, "--timeout", "2s"});
  EXPECT_EQ(r.code, 1);
  expect_one_error_line(r);
  EXPECT_NE(r.err.find("cannot reach the CRN at " + url), std::string::npos) << r.err;
  r = client("stop", {ref, "--crn", url, "--token", "t", "--timeout", "2s"});
  EXPECT_EQ(r.code, 1);
  expect_one_error_line(r);
  r = client("logs", {ref, "--crn", url, "--token", "t", "--follow", "--timeout", "2s"});
  EXPECT_EQ(r.code, 1);
  expect_one_error_line(r);
}

TEST_F(client_test, timeout_is_respected) {
  fake_crn crn{[](const recorded&, std::size_t) {
    canned c;
    c.mode = canned::hang;
    return c;
  }};
  auto start = std::chrono::steady_clock::now();
  auto r = client("call", {ref, "--crn", crn.url(), "--timeout", "300ms"});
  auto elapsed = std::chrono::steady_clock::now() - start;
  EXPECT_EQ(r.code, 1);
  expect_one_error_line(r);
  EXPECT_NE(r.err.find("within 300ms"), std::string::npos) << r.err;
  EXPECT_GE(elapsed, 280ms);
  EXPECT_LT(elapsed, 2s);
}

TEST_F(client_test, connection_closed_without_answer) {
  fake_crn crn{[](const recorded&, std::size_t) {
    canned c;
    c.mode = canned::drop;
    return c;
  }};
  auto r = client("ls", {"--crn", crn.url(), "--timeout", "2s"});
  EXPECT_EQ(r.code, 1);
  expect_one_error_line(r);
  EXPECT_NE(r.err.find("without an answer"), std::string::npos) << r.err;
}

// ---- ls -----------------------------------------------------------------------------------

json executions() {
  return json{
    {ref,
     {{"phase", "running"},
      {"vm_type", "instance"},
      {"resources", {{"vcpus", 2}, {"memory", 4096}, {"disk_mib", 20480}}},
      {"status", {{"defined_at", "2026-11-25T10:00:00.000000+00:00"},
                  {"started_at", "2026-11-25T10:00:01.500000+00:00"}}},
      {"detail", ""},
      {"running", true}}},
    {ref2,
     {{"phase", "preparing"},
      {"vm_type", "persistent_program"},
      {"resources", {{"vcpus", 1}, {"memory", 128}}},
      {"status", {{"started_at", nullptr}}},
      {"detail", "waiting for an executor"},
      {"running", false}}},
  };
}

TEST_F(client_test, ls_prints_a_table) {
  fake_crn crn{[](const recorded&, std::size_t) { return json_answer(200, executions()); }};
  auto r = client("ls", {"--crn", crn.url()});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out,
            "ITEM_HASH          TYPE                PHASE      VCPUS  MEMORY   STARTED           "
            "                DETAIL\n"
            "0123456789abcdef…  persistent_program  preparing  1      128MiB   -                 "
            "                waiting for an executor\n"
            "8f1b4d0c9e2a7f6b…  instance            running    2      4096MiB  "
            "2026-11-25T10:00:01.500000+00:00  -\n");
  auto reqs = crn.requests();
  ASSERT_EQ(reqs.size(), 1u);
  EXPECT_EQ(reqs[0].method, "GET");
  EXPECT_EQ(reqs[0].target, "/v2/about/executions/list");
  EXPECT_FALSE(reqs[0].has("x-auth-token"));
}

TEST_F(client_test, ls_json_and_malformed_answers) {
  fake_crn crn{[](const recorded&, std::size_t index) {
    if (index == 0)
      return json_answer(200, executions());
    canned c;
    c.body = index == 1 ? "<html>oops</html>" : "[1,2]";
    return c;
  }};
  auto r = client("ls", {"--json", "--crn", crn.url()});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(json::parse(r.out), executions());
  EXPECT_EQ(r.out, executions().dump(2) + "\n");
  r = client("ls", {"--crn", crn.url()});
  EXPECT_EQ(r.code, 1);
  expect_one_error_line(r);
  EXPECT_NE(r.err.find("not JSON"), std::string::npos) << r.err;
  r = client("ls", {"--crn", crn.url()});
  EXPECT_EQ(r.code, 1);
  expect_one_error_line(r);
}

// ---- logs and the token -------------------------------------------------------------------

json log_doc(std::initializer_list<std::array<const char*, 3>> entries) {
  json out = json::array();
  for (auto& e : entries)
    out.push_back({{"time", e[0]}, {"type", e[1]}, {"message", e[2]}});
  return out;
}

TEST_F(client_test, logs_prints_entries_with_the_token) {
  fake_crn crn{[](const recorded&, std::size_t) {
    return json_answer(200, log_doc({{"2026-11-25T10:00:00.000001+00:00", "system", "started"},
                                     {"2026-11-25T10:00:00.5+00:00", "stdout", "listening\n"},
                                     {"2026-11-25T10:00:01+00:00", "stderr", "bad \x1b[31mred"}}));
  }};
  auto r = client("logs", {ref, "--crn", crn.url(), "--token", "s3cret"});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out,
            "2026-11-25T10:00:00.000001+00:00 system started\n"
            "2026-11-25T10:00:00.5+00:00 stdout listening\n"
            "2026-11-25T10:00:01+00:00 stderr bad \\x1b[31mred\n");
  auto reqs = crn.requests();
  ASSERT_EQ(reqs.size(), 1u);
  EXPECT_EQ(reqs[0].method, "GET");
  EXPECT_EQ(reqs[0].target, "/control/machine/" + ref + "/logs");
  EXPECT_EQ(reqs[0].header("x-auth-token"), "s3cret");
  EXPECT_EQ(reqs[0].header("accept"), "application/json");
}

TEST_F(client_test, token_sources_in_order) {
  fake_crn crn{[](const recorded&, std::size_t) { return json_answer(200, json::array()); }};
  auto u = crn.url();
  auto data_dir = dir_ + "/crn";
  ASSERT_EQ(mkdir(data_dir.c_str(), 0700), 0);
  write("crn/login_token", "from-data-dir\n");
  auto token_file = write("token", "  from-file\n");

  EXPECT_EQ(client("logs", {ref, "--crn", u, "--data-dir", data_dir}).code, 0);
  setenv("ALEPHD_TOKEN", "from-env", 1);
  EXPECT_EQ(client("logs", {ref, "--crn", u, "--data-dir", data_dir}).code, 0);
  EXPECT_EQ(client("logs", {ref, "--crn", u, "--token-file", token_file}).code, 0);
  EXPECT_EQ(client("logs", {ref, "--crn", u, "--token", "from-flag"}).code, 0);
  auto reqs = crn.requests();
  ASSERT_EQ(reqs.size(), 4u);
  EXPECT_EQ(reqs[0].header("x-auth-token"), "from-data-dir");
  EXPECT_EQ(reqs[1].header("x-auth-token"), "from-env");
  EXPECT_EQ(reqs[2].header("x-auth-token"), "from-file");
  EXPECT_EQ(reqs[3].header("x-auth-token"), "from-flag");
}

TEST_F(client_test, missing_token_exits_2_saying_how_to_pass_it) {
  fake_crn crn{[](const recorded&, std::size_t) { return json_answer(200, json::array()); }};
  for (const char* verb : {"logs", "stop", "reboot", "erase"}) {
    auto r = client(verb, {ref, "--crn", crn.url(), "--data-dir", dir_ + "/nowhere"});
    EXPECT_EQ(r.code, 2) << verb;
    expect_one_error_line(r);
    EXPECT_NE(r.err.find("--token"), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("ALEPHD_TOKEN"), std::string::npos) << r.err;
    EXPECT_NE(r.err.find(dir_ + "/nowhere/login_token"), std::string::npos) << r.err;
  }
  auto r = client("stop", {ref, "--crn", crn.url(), "--token-file", dir_ + "/nothing"});
  EXPECT_EQ(r.code, 2);
  expect_one_error_line(r);
  r = client("stop", {ref, "--crn", crn.url(), "--token-file", write("empty", "\n")});
  EXPECT_EQ(r.code, 2);
  expect_one_error_line(r);
  r = client("stop", {ref, "--crn", crn.url(), "--token", "a\r\nX-Evil: 1"});
  EXPECT_EQ(r.code, 2);
  expect_one_error_line(r);
  EXPECT_EQ(crn.count(), 0u);
}

// ---- stop, reboot, erase ------------------------------------------------------------------

TEST_F(client_test, lifecycle_verbs_post_and_print_the_phase) {
  fake_crn crn{[](const recorded& req, std::size_t) {
    if (req.header("x-auth-token") != "tok")
      return json_answer(401, {{"error", "Authentication required: send the node's login token "
                                         "as X-Auth-Token"}});
    auto action = req.target.substr(req.target.rfind('/') + 1);
    std::string phase = action == "stop" ? "stopped" : action == "reboot" ? "running" : "erased";
    return json_answer(200, {{"item_hash", ref}, {"phase", phase}, {"detail", ""}});
  }};
  for (const auto& [verb, phase] : std::vector<std::pair<std::string, std::string>>{
         {"stop", "stopped"}, {"reboot", "running"}, {"erase", "erased"}}) {
    auto r = client(verb, {ref, "--crn", crn.url(), "--token", "tok"});
    EXPECT_EQ(r.code, 0) << r.err;
    EXPECT_EQ(r.out, phase + "\n");
    EXPECT_EQ(r.err, "");
    auto last = crn.requests().back();
    EXPECT_EQ(last.method, "POST");
    EXPECT_EQ(last.target, "/control/machine/" + ref + "/" + verb);
    EXPECT_EQ(last.header("x-auth-token"), "tok");
  }
  auto r = client("stop", {ref, "--crn", crn.url(), "--token", "wrong"});
  EXPECT_EQ(r.code, 1);
  EXPECT_EQ(r.out, "");
  EXPECT_EQ(r.err, "alephd: HTTP 401: Authentication required: send the node's login token as "
                   "X-Auth-Token\n");
}

// ---- logs --follow ------------------------------------------------------------------------

std::string lower_copy(std::string s) {
  for (auto& c : s)
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// A CRN without stream_logs (404 "no route" to the websocket request, as an older CRN
// answers): `h` sees only the /logs polls, numbered from 0. The client then polls.
template <class Handler>
auto without_stream(Handler h) {
  auto polls = std::make_shared<std::atomic<std::size_t>>(0);
  return [h, polls](const recorded& r, std::size_t) {
    if (r.target.find("/stream_logs") != std::string::npos)
      return json_answer(404, {{"error", "no route for GET " + r.target}});
    return h(r, (*polls)++);
  };
}

TEST_F(client_test, follow_prints_new_entries_only_and_stops_on_404) {
  fake_crn crn{without_stream([](const recorded&, std::size_t i) {
    switch (i) {
      case 0:
        return json_answer(200, log_doc({{"t1", "stdout", "a"}, {"t2", "stdout", "b"}}));
      case 1:
        return json_answer(200, log_doc({{"t1", "stdout", "a"}, {"t2", "stdout", "b"}}));
      case 2:
        return json_answer(200, log_doc({{"t1", "stdout", "a"},
                                         {"t2", "stdout", "b"},
                                         {"t2", "stdout", "b"}, // the same line again
                                         {"t3", "stderr", "c"}}));
      case 3: // the oldest entries fell off the CRN's buffer
        return json_answer(200, log_doc({{"t2", "stdout", "b"},
                                         {"t3", "stderr", "c"},
                                         {"t4", "system", "d"}}));
      case 4:
        return json_answer(503, {{"error", "busy"}});
      case 5:
        return json_answer(503, {{"error", "busy"}});
      case 6:
        return json_answer(200, log_doc({{"t3", "stderr", "c"},
                                         {"t4", "system", "d"},
                                         {"t5", "stdout", "e"}}));
      default:
        return json_answer(404, {{"error", "unknown execution"}});
    }
  })};
  auto start = std::chrono::steady_clock::now();
  auto r = client("logs", {ref, "--follow", "--interval", "100ms", "--crn", crn.url(), "--token",
                           "tok"});
  auto elapsed = std::chrono::steady_clock::now() - start;
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, "t1 stdout a\nt2 stdout b\nt2 stdout b\nt3 stderr c\nt4 system d\n"
                   "t5 stdout e\n");
  EXPECT_EQ(r.err, "alephd: HTTP 503: busy (retrying every 100ms)\n"
                   "alephd: stopped following: HTTP 404: unknown execution\n");
  EXPECT_EQ(crn.count(), 9u); // the websocket attempt and eight polls
  for (const auto& req : crn.requests())
    EXPECT_EQ(req.header("x-auth-token"), "tok");
  EXPECT_GE(elapsed, 650ms); // seven pauses of 100 ms: no busy loop
  EXPECT_LT(elapsed, 4s);
}

TEST_F(client_test, follow_polls_every_second_by_default) {
  fake_crn crn{without_stream([](const recorded&, std::size_t i) {
    if (i == 0)
      return json_answer(200, log_doc({{"t1", "stdout", "only"}}));
    return json_answer(404, {{"error", "gone"}});
  })};
  auto start = std::chrono::steady_clock::now();
  auto r = client("logs", {ref, "-f", "--crn", crn.url(), "--token", "tok"});
  auto elapsed = std::chrono::steady_clock::now() - start;
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, "t1 stdout only\n");
  EXPECT_EQ(crn.count(), 3u);
  EXPECT_GE(elapsed, 950ms);
  EXPECT_LT(elapsed, 3s);
}

TEST_F(client_test, follow_fails_at_once_when_the_first_request_fails) {
  auto refuse = [](const recorded& req, std::size_t) {
    if (req.header("x-auth-token") != "tok")
      return json_answer(401, {{"error", "Authentication required"}});
    return json_answer(404, {{"error", "unknown execution"}});
  };
  // A CRN with stream_logs refuses the websocket; one without it refuses the first poll.
  for (bool streams : {true, false}) {
    SCOPED_TRACE(streams ? "stream_logs" : "polling");
    fake_crn crn{streams ? fake_crn::handler{refuse} : fake_crn::handler{without_stream(refuse)}};
    auto r = client("logs", {ref, "--follow", "--crn", crn.url(), "--token", "tok"});
    EXPECT_EQ(r.code, 1);
    EXPECT_EQ(r.err, "alephd: HTTP 404: unknown execution\n");
    r = client("logs", {ref, "--follow", "--crn", crn.url(), "--token", "bad"});
    EXPECT_EQ(r.code, 1);
    EXPECT_EQ(r.err, "alephd: HTTP 401: Authentication required\n");
    EXPECT_EQ(crn.count(), streams ? 2u : 4u);
    if (streams)
      for (const auto& req : crn.requests()) {
        EXPECT_NE(req.target.find("/control/machine/" + ref + "/stream_logs"), std::string::npos);
        EXPECT_EQ(lower_copy(req.header("upgrade")), "websocket");
      }
  }
}

TEST_F(client_test, follow_stops_on_sigint_and_restores_the_handler) {
  struct sigaction before {};
  ASSERT_EQ(sigaction(SIGINT, nullptr, &before), 0);
  fake_crn crn{without_stream([](const recorded&, std::size_t) {
    return json_answer(200, log_doc({{"t1", "stdout", "same"}}));
  })};
  auto run = std::async(std::launch::async, [&] {
    return client("logs", {ref, "--follow", "--interval", "100ms", "--crn", crn.url(), "--token",
                           "tok"});
  });
  // The handler is in place before the first request; wait for a second one to be sure the
  // loop runs, then interrupt.
  auto give_up = std::chrono::steady_clock::now() + 3s;
  while (crn.count() < 3 && std::chrono::steady_clock::now() < give_up)
    std::this_thread::sleep_for(10ms);
  ASSERT_GE(crn.count(), 3u);
  auto start = std::chrono::steady_clock::now();
  ASSERT_EQ(kill(getpid(), SIGINT), 0);
  ASSERT_EQ(run.wait_for(2s), std::future_status::ready);
  EXPECT_LT(std::chrono::steady_clock::now() - start, 1s);
  auto r = run.get();
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, "t1 stdout same\n");
  EXPECT_EQ(r.err, "");
  struct sigaction after {};
  ASSERT_EQ(sigaction(SIGINT, nullptr, &after), 0);
  EXPECT_EQ(after.sa_handler, before.sa_handler);
}

} // namespace
