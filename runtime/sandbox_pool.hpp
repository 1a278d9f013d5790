#pragma once

// A pool of pre-started sandboxes (`execution.prealloc`): each has its guest
// agent booted and waiting for `configure`, so a cold start only has to send
// the program and start it. aleph-vm has the setting but never built it.
// A thread of the pool keeps it full; it is also the sandboxes' parent thread
// (bwrap's --die-with-parent follows the thread that spawned it).

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "runtime/sandbox.hpp"

namespace alephd {

class sandbox_pool {
public:
  /// Keeps `size` sandboxes booted from `base` (run dirs under `run_root`; when
  /// `base.limits` is set, each gets its own cgroup `pool-N` with those limits).
  sandbox_pool(sandbox_options base, std::size_t size, std::string run_root);
  /// Stops the refill thread and every sandbox still in the pool.
  ~sandbox_pool();

  sandbox_pool(const sandbox_pool&) = delete;
  sandbox_pool& operator=(const sandbox_pool&) = delete;

  /// A booted sandbox (call configure() on it), or nullptr when none is ready.
  std::shared_ptr<sandbox> take();

  /// Sandboxes ready now.
  std::size_t ready() const;

  /// Blocks until `n` sandboxes are ready or `timeout` passes (tests, benchmarks).
  bool wait_ready(std::size_t n, std::chrono::milliseconds timeout) const;

private:
  void refill();

  sandbox_options base_;
  std::size_t size_;
  std::string run_root_;
  mutable std::mutex mu_;
  mutable std::condition_variable cv_;
  std::deque<std::shared_ptr<sandbox>> ready_;
  bool stopping_ = false;
  uint64_t counter_ = 0;
  std::chrono::steady_clock::time_point last_take_{};
  std::thread thread_;
};

} // namespace alephd
