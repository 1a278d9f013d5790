#include "runtime/sandbox_pool.hpp"

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <vector>

namespace alephd {

using namespace std::chrono_literals;

namespace {
constexpr auto refill_delay = 50ms;
} // namespace

sandbox_pool::sandbox_pool(sandbox_options base, std::size_t size, std::string run_root)
  : base_(std::move(base)), size_(size), run_root_(std::move(run_root)) {
  if (size_ > 0)
    thread_ = std::thread{[this] { refill(); }};
}

sandbox_pool::~sandbox_pool() {
  {
    std::lock_guard lock{mu_};
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable())
    thread_.join();
}

std::shared_ptr<sandbox> sandbox_pool::take() {
  std::shared_ptr<sandbox> out;
  std::vector<std::shared_ptr<sandbox>> dead; // destroyed outside the lock (it may block)
  {
    std::lock_guard lock{mu_};
    while (!ready_.empty() && !out) {
      out = std::move(ready_.front());
      ready_.pop_front();
      last_take_ = std::chrono::steady_clock::now();
      if (!out->running()) { // died while waiting: drop it
        dead.push_back(std::move(out));
        out = nullptr;
      }
    }
  }
  cv_.notify_all(); // make another
  return out;
}

std::size_t sandbox_pool::ready() const {
  std::lock_guard lock{mu_};
  return ready_.size();
}

bool sandbox_pool::wait_ready(std::size_t n, std::chrono::milliseconds timeout) const {
  std::unique_lock lock{mu_};
  return cv_.wait_for(lock, timeout, [&] { return ready_.size() >= n; });
}

void sandbox_pool::refill() {
  auto backoff = 100ms;
  std::unique_lock lock{mu_};
  while (!stopping_) {
    if (ready_.size() >= size_) {
      cv_.wait(lock, [this] { return stopping_ || ready_.size() < size_; });
      continue;
    }
    // A sandbox was just taken: let its cold start have the CPU before refilling (booting
    // one costs a few ms of both cores' time on a small host).
    if (last_take_ + refill_delay > std::chrono::steady_clock::now()) {
      cv_.wait_until(lock, last_take_ + refill_delay, [this] { return stopping_; });
      continue;
    }
    auto n = counter_++;
    lock.unlock();
    auto o = base_;
    o.run_dir = run_root_ + "/pool-" + std::to_string(n);
    o.cgroup_name = "pool-" + std::to_string(::getpid()) + "-" + std::to_string(n);
    auto sb = std::make_shared<sandbox>(std::move(o));
    auto err = sb->boot();
    lock.lock();
    if (!err.empty()) {
      // Keep trying, but never spin: a broken setup (no bwrap) fails every time.
      std::fprintf(stderr, "sandbox_pool: cannot pre-start a sandbox: %s\n", err.c_str());
      cv_.wait_for(lock, backoff, [this] { return stopping_; });
      backoff = std::min(backoff * 2, std::chrono::milliseconds{30000});
      continue;
    }
    backoff = 100ms;
    ready_.push_back(std::move(sb));
    cv_.notify_all();
  }
  // Stopping: the sandboxes still here go with the pool (their destructors stop them on this
  // thread, their parent).
  auto left = std::move(ready_);
  lock.unlock();
  left.clear();
}

} // namespace alephd
