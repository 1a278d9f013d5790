#include "runtime/process_state.hpp"

#include <fcntl.h>
#include <linux/close_range.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "runtime/executor.hpp"

#include <fstream>
#include <iterator>
#include <sstream>

namespace alephd {

std::optional<std::pair<char, std::string>> proc_state(int pid) {
  if (pid <= 0)
    return std::nullopt;
  std::ifstream in{"/proc/" + std::to_string(pid) + "/stat"};
  std::string stat{std::istreambuf_iterator<char>{in}, {}};
  auto paren = stat.rfind(')'); // the command name may hold spaces
  if (paren == std::string::npos || paren + 2 >= stat.size())
    return std::nullopt;
  std::istringstream rest{stat.substr(paren + 2)};
  std::string field, start;
  char state = '?';
  rest >> state;
  for (int i = 4; i <= 22 && rest >> field; ++i)
    if (i == 22)
      start = field;
  return std::make_pair(state, start);
}

bool process_is(int pid, const std::string& start) {
  auto st = proc_state(pid);
  return st && st->first != 'Z' && st->first != 'X' && st->second == start;
}

executor_usage process_usage(int pid) {
  executor_usage u;
  if (pid <= 0)
    return u;
  auto base = "/proc/" + std::to_string(pid);
  std::ifstream stat_in{base + "/stat"};
  std::string stat{std::istreambuf_iterator<char>{stat_in}, {}};
  auto paren = stat.rfind(')');
  if (paren == std::string::npos || paren + 2 >= stat.size())
    return u;
  // Fields 14-17 after the name: utime, stime, cutime, cstime in clock ticks.
  std::istringstream rest{stat.substr(paren + 2)};
  std::string field;
  uint64_t ticks = 0;
  for (int i = 3; i <= 17 && rest >> field; ++i)
    if (i >= 14)
      ticks += std::strtoull(field.c_str(), nullptr, 10);
  static const long hz = ::sysconf(_SC_CLK_TCK);
  if (hz > 0)
    u.cpu_ns = ticks * (1000000000ull / static_cast<uint64_t>(hz));
  std::ifstream status{base + "/status"};
  for (std::string line; std::getline(status, line);) {
    auto kib = [&](const char* key) {
      return line.rfind(key, 0) == 0 ? std::strtoull(line.c_str() + std::strlen(key), nullptr, 10) * 1024 : 0;
    };
    if (auto v = kib("VmRSS:"))
      u.mem_current = v;
    else if (auto p = kib("VmHWM:"))
      u.mem_peak = p;
  }
  u.mem_peak = std::max(u.mem_peak, u.mem_current);
  return u;
}

} // namespace alephd

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <linux/close_range.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <thread>

#include <boost/process.hpp>
#include <boost/process/extend.hpp>

namespace alephd {

namespace bp = boost::process;
using namespace std::chrono_literals;
using clock_type = std::chrono::steady_clock;

std::string first_line(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0)
    return "";
  struct stat st{};
  char buf[200];
  ssize_t n = 0;
  if (::fstat(fd, &st) == 0 && S_ISREG(st.st_mode))
    n = ::read(fd, buf, sizeof buf);
  ::close(fd);
  std::string line{buf, static_cast<std::size_t>(std::max<ssize_t>(n, 0))};
  return line.substr(0, line.find('\n'));
}

