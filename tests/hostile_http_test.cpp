// Hostile inputs on every endpoint of a live CCN and CRN: each gets a clear
// 4xx with a JSON error, and both nodes keep serving.
#include <cerrno>
#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "tests/http_client.hpp"
#include "tests/process.hpp"

using namespace std::chrono_literals;
using nlohmann::json;
using alephd::test::http_request;
using alephd::test::http_result;
using alephd::test::process;
using alephd::test::raw_exchange;

namespace {

const std::string localhost = "127.0.0.1";

struct hostile : ::testing::Test {
  static inline std::filesystem::path dir;
  static inline std::unique_ptr<process> ccn, crn;
  static inline uint16_t ccn_http = 0, crn_http = 0;

  static void SetUpTestSuite() {
    std::random_device rd;
    dir = std::filesystem::temp_directory_path()
          / ("alephd-hostile-" + std::to_string(::getpid()) + "-" + std::to_string(rd()));
    std::filesystem::create_directories(dir);
    ccn = std::make_unique<process>(
      std::vector<std::string>{"ccn", "--port=0", "--node-port=0", "--ccn.max-file-size=4096",
                               "--verify-signatures=false",
                               "--data-dir=" + (dir / "ccn").string()},
      (dir / "ccn.log").string());
    ASSERT_TRUE(ccn->wait_ready()) << ccn->log();
    ccn_http = ccn->port("http");
    crn = std::make_unique<process>(
      std::vector<std::string>{"crn", "--port=0", "--ccn=" + ccn->ready.at("node"),
                               "--data-dir=" + (dir / "crn").string()},
      (dir / "crn.log").string());
    ASSERT_TRUE(crn->wait_ready()) << crn->log();
    crn_http = crn->port("http");
  }

  static void TearDownTestSuite() {
    crn.reset();
    ccn.reset();
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }

  void TearDown() override {
    // Whatever the test sent, both nodes still answer.
    EXPECT_EQ(http_request(localhost, ccn_http, "GET", "/api/v0/nodes", {}, {}, 5s).status, 200)
      << ccn->log();
    EXPECT_EQ(http_request(localhost, crn_http, "GET", "/about/usage/system", {}, {}, 5s).status, 200)
      << crn->log();
  }

  // Asserts a 4xx JSON error with the expected status.
  static void expect_error(uint16_t port, const std::string& method, const std::string& target,
                           const std::string& body, int status,
                           std::map<std::string, std::string> headers = {}) {
    auto r = http_request(localhost, port, method, target, body, headers, 10s);
    EXPECT_EQ(r.status, status) << method << " " << target.substr(0, 100) << " -> " << r.body.substr(0, 300);
    auto j = json::parse(r.body, nullptr, false);
    EXPECT_TRUE(j.is_object() && j.contains("error") && j["error"].is_string())
      << method << " " << target.substr(0, 100) << " -> " << r.body.substr(0, 300);
  }

