#include "runtime/guest_link.hpp"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>

namespace alephd {

using namespace std::chrono_literals;

namespace {

// A writer that makes no progress for this long gives the guest up.
constexpr auto send_timeout = 5s;
// The reader wakes up this often to time requests out.
constexpr auto timeout_slice = 100ms;

guest::http_response failure(uint64_t id, uint16_t status, std::string error) {
  guest::http_response r;
  r.id = id;
  r.status = status;
  r.error = std::move(error);
  return r;
}

double unix_now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch())
    .count();
}

} // namespace

struct guest_link::impl {
  explicit impl(options o) : opts(std::move(o)) {
  }

  options opts;

  // Protocol state, guarded by mu.
  mutable std::mutex mu;
  std::condition_variable cv;
  bool attached = false;
  bool gone = false;
  std::string gone_reason;
  bool ready_seen = false;
  bool ready_configured = false;
  std::vector<std::string> features; ///< from the last `ready`
  bool configure_sent = false;
  std::optional<guest::configure_result> cfg_result;
  bool halted_seen = false;
  int halted_code = -1;
  bool end_expected = false; // no exit report
  executor::exit_handler on_exit;
  std::deque<timed_log> logs;
  uint64_t next_id = 1;
  // A request in flight: sync callers wait on cv for `result`; async ones get `done` called
  // (outside the lock) by whoever completes it.
  struct waiter {
    std::optional<guest::http_response> result;
    executor::reply_handler done;
    clock_type::time_point deadline;
    uint64_t caller_id = 0;
  };
  std::map<uint64_t, waiter> waiters;

  // The socket and the write queue, guarded by write_mu. fd is closed only after both threads
  // are joined.
  std::mutex write_mu;
  std::condition_variable write_cv;
  int fd = -1;
  bool closing = false;
  std::deque<std::string> queue; // frames (the first one maybe partly sent)
  std::size_t front_sent = 0;
  std::size_t queued_bytes = 0;
  std::thread reader;
  std::thread writer;

  using completion = std::pair<executor::reply_handler, guest::http_response>;

  // Finishes waiter `it` with `resp` (under mu); an async one is moved to `out` to be called
  // once the lock is released.
  void complete(std::map<uint64_t, waiter>::iterator it, guest::http_response resp,
                std::vector<completion>& out) {
    if (it->second.done) {
      resp.id = it->second.caller_id;
      out.emplace_back(std::move(it->second.done), std::move(resp));
      waiters.erase(it);
    } else if (!it->second.result) {
      it->second.result = std::move(resp);
    }
  }

  static void run(std::vector<completion>& done) {
    for (auto& [cb, resp] : done)
      cb(std::move(resp));
    done.clear();
  }

  void mark_gone(const std::string& reason) {
    std::vector<completion> done;
    executor::exit_handler report;
    int code = -1;
    std::string why;
    {
      std::lock_guard lock{mu};
      if (!gone) {
        gone = true;
        gone_reason = reason;
        if (!end_expected && on_exit) {
          report = std::move(on_exit);
          on_exit = nullptr;
          code = halted_seen ? halted_code : -1;
          why = halted_seen ? "program exited with code " + std::to_string(halted_code) : reason;
        }
      }
      for (auto it = waiters.begin(); it != waiters.end();) {
        auto next = std::next(it);
        if (it->second.done || !it->second.result)
          complete(it, failure(it->first, 502, "guest is gone: " + gone_reason), done);
        it = next;
      }
      cv.notify_all();
    }
    run(done);
    if (report) {
      if (opts.exit_note)
        why += opts.exit_note();
      report(code, why);
    }
  }

  void expire(clock_type::time_point now) {
    std::vector<completion> done;
    {
      std::lock_guard lock{mu};
      for (auto it = waiters.begin(); it != waiters.end();) {
        auto next = std::next(it);
        if (it->second.done && it->second.deadline <= now)
          complete(it, failure(it->first, 504, "no answer from the guest in time"), done);
        it = next;
      }
    }
    run(done);
  }

  // The connection is unusable (a half-written frame, a guest that stopped reading).
  void drop(const std::string& why) {
    mark_gone(why);
    if (opts.kill)
      opts.kill();
  }