std::string run_tool(const std::string& exe, const std::vector<std::string>& args,
                     const std::string& err_file, std::chrono::milliseconds timeout) {
  pid_t pid = 0;
  try {
    std::error_code ec;
    bp::child c{bp::exe = exe, bp::args = args, bp::std_in < bp::null,
                bp::std_out > bp::null, bp::std_err > err_file,
                bp::extend::on_exec_setup = [](auto&) { cloexec_from(3); }, ec};
    if (ec)
      return "cannot spawn " + exe + ": " + ec.message();
    pid = c.id();
    c.detach(); // reaped below, with a deadline
  } catch (const std::exception& e) {
    return "cannot spawn " + exe + ": " + e.what();
  }
  auto until = clock_type::now() + timeout;
  int status = 0;
  for (;;) {
    auto r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid)
      break;
    if (r < 0 && errno != EINTR)
      return "cannot wait for " + exe + ": " + std::strerror(errno);
    if (clock_type::now() >= until) {
      ::kill(pid, SIGKILL);
      while (::waitpid(pid, nullptr, 0) < 0 && errno == EINTR) {
      }
      return exe + " did not finish in time";
    }
    std::this_thread::sleep_for(5ms);
  }
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
    return "";
  auto why = first_line(err_file);
  return exe + " failed" + (why.empty() ? "" : ": " + why);
}


void watched_process::set_child(pid_t pid) {
  std::lock_guard lock{mu_};
  pid_ = pid;
  auto st = proc_state(pid);
  start_ = st ? st->second : std::string{};
  reaped_ = false;
  adopted_ = false;
}

void watched_process::adopt(pid_t pid, const std::string& start) {
  std::lock_guard lock{mu_};
  pid_ = pid;
  start_ = start;
  reaped_ = false;
  adopted_ = true;
}

void watched_process::forget() {
  std::lock_guard lock{mu_};
  reaped_ = true;
}

bool watched_process::gone_locked() const {
  return !process_is(pid_, start_);
}

void watched_process::signal(int sig) {
  std::lock_guard lock{mu_};
  if (pid_ > 0 && !reaped_ && (!adopted_ || !gone_locked()))
    ::kill(pid_, sig);
}

bool watched_process::try_reap() {
  std::lock_guard lock{mu_};
  if (pid_ <= 0 || reaped_)
    return true;
  if (adopted_) {
    reaped_ = gone_locked();
    return reaped_;
  }
  auto r = ::waitpid(pid_, nullptr, WNOHANG);
  if (r == pid_ || (r < 0 && errno == ECHILD))
    reaped_ = true;
  return reaped_;
}

void watched_process::kill_and_reap(std::chrono::milliseconds wait) {
  std::lock_guard lock{mu_};
  if (pid_ <= 0 || reaped_)
    return;
  if (adopted_) {
    auto until = std::chrono::steady_clock::now() + wait;
    if (!gone_locked())
      ::kill(pid_, SIGKILL);
    while (!gone_locked() && std::chrono::steady_clock::now() < until)
      std::this_thread::sleep_for(std::chrono::milliseconds{5});
    reaped_ = true;
    return;
  }
  ::kill(pid_, SIGKILL);
  while (::waitpid(pid_, nullptr, 0) < 0 && errno == EINTR) {
  }
  reaped_ = true;
}

pid_t watched_process::pid() const {
  std::lock_guard lock{mu_};
  return pid_;
}

std::string watched_process::start() const {
  std::lock_guard lock{mu_};
  return start_;
}

bool watched_process::adopted() const {
  std::lock_guard lock{mu_};
  return adopted_;
}

} // namespace alephd

namespace alephd {

void cloexec_from(int first) noexcept {
#ifdef CLOSE_RANGE_CLOEXEC
  if (::close_range(static_cast<unsigned>(first), ~0u, CLOSE_RANGE_CLOEXEC) == 0)
    return;
#endif
  // Kernels before 5.11: one by one, up to the soft limit.
  rlimit rl{};
  auto last = ::getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY
                ? static_cast<int>(std::min<rlim_t>(rl.rlim_cur, 1u << 20))
                : 65536;
  for (int fd = first; fd < last; ++fd) {
    int flags = ::fcntl(fd, F_GETFD);
    if (flags >= 0 && !(flags & FD_CLOEXEC))
      ::fcntl(fd, F_SETFD, flags | FD_CLOEXEC);
  }
}

} // namespace alephd
