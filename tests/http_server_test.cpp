#include "runtime/http_server.hpp"
#include "tests/http_client.hpp"

#include <boost/beast/core.hpp>
#include <boost/beast/websocket.hpp>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <random>
#include <stdexcept>
#include <thread>
#include <vector>

namespace {

using namespace std::chrono_literals;
using alephd::http::handler;
using alephd::http::request;
using alephd::http::responder;
using alephd::http::response;
using alephd::http::server;
using alephd::http::server_options;
using alephd::test::http_connection;
using alephd::test::http_request;
using alephd::test::http_result;
using alephd::test::raw_exchange;
using nlohmann::json;

const std::string localhost = "127.0.0.1";

std::string echo(const request& req) {
  json j = {{"method", req.method}, {"target", req.target}, {"path", req.path},
            {"query", req.query},   {"body", req.body},     {"headers", req.headers},
            {"remote", req.remote}};
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

handler echo_handler() {
  return [](request&& req, responder respond) {
    respond(alephd::http::json(200, echo(req)));
  };
}

json parse(const http_result& r) {
  return json::parse(r.body, nullptr, false);
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

class http_server : public ::testing::Test {
protected:
  void start(handler h, server_options opts = {}) {
    srv_ = std::make_unique<server>(std::move(opts), std::move(h));
    ASSERT_EQ(srv_->start(), "");
    port_ = srv_->port();
    ASSERT_NE(port_, 0);
  }

  void TearDown() override {
    if (srv_)
      srv_->stop();
    std::vector<std::thread> workers;
    {
      std::lock_guard lock{workers_mutex_};
      workers.swap(workers_);
    }
    for (auto& t : workers)
      t.join();
  }

  // Answers from another thread after `delay`, as a handler that hands work
  // to an actor would.
  handler async_echo_handler(std::chrono::milliseconds delay) {
    return [this, delay](request&& req, responder respond) {
      std::lock_guard lock{workers_mutex_};
      workers_.emplace_back([req = std::move(req), respond, delay] {
        std::this_thread::sleep_for(delay);
        respond(alephd::http::json(200, echo(req)));
      });
    };
  }

  http_result get(const std::string& target) {
    return http_request(localhost, port_, "GET", target, {}, {}, 5s);
  }

  std::unique_ptr<server> srv_;
  uint16_t port_ = 0;
  std::mutex workers_mutex_;
  std::vector<std::thread> workers_;
};

TEST_F(http_server, get_is_echoed_with_standard_headers) {
  server_options opts;
  opts.server_name = "test-node";
  ASSERT_NO_FATAL_FAILURE(start(echo_handler(), opts));
  auto r = get("/hello");
  ASSERT_EQ(r.error, "");
  EXPECT_EQ(r.status, 200);
  auto j = parse(r);
  EXPECT_EQ(j["method"], "GET");
  EXPECT_EQ(j["path"], "/hello");
  EXPECT_TRUE(j["query"].empty());
  EXPECT_EQ(r.headers["content-type"], "application/json");
  EXPECT_EQ(r.headers["server"], "test-node");
  EXPECT_EQ(r.headers["content-length"], std::to_string(r.body.size()));
  EXPECT_EQ(j["remote"].get<std::string>().rfind("127.0.0.1:", 0), 0u);
}

TEST_F(http_server, post_body_and_headers_are_echoed) {
  ASSERT_NO_FATAL_FAILURE(start(echo_handler()));
  auto r = http_request(localhost, port_, "POST", "/api/v0/submit", "payload \xc3\xbc",
                        {{"X-Custom-Thing", "value"}}, 5s);
  ASSERT_EQ(r.error, "");
  EXPECT_EQ(r.status, 200);
  auto j = parse(r);
  EXPECT_EQ(j["method"], "POST");
  EXPECT_EQ(j["body"], "payload \xc3\xbc");
  EXPECT_EQ(j["headers"]["x-custom-thing"], "value");
  EXPECT_EQ(j["headers"]["content-length"], "10");
}

TEST_F(http_server, extra_response_headers_and_content_type_are_sent) {
  ASSERT_NO_FATAL_FAILURE(start([](request&&, responder respond) {
    response r;
    r.content_type = "text/plain";
    r.body = "hi";
    r.headers = {{"X-Trace", "abc"}, {"X-Bad", "a\r\nInjected: yes"}, {"Content-Length", "99"}};
    respond(std::move(r));
  }));
  auto r = get("/");
  ASSERT_EQ(r.error, "");
  EXPECT_EQ(r.body, "hi");
  EXPECT_EQ(r.headers["content-type"], "text/plain");
  EXPECT_EQ(r.headers["x-trace"], "abc");
  EXPECT_EQ(r.headers.count("x-bad"), 0u);
  EXPECT_EQ(r.headers.count("injected"), 0u);
  EXPECT_EQ(r.headers["content-length"], "2");
}

TEST_F(http_server, query_parameters_are_decoded) {
  ASSERT_NO_FATAL_FAILURE(start(echo_handler()));
  auto r = get("/q?a=1&b=x%20y&c=p+q&a=2&flag&&e=%3D%26");
  ASSERT_EQ(r.error, "");
  ASSERT_EQ(r.status, 200);
  auto j = parse(r);
  EXPECT_EQ(j["target"], "/q?a=1&b=x%20y&c=p+q&a=2&flag&&e=%3D%26");
  EXPECT_EQ(j["path"], "/q");
  EXPECT_EQ(j["query"]["a"], "2");
  EXPECT_EQ(j["query"]["b"], "x y");
  EXPECT_EQ(j["query"]["c"], "p q");
  EXPECT_EQ(j["query"]["flag"], "");
  EXPECT_EQ(j["query"]["e"], "=&");
  EXPECT_EQ(j["query"].size(), 5u);
}

TEST_F(http_server, path_is_percent_decoded_and_bad_encoding_is_400) {
  ASSERT_NO_FATAL_FAILURE(start(echo_handler()));
  auto r = get("/files/hello%20world%2Fx+y");
  ASSERT_EQ(r.error, "");
  EXPECT_EQ(parse(r)["path"], "/files/hello world/x+y");

  http_connection conn{localhost, port_, 5s};
  for (std::string bad : {"/bad%zz", "/bad%4", "/bad%", "/nul%00x", "no-slash"}) {
    auto b = conn.request("GET", bad);
    ASSERT_EQ(b.error, "") << bad;
    EXPECT_EQ(b.status, 400) << bad;
    EXPECT_EQ(b.headers["content-type"], "application/json");
    EXPECT_TRUE(parse(b).contains("error")) << b.body;
  }
  // The request was well framed, so the connection stays usable.
  auto ok = conn.request("GET", "/good");
  EXPECT_EQ(ok.status, 200);
  EXPECT_EQ(conn.connects(), 1u);
}

TEST_F(http_server, absolute_form_target_is_accepted) {
  ASSERT_NO_FATAL_FAILURE(start(echo_handler()));
  auto r = get("http://example.org/abs/path?k=v");
  ASSERT_EQ(r.status, 200);
  auto j = parse(r);
  EXPECT_EQ(j["path"], "/abs/path");
  EXPECT_EQ(j["query"]["k"], "v");
}

TEST_F(http_server, keep_alive_serves_100_requests_on_one_connection) {
  ASSERT_NO_FATAL_FAILURE(start(echo_handler()));
  http_connection conn{localhost, port_, 5s};
  std::string remote;
  for (int i = 0; i < 100; ++i) {
    auto r = conn.request("POST", "/n/" + std::to_string(i), "body-" + std::to_string(i));
    ASSERT_EQ(r.error, "") << i;
    ASSERT_EQ(r.status, 200);
    auto j = parse(r);
    ASSERT_EQ(j["path"], "/n/" + std::to_string(i));
    ASSERT_EQ(j["body"], "body-" + std::to_string(i));
    if (i == 0)
      remote = j["remote"];
    ASSERT_EQ(j["remote"], remote);
  }
  EXPECT_TRUE(conn.connected());
  EXPECT_EQ(conn.connects(), 1u);
}

TEST_F(http_server, pipelined_requests_are_answered_in_order) {
  ASSERT_NO_FATAL_FAILURE(start([this](request&& req, responder respond) {
    // The first request answers last unless the server waits for it.
    auto delay = req.path == "/slow" ? 150ms : 0ms;
    std::lock_guard lock{workers_mutex_};
    workers_.emplace_back([req = std::move(req), respond, delay] {
      std::this_thread::sleep_for(delay);
      respond(alephd::http::json(200, echo(req)));
    });
  }));
  auto out = raw_exchange(localhost, port_,
                          "GET /slow HTTP/1.1\r\nHost: x\r\n\r\n"
                          "POST /fast HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
                          "GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                          3s);
  auto slow = out.find("\"/slow\"");
  auto fast = out.find("\"/fast\"");
  auto last = out.find("\"/last\"");
  ASSERT_NE(slow, std::string::npos) << out;
  ASSERT_NE(fast, std::string::npos) << out;
  ASSERT_NE(last, std::string::npos) << out;
  EXPECT_LT(slow, fast);
  EXPECT_LT(fast, last);
  EXPECT_NE(out.find("\"abc\""), std::string::npos);
}

TEST_F(http_server, connection_close_is_honoured) {
  ASSERT_NO_FATAL_FAILURE(start(echo_handler()));
  auto r = get("/bye");
  ASSERT_EQ(r.error, "");
  EXPECT_EQ(r.headers["connection"], "close");
  // Without half-closing, only the server closing ends the exchange early.
  auto t0 = std::chrono::steady_clock::now();
  auto out = raw_exchange(localhost, port_, "GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                          4s, false);
  EXPECT_LT(seconds_since(t0), 2.0);
  EXPECT_EQ(out.rfind("HTTP/1.1 200", 0), 0u) << out;
  // HTTP/1.0 without keep-alive closes too.
  t0 = std::chrono::steady_clock::now();
  out = raw_exchange(localhost, port_, "GET /y HTTP/1.0\r\n\r\n", 4s, false);
  EXPECT_LT(seconds_since(t0), 2.0);
  EXPECT_NE(out.find(" 200 "), std::string::npos) << out;
}

TEST_F(http_server, head_sends_length_without_body) {
  ASSERT_NO_FATAL_FAILURE(start([](request&&, responder respond) {
    respond(alephd::http::json(200, R"({"x":"0123456789"})"));
  }));
  http_connection conn{localhost, port_, 5s};
  auto h = conn.request("HEAD", "/x");
  ASSERT_EQ(h.error, "");
  EXPECT_EQ(h.status, 200);
  EXPECT_EQ(h.body, "");
  EXPECT_EQ(h.headers["content-length"], "18");
  // No stray body bytes may confuse the next response on the connection.
  auto g = conn.request("GET", "/x");
  EXPECT_EQ(g.body, R"({"x":"0123456789"})");
  EXPECT_EQ(conn.connects(), 1u);
}

TEST_F(http_server, responder_may_answer_later_from_another_thread) {
  ASSERT_NO_FATAL_FAILURE(start(async_echo_handler(50ms)));
  http_connection conn{localhost, port_, 5s};
  for (int i = 0; i < 5; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    auto r = conn.request("POST", "/async", std::to_string(i));
    ASSERT_EQ(r.error, "");
    EXPECT_EQ(parse(r)["body"], std::to_string(i));
    EXPECT_GE(seconds_since(t0), 0.045);
  }
  EXPECT_EQ(conn.connects(), 1u);
}

TEST_F(http_server, dropped_or_repeated_responder_is_handled) {
  ASSERT_NO_FATAL_FAILURE(start([](request&& req, responder respond) {
    if (req.path == "/twice") {
      respond(alephd::http::json(200, R"("first")"));
      respond(alephd::http::json(200, R"("second")"));
    }
    // Otherwise the responder is dropped unanswered.
  }));
  http_connection conn{localhost, port_, 5s};
  auto dropped = conn.request("GET", "/drop");
  ASSERT_EQ(dropped.error, "");
  EXPECT_EQ(dropped.status, 500);
  EXPECT_EQ(parse(dropped)["error"], "internal error");
  auto twice = conn.request("GET", "/twice");
  EXPECT_EQ(twice.body, R"("first")");
  auto again = conn.request("GET", "/twice");
  EXPECT_EQ(again.body, R"("first")");
}

// A handler that never answers (its responder kept, not dropped) gets 504 after the answer
// timeout; its late answer is dropped, and the connection serves the next request.
TEST_F(http_server, an_unanswered_request_gets_504_after_the_answer_timeout) {
  auto kept = std::make_shared<std::vector<responder>>();
  auto mtx = std::make_shared<std::mutex>();
  server_options opts;
  opts.answer_timeout = 300ms;
  ASSERT_NO_FATAL_FAILURE(start(
    [kept, mtx](request&& req, responder respond) {
      if (req.path == "/quick")
        return respond(alephd::http::json(200, R"("quick")"));
      std::lock_guard lock{*mtx};
      kept->push_back(std::move(respond)); // held, never answered in time
    },
    opts));
  http_connection conn{localhost, port_, 5s};
  for (int i = 0; i < 3; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    auto r = conn.request("GET", "/stuck");
    ASSERT_EQ(r.error, "");
    EXPECT_EQ(r.status, 504);
    EXPECT_EQ(parse(r)["error"], "the node did not answer within 300 ms");
    EXPECT_GE(seconds_since(t0), 0.29);
    {
      std::lock_guard lock{*mtx};
      ASSERT_FALSE(kept->empty());
      kept->back()(alephd::http::json(200, R"("late")")); // dropped
    }
    auto q = conn.request("GET", "/quick");
    EXPECT_EQ(q.status, 200);
    EXPECT_EQ(q.body, R"("quick")") << "the late answer must not stand in for the next one";
  }
  // Answers within the limit are unaffected.
  for (int i = 0; i < 20; ++i)
    EXPECT_EQ(conn.request("GET", "/quick").status, 200);
  std::this_thread::sleep_for(400ms);
  EXPECT_EQ(conn.request("GET", "/quick").body, R"("quick")");
  EXPECT_EQ(conn.connects(), 1u);
}

TEST_F(http_server, body_over_limit_is_413_and_closes) {
  server_options opts;
  opts.max_body_bytes = 1024;
  ASSERT_NO_FATAL_FAILURE(start(echo_handler(), opts));
  auto ok = http_request(localhost, port_, "POST", "/up", std::string(1024, 'a'), {}, 5s);
  EXPECT_EQ(ok.status, 200);
  http_connection conn{localhost, port_, 5s};
  auto r = conn.request("POST", "/up", std::string(2048, 'a'));
  ASSERT_EQ(r.error, "");
  EXPECT_EQ(r.status, 413);
  EXPECT_EQ(parse(r)["error"], "request body too large (limit 1024 bytes)");
  EXPECT_EQ(r.headers["connection"], "close");
  EXPECT_FALSE(conn.connected());
}

TEST_F(http_server, chunked_body_is_decoded_and_limited) {
  server_options opts;
  opts.max_body_bytes = 1024;
  ASSERT_NO_FATAL_FAILURE(start(echo_handler(), opts));
  auto ok = http_request(localhost, port_, "POST", "/chunked", std::string(1000, 'c'),
                         {{"Transfer-Encoding", "chunked"}}, 5s);
  ASSERT_EQ(ok.error, "");
  EXPECT_EQ(ok.status, 200);
  EXPECT_EQ(parse(ok)["body"], std::string(1000, 'c'));

  std::string chunked = "POST /chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
  for (int i = 0; i < 4; ++i)
    chunked += "200\r\n" + std::string(0x200, 'z') + "\r\n";
  chunked += "0\r\n\r\n";
  auto out = raw_exchange(localhost, port_, chunked, 3s);
  EXPECT_EQ(out.rfind("HTTP/1.1 413", 0), 0u) << out;
  EXPECT_NE(out.find("request body too large (limit 1024 bytes)"), std::string::npos);
}

TEST_F(http_server, expect_100_continue_is_answered) {
  server_options opts;
  opts.max_body_bytes = 1024;
  ASSERT_NO_FATAL_FAILURE(start(echo_handler(), opts));
  auto out = raw_exchange(localhost, port_,
                          "POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                          "Expect: 100-continue\r\nConnection: close\r\n\r\nhello",
                          3s);
  EXPECT_EQ(out.rfind("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n", 0), 0u) << out;
  EXPECT_NE(out.find("\"hello\""), std::string::npos) << out;
  // A body that is too large is refused before the client sends it.
  out = raw_exchange(localhost, port_,
                     "POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n"
                     "Expect: 100-continue\r\n\r\n",
                     3s);
  EXPECT_EQ(out.rfind("HTTP/1.1 413", 0), 0u) << out;
}

TEST_F(http_server, huge_header_is_431) {
  ASSERT_NO_FATAL_FAILURE(start(echo_handler()));
  auto r = http_request(localhost, port_, "GET", "/", {}, {{"X-Big", std::string(32 * 1024, 'h')}},
                        5s);
  ASSERT_EQ(r.error, "");
  EXPECT_EQ(r.status, 431);
  EXPECT_EQ(parse(r)["error"], "request header too large (limit 16384 bytes)");
}

TEST_F(http_server, malformed_requests_get_400_json_and_server_keeps_serving) {
  ASSERT_NO_FATAL_FAILURE(start(echo_handler()));
  std::vector<std::string> hostile = {
    std::string{"\x00\xff GARBAGE\r\n\r\n", 14},
    "GET / HTTP/9.9\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    "GET / HTTP/1.1\r\nNo colon here\r\n\r\n",
    "GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
  };
  for (const auto& bytes : hostile) {
    auto out = raw_exchange(localhost, port_, bytes, 3s);
    EXPECT_EQ(out.rfind("HTTP/1.1 400", 0), 0u) << bytes << " -> " << out;
    EXPECT_NE(out.find("Content-Type: application/json"), std::string::npos) << out;
    EXPECT_NE(out.find("{\"error\":"), std::string::npos) << out;
  }
  EXPECT_EQ(get("/still-alive").status, 200);
}

TEST_F(http_server, truncated_body_is_dropped_and_server_keeps_serving) {
  std::atomic<int> calls{0};
  ASSERT_NO_FATAL_FAILURE(start([&calls](request&& req, responder respond) {
    ++calls;
    respond(alephd::http::json(200, echo(req)));
  }));
  auto t0 = std::chrono::steady_clock::now();
  auto out = raw_exchange(localhost, port_,
                          "POST /t HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789",
                          3s);
  EXPECT_EQ(out, "");
  EXPECT_LT(seconds_since(t0), 2.0);
  EXPECT_EQ(calls.load(), 0);
  EXPECT_EQ(get("/next").status, 200);
  EXPECT_EQ(calls.load(), 1);
}

TEST_F(http_server, silent_and_slow_clients_are_disconnected) {
  server_options opts;
  opts.read_timeout = 300ms;
  ASSERT_NO_FATAL_FAILURE(start(echo_handler(), opts));
  auto t0 = std::chrono::steady_clock::now();
  auto out = raw_exchange(localhost, port_, "", 2500ms, false);
  auto silent = seconds_since(t0);
  EXPECT_EQ(out, "");
  EXPECT_GE(silent, 0.25);
  EXPECT_LT(silent, 2.0);

  // A header that never completes (slowloris) meets the same deadline.
  t0 = std::chrono::steady_clock::now();
  out = raw_exchange(localhost, port_, "GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n", 2500ms, false);
  EXPECT_LT(seconds_since(t0), 2.0);

  // So does a body that stops arriving.
  t0 = std::chrono::steady_clock::now();
  out = raw_exchange(localhost, port_,
                     "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n0123456789", 2500ms,
                     false);
  EXPECT_EQ(out, "");
  EXPECT_LT(seconds_since(t0), 2.0);

  // An idle keep-alive connection is closed as well; the client reconnects.
  http_connection conn{localhost, port_, 5s};
  EXPECT_EQ(conn.request("GET", "/a").status, 200);
  std::this_thread::sleep_for(600ms);
  EXPECT_EQ(conn.request("GET", "/b").status, 0);
  EXPECT_EQ(conn.request("GET", "/c").status, 200);
}

TEST_F(http_server, throwing_handler_gives_500_and_server_keeps_serving) {
  ASSERT_NO_FATAL_FAILURE(start([](request&& req, responder respond) {
    if (req.path == "/boom")
      throw std::runtime_error{"boom"};
    respond(alephd::http::json(200, R"({"ok":true})"));
  }));
  http_connection conn{localhost, port_, 5s};
  auto r = conn.request("GET", "/boom");
  ASSERT_EQ(r.error, "");
  EXPECT_EQ(r.status, 500);
  EXPECT_EQ(parse(r)["error"], "internal error");
  auto ok = conn.request("GET", "/fine");
  EXPECT_EQ(ok.status, 200);
  EXPECT_EQ(conn.connects(), 1u);
}

TEST_F(http_server, file_response_streams_5mb_intact) {
  auto path = std::filesystem::temp_directory_path()
              / ("alephd_http_test_" + std::to_string(::testing::UnitTest::GetInstance()->random_seed())
                 + "_" + std::to_string(std::random_device{}()) + ".bin");
  std::string content(5 * 1024 * 1024, '\0');
  std::mt19937 gen{42};
  for (auto& c : content)
    c = static_cast<char>(gen());
  {
    std::ofstream out{path, std::ios::binary};
    out.write(content.data(), static_cast<std::streamsize>(content.size()));
  }
  ASSERT_NO_FATAL_FAILURE(start([path](request&& req, responder respond) {
    response r;
    r.content_type = "application/octet-stream";
    r.file_path = req.path == "/file" ? path.string() : "/nonexistent/alephd/file";
    respond(std::move(r));
  }));
  http_connection conn{localhost, port_, 5s};
  auto r = conn.request("GET", "/file");
  ASSERT_EQ(r.error, "");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body.size(), content.size());
  EXPECT_TRUE(r.body == content);
  EXPECT_EQ(r.headers["content-type"], "application/octet-stream");
  auto missing = conn.request("GET", "/missing");
  EXPECT_EQ(missing.status, 404);
  EXPECT_EQ(missing.headers["content-type"], "application/json");
  EXPECT_TRUE(parse(missing).contains("error"));
  EXPECT_EQ(conn.connects(), 1u);
  std::filesystem::remove(path);
}

TEST_F(http_server, file_responses_honour_a_single_byte_range) {
  auto path = std::filesystem::temp_directory_path()
              / ("alephd_http_range_" + std::to_string(std::random_device{}()) + ".bin");
  std::string content;
  for (int i = 0; i < 100000; ++i)
    content.push_back(static_cast<char>('a' + i % 26));
  {
    std::ofstream out{path, std::ios::binary};
    out << content;
  }
  ASSERT_NO_FATAL_FAILURE(start([path](request&&, responder respond) {
    response r;
    r.content_type = "application/octet-stream";
    r.file_path = path.string();
    respond(std::move(r));
  }));
  auto get = [&](const std::string& range, const std::string& method = "GET") {
    return http_request(localhost, port_, method, "/f", "", {{"Range", range}});
  };
  auto first = get("bytes=0-9");
  EXPECT_EQ(first.status, 206);
  EXPECT_EQ(first.body, content.substr(0, 10));
  EXPECT_EQ(first.headers["content-range"], "bytes 0-9/100000");
  EXPECT_EQ(first.headers["content-length"], "10");
  auto middle = get("bytes=70000-");
  EXPECT_EQ(middle.status, 206);
  EXPECT_TRUE(middle.body == content.substr(70000));
  auto tail = get("bytes=-5");
  EXPECT_EQ(tail.status, 206);
  EXPECT_EQ(tail.body, content.substr(content.size() - 5));
  EXPECT_EQ(tail.headers["content-range"], "bytes 99995-99999/100000");
  auto clipped = get("bytes=99990-200000");
  EXPECT_EQ(clipped.status, 206);
  EXPECT_EQ(clipped.body, content.substr(99990));
  auto beyond = get("bytes=100000-");
  EXPECT_EQ(beyond.status, 416);
  EXPECT_EQ(beyond.headers["content-range"], "bytes */100000");
  EXPECT_TRUE(parse(beyond).contains("error"));
  // Several ranges, or a header we do not understand: the whole file.
  for (const char* whole : {"bytes=0-1,5-6", "bytes=9-3", "lines=1-2", "bytes=x-"}) {
    auto r = get(whole);
    EXPECT_EQ(r.status, 200) << whole;
    EXPECT_EQ(r.body.size(), content.size()) << whole;
  }
  auto plain = http_request(localhost, port_, "GET", "/f");
  EXPECT_EQ(plain.headers["accept-ranges"], "bytes");
  auto head = get("bytes=10-19", "HEAD");
  EXPECT_EQ(head.status, 206);
  EXPECT_EQ(head.headers["content-length"], "10");
  EXPECT_EQ(head.body, "");
  std::filesystem::remove(path);
}

TEST_F(http_server, fifty_concurrent_clients_get_their_own_answers) {
  server_options opts;
  opts.threads = 4;
  ASSERT_NO_FATAL_FAILURE(start(echo_handler(), opts));
  std::atomic<int> good{0};
  std::vector<std::thread> clients;
  for (int c = 0; c < 50; ++c) {
    clients.emplace_back([this, c, &good] {
      http_connection conn{localhost, port_, 5s};
      for (int i = 0; i < 10; ++i) {
        auto body = std::to_string(c) + "/" + std::to_string(i);
        auto r = conn.request("POST", "/c/" + body, body);
        auto j = parse(r);
        if (r.status == 200 && j["body"] == body && j["path"] == "/c/" + body)
          ++good;
      }
    });
  }
  for (auto& t : clients)
    t.join();
  EXPECT_EQ(good.load(), 500);
}

TEST_F(http_server, connections_above_the_limit_are_closed) {
  server_options opts;
  opts.max_connections = 1;
  ASSERT_NO_FATAL_FAILURE(start(echo_handler(), opts));
  http_connection first{localhost, port_, 5s};
  ASSERT_EQ(first.request("GET", "/1").status, 200);
  auto second = get("/2");
  EXPECT_EQ(second.status, 0);
  EXPECT_NE(second.error, "");
  first.close();
  // The server notices the close asynchronously.
  int status = 0;
  for (int i = 0; i < 40 && status != 200; ++i) {
    status = get("/3").status;
    if (status != 200)
      std::this_thread::sleep_for(50ms);
  }
  EXPECT_EQ(status, 200);
}

TEST_F(http_server, stop_with_a_pending_request_is_prompt_and_late_answers_are_dropped) {
  std::mutex m;
  std::condition_variable cv;
  responder pending;
  ASSERT_NO_FATAL_FAILURE(start([&](request&&, responder respond) {
    std::lock_guard lock{m};
    pending = std::move(respond);
    cv.notify_all();
  }));
  http_result result;
  double client_seconds = 0;
  std::thread client{[&] {
    auto t0 = std::chrono::steady_clock::now();
    result = http_request(localhost, port_, "GET", "/wait", {}, {}, 5s);
    client_seconds = seconds_since(t0);
  }};
  {
    std::unique_lock lock{m};
    ASSERT_TRUE(cv.wait_for(lock, 3s, [&] { return static_cast<bool>(pending); }));
  }
  auto t0 = std::chrono::steady_clock::now();
  srv_->stop();
  EXPECT_LT(seconds_since(t0), 1.0);
  srv_->stop(); // idempotent
  client.join();
  EXPECT_EQ(result.status, 0);
  EXPECT_NE(result.error, "");
  EXPECT_LT(client_seconds, 2.0);
  pending(alephd::http::json(200, "{}")); // does nothing
  srv_.reset();
  pending(alephd::http::json(200, "{}")); // still nothing, even with the server gone
  pending = nullptr;
  EXPECT_NE(http_request(localhost, port_, "GET", "/", {}, {}, 1s).error, "");
}

TEST_F(http_server, start_on_a_busy_port_reports_an_error) {
  ASSERT_NO_FATAL_FAILURE(start(echo_handler()));
  server_options opts;
  opts.port = port_;
  server second{opts, echo_handler()};
  auto err = second.start();
  EXPECT_EQ(err.rfind("cannot listen on 127.0.0.1:" + std::to_string(port_) + ": ", 0), 0u)
    << err;
  EXPECT_EQ(err.find('\n'), std::string::npos);
  // The first server is unaffected.
  EXPECT_EQ(get("/").status, 200);
}

TEST_F(http_server, json_error_body_is_escaped_json) {
  auto r = alephd::http::json_error(418, "quote \" backslash \\ newline \n bad \xff");
  EXPECT_EQ(r.status, 418u);
  EXPECT_EQ(r.content_type, "application/json");
  auto j = json::parse(r.body, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << r.body;
  std::string expected = "quote \" backslash \\ newline \n bad ";
  auto error = j["error"].get<std::string>();
  EXPECT_EQ(error.substr(0, expected.size()), expected);
  EXPECT_EQ(error.substr(expected.size()), "\xef\xbf\xbd"); // U+FFFD replaces the bad byte
}

} // namespace

namespace {

// ---- websockets ------------------------------------------------------------------------------

namespace beast = boost::beast;
namespace bws = boost::beast::websocket;
using tcp = boost::asio::ip::tcp;

// A websocket that greets, echoes every message, closes on "bye", and counts closes.
struct echo_ws {
  std::atomic<int> closes{0};
  handler make() {
    return [this](request&& req, responder respond) {
      if (req.path != "/ws")
        return respond(alephd::http::json(200, "{}"));
      response r;
      r.websocket_open = [this](std::shared_ptr<alephd::http::websocket> ws) {
        std::weak_ptr<alephd::http::websocket> weak = ws;
        ws->on_message([weak](std::string msg) {
          if (auto w = weak.lock()) {
            w->send_text("echo:" + msg);
            if (msg == "bye")
              w->close();
          }
        });
        ws->on_close([this] { ++closes; });
        ws->send_text("hello");
      };
      respond(std::move(r));
    };
  }
};

struct ws_client {
  boost::asio::io_context ioc;
  bws::stream<tcp::socket> ws{ioc};

  explicit ws_client(uint16_t port, const std::string& target = "/ws") {
    tcp::endpoint ep{boost::asio::ip::make_address("127.0.0.1"), port};
    ws.next_layer().connect(ep);
    timeval tv{5, 0};
    ::setsockopt(ws.next_layer().native_handle(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ws.handshake("127.0.0.1", target);
  }

  std::string read() {
    beast::flat_buffer buf;
    ws.read(buf);
    return beast::buffers_to_string(buf.data());
  }
};

TEST_F(http_server, websocket_greets_echoes_and_closes_cleanly) {
  echo_ws app;
  start(app.make());
  ws_client c{port_};
  EXPECT_EQ(c.read(), "hello");
  c.ws.write(boost::asio::buffer(std::string{"one"}));
  EXPECT_EQ(c.read(), "echo:one");
  c.ws.write(boost::asio::buffer(std::string{"bye"}));
  EXPECT_EQ(c.read(), "echo:bye");
  beast::flat_buffer buf;
  beast::error_code ec;
  c.ws.read(buf, ec); // the server's close
  EXPECT_EQ(ec, bws::error::closed);
  for (int i = 0; i < 100 && app.closes.load() == 0; ++i)
    std::this_thread::sleep_for(10ms);
  EXPECT_EQ(app.closes.load(), 1);
  // The server still serves plain HTTP.
  EXPECT_EQ(http_request(localhost, port_, "GET", "/").status, 200);
}

TEST_F(http_server, websocket_route_without_upgrade_is_426) {
  echo_ws app;
  start(app.make());
  auto r = http_request(localhost, port_, "GET", "/ws");
  EXPECT_EQ(r.status, 426);
  EXPECT_TRUE(parse(r).contains("error"));
}

TEST_F(http_server, a_client_closing_its_websocket_is_noticed) {
  echo_ws app;
  start(app.make());
  {
    ws_client c{port_};
    EXPECT_EQ(c.read(), "hello");
    c.ws.close(bws::close_code::normal);
  }
  for (int i = 0; i < 200 && app.closes.load() == 0; ++i)
    std::this_thread::sleep_for(10ms);
  EXPECT_EQ(app.closes.load(), 1);
}

TEST_F(http_server, stop_ends_open_websockets_promptly) {
  echo_ws app;
  start(app.make());
  ws_client c{port_};
  EXPECT_EQ(c.read(), "hello");
  auto t0 = std::chrono::steady_clock::now();
  srv_->stop();
  EXPECT_LT(seconds_since(t0), 3.0);
  beast::flat_buffer buf;
  beast::error_code ec;
  c.ws.read(buf, ec);
  EXPECT_TRUE(ec); // the connection is gone
  EXPECT_EQ(app.closes.load(), 1);
}

TEST_F(http_server, an_oversized_websocket_message_ends_the_websocket) {
  echo_ws app;
  start(app.make());
  ws_client c{port_};
  EXPECT_EQ(c.read(), "hello");
  beast::error_code ec;
  c.ws.write(boost::asio::buffer(std::string(100 * 1024, 'x')), ec);
  beast::flat_buffer buf;
  c.ws.read(buf, ec);
  EXPECT_TRUE(ec);
  for (int i = 0; i < 200 && app.closes.load() == 0; ++i)
    std::this_thread::sleep_for(10ms);
  EXPECT_EQ(app.closes.load(), 1);
  EXPECT_EQ(http_request(localhost, port_, "GET", "/").status, 200);
}

} // namespace
