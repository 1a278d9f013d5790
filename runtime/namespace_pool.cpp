#include "runtime/namespace_pool.hpp"

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

constexpr int kinds = CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS;

// The calling thread's current namespaces.
spare_namespaces own_namespaces() {
  return {::open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC),
          ::open("/proc/thread-self/ns/ipc", O_RDONLY | O_CLOEXEC),
          ::open("/proc/thread-self/ns/uts", O_RDONLY | O_CLOEXEC)};
}

// A new set, made by moving this thread into it and back `home`. `stranded` is set when the
// way back failed: the thread must not make more (`home` is no longer where it lives).
spare_namespaces make_namespaces(const spare_namespaces& home, bool& stranded) {
  if (::unshare(kinds) != 0)
    return {};
  auto made = own_namespaces();
  bool ok = made && loopback_up();
  auto why = errno;
  stranded = ::setns(home.net, CLONE_NEWNET) != 0 || ::setns(home.ipc, CLONE_NEWIPC) != 0
             || ::setns(home.uts, CLONE_NEWUTS) != 0;
  if (!ok || stranded)
    made.close();
  errno = why;
  return made;
}

} // namespace

spare_namespaces::spare_namespaces(spare_namespaces&& other) noexcept
  : net{other.net}, ipc{other.ipc}, uts{other.uts} {
  other.net = other.ipc = other.uts = -1;
}

spare_namespaces& spare_namespaces::operator=(spare_namespaces&& other) noexcept {
  if (this != &other) {
    close();
    net = other.net;
    ipc = other.ipc;
    uts = other.uts;
    other.net = other.ipc = other.uts = -1;
  }
  return *this;
}

spare_namespaces::~spare_namespaces() {
  close();
}

void spare_namespaces::close() {
  for (int* fd : {&net, &ipc, &uts})
    if (*fd >= 0) {
      ::close(*fd);
      *fd = -1;
    }
}

namespace_pool::namespace_pool(std::size_t spares) : spares_{spares} {
  thread_ = std::thread{[this] { fill(); }};
}

namespace_pool::~namespace_pool() {
  {
    std::lock_guard lock{mu_};
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable())
    thread_.join();
}

namespace_pool& namespace_pool::shared() {
  // Never destroyed: sandboxes may start until the very end of the process.
  static auto* pool = new namespace_pool{2};
  return *pool;
}

spare_namespaces namespace_pool::take() {
  std::lock_guard lock{mu_};
  if (ready_.empty())
    return {};
  auto set = std::move(ready_.back());
  ready_.pop_back();
  cv_.notify_all();
  return set;
}

bool namespace_pool::wait_ready(std::size_t n, std::chrono::milliseconds timeout) {
  std::unique_lock lock{mu_};
  return cv_.wait_for(lock, timeout, [&] { return !usable_ || ready_.size() >= n; })
         && usable_;
}

bool namespace_pool::usable() const {
  std::lock_guard lock{mu_};
  return usable_;
}

void namespace_pool::fill() {
  // Behind everything else: a refill must not slow down the start that took a spare. Nice 19,
  // not SCHED_IDLE: making a namespace takes global kernel locks (rtnl), which a starved
  // thread must not sit on.
  ::setpriority(PRIO_PROCESS, static_cast<id_t>(::gettid()), 19);
  auto home = own_namespaces();
  std::unique_lock lock{mu_};
  for (;;) {
    cv_.wait(lock, [&] { return stopping_ || ready_.size() < spares_; });
    if (stopping_)
      break;
    lock.unlock();
    bool stranded = false;
    errno = EPERM;
    auto set = home ? make_namespaces(home, stranded) : spare_namespaces{};
    auto why = errno;
    lock.lock();
    if (!set && !stranded
        && (why == ENOMEM || why == EMFILE || why == ENFILE || why == ENOSPC)) {
      // Short of something for now: sandboxes make their own meanwhile; try again later.
      cv_.wait_for(lock, std::chrono::seconds(1), [&] { return stopping_; });
      continue;
    }
    if (!set) { // no privilege (EPERM), no /proc, or stranded: sandboxes make their own
      usable_ = false;
      cv_.notify_all();
      break;
    }
    ready_.push_back(std::move(set));
    cv_.notify_all();
  }
}

} // namespace alephd