  // Queues `bytes` behind what is queued, or sends them at once when nothing is; never waits
  // for the guest. "" or why the frame cannot be sent.
  std::string send_bytes(std::string bytes) {
    std::lock_guard lock{write_mu};
    if (fd < 0 || closing)
      return "not connected";
    if (queue.empty()) {
      std::size_t off = 0;
      while (off < bytes.size()) {
        auto n = ::send(fd, bytes.data() + off, bytes.size() - off, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0 && errno == EINTR)
          continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
          break;
        if (n <= 0)
          return "write to the guest failed: " + std::string{std::strerror(errno)};
        off += static_cast<std::size_t>(n);
      }
      if (off == bytes.size())
        return {};
      bytes.erase(0, off);
    }
    if (queued_bytes + bytes.size() > max_queued_bytes)
      return "the guest does not read what it is sent";
    queued_bytes += bytes.size();
    queue.push_back(std::move(bytes));
    if (!writer.joinable())
      writer = std::thread{[this] { write_loop(); }};
    write_cv.notify_one();
    return {};
  }

  void write_loop() {
    std::unique_lock lock{write_mu};
    for (;;) {
      write_cv.wait(lock, [&] { return closing || !queue.empty(); });
      if (closing)
        return;
      int f = fd;
      lock.unlock();
      pollfd pfd{f, POLLOUT, 0};
      auto p = ::poll(&pfd, 1, static_cast<int>(std::chrono::milliseconds{send_timeout}.count()));
      auto poll_errno = errno;
      lock.lock();
      if (closing)
        return;
      std::string error;
      if (p == 0) {
        error = "write to the guest timed out";
      } else if (p < 0) {
        if (poll_errno == EINTR)
          continue;
        error = "poll: " + std::string{std::strerror(poll_errno)};
      } else {
        auto& front = queue.front();
        auto n = ::send(fd, front.data() + front_sent, front.size() - front_sent,
                        MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK))
          continue;
        if (n <= 0) {
          error = "write to the guest failed: " + std::string{std::strerror(errno)};
        } else {
          front_sent += static_cast<std::size_t>(n);
          if (front_sent == front.size()) {
            queued_bytes -= front.size();
            queue.pop_front();
            front_sent = 0;
          }
          continue;
        }
      }
      // Nothing more can go out: the rest is dropped with the guest.
      queue.clear();
      queued_bytes = 0;
      front_sent = 0;
      lock.unlock();
      drop(error);
      return;
    }
  }

  // Sends or, on failure, gives the guest up.
  bool send_or_drop(const guest::frame& f) {
    std::string bytes;
    try {
      bytes = guest::encode(f);
    } catch (const std::exception&) {
      // Too large to send: nothing went out, the stream is intact.
      return false;
    }
    auto error = send_bytes(std::move(bytes));
    if (error.empty())
      return true;
    drop(error);
    return false;
  }

  // Returns false when the guest broke the protocol.
  bool handle(guest::frame f, std::vector<completion>& done, timed_log& log_out,
              executor::log_handler& log_to) {
    std::lock_guard lock{mu};
    if (auto* r = std::get_if<guest::ready>(&f)) {
      ready_seen = true;
      ready_configured = r->configured;
      features = r->features;
    } else if (auto* res = std::get_if<guest::configure_result>(&f)) {
      cfg_result = std::move(*res);
    } else if (auto* resp = std::get_if<guest::http_response>(&f)) {
      // Unknown, answered or timed-out ids are dropped.
      if (auto it = waiters.find(resp->id); it != waiters.end() && !it->second.result)
        complete(it, std::move(*resp), done);
    } else if (auto* l = std::get_if<guest::log>(&f)) {
      timed_log entry{unix_now(), std::move(l->stream), std::move(l->line)};
      if (opts.on_log) {
        log_out = entry;
        log_to = opts.on_log;
      }
      logs.push_back(std::move(entry));
      if (logs.size() > max_logs)
        logs.pop_front();
    } else if (auto* h = std::get_if<guest::halted>(&f)) {
      halted_seen = true;
      halted_code = h->exit_code;
    } else {
      return false; // a host → guest frame coming back
    }
    cv.notify_all();
    return true;
  }

  void read_loop() {
    guest::decoder dec;
    std::vector<char> buf(64 * 1024);
    std::vector<completion> done;
    timed_log log;
    for (;;) {
      pollfd pfd{fd, POLLIN, 0};
      auto p = ::poll(&pfd, 1, static_cast<int>(timeout_slice.count()));
      expire(clock_type::now());
      if (p == 0 || (p < 0 && errno == EINTR))
        continue;
      auto n = ::read(fd, buf.data(), buf.size());
      if (n < 0 && errno == EINTR)
        continue;
      if (n <= 0) {
        bool expected;
        {
          std::lock_guard lock{mu};
          expected = halted_seen || gone;
        }
        {
          std::lock_guard lock{write_mu};
          expected = expected || closing; // our own close()
        }
        if (expected)
          mark_gone(opts.eof_reason);
        else
          drop(opts.eof_reason);
        return;
      }
      dec.feed(buf.data(), static_cast<std::size_t>(n));
      std::string error;
      while (auto f = dec.next(error)) {
        auto name = std::string{guest::type_name(*f)};
        executor::log_handler log_to;
        if (!handle(std::move(*f), done, log, log_to)) {
          error = "unexpected frame '" + name + "'";
          break;
        }
        if (log_to)
          log_to(log);
      }
      run(done);
      if (!error.empty()) {
        drop("bad frame from the guest: " + error);
        return;
      }
    }
  }

  template <class Pred>
  bool wait_until(clock_type::time_point deadline, Pred pred) {
    std::unique_lock lock{mu};
    return cv.wait_until(lock, deadline, pred);
  }

  void close(const std::string& reason) {
    {
      std::lock_guard lock{write_mu};
      closing = true;
      if (fd >= 0)
        ::shutdown(fd, SHUT_RDWR);
      write_cv.notify_all();
    }
    for (auto* t : {&reader, &writer}) {
      if (!t->joinable())
        continue;
      if (t->get_id() == std::this_thread::get_id())
        t->detach(); // closed from one of its own callbacks: it returns right after
      else
        t->join();
    }
    {
      std::lock_guard lock{write_mu};
      if (fd >= 0 && !reader.joinable() && !writer.joinable())
        ::close(fd);
      fd = -1;
      queue.clear();
      queued_bytes = 0;
    }
    mark_gone(reason);
    std::lock_guard lock{mu};
    attached = false;
  }
};