  static std::string real_message() {
    std::ifstream in{std::string{ALEPHD_PEER_DATA_DIR} + "/machine.json"};
    return {std::istreambuf_iterator<char>{in}, {}};
  }
};

TEST_F(hostile, malformed_and_truncated_message_json_is_400) {
  for (std::string body : {"", "{", "[]", "null", "\"str\"", "{\"type\": \"POST\",", "{}}", "\x01\x02\x03"})
    expect_error(ccn_http, "POST", "/api/v0/messages", body, 400);
  auto m = real_message();
  expect_error(ccn_http, "POST", "/api/v0/messages", m.substr(0, m.size() / 2), 400);
}

TEST_F(hostile, invalid_utf8_and_deep_nesting_are_400) {
  auto m = real_message();
  auto pos = m.find("Fun-dApps");
  ASSERT_NE(pos, std::string::npos);
  m.replace(pos, 3, "\xff\xfe\xc0");
  expect_error(ccn_http, "POST", "/api/v0/messages", m, 400);
  std::string deep(100000, '[');
  deep += std::string(100000, ']');
  expect_error(ccn_http, "POST", "/api/v0/messages", deep, 400);
  std::string deep_obj;
  for (int i = 0; i < 5000; ++i)
    deep_obj += "{\"a\":";
  deep_obj += "1" + std::string(5000, '}');
  expect_error(ccn_http, "POST", "/api/v0/messages", deep_obj, 400);
}

TEST_F(hostile, wrong_types_and_huge_numbers_are_422_with_the_field) {
  auto doc = json::parse(real_message());
  auto set_and_post = [&](const json& value, const std::string& field) {
    auto d = doc;
    d["content"]["resources"]["vcpus"] = value;
    auto r = http_request(localhost, ccn_http, "POST", "/api/v0/messages", d.dump(), {}, 10s);
    EXPECT_EQ(r.status, 422) << value.dump() << " -> " << r.body;
    auto j = json::parse(r.body, nullptr, false);
    EXPECT_EQ(j.value("field", ""), field) << r.body;
    EXPECT_FALSE(j.value("error", "").empty());
  };
  set_and_post("two", "content.resources.vcpus");
  set_and_post(300, "content.resources.vcpus");
  set_and_post(0, "content.resources.vcpus");
  set_and_post(-1, "content.resources.vcpus");
  set_and_post(1.5, "content.resources.vcpus");
  set_and_post(1e308, "content.resources.vcpus");
  auto r = http_request(localhost, ccn_http, "POST", "/api/v0/messages",
                        [&] {
                          auto s = doc.dump();
                          auto p = s.find("\"vcpus\":1");
                          return s.replace(p, 9, "\"vcpus\":99999999999999999999999999");
                        }(),
                        {}, 10s);
  EXPECT_EQ(r.status, 422) << r.body;
  // The example of the issue, exactly.
  auto d = doc;
  d["content"]["resources"]["vcpus"] = 257;
  r = http_request(localhost, ccn_http, "POST", "/api/v0/messages", d.dump(), {}, 10s);
  EXPECT_EQ(json::parse(r.body), (json{{"error", "must be between 1 and 256"}, {"field", "content.resources.vcpus"}}));
  // A forged item_hash is refused.
  d = doc;
  d["item_hash"] = std::string(64, 'a');
  expect_error(ccn_http, "POST", "/api/v0/messages", d.dump(), 422);
}

TEST_F(hostile, pyaleph_envelope_is_accepted_like_a_bare_message) {
  auto doc = json::parse(real_message());
  doc["channel"] = "ENVELOPE";
  auto r = http_request(localhost, ccn_http, "POST", "/api/v0/messages",
                        json{{"sync", true}, {"message", doc}}.dump(), {}, 10s);
  ASSERT_EQ(r.status, 200) << r.body;
  auto hash = json::parse(r.body)["item_hash"].get<std::string>();
  auto got = http_request(localhost, ccn_http, "GET", "/api/v0/messages/" + hash);
  ASSERT_EQ(got.status, 200);
  EXPECT_EQ(json::parse(got.body)["message"]["channel"], "ENVELOPE");
  expect_error(ccn_http, "POST", "/api/v0/messages", json{{"sync", true}, {"message", 5}}.dump(), 422);
}

TEST_F(hostile, oversize_and_truncated_bodies) {
  // The CCN accepts files up to 4096 bytes; HTTP bodies up to that plus 1 MiB of framing.
  expect_error(ccn_http, "POST", "/api/v0/storage/add_file", std::string(5000, 'x'), 413);
  expect_error(ccn_http, "POST", "/api/v0/messages", std::string(3u << 20, ' '), 413);
  // Over ccn.max-message-size (1 MiB) but within the HTTP body limit.
  expect_error(ccn_http, "POST", "/api/v0/messages", std::string((1u << 20) + 10, ' '), 413);
  // Content-Length promises more than is sent, then the client hangs up.
  auto msg = real_message();
  auto at = msg.find("Fun-dApps");
  ASSERT_NE(at, std::string::npos);
  msg.replace(at, 9, "TRUNCATED");
  raw_exchange(localhost, ccn_http,
               "POST /api/v0/messages HTTP/1.1\r\nHost: x\r\nContent-Length: " + std::to_string(msg.size() + 50)
                 + "\r\n\r\n" + msg, 2s);
  raw_exchange(localhost, ccn_http,
               "POST /api/v0/storage/add_file HTTP/1.1\r\nHost: x\r\nContent-Length: 3000\r\n\r\nabc", 2s);
  // No partial file became visible: not the bytes that were sent ("abc")...
  auto r = http_request(localhost, ccn_http, "GET",
                        "/api/v0/storage/raw/ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(r.status, 404);
  // ...and no partial message either.
  auto list = http_request(localhost, ccn_http, "GET", "/api/v0/messages?msgType=POST");
  ASSERT_EQ(list.status, 200);
  for (auto& m : json::parse(list.body)["messages"])
    EXPECT_NE(m["message"]["channel"], "TRUNCATED");
}

TEST_F(hostile, storage_inputs) {
  expect_error(ccn_http, "POST", "/api/v0/storage/add_file", "", 400);
  expect_error(ccn_http, "POST", "/api/v0/storage/add_file", "--x\r\nno headers end",
               400, {{"Content-Type", "multipart/form-data; boundary=x"}});
  expect_error(ccn_http, "POST", "/api/v0/storage/add_file", "data", 400,
               {{"Content-Type", "multipart/form-data"}});
  expect_error(ccn_http, "GET", "/api/v0/storage/raw/xyz", "", 400);
  expect_error(ccn_http, "GET", "/api/v0/storage/raw/" + std::string(64, 'A'), "", 400);
  expect_error(ccn_http, "GET", "/api/v0/storage/raw/" + std::string(64, 'f'), "", 404);
  expect_error(ccn_http, "GET", "/api/v0/storage/raw/" + std::string(5000, 'f'), "", 400);
  // A well-formed multipart upload works and round-trips.
  auto body = std::string{"--B0und\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\n"
                          "Content-Type: text/plain\r\n\r\nhello multipart\r\n--B0und--\r\n"};
  auto up = http_request(localhost, ccn_http, "POST", "/api/v0/storage/add_file", body,
                         {{"Content-Type", "multipart/form-data; boundary=B0und"}}, 5s);
  ASSERT_EQ(up.status, 200) << up.body;
  auto hash = json::parse(up.body)["hash"].get<std::string>();
  EXPECT_EQ(http_request(localhost, ccn_http, "GET", "/api/v0/storage/raw/" + hash).body, "hello multipart");
}

TEST_F(hostile, message_lookups_and_queries) {
  expect_error(ccn_http, "GET", "/api/v0/messages/zzz", "", 400);
  expect_error(ccn_http, "GET", "/api/v0/messages/" + std::string(64, 'e'), "", 404);
  expect_error(ccn_http, "GET", "/api/v0/messages/%00%ff", "", 400);
  expect_error(ccn_http, "GET", "/api/v0/messages?page=abc", "", 400);
  expect_error(ccn_http, "GET", "/api/v0/messages?page=0", "", 400);
  expect_error(ccn_http, "GET", "/api/v0/messages?page=99999999999999999999", "", 400);
  expect_error(ccn_http, "GET", "/api/v0/messages?pagination=100000", "", 400);
  expect_error(ccn_http, "GET", "/api/v0/messages?msgType=FOO", "", 400);
  expect_error(ccn_http, "DELETE", "/api/v0/messages", "", 405);
  expect_error(ccn_http, "GET", "/api/v0/nope", "", 404);
  expect_error(ccn_http, "GET", "/" + std::string(8000, 'a'), "", 404);
}

TEST_F(hostile, crn_endpoints) {
  expect_error(crn_http, "GET", "/about/login?token=" + std::string(10000, 'a'), "", 401);
  expect_error(crn_http, "GET", "/about/login", "", 401, {{"Cookie", "token=; token"}});
  expect_error(crn_http, "POST", "/about/usage/system", "{}", 405);
  expect_error(crn_http, "GET", "/vm/" + std::string(64, 'a') + "/x", "", 404);
  expect_error(crn_http, "GET", "/control/machine/abc/stop", "", 405);
  expect_error(crn_http, "POST", "/control/machine/abc/stop", "", 401);
  expect_error(crn_http, "POST", "/control/machine/" + std::string(64, 'a') + "/erase", "", 401,
               {{"X-Auth-Token", "not-the-token"}});
  expect_error(crn_http, "GET", "/control/machine/abc/logs", "", 401);
  expect_error(crn_http, "GET", "/control/machine/abc/explode", "", 404);
  expect_error(crn_http, "GET", "/control/machine/", "", 404);
  expect_error(crn_http, "GET", "/vm/not-a-hash/x", "", 400);
  expect_error(crn_http, "GET", "/vm/", "", 400);
  expect_error(crn_http, "POST", "/vm/" + std::string(64, 'G') + "?x=1", "{", 400);
  expect_error(crn_http, "GET", "/vm/" + std::string(4000, 'a'), "", 400);
}

TEST_F(hostile, metering_and_reward_queries) {
  expect_error(ccn_http, "GET", "/api/v0/rewards?epoch=abc", "", 400);
  expect_error(ccn_http, "GET", "/api/v0/rewards?epoch=-1", "", 400);
  expect_error(ccn_http, "GET", "/api/v0/rewards?epoch=99999999999999999999", "", 400);
  expect_error(ccn_http, "GET", "/api/v0/rewards?epoch=7", "", 404);
  expect_error(ccn_http, "POST", "/api/v0/rewards", "{}", 405);
  expect_error(ccn_http, "POST", "/api/v0/scores", "{}", 405);
  expect_error(ccn_http, "GET", "/api/v0/usage/", "", 400);
  expect_error(ccn_http, "GET", "/api/v0/usage/a/b", "", 400);
  expect_error(ccn_http, "GET", "/api/v0/usage/crn?limit=0", "", 400);
  expect_error(ccn_http, "GET", "/api/v0/usage/crn?after=x", "", 400);
  expect_error(ccn_http, "GET", "/api/v0/usage/" + std::string(200, 'a'), "", 400);
  expect_error(crn_http, "GET", "/about/executions/records?after=-1", "", 400);
  expect_error(crn_http, "GET", "/about/executions/records?limit=", "", 400);
  expect_error(crn_http, "POST", "/about/executions/records", "", 405);
  // Still answering, and well-formed ones work.
  auto ok = http_request(localhost, crn_http, "GET", "/about/executions/records?limit=5000", {}, {}, 10s);
  EXPECT_EQ(ok.status, 200) << ok.body;
  EXPECT_TRUE(json::parse(ok.body, nullptr, false).contains("records")) << ok.body;
  auto unknown = http_request(localhost, ccn_http, "GET", "/api/v0/usage/nobody", {}, {}, 10s);
  EXPECT_EQ(unknown.status, 200);
  EXPECT_EQ(json::parse(unknown.body, nullptr, false)["records"], json::array());
  auto scores = http_request(localhost, ccn_http, "GET", "/api/v0/scores", {}, {}, 10s);
  EXPECT_EQ(scores.status, 200) << scores.body;
}

TEST_F(hostile, garbage_at_the_http_layer_is_400_or_431) {
  for (uint16_t port : {ccn_http, crn_http}) {
    auto r = raw_exchange(localhost, port, std::string("\x00\xff GARBAGE\r\n\r\n", 14), 2s);
    EXPECT_NE(r.find(" 400 "), std::string::npos) << r;
    auto big = "GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + std::string(64 * 1024, 'a') + "\r\n\r\n";
    r = raw_exchange(localhost, port, big, 2s);
    EXPECT_NE(r.find(" 431 "), std::string::npos) << r.substr(0, 200);
  }
}

} // namespace

namespace {

// A TCP connection to 127.0.0.1:port (-1 on failure).
int connect_to(uint16_t port) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (fd >= 0 && ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

// Whether the server closed `fd` within `wait` (a read sees the end).
bool closed_by_server(int fd, std::chrono::milliseconds wait) {
  timeval tv{0, static_cast<suseconds_t>(wait.count() * 1000)};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  char c;
  auto n = ::recv(fd, &c, 1, 0);
  return n == 0 || (n < 0 && errno == ECONNRESET);
}

} // namespace

// Per-client limits (on for loopback here): a fifth connection is closed at once, requests past
// the burst get 429 with Retry-After, and both recover.
TEST(client_limits, connections_and_request_rate_per_address) {
  std::random_device rd;
  auto d = std::filesystem::temp_directory_path()
           / ("alephd-limits-" + std::to_string(::getpid()) + "-" + std::to_string(rd()));
  std::filesystem::create_directories(d);
  {
    process ccn{{"ccn", "--port=0", "--node-port=0", "--data-dir=" + (d / "ccn").string(),
                 "--verify-signatures=false",
                 "--http.limit-loopback=true", "--http.max-connections-per-client=4",
                 "--http.rate-limit=20", "--http.rate-burst=5"},
                (d / "ccn.log").string()};
    ASSERT_TRUE(ccn.wait_ready()) << ccn.log();
    auto port = ccn.port("http");
    std::vector<int> held;
    for (int i = 0; i < 4; ++i) {
      held.push_back(connect_to(port));
      ASSERT_GE(held.back(), 0);
    }
    for (int fd : held)
      EXPECT_FALSE(closed_by_server(fd, 100ms)) << "one of the first four was closed";
    int fifth = connect_to(port);
    ASSERT_GE(fifth, 0);
    EXPECT_TRUE(closed_by_server(fifth, 2000ms)) << "a fifth connection from one address stayed open";
    ::close(fifth);
    for (int fd : held)
      ::close(fd);
    // Once they are closed, the address may connect again.
    bool again = false;
    for (int i = 0; i < 40 && !again; ++i) {
      again = http_request(localhost, port, "GET", "/api/v0/info", {}, {}, 2s).status == 200;
      if (!again)
        std::this_thread::sleep_for(50ms);
    }
    EXPECT_TRUE(again) << "the address could not connect again";
    // Rate: 5 at once, then 20 a second; a burst of 20 requests meets 429s.
    std::this_thread::sleep_for(400ms); // the bucket is full again
    int ok = 0, limited = 0;
    http_result last_429;
    for (int i = 0; i < 20; ++i) {
      auto r = http_request(localhost, port, "GET", "/api/v0/info", {}, {}, 2s);
      if (r.status == 200)
        ++ok;
      if (r.status == 429) {
        ++limited;
        last_429 = r;
      }
    }
    EXPECT_GE(ok, 5);
    EXPECT_GT(limited, 0) << "20 requests at once passed a burst of 5 at 20/s";
    EXPECT_EQ(last_429.headers["retry-after"], "1");
    auto j = json::parse(last_429.body, nullptr, false);
    EXPECT_TRUE(j.is_object() && j.contains("error")) << last_429.body;
    std::this_thread::sleep_for(300ms);
    EXPECT_EQ(http_request(localhost, port, "GET", "/api/v0/info", {}, {}, 2s).status, 200)
      << "the bucket refills";
  }
  std::error_code ec;
  std::filesystem::remove_all(d, ec);
}
