#include "sim/process.hpp"

#include <csignal>
#include <cstring>
#include <fstream>
#include <sstream>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

namespace alephd::sim {

process::process(const std::string& binary, std::vector<std::string> args, std::string log_path)
  : log_path_(std::move(log_path)) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0)
    return;
  // Everything the child needs is made before fork(): after it, only async-signal-safe calls.
  std::vector<char*> argv;
  std::string bin = binary;
  argv.push_back(bin.data());
  for (auto& a : args)
    argv.push_back(a.data());
  argv.push_back(nullptr);
  auto parent = ::getpid();
  pid_ = ::fork();
  if (pid_ == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent)
      ::_exit(127); // the parent died before the line above

    ::dup2(fds[1], STDOUT_FILENO);
    int log = ::open(log_path_.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (log >= 0)
      ::dup2(log, STDERR_FILENO);
    int devnull = ::open("/dev/null", O_RDONLY);
    if (devnull >= 0)
      ::dup2(devnull, STDIN_FILENO);
    // Nothing of the parent's (a simulator's proxies) goes along.
    if (::close_range(3, ~0u, 0) != 0)
      for (int fd = 3; fd < 4096; ++fd)
        ::close(fd);
    ::execv(bin.c_str(), argv.data());
    ::_exit(127);
  }
  ::close(fds[1]);
  out_fd_ = fds[0];
}

process::~process() {
  kill9();
  if (out_fd_ >= 0)
    ::close(out_fd_);
}

bool process::wait_ready(std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  size_t scanned = 0;
  for (;;) {
    auto nl = out_.find('\n', scanned);
    while (nl != std::string::npos) {
      auto line = out_.substr(scanned, nl - scanned);
      scanned = nl + 1;
      if (line.rfind("READY", 0) == 0) {
        std::istringstream in{line.substr(5)};
        std::string kv;
        while (in >> kv)
          if (auto eq = kv.find('='); eq != std::string::npos)
            ready[kv.substr(0, eq)] = kv.substr(eq + 1);
        return true;
      }
      nl = out_.find('\n', scanned);
    }
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0 || out_fd_ < 0)
      return false;
    pollfd p{out_fd_, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left.count())) <= 0)
      return false;
    char buf[4096];
    auto n = ::read(out_fd_, buf, sizeof buf);
    if (n <= 0)
      return false;
    out_.append(buf, static_cast<size_t>(n));
  }
}

uint16_t process::port(const std::string& key) const {
  auto i = ready.find(key);
  if (i == ready.end())
    return 0;
  auto colon = i->second.rfind(':');
  return static_cast<uint16_t>(std::stoul(i->second.substr(colon + 1)));
}

void process::signal(int sig) {
  if (pid_ > 0)
    ::kill(pid_, sig);
}

int process::wait_exit(std::chrono::milliseconds timeout) {
  if (pid_ <= 0)
    return -1;
  auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    int status = 0;
    auto r = ::waitpid(pid_, &status, WNOHANG);
    if (r == pid_) {
      pid_ = -1;
      if (WIFEXITED(status))
        return WEXITSTATUS(status);
      return 128 + WTERMSIG(status);
    }
    if (std::chrono::steady_clock::now() > deadline)
      return -1;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

void process::kill9() {
  if (pid_ <= 0)
    return;
  ::kill(pid_, SIGCONT); // a stopped process must be able to die
  ::kill(pid_, SIGKILL);
  ::waitpid(pid_, nullptr, 0);
  pid_ = -1;
}

std::string process::log() const {
  return log_tail(log_path_);
}

std::string log_tail(const std::string& path) {
  std::ifstream in{path};
  std::stringstream ss;
  ss << in.rdbuf();
  auto s = ss.str();
  return s.size() > 6000 ? "…" + s.substr(s.size() - 6000) : s;
}

bool port_free(uint16_t port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return false;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
  ::close(fd);
  return ok;
}

} // namespace alephd::sim
