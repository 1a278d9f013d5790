#pragma once

// One connection to a guest agent, whatever carries it (the sandbox's unix
// socket, the microVM's virtio-serial port): reads and dispatches frames on a
// thread of its own, keeps the program's log lines, matches responses to
// requests, times requests out, and reports the guest's end once. Writes never
// block the caller: a frame the socket cannot take at once waits in a queue
// that a writer thread drains. Executors own one link each and keep the
// process side (spawn, signals, reaping) to themselves. No CAF here.

#include "runtime/executor.hpp"
#include "runtime/guest_protocol.hpp"

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace alephd {

class guest_link {
public:
  using clock_type = std::chrono::steady_clock;

  struct options {
    /// Why the guest is gone when its end of the connection closes.
    std::string eof_reason = "guest closed the connection";
    /// Kills the guest's process; called (outside the link's locks) when the
    /// guest broke the protocol, stopped reading, or closed unexpectedly.
    std::function<void()> kill;
    /// Appended to the reason of the exit report, e.g. " (out of memory: …)".
    std::function<std::string()> exit_note;
    /// Called for every log line as it arrives (on the reader thread).
    std::function<void(const timed_log&)> on_log;
  };

  explicit guest_link(options o);
  /// close("link closed").
  ~guest_link();
  guest_link(const guest_link&) = delete;
  guest_link& operator=(const guest_link&) = delete;

  /// Takes a connected stream socket (owned from now on) and starts reading.
  /// Call it once.
  void attach(int fd);

  /// Waits for `ready`; "" or a one-line error.
  std::string wait_ready(clock_type::time_point deadline);

  /// The `ready` frame, once seen.
  bool ready_seen() const;
  /// Whether the guest said in `ready` that it already runs a program (a
  /// re-adopted guest after a CRN restart).
  bool ready_configured() const;
  /// Whether the guest's `ready` listed `feature` (e.g. "code_file").
  bool guest_has(const std::string& feature) const;

  /// For a host that takes over a running guest (a restarted CRN): attaches
  /// `fd`, asks the agent to say `ready` again, and waits for it; "" when it
  /// did and runs a program, else a one-line error.
  std::string take_over(int fd, clock_type::time_point deadline);

  /// Sends `configure` and waits for the result; "" or a one-line error.
  /// `answered` tells whether the guest answered (a refusal) or not.
  std::string configure(const guest::configure& cfg, clock_type::time_point deadline,
                        bool* answered = nullptr);

  /// Sends one request; `done` gets the response, a 504 after `timeout`, or a
  /// 502 when the guest is gone. Never blocks on the guest.
  void request_async(guest::http_request req, std::chrono::milliseconds timeout,
                     executor::reply_handler done);

  /// The same, waiting for the answer.
  guest::http_response request(guest::http_request req, std::chrono::milliseconds timeout);

  /// Sends `halt` to a live guest and waits until it says `halted` or is
  /// gone, or `deadline`. Returns whether it halted.
  bool halt(clock_type::time_point deadline);

  /// From now on the guest's end is not reported (the executor stops it).
  void expect_end();

  /// Closes the connection, joins the threads and fails what is pending with
  /// `reason`. Idempotent.
  void close(const std::string& reason);

  /// Gives the guest up (fails what is pending, reports the end unless
  /// expected) without closing the socket.
  void mark_gone(const std::string& reason);

  /// Attached, not gone and not halted.
  bool running() const;
  /// Gone: EOF, a bad frame, a failed write, or closed.
  bool gone() const;
  /// Why it is gone ("" while it is not).
  std::string gone_reason() const;
  /// The exit code from `halted`, or -1.
  int halted_code() const;

  /// The last `max_logs` log lines.
  std::vector<timed_log> logs() const;
  /// Called once when the guest is gone, unless expect_end() came first.
  void on_exit(executor::exit_handler h);
  /// Replaces options::on_log.
  void on_log(executor::log_handler h);

  static constexpr std::size_t max_logs = 1000;
  /// Frames queued for a guest that does not read are capped at this.
  static constexpr std::size_t max_queued_bytes = 64u << 20;

private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

} // namespace alephd