guest_link::guest_link(options o) : impl_{std::make_unique<impl>(std::move(o))} {
}

guest_link::~guest_link() {
  impl_->close("link closed");
}

void guest_link::attach(int fd) {
  {
    std::lock_guard lock{impl_->write_mu};
    impl_->fd = fd;
  }
  {
    std::lock_guard lock{impl_->mu};
    impl_->attached = true;
  }
  impl_->reader = std::thread{[this] { impl_->read_loop(); }};
}

std::string guest_link::wait_ready(clock_type::time_point deadline) {
  auto& d = *impl_;
  if (!d.wait_until(deadline, [&] { return d.ready_seen || d.gone; }))
    return "no 'ready' from the guest in time";
  std::lock_guard lock{d.mu};
  if (!d.ready_seen)
    return "the guest failed before 'ready': " + d.gone_reason;
  return {};
}

bool guest_link::ready_seen() const {
  std::lock_guard lock{impl_->mu};
  return impl_->ready_seen;
}

bool guest_link::ready_configured() const {
  std::lock_guard lock{impl_->mu};
  return impl_->ready_configured;
}

bool guest_link::guest_has(const std::string& feature) const {
  std::lock_guard lock{impl_->mu};
  const auto& f = impl_->features;
  return std::find(f.begin(), f.end(), feature) != f.end();
}

std::string guest_link::take_over(int fd, clock_type::time_point deadline) {
  attach(fd);
  impl_->send_or_drop(guest::ready{}); // a probe: the agent answers with its own `ready`
  if (auto error = wait_ready(deadline); !error.empty())
    return error;
  if (!ready_configured())
    return "its guest runs no program";
  return {};
}

std::string guest_link::configure(const guest::configure& cfg, clock_type::time_point deadline,
                                  bool* answered) {
  auto& d = *impl_;
  if (answered != nullptr)
    *answered = false;
  {
    std::lock_guard lock{d.mu};
    if (!d.ready_seen)
      return "not booted";
    if (d.configure_sent)
      return "already configured";
    d.configure_sent = true;
  }
  if (!d.send_or_drop(cfg))
    return "cannot send 'configure': " + gone_reason();
  if (!d.wait_until(deadline, [&] { return d.cfg_result || d.gone; }))
    return "no 'configure_result' from the guest in time";
  std::lock_guard lock{d.mu};
  if (!d.cfg_result)
    return "the guest failed during configure: " + d.gone_reason;
  if (answered != nullptr)
    *answered = true;
  if (!d.cfg_result->success)
    return "configure failed: " + d.cfg_result->error;
  return {};
}

