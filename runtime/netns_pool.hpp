#pragma once

// Network namespaces made ahead of need for sandboxes. A sandbox always gets a namespace of its
// own (`lo` up, nothing else up); making one is the dearest step of bwrap's start (~1 ms of a
// ~7 ms cold start on a 2-core VM), so a thread keeps a few fresh ones ready and a sandbox
// enters one (setns) before bwrap starts, instead of bwrap's --unshare-net. Each namespace is
// handed out once. Making one needs CAP_SYS_ADMIN: without it the pool stays empty and
// sandboxes fall back to --unshare-net; short of memory or fds, it tries again a second later.

#include <condition_variable>
#include <cstddef>
#include <mutex>
#include <thread>
#include <vector>

namespace alephd {

class netns_pool {
public:
  /// Keeps `spares` namespaces ready (a thread makes them).
  explicit netns_pool(std::size_t spares);
  /// Stops the thread and closes the namespaces nobody took.
  ~netns_pool();

  netns_pool(const netns_pool&) = delete;
  netns_pool& operator=(const netns_pool&) = delete;

  /// An fd (O_CLOEXEC) of a fresh namespace with `lo` up, which the caller owns and closes; -1
  /// when none is ready (or namespaces cannot be made here).
  int take();

  /// Blocks until `n` namespaces are ready or `timeout` passes; false also when the pool
  /// cannot make namespaces (tests).
  bool wait_ready(std::size_t n, std::chrono::milliseconds timeout);

  /// False once making a namespace failed (no privilege): take() then always returns -1.
  bool usable() const;

  /// The process's pool, started on first use with 2 spares.
  static netns_pool& shared();

private:
  void fill();

  std::size_t spares_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<int> ready_;
  bool usable_ = true;
  bool stopping_ = false;
  std::thread thread_;
};

} // namespace alephd
