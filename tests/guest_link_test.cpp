// The host's end of a guest connection, against a fake guest on the other end
// of a socketpair: request matching, timeouts, the end report, hostile frames,
// and a guest that stops reading (writes must never block the caller).

#include "runtime/guest_link.hpp"
#include "runtime/executor.hpp"

#include <gtest/gtest.h>

#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <ctime>
#include <future>
#include <thread>

using namespace alephd;
using namespace std::chrono_literals;
namespace gp = alephd::guest;

namespace {

struct fake_guest {
  int fd = -1;
  gp::decoder dec;

  void send(const gp::frame& f) {
    auto bytes = gp::encode(f);
    ASSERT_EQ(::write(fd, bytes.data(), bytes.size()), static_cast<ssize_t>(bytes.size()));
  }

  void send_raw(const std::string& bytes) {
    ASSERT_EQ(::write(fd, bytes.data(), bytes.size()), static_cast<ssize_t>(bytes.size()));
  }

  // The next frame from the host (blocking, bounded by the socket's timeout).
  std::optional<gp::frame> next() {
    std::string error;
    for (;;) {
      if (auto f = dec.next(error))
        return f;
      if (!error.empty())
        return std::nullopt;
      char buf[65536];
      auto n = ::read(fd, buf, sizeof buf);
      if (n <= 0)
        return std::nullopt;
      dec.feed(buf, static_cast<std::size_t>(n));
    }
  }

  ~fake_guest() {
    if (fd >= 0)
      ::close(fd);
  }
};

struct link_fixture : ::testing::Test {
  std::atomic<int> kills{0};
  std::unique_ptr<guest_link> link;
  fake_guest guest;

