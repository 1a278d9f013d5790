// Real alephd processes for tests, benchmarks and `alephd sim`: start with arguments, wait for
// the READY line, signal, and always reap (the destructor SIGKILLs a live child, which also
// dies with its parent: PR_SET_PDEATHSIG).
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include <sys/types.h>

namespace alephd::sim {

class process {
public:
  /// Starts `binary args...` with stdout piped and stderr appended to `log_path`.
  process(const std::string& binary, std::vector<std::string> args, std::string log_path);
  ~process();
  process(const process&) = delete;
  process& operator=(const process&) = delete;

  /// Reads stdout until a line starting with "READY"; its key=value pairs go to `ready`.
  bool wait_ready(std::chrono::milliseconds timeout = std::chrono::seconds(20));
  /// Sends a signal.
  void signal(int sig);
  /// Waits for the exit; returns the exit code, 128+signal, or -1 on timeout.
  int wait_exit(std::chrono::milliseconds timeout);
  /// SIGKILL and reap.
  void kill9();
  bool running() const { return pid_ > 0; }
  pid_t pid() const { return pid_; }
  /// "host:port" values from the READY line, e.g. ready.at("http").
  std::map<std::string, std::string> ready;
  /// The port part of a READY endpoint.
  uint16_t port(const std::string& key) const;
  /// Everything the process wrote to stdout so far.
  const std::string& output() const { return out_; }
  std::string log() const;

private:
  pid_t pid_ = -1;
  int out_fd_ = -1;
  std::string out_;
  std::string log_path_;
};

/// The last 6000 bytes of a log file (all of a shorter one).
std::string log_tail(const std::string& path);

/// Can 127.0.0.1:port be bound right now?
bool port_free(uint16_t port);

/// Polls `fn` every 50 ms until it is true or `timeout` passes; returns the last result.
template <class F>
bool eventually(F fn, std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    if (fn())
      return true;
    if (std::chrono::steady_clock::now() > deadline)
      return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

} // namespace alephd::sim