void guest_link::request_async(guest::http_request req, std::chrono::milliseconds timeout,
                               executor::reply_handler done) {
  auto& d = *impl_;
  auto caller_id = req.id;
  {
    std::unique_lock lock{d.mu};
    if (!d.attached || d.gone || d.halted_seen) {
      auto why = d.gone_reason.empty() ? "guest is not running" : "guest is gone: " + d.gone_reason;
      lock.unlock();
      done(failure(caller_id, 502, why));
      return;
    }
    req.id = d.next_id++;
    d.waiters.emplace(req.id, impl::waiter{std::nullopt, std::move(done),
                                           clock_type::now() + timeout, caller_id});
  }
  auto id = req.id;
  if (!d.send_or_drop(req)) {
    // Not sent (too large, or the guest is gone): answered here unless mark_gone() did.
    std::vector<impl::completion> out;
    {
      std::lock_guard lock{d.mu};
      if (auto it = d.waiters.find(id); it != d.waiters.end())
        d.complete(it, failure(id, 413, "request too large for the guest protocol"), out);
    }
    impl::run(out);
  }
}

guest::http_response guest_link::request(guest::http_request req,
                                         std::chrono::milliseconds timeout) {
  auto& d = *impl_;
  auto deadline = clock_type::now() + timeout;
  auto caller_id = req.id;
  uint64_t id;
  {
    std::lock_guard lock{d.mu};
    if (!d.attached || d.gone || d.halted_seen)
      return failure(caller_id, 502,
                     d.gone_reason.empty() ? "guest is not running"
                                           : "guest is gone: " + d.gone_reason);
    id = d.next_id++;
    d.waiters.emplace(id, impl::waiter{});
  }
  req.id = id;
  bool sent = d.send_or_drop(req);
  std::unique_lock lock{d.mu};
  if (sent)
    d.cv.wait_until(lock, deadline, [&] { return d.waiters[id].result.has_value(); });
  auto node = d.waiters.extract(id);
  guest::http_response resp
    = node.mapped().result ? std::move(*node.mapped().result)
      : sent               ? failure(id, 504, "no answer from the guest in time")
                           : failure(id, 413, "request too large for the guest protocol");
  resp.id = caller_id;
  return resp;
}

bool guest_link::halt(clock_type::time_point deadline) {
  auto& d = *impl_;
  {
    std::lock_guard lock{d.mu};
    if (d.halted_seen)
      return true;
    if (!d.attached || d.gone)
      return false;
  }
  if (!d.send_or_drop(guest::halt{}))
    return false;
  d.wait_until(deadline, [&] { return d.halted_seen || d.gone; });
  std::lock_guard lock{d.mu};
  return d.halted_seen;
}

void guest_link::expect_end() {
  std::lock_guard lock{impl_->mu};
  impl_->end_expected = true;
}

void guest_link::close(const std::string& reason) {
  impl_->close(reason);
}

void guest_link::mark_gone(const std::string& reason) {
  impl_->mark_gone(reason);
}

bool guest_link::running() const {
  std::lock_guard lock{impl_->mu};
  return impl_->attached && !impl_->gone && !impl_->halted_seen;
}

bool guest_link::gone() const {
  std::lock_guard lock{impl_->mu};
  return impl_->gone;
}

std::string guest_link::gone_reason() const {
  std::lock_guard lock{impl_->mu};
  return impl_->gone_reason;
}

int guest_link::halted_code() const {
  std::lock_guard lock{impl_->mu};
  return impl_->halted_seen ? impl_->halted_code : -1;
}

std::vector<timed_log> guest_link::logs() const {
  std::lock_guard lock{impl_->mu};
  return {impl_->logs.begin(), impl_->logs.end()};
}

void guest_link::on_exit(executor::exit_handler h) {
  std::lock_guard lock{impl_->mu};
  impl_->on_exit = std::move(h);
}

void guest_link::on_log(executor::log_handler h) {
  std::lock_guard lock{impl_->mu};
  impl_->opts.on_log = std::move(h);
}

} // namespace alephd