  void SetUp() override {
    int sv[2];
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    timeval tv{5, 0};
    ::setsockopt(sv[1], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    guest.fd = sv[1];
    guest_link::options o;
    o.kill = [this] { ++kills; };
    o.exit_note = [] { return std::string{" (note)"}; };
    link = std::make_unique<guest_link>(std::move(o));
    link->attach(sv[0]);
  }

  void ready() {
    guest.send(gp::ready{"test", false, {}});
    ASSERT_EQ(link->wait_ready(std::chrono::steady_clock::now() + 2s), "");
  }
};

template <class F>
bool eventually_true(F f) {
  for (int i = 0; i < 200; ++i) {
    if (f())
      return true;
    std::this_thread::sleep_for(10ms);
  }
  return f();
}

gp::http_request get(uint64_t id, std::string path = "/") {
  gp::http_request r;
  r.id = id;
  r.method = "GET";
  r.path = std::move(path);
  return r;
}

} // namespace

TEST_F(link_fixture, answers_are_matched_to_their_requests_in_any_order) {
  ready();
  std::promise<gp::http_response> a, b;
  link->request_async(get(41, "/a"), 2s, [&](gp::http_response r) { a.set_value(r); });
  link->request_async(get(42, "/b"), 2s, [&](gp::http_response r) { b.set_value(r); });
  auto first = guest.next();
  auto second = guest.next();
  ASSERT_TRUE(first && second);
  auto ra = std::get<gp::http_request>(*first);
  auto rb = std::get<gp::http_request>(*second);
  EXPECT_EQ(ra.path, "/a");
  EXPECT_EQ(rb.path, "/b");
  gp::http_response out;
  out.id = rb.id;
  out.status = 201;
  guest.send(out);
  out.id = ra.id;
  out.status = 200;
  guest.send(out);
  auto got_a = a.get_future().get();
  auto got_b = b.get_future().get();
  EXPECT_EQ(got_a.status, 200);
  EXPECT_EQ(got_a.id, 41u); // the caller's id, not the wire's
  EXPECT_EQ(got_b.status, 201);
  EXPECT_EQ(got_b.id, 42u);
}

TEST_F(link_fixture, an_unanswered_request_times_out_with_504) {
  ready();
  auto r = link->request(get(7), 300ms);
  EXPECT_EQ(r.status, 504);
  std::promise<gp::http_response> p;
  link->request_async(get(8), 200ms, [&](gp::http_response r) { p.set_value(r); });
  auto f = p.get_future();
  ASSERT_EQ(f.wait_for(2s), std::future_status::ready);
  EXPECT_EQ(f.get().status, 504);
  EXPECT_TRUE(link->running());
}

TEST_F(link_fixture, the_end_is_reported_once_with_the_note_and_pending_calls_get_502) {
  ready();
  std::promise<std::pair<int, std::string>> end;
  std::atomic<int> reports{0};
  link->on_exit([&](int code, const std::string& why) {
    if (reports++ == 0)
      end.set_value({code, why});
  });
  std::promise<gp::http_response> p;
  link->request_async(get(1), 5s, [&](gp::http_response r) { p.set_value(r); });
  ASSERT_TRUE(guest.next());
  gp::log line{"stdout", "hello"};
  guest.send(line);
  guest.send(gp::halted{3});
  ::close(guest.fd);
  guest.fd = -1;
  auto e = end.get_future().get();
  EXPECT_EQ(e.first, 3);
  EXPECT_EQ(e.second, "program exited with code 3 (note)");
  EXPECT_EQ(p.get_future().get().status, 502);
  link->close("closed");
  EXPECT_EQ(reports.load(), 1);
  EXPECT_EQ(kills.load(), 0); // it said halted: closing was expected
  auto logs = link->logs();
  ASSERT_EQ(logs.size(), 1u);
  EXPECT_EQ(logs[0].line, "hello");
  EXPECT_EQ(link->halted_code(), 3);
}

TEST_F(link_fixture, a_frame_that_only_the_host_sends_is_a_protocol_error) {
  ready();
  guest.send(gp::halt{});
  for (int i = 0; i < 100 && !link->gone(); ++i)
    std::this_thread::sleep_for(20ms);
  EXPECT_TRUE(link->gone());
  EXPECT_NE(link->gone_reason().find("unexpected frame 'halt'"), std::string::npos);
  EXPECT_EQ(kills.load(), 1);
}

TEST_F(link_fixture, garbage_bytes_kill_the_guest) {
  ready();
  guest.send_raw(std::string{"\xff\xff\xff\xff garbage", 12});
  for (int i = 0; i < 100 && !link->gone(); ++i)
    std::this_thread::sleep_for(20ms);
  EXPECT_TRUE(link->gone());
  EXPECT_NE(link->gone_reason().find("bad frame"), std::string::npos);
  EXPECT_EQ(kills.load(), 1);
}

TEST_F(link_fixture, a_guest_that_stops_reading_never_blocks_the_caller_and_is_dropped) {
  ready();
  std::atomic<int> failed{0};
  gp::http_request big = get(1);
  big.body.assign(1 << 20, 'x');
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < 16; ++i) // 16 MiB, far more than the socket buffers hold
    link->request_async(big, 30s, [&](gp::http_response r) {
      if (r.status == 502)
        ++failed;
    });
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 2s); // queued, not waited for
  EXPECT_TRUE(link->running());
  // The writer makes no progress for its send timeout (5 s): the guest is given up.
  for (int i = 0; i < 400 && !link->gone(); ++i)
    std::this_thread::sleep_for(25ms);
  EXPECT_TRUE(link->gone());
  EXPECT_NE(link->gone_reason().find("timed out"), std::string::npos);
  EXPECT_EQ(kills.load(), 1);
  EXPECT_EQ(failed.load(), 16);
}

