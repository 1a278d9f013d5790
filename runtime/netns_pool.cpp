#include "runtime/netns_pool.hpp"

#include <fcntl.h>
#include <net/if.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>

namespace alephd {

namespace {

// Brings `lo` up in the calling thread's namespace.
bool loopback_up() {
  int s = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0)
    return false;
  ifreq ifr{};
  std::strncpy(ifr.ifr_name, "lo", IFNAMSIZ - 1);
  bool ok = ::ioctl(s, SIOCGIFFLAGS, &ifr) == 0;
  if (ok) {
    ifr.ifr_flags = static_cast<short>(ifr.ifr_flags | IFF_UP | IFF_RUNNING);
    ok = ::ioctl(s, SIOCSIFFLAGS, &ifr) == 0;
  }
  ::close(s);
  return ok;
}

// A new namespace, made by moving this thread into it and back to `home`: its fd, or -1.
int make_namespace(int home) {
  if (::unshare(CLONE_NEWNET) != 0)
    return -1;
  int fd = ::open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
  bool ok = fd >= 0 && loopback_up();
  if (::setns(home, CLONE_NEWNET) != 0) {
    // Stranded in the new namespace: the thread must not make more (they would nest nothing,
    // but `home` is no longer where it lives).
    if (fd >= 0)
      ::close(fd);
    return -2;
  }
  if (!ok && fd >= 0) {
    ::close(fd);
    fd = -1;
  }
  return fd;
}

} // namespace

netns_pool::netns_pool(std::size_t spares) : spares_{spares} {
  thread_ = std::thread{[this] { fill(); }};
}

netns_pool::~netns_pool() {
  {
    std::lock_guard lock{mu_};
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable())
    thread_.join();
  for (int fd : ready_)
    ::close(fd);
}

netns_pool& netns_pool::shared() {
  // Never destroyed: sandboxes may start until the very end of the process.
  static auto* pool = new netns_pool{2};
  return *pool;
}

int netns_pool::take() {
  std::lock_guard lock{mu_};
  if (ready_.empty())
    return -1;
  int fd = ready_.back();
  ready_.pop_back();
  cv_.notify_all();
  return fd;
}

bool netns_pool::wait_ready(std::size_t n, std::chrono::milliseconds timeout) {
  std::unique_lock lock{mu_};
  return cv_.wait_for(lock, timeout, [&] { return !usable_ || ready_.size() >= n; })
         && usable_;
}

bool netns_pool::usable() const {
  std::lock_guard lock{mu_};
  return usable_;
}

void netns_pool::fill() {
  // Behind everything else: a refill must not slow down the start that took a spare. Nice 19,
  // not SCHED_IDLE: making a namespace takes global kernel locks (rtnl), which a starved
  // thread must not sit on.
  ::setpriority(PRIO_PROCESS, static_cast<id_t>(::gettid()), 19);
  int home = ::open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
  std::unique_lock lock{mu_};
  for (;;) {
    cv_.wait(lock, [&] { return stopping_ || ready_.size() < spares_; });
    if (stopping_)
      break;
    lock.unlock();
    int fd = home >= 0 ? make_namespace(home) : -1;
    auto why = errno;
    lock.lock();
    if (fd == -1 && (why == ENOMEM || why == EMFILE || why == ENFILE || why == ENOSPC)) {
      // Short of something for now: sandboxes make their own meanwhile; try again later.
      cv_.wait_for(lock, std::chrono::seconds(1), [&] { return stopping_; });
      continue;
    }
    if (fd < 0) { // no privilege (EPERM), no /proc, or stranded: sandboxes make their own
      usable_ = false;
      cv_.notify_all();
      break;
    }
    ready_.push_back(fd);
    cv_.notify_all();
  }
  if (home >= 0)
    ::close(home);
}

} // namespace alephd
