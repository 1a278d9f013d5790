#pragma once

// What /proc says about a process, for executors that watch processes they did
// not start (a sandbox or VM a restarted CRN adopts) and must never signal a
// reused pid.

#include <optional>
#include <string>
#include <utility>

namespace alephd {

/// State letter and start time (fields 3 and 22 of /proc/PID/stat), or
/// nullopt if there is no such process.
std::optional<std::pair<char, std::string>> proc_state(int pid);

/// Whether `pid` runs (not a zombie) and is the process that started at
/// `start` (the start time of proc_state), not a later one with its pid.
bool process_is(int pid, const std::string& start);

} // namespace alephd

#include <chrono>
#include <mutex>
#include <vector>

#include <sys/types.h>

namespace alephd {

/// The first line of a regular file, at most 200 characters ("" if there is
/// none). A symlink is not followed (guests can write to run dirs).
std::string first_line(const std::string& path);

/// Runs a tool (qemu-img, mkfs.ext4, mount) to completion within `timeout`,
/// its stderr to `err_file`; "" or a one-line error naming the tool and the
/// first line it wrote.
std::string run_tool(const std::string& exe, const std::vector<std::string>& args,
                     const std::string& err_file, std::chrono::milliseconds timeout);

/// The main process of an executor (bwrap, QEMU): either our child, reaped
/// with waitpid, or one adopted from an earlier CRN process, which init
/// reaps and we only watch through /proc. Never signals a pid once it is
/// gone (pid reuse). Thread-safe.
class watched_process {
public:
  /// Our child, just spawned.
  void set_child(pid_t pid);
  /// A process an earlier CRN process started (not our child).
  void adopt(pid_t pid, const std::string& start);
  /// Lets it go: never signalled or waited for again.
  void forget();

  void signal(int sig);
  /// True once it has exited (and, if our child, is reaped).
  bool try_reap();
  /// SIGKILLs it and reaps it (our child), or waits up to `wait` for it to
  /// be gone (adopted).
  void kill_and_reap(std::chrono::milliseconds wait = std::chrono::milliseconds{2000});

  pid_t pid() const;
  std::string start() const;
  bool adopted() const;

private:
  bool gone_locked() const;

  mutable std::mutex mu_;
  pid_t pid_ = 0;
  std::string start_;
  bool reaped_ = false;
  bool adopted_ = false;
};

} // namespace alephd

namespace alephd {

/// In a child between fork and exec (async-signal-safe): marks every descriptor from `first` on
/// close-on-exec, so that a sandbox, a VM or a helper never inherits the node's sockets (its
/// HTTP listener would keep the port after the node died, and a guest could accept on it).
void cloexec_from(int first) noexcept;

} // namespace alephd