TEST_F(link_fixture, queued_frames_arrive_whole_and_in_order) {
  ready();
  std::vector<std::string> bodies;
  for (int i = 0; i < 8; ++i)
    bodies.push_back(std::string(300 * 1024, static_cast<char>('a' + i)));
  std::thread reader{[&] {
    // Reads slowly so that the later frames wait in the queue.
    std::this_thread::sleep_for(300ms);
    for (int i = 0; i < 8; ++i) {
      auto f = guest.next();
      ASSERT_TRUE(f);
      auto& r = std::get<gp::http_request>(*f);
      EXPECT_EQ(r.body, bodies[static_cast<std::size_t>(i)]);
      gp::http_response out;
      out.id = r.id;
      out.status = 200;
      guest.send(out);
    }
  }};
  std::atomic<int> ok{0};
  for (int i = 0; i < 8; ++i) {
    auto req = get(static_cast<uint64_t>(i));
    req.body = bodies[static_cast<std::size_t>(i)];
    link->request_async(req, 10s, [&](gp::http_response r) {
      if (r.status == 200)
        ++ok;
    });
  }
  reader.join();
  for (int i = 0; i < 100 && ok.load() < 8; ++i)
    std::this_thread::sleep_for(20ms);
  EXPECT_EQ(ok.load(), 8);
  EXPECT_EQ(kills.load(), 0);
}

TEST_F(link_fixture, configure_reports_the_guests_refusal_and_ready_tells_an_adopted_guest) {
  guest.send(gp::ready{"test", true, {}});
  ASSERT_EQ(link->wait_ready(std::chrono::steady_clock::now() + 2s), "");
  EXPECT_TRUE(link->ready_configured());
  std::thread answer{[&] {
    auto f = guest.next();
    ASSERT_TRUE(f && std::holds_alternative<gp::configure>(*f));
    guest.send(gp::configure_result{false, "no such entrypoint"});
  }};
  bool answered = false;
  auto err = link->configure(gp::configure{}, std::chrono::steady_clock::now() + 2s, &answered);
  answer.join();
  EXPECT_EQ(err, "configure failed: no such entrypoint");
  EXPECT_TRUE(answered);
  EXPECT_EQ(link->configure(gp::configure{}, std::chrono::steady_clock::now() + 1s),
            "already configured");
}

TEST_F(link_fixture, the_guest_says_in_ready_what_it_can_do) {
  ready(); // an older agent: no features
  EXPECT_FALSE(link->guest_has("code_file"));
  guest.send(gp::ready{"test", false, {"something", "code_file"}});
  ASSERT_TRUE(eventually_true([&] { return link->guest_has("code_file"); }));
  EXPECT_FALSE(link->guest_has("code"));
}

TEST_F(link_fixture, requests_after_close_get_502_at_once) {
  ready();
  link->close("stopped");
  EXPECT_FALSE(link->running());
  auto r = link->request(get(1), 1s);
  EXPECT_EQ(r.status, 502);
  EXPECT_EQ(kills.load(), 0);
}

// What a QEMU executor's metering reads: a process's CPU time and resident memory from /proc.
TEST(process_usage, reads_cpu_time_and_memory_of_a_process) {
  auto before = alephd::process_usage(::getpid());
  EXPECT_GT(before.mem_current, 1u << 20);
  EXPECT_GE(before.mem_peak, before.mem_current);
  // Burn 200 ms of CPU by the process's own CPU clock (clock ticks are 10 ms), however busy the
  // machine is (bounded by 20 s of wall time).
  auto cpu_now = [] {
    timespec ts{};
    ::clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return std::chrono::seconds(ts.tv_sec) + std::chrono::nanoseconds(ts.tv_nsec);
  };
  volatile uint64_t x = 0;
  auto cpu_until = cpu_now() + std::chrono::milliseconds(200);
  auto wall_until = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (cpu_now() < cpu_until && std::chrono::steady_clock::now() < wall_until)
    for (int i = 0; i < 100000; ++i)
      x = x + static_cast<uint64_t>(i);
  auto after = alephd::process_usage(::getpid());
  EXPECT_GE(after.cpu_ns - before.cpu_ns, 100'000'000u) << "200 ms of CPU read as less than 100";
  auto none = alephd::process_usage(0);
  EXPECT_EQ(none.cpu_ns, 0u);
  EXPECT_EQ(none.mem_current, 0u);
  EXPECT_EQ(alephd::process_usage(1 << 30).mem_peak, 0u) << "no such process";
}
