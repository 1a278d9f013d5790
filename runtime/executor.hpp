#pragma once

// What the CRN needs from an executor (the bubblewrap sandbox, the QEMU
// microVM): start the guest agent and configure it, pass HTTP requests to the
// program, report the program's output and its end, and stop. No CAF here; a
// vm_supervisor owns one executor and calls its blocking members from a
// thread of its own.

#include "runtime/guest_protocol.hpp"

#include <chrono>
#include <functional>
#include <string>
#include <vector>

namespace alephd {

/// One line of a program's output with the time the host received it.
struct timed_log {
  double time = 0;    ///< unix seconds
  std::string stream; ///< stdout, stderr or system
  std::string line;
};

/// What an executor's processes have used so far (cumulative CPU; memory now and at peak).
struct executor_usage {
  uint64_t cpu_ns = 0;
  uint64_t mem_current = 0; ///< bytes
  uint64_t mem_peak = 0;    ///< bytes
};

/// CPU time (with reaped children) and resident memory of one process from /proc; zeros
/// when it is gone.
executor_usage process_usage(int pid);

class executor {
public:
  /// Called once with the answer; from an executor thread, never under a lock.
  using reply_handler = std::function<void(guest::http_response)>;
  /// Called once when the guest is gone for good (exit code or -1, and why).
  using exit_handler = std::function<void(int, const std::string&)>;

  virtual ~executor() = default;

  /// Starts the guest and sends `configure`; "" or a one-line error. Blocking.
  virtual std::string start(const guest::configure& cfg) = 0;

  /// Sends one request; `done` gets the response, a 504 after `timeout`, or a
  /// 502 when the guest is gone. Never blocks on the guest.
  virtual void request_async(guest::http_request req, std::chrono::milliseconds timeout,
                             reply_handler done)
    = 0;

  /// Stops the guest (clean halt within `grace`, then kill). Blocking.
  virtual int stop(std::chrono::milliseconds grace) = 0;

  virtual bool running() const = 0;

  /// Host pid of the executor process (0 before start).
  virtual int pid() const = 0;

  /// Resources used so far: by default the executor process's own (a QEMU process holds its
  /// whole VM); a sandbox with a cgroup reads the group.
  virtual executor_usage usage() const { return process_usage(pid()); }

  /// The last lines of output.
  virtual std::vector<timed_log> logs() const = 0;

  /// Sets the handler for the guest's end (before start()).
  virtual void on_exit(exit_handler h) = 0;

  /// Called with each line of the program's output as it arrives (on an
  /// executor thread; quick and non-blocking). Set it before start().
  using log_handler = std::function<void(const timed_log&)>;
  virtual void on_log(log_handler h) = 0;
};

} // namespace alephd
