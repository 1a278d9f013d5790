// alephd-guest: the agent that runs as init inside a sandbox or microVM.
//
// It connects to the host over a stream socket (or, in a microVM, opens a
// virtio-serial port), says `ready`, receives one
// `configure`, writes the program and starts it, then forwards each
// `http_request` to the program on 127.0.0.1:app_port and sends the answer
// back. The program's stdout and stderr come back as `log` frames; its end as
// `halted`. Plain POSIX only, so that it links statically.

#include "guest/agent.hpp"
#include "guest/confine.hpp"
#include "runtime/guest_protocol.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

namespace {

namespace gp = alephd::guest;
namespace ag = alephd::guest::agent;
using namespace std::chrono_literals;
using clock_type = std::chrono::steady_clock;

constexpr const char* agent_version = "0.1.0";
constexpr std::size_t max_log_line = 64 * 1024;
constexpr int max_inflight = 256;
constexpr auto connect_window = 5s;
// A program that is not listening yet is asked again every `first_retry` for `eager_retries`
// after it first refused (most start within a few ms; a refused loopback connect costs a few
// µs), then less and less often, up to every 200 ms. The window is the program's, not each
// call's: calls arriving later while it still refuses back off at once.
constexpr std::chrono::microseconds first_retry{100};
constexpr auto eager_retries = 50ms;
constexpr auto response_timeout = 600s;
// Connections to the program kept open between requests (when its answers allow it), and for
// how long: below the idle timeouts of common servers (uvicorn 5 s, gunicorn 2 s), so that the
// program rarely closes one just as a request goes out on it; a program that states a shorter
// one (`Keep-Alive: timeout=N`) has its connections kept `idle_margin` less than that.
constexpr std::size_t max_idle_connections = 64;
constexpr std::chrono::milliseconds idle_connection_age{1500};
constexpr std::chrono::milliseconds idle_margin{500};
// A call on a new connection that has had no answer for this long while connections sit in the
// pool may be waiting for a program that serves one connection at a time, held by a pooled one
// (see check_stall()).
constexpr auto pool_stall = 50ms;
// A reused connection closed unanswered is the program's idle close racing the request only
// when it comes this soon after the request went out; later it is the program failing.
constexpr auto idle_close_race = 1s;
// How long `halt` waits for the program after SIGTERM before SIGKILL (--halt-grace).
std::chrono::seconds halt_grace = 5s;
// Room left in a frame for the status, headers and msgpack overhead.
constexpr std::size_t max_body = gp::max_frame_size - 2 * ag::max_head_size;

void say(const std::string& what) {
  std::string line = "alephd-guest: " + what + "\n";
  [[maybe_unused]] auto n = ::write(2, line.data(), line.size());
}

bool write_all(int fd, const char* data, std::size_t size) {
  while (size > 0) {
    auto n = ::send(fd, data, size, MSG_NOSIGNAL);
    if (n < 0 && errno == ENOTSOCK) // a virtio-serial port
      n = ::write(fd, data, size);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      return false;
    }
    data += n;
    size -= static_cast<std::size_t>(n);
  }
  return true;
}

// --- the agent's shared state ---------------------------------------------

struct agent_state {
  int host_fd = -1;
  std::mutex write_mu; // frames to the host must not interleave

  std::mutex mu;
  std::condition_variable cv;
  bool exited = false; // the program has been reaped
  int exit_code = 0;
  int logs_open = 0; // log pipes not yet at EOF

  std::atomic<pid_t> child{-1};
  std::atomic<bool> configured{false};
  std::atomic<bool> halting{false};
  std::atomic<bool> finishing{false}; // wait_program() is reporting the end
  std::string work_dir = "/tmp/alephd-guest";
  std::string keys_file; // where configure's authorized_keys go ("": dropped)
  std::string host_dir;  // the host's read-only directory, where the socket is ("": a VM)
  alephd::guest::confinement confine; // applied to the program between fork and exec
};

agent_state st;

void send_frame(const gp::frame& f) {
  std::string bytes;
  try {
    bytes = gp::encode(f);
  } catch (const std::exception& e) {
    say(std::string{"cannot encode frame: "} + e.what());
    return;
  }
  std::lock_guard guard{st.write_mu};
  if (st.host_fd < 0)
    return; // no host right now (waiting for a restarted CRN): the frame is dropped
  if (!write_all(st.host_fd, bytes.data(), bytes.size()))
    say("write to host failed: " + std::string{std::strerror(errno)});
}

// Whether we are a microVM's PID 1 (set in main): then our exit ends the VM at once (a kernel
// panic), and what its disks hold in the page cache is written first. Not in a sandbox, where
// we are PID 1 of a namespace only and sync(2) would flush the whole host.
bool vm_init = false;

void sync_if_init() {
  if (vm_init)
    ::sync();
}

void kill_program(int sig) {
  {
    // Once reaped, the pid may belong to someone else.
    std::lock_guard guard{st.mu};
    if (st.exited)
      return;
  }
  pid_t pid = st.child.load();
  if (pid > 0) {
    ::kill(-pid, sig); // its process group
    ::kill(pid, sig);
  }
}

[[noreturn]] void die(int code, const std::string& why) {
  // wait_program() owns the exit once it is reporting: let it finish.
  while (st.finishing)
    std::this_thread::sleep_for(1s);
  say(why);
  kill_program(SIGKILL);
  sync_if_init();
  ::_exit(code);
}

// --- program output ---------------------------------------------------------

void read_log(int fd, std::string stream) {
  std::string line;
  char buf[16 * 1024];
  for (;;) {
    auto n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      break;
    for (ssize_t i = 0; i < n; ++i) {
      if (buf[i] == '\n') {
        send_frame(gp::log{stream, std::move(line)});
        line.clear();
      } else {
        line.push_back(buf[i]);
        if (line.size() >= max_log_line) {
          send_frame(gp::log{stream, std::move(line)});
          line.clear();
        }
      }
    }
  }
  if (!line.empty())
    send_frame(gp::log{stream, std::move(line)});
  ::close(fd);
  std::lock_guard guard{st.mu};
  --st.logs_open;
  st.cv.notify_all();
}

// Reaps the program, reports it, and ends the agent.
void wait_program(pid_t pid) {
  int status = 0;
  for (;;) {
    // As PID 1 we also reap orphans the program leaves behind.
    pid_t r = ::waitpid(::getpid() == 1 ? -1 : pid, &status, 0);
    if (r < 0) {
      if (errno == EINTR)
        continue;
      status = 0;
      break;
    }
    if (r == pid)
      break;
  }
  int code = WIFEXITED(status)     ? WEXITSTATUS(status)
             : WIFSIGNALED(status) ? 128 + WTERMSIG(status)
                                   : -1;
  st.finishing = true;
  std::unique_lock lock{st.mu};
  st.exited = true;
  st.exit_code = code;
  st.cv.notify_all();
  // Let the last output arrive before `halted` (bounded: a grandchild may
  // keep the pipes open).
  st.cv.wait_for(lock, 1s, [] { return st.logs_open == 0; });
  lock.unlock();
  if (!st.halting) {
    std::string what = WIFSIGNALED(status)
                         ? "program killed by signal "
                             + std::to_string(WTERMSIG(status))
                         : "program exited with code " + std::to_string(code);
    send_frame(gp::log{"system", what});
  }
  sync_if_init();
  send_frame(gp::halted{code});
  ::_exit(0);
}

// `ready`, with what this agent can do: the code as a file needs the host's directory.
gp::ready hello(bool configured) {
  gp::ready r{agent_version, configured, {}};
  if (!st.host_dir.empty())
    r.features.push_back("code_file");
  return r;
}

// --- configure ----------------------------------------------------------------

bool safe_relative(const std::filesystem::path& p) {
  if (p.empty() || p.is_absolute())
    return false;
  for (const auto& part : p)
    if (part == ".." || part == ".")
      return false;
  return true;
}

// Starts the program; returns an error message or "" on success.
std::string start_program(const std::string& path, const std::string& dir,
                          const gp::configure& cfg) {
  std::vector<std::string> env;
  for (const auto& [k, v] : cfg.variables) {
    if (k.empty() || k.find('=') != std::string::npos
        || k.find('\0') != std::string::npos
        || v.find('\0') != std::string::npos)
      return "invalid environment variable name or value: " + k.substr(0, 64);
    env.push_back(k + "=" + v);
  }
  std::vector<char*> envp;
  for (auto& e : env)
    envp.push_back(e.data());
  envp.push_back(nullptr);
  std::string argv0 = path;
  char* argv[] = {argv0.data(), nullptr};

  int out[2];
  int err[2];
  int ex[2];
  if (::pipe2(out, O_CLOEXEC) != 0)
    return std::string{"pipe: "} + std::strerror(errno);
  if (::pipe2(err, O_CLOEXEC) != 0) {
    ::close(out[0]);
    ::close(out[1]);
    return std::string{"pipe: "} + std::strerror(errno);
  }
  if (::pipe2(ex, O_CLOEXEC) != 0) {
    for (int fd : {out[0], out[1], err[0], err[1]})
      ::close(fd);
    return std::string{"pipe: "} + std::strerror(errno);
  }
  pid_t agent_pid = ::getpid();
  pid_t pid = ::fork();
  if (pid < 0) {
    for (int fd : {out[0], out[1], err[0], err[1], ex[0], ex[1]})
      ::close(fd);
    return std::string{"fork: "} + std::strerror(errno);
  }
  if (pid == 0) {
    // Child: async-signal-safe calls only.
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    ::setpgid(0, 0);
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    ::signal(SIGPIPE, SIG_DFL);
    int null_fd = ::open("/dev/null", O_RDONLY);
    if (null_fd >= 0)
      ::dup2(null_fd, 0);
    ::dup2(out[1], 1);
    ::dup2(err[1], 2);
    int e = 0;
    if (::chdir(dir.c_str()) != 0)
      e = errno;
    else if ((e = alephd::guest::apply(st.confine)) == 0) {
      // A uid change clears the parent-death signal: set it again, and leave if the agent
      // died meanwhile.
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != agent_pid)
        ::_exit(127);
      ::execve(path.c_str(), argv, envp.data());
      e = errno;
    }
    [[maybe_unused]] auto n = ::write(ex[1], &e, sizeof e);
    ::_exit(127);
  }
  ::setpgid(pid, pid); // also done by the child; whoever runs first wins
  ::close(out[1]);
  ::close(err[1]);
  ::close(ex[1]);
  int e = 0;
  ssize_t n;
  do
    n = ::read(ex[0], &e, sizeof e);
  while (n < 0 && errno == EINTR);
  ::close(ex[0]);
  if (n == static_cast<ssize_t>(sizeof e)) {
    ::waitpid(pid, nullptr, 0);
    ::close(out[0]);
    ::close(err[0]);
    return "cannot execute " + cfg.entrypoint + ": " + std::strerror(e);
  }
  st.child = pid;
  {
    std::lock_guard guard{st.mu};
    st.logs_open = 2;
  }
  std::thread{read_log, out[0], "stdout"}.detach();
  std::thread{read_log, err[0], "stderr"}.detach();
  std::thread{wait_program, pid}.detach();
  return {};
}

// Writes the keys one per line, mode 0600 in a 0700 directory (sshd's rules).
std::string write_authorized_keys(const std::vector<std::string>& keys) {
  std::string text;
  for (const auto& k : keys) {
    // A line break would smuggle in a second entry (with options).
    if (k.find_first_of(std::string_view{"\r\n\0", 3}) != std::string::npos)
      return "authorized key with a line break or NUL";
    text.append(k).push_back('\n');
  }
  std::filesystem::path file{st.keys_file};
  std::error_code ec;
  std::filesystem::create_directories(file.parent_path(), ec);
  ::chmod(file.parent_path().c_str(), 0700);
  int fd = ::open(file.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW,
                  0600);
  if (fd < 0)
    return "cannot write " + st.keys_file + ": " + std::strerror(errno);
  bool ok = ::fchmod(fd, 0600) == 0 && write_all(fd, text.data(), text.size());
  ::close(fd);
  return ok ? "" : "cannot write " + st.keys_file;
}

// Writes the program's bytes to `file` (mode 0755).
std::string write_code(const std::string& code, const std::filesystem::path& file) {
  int fd = ::open(file.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0755);
  if (fd < 0)
    return "cannot write " + file.string() + ": " + std::strerror(errno);
  const char* p = code.data();
  std::size_t left = code.size();
  while (left > 0) {
    auto n = ::write(fd, p, left);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0) {
      int e = errno;
      ::close(fd);
      return "cannot write " + file.string() + ": " + std::strerror(e);
    }
    p += n;
    left -= static_cast<std::size_t>(n);
  }
  ::fchmod(fd, 0755);
  ::close(fd);
  return {};
}

// Copies the program from `source` to `file` (mode 0755) inside the kernel (sendfile).
std::string copy_code(int source, const std::filesystem::path& file) {
  struct stat sb{};
  if (::fstat(source, &sb) != 0 || !S_ISREG(sb.st_mode))
    return "code_file is not a regular file";
  if (sb.st_size == 0)
    return "code_file is empty";
  int fd = ::open(file.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0755);
  if (fd < 0)
    return "cannot write " + file.string() + ": " + std::strerror(errno);
  off_t off = 0;
  while (off < sb.st_size) {
    auto n = ::sendfile(fd, source, &off, static_cast<std::size_t>(sb.st_size - off));
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0) {
      int e = n < 0 ? errno : EIO; // 0: the file shrank under us
      ::close(fd);
      return "cannot copy the code to " + file.string() + ": " + std::strerror(e);
    }
  }
  ::fchmod(fd, 0755);
  ::close(fd);
  return {};
}

std::string do_configure(const gp::configure& cfg) {
  if (cfg.interface != "binary")
    return "interface '" + cfg.interface + "' not supported";
  if (cfg.encoding == "zip")
    return "zip archives are unpacked by the host (encoding 'mounted')";
  if (cfg.encoding != "plain" && cfg.encoding != "mounted")
    return "unknown encoding '" + cfg.encoding + "'";
  if (cfg.entrypoint.empty())
    return "missing entrypoint";
  std::filesystem::path rel{cfg.entrypoint};
  if (!safe_relative(rel))
    return "entrypoint must be a relative path without '..': "
           + cfg.entrypoint;
  if (cfg.encoding == "mounted") {
    // The host mounted the unpacked code read-only at /opt/code.
    if (cfg.app_port == 0)
      return "app_port must not be 0";
    if (!st.keys_file.empty() && !cfg.authorized_keys.empty())
      if (auto error = write_authorized_keys(cfg.authorized_keys); !error.empty())
        return error;
    auto file = std::filesystem::path{"/opt/code"} / rel;
    if (::access(file.c_str(), X_OK) != 0)
      return "entrypoint " + cfg.entrypoint + " is not an executable file in the code";
    return start_program(file.string(), "/opt/code", cfg);
  }
  // The code in a file of the host's directory (code_file), closed on every way out.
  struct fd_holder {
    int fd = -1;
    ~fd_holder() {
      if (fd >= 0)
        ::close(fd);
    }
  } source;
  if (!cfg.code_file.empty()) {
    if (!cfg.code.empty())
      return "code and code_file are both set";
    if (st.host_dir.empty())
      return "code_file needs a host directory (a sandbox)";
    if (cfg.code_file.find('/') != std::string::npos || cfg.code_file == "."
        || cfg.code_file == "..")
      return "code_file must be a file name: " + cfg.code_file.substr(0, 64);
    auto path = st.host_dir + "/" + cfg.code_file;
    source.fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (source.fd < 0)
      return "cannot open " + path + ": " + std::strerror(errno);
  } else if (cfg.code.empty()) {
    return "entrypoint file " + cfg.entrypoint + " is missing (empty code)";
  }
  if (cfg.app_port == 0)
    return "app_port must not be 0";
  if (!st.keys_file.empty() && !cfg.authorized_keys.empty())
    if (auto error = write_authorized_keys(cfg.authorized_keys); !error.empty())
      return error;
  std::filesystem::path dir = std::filesystem::path{st.work_dir} / "code";
  auto file = dir / rel;
  std::error_code ec;
  std::filesystem::create_directories(file.parent_path(), ec);
  if (ec)
    return "cannot create " + file.parent_path().string() + ": " + ec.message();
  // The program (another user when confined) may write next to its code, as programs do
  // (caches, sqlite files); the code file itself stays the agent's.
  ::chmod(dir.c_str(), 01777);
  auto error = source.fd >= 0 ? copy_code(source.fd, file) : write_code(cfg.code, file);
  if (!error.empty())
    return error;
  return start_program(file.string(), dir.string(), cfg);
}

// --- HTTP forwarding ----------------------------------------------------------

gp::http_response agent_error(uint64_t id, uint16_t status, std::string why) {
  gp::http_response r;
  r.id = id;
  r.status = status;
  r.headers = {{"Content-Type", "text/plain"}};
  r.body = why + "\n";
  r.error = std::move(why);
  return r;
}

bool program_exited() {
  std::lock_guard guard{st.mu};
  return st.exited;
}

uint16_t app_port = 8080;

// --- forwarding requests to the program -----------------------------------------
//
// One thread (the agent's main loop) forwards every request: each gets a non-blocking
// connection to the program on 127.0.0.1:app_port, driven by epoll together with the host's
// connection. No thread per request and no hand-off between threads: on a small VM the
// context switches cost more than the requests themselves. Concurrent requests overlap as
// far as the program lets them.
//
// A connection whose answer was complete and did not ask to close goes to a pool and carries a
// later request (HTTP/1.1 keep-alive): no TCP handshake, no accept in the program. A program may
// still close a pooled connection just as a request goes out on it; that request is sent again
// on a new connection when nothing came back and repeating it is safe: the program cannot have
// read it (nothing was sent), or its method is idempotent. Other methods (POST, PATCH, …) go out
// on pooled connections only once the program has answered on a reused one. Pooling stops for
// good when the program closes connections without saying so before a reuse has worked, and
// when it serves one connection at a time (it would never accept a new connection while a
// pooled one holds it; see check_stall()).

struct forward_call {
  gp::http_request req;
  std::string raw;          // the request bytes for the program
  std::size_t sent = 0;
  int fd = -1;
  bool reused = false; // on a pooled connection
  enum class phase { writing, reading, waiting } at = phase::writing;
  clock_type::time_point reading_since; // the request was out
  bool stall_probed = false;            // the pool was closed while it waited (check_stall())
  ag::response_parser parser;
  clock_type::time_point connect_deadline; // give up connecting (program not listening)
  clock_type::time_point deadline;         // give up waiting for the answer
  clock_type::time_point retry_at;         // waiting: when to connect again
  std::chrono::microseconds backoff = first_retry;

  forward_call(gp::http_request r, std::string bytes)
    : req(std::move(r)), raw(std::move(bytes)),
      parser(ag::iequals(req.method, "HEAD"), max_body) {
  }
};

class forwarder {
public:
  bool open() {
    ep_ = ::epoll_create1(EPOLL_CLOEXEC);
    return ep_ >= 0;
  }

  // Watches the host's connection (again, after a reconnect).
  void watch_host(int old_fd, int fd) {
    if (old_fd >= 0)
      ::epoll_ctl(ep_, EPOLL_CTL_DEL, old_fd, nullptr);
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = fd;
    ::epoll_ctl(ep_, EPOLL_CTL_ADD, fd, &ev);
    host_fd_ = fd;
  }

  // Starts forwarding `req` (answers at once on errors).
  void start(gp::http_request req) {
    if (calls_.size() + waiting_.size() >= static_cast<std::size_t>(max_inflight)) {
      send_frame(agent_error(req.id, 503, "too many requests in flight"));
      return;
    }
    auto raw = ag::build_request(req.method, req.path, req.query_string, req.headers, req.body,
                                 app_port);
    if (!raw) {
      send_frame(agent_error(req.id, 400, "invalid request"));
      return;
    }
    auto c = std::make_unique<forward_call>(std::move(req), std::move(*raw));
    auto now = clock_type::now();
    c->connect_deadline = now + connect_window;
    c->deadline = now + response_timeout;
    if (take_idle(*c)) {
      int fd = c->fd;
      progress(calls_.emplace(fd, std::move(c)).first);
      return;
    }
    connect(std::move(c));
  }

  // Waits for events (at most `max_wait`) and moves the calls on. Returns true when the host's
  // connection is readable.
  bool poll(std::chrono::milliseconds max_wait) {
    flush(); // answers made while the host's frames were handled
    auto now = clock_type::now();
    clock_type::duration wait = max_wait;
    for (auto& c : waiting_)
      wait = std::min(wait, std::max(c->retry_at - now, clock_type::duration::zero()));
    if (!idle_.empty() && !calls_.empty())
      wait = std::min<clock_type::duration>(wait, pool_stall / 2); // see check_stall()
    epoll_event events[64];
    int n = wait_events(events, 64, wait);
    bool host = false;
    for (int i = 0; i < n; ++i) {
      int fd = events[i].data.fd;
      if (fd == host_fd_) {
        host = true;
        continue;
      }
      if (auto it = calls_.find(fd); it != calls_.end())
        progress(it);
      else if (events[i].events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
        idle_closed(fd); // the program closed (or wrote on) an idle connection
    }
    retry_due();
    check_stall();
    expire();
    flush();
    return host;
  }

private:
  using call_map = std::map<int, std::unique_ptr<forward_call>>;

  struct idle_connection {
    int fd;
    clock_type::time_point since;
    clock_type::duration max_age;
  };

  static bool idempotent(const std::string& method) {
    for (auto m : {"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
      if (method == m)
        return true;
    return false;
  }

  // A pooled connection for `c`, newest first; false if none may be used.
  bool take_idle(forward_call& c) {
    if (!reuse_proven_ && !idempotent(c.req.method))
      return false;
    auto now = clock_type::now();
    while (!idle_.empty()) {
      auto conn = idle_.back();
      idle_.pop_back();
      // Too old (and closed: older ones are closed in this loop as well, or by expire_idle()),
      // or closed or written on by the program since (its event may not have been handled).
      if (now - conn.since > conn.max_age || !quiet(conn.fd, conn.since)) {
        ::close(conn.fd);
        continue;
      }
      c.fd = conn.fd;
      c.reused = true;
      c.at = forward_call::phase::writing;
      return true;
    }
    return false;
  }

  void idle_closed(int fd) {
    auto it = std::find_if(idle_.begin(), idle_.end(), [fd](auto& i) { return i.fd == fd; });
    if (it == idle_.end())
      return;
    auto since = it->since;
    ::close(fd);
    idle_.erase(it);
    closed_unannounced(since);
  }

  // The program closed a connection it had answered on without `Connection: close`, `since`
  // then. Soon after, before any reuse worked: a program that ends every connection that way,
  // which pooling only costs more wake-ups.
  void closed_unannounced(clock_type::time_point since) {
    if (!reuse_proven_ && clock_type::now() - since < 1s)
      stop_pooling();
  }

  void stop_pooling() {
    pooling_ = false;
    for (auto& i : idle_)
      ::close(i.fd);
    idle_.clear();
  }

  // Nothing to read on `fd`: no stray bytes, and the program has not closed it (a program
  // that closes every connection without saying so is mostly noticed here). `since`: when its
  // last answer came.
  bool quiet(int fd, clock_type::time_point since) {
    char byte;
    auto n = ::recv(fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
      return true;
    if (n == 0)
      closed_unannounced(since);
    return false;
  }

  // A call on a new connection without an answer while connections have sat in the pool for
  // `pool_stall`: the program may serve one connection at a time and be waiting on a pooled
  // one. The pooled connections are closed, which frees such a program; if the call is then
  // answered at once, that is what it was, and pooling stops. A program that is merely slow
  // only loses its pooled connections, once per slow call.
  void check_stall() {
    if (idle_.empty())
      return;
    auto now = clock_type::now();
    if (now - idle_.front().since < pool_stall) // the oldest idle connection
      return;
    bool stalled = false;
    for (auto& [fd, c] : calls_)
      if (!c->reused && !c->stall_probed && c->at == forward_call::phase::reading
          && c->parser.received() == 0 && now - c->reading_since >= pool_stall) {
        c->stall_probed = true;
        stalled = true;
      }
    if (!stalled)
      return;
    for (auto& i : idle_)
      ::close(i.fd);
    idle_.clear();
    pool_closed_at_ = now;
  }

  void expire_idle(clock_type::time_point now) {
    std::erase_if(idle_, [now](const idle_connection& i) {
      if (now - i.since <= i.max_age)
        return false;
      ::close(i.fd);
      return true;
    });
  }

  // The program closed a reused connection before answering: sends the request again on a new
  // connection when that is safe (see above). `unread`: no byte of it went out.
  bool retry_fresh(call_map::iterator it, bool unread) {
    auto& c = *it->second;
    if (!c.reused || c.parser.received() != 0 || !(unread || idempotent(c.req.method)))
      return false;
    if (c.at == forward_call::phase::reading && clock_type::now() - c.reading_since > idle_close_race)
      return false; // it was read and worked on, then the program failed: not sent twice
    auto node = calls_.extract(it);
    auto call = std::move(node.mapped());
    ::close(call->fd);
    call->fd = -1;
    call->reused = false;
    call->sent = 0;
    call->parser = ag::response_parser{ag::iequals(call->req.method, "HEAD"), max_body};
    if (!reuse_proven_)
      stop_pooling();
    connect(std::move(call));
    return true;
  }

  // epoll_wait to the microsecond (a retry 100 µs away must neither spin nor wait 1 ms);
  // kernels before 5.11 have no epoll_pwait2: the wait is rounded up to milliseconds there.
  int wait_events(epoll_event* events, int max, clock_type::duration wait) {
    if (have_pwait2_) {
      auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(wait).count();
      timespec ts{static_cast<time_t>(ns / 1'000'000'000), static_cast<long>(ns % 1'000'000'000)};
      int n = ::epoll_pwait2(ep_, events, max, &ts, nullptr);
      if (n >= 0 || errno == EINTR)
        return n;
      // ENOSYS, or EPERM from a seccomp filter that does not know it: epoll_wait from now on.
      have_pwait2_ = false;
    }
    auto ms = std::chrono::ceil<std::chrono::milliseconds>(wait).count();
    return ::epoll_wait(ep_, events, max, static_cast<int>(ms));
  }

  // `keep`: the connection may carry another request, for `max_age` at most.
  void finish(std::unique_ptr<forward_call> c, gp::http_response resp, bool keep = false,
              clock_type::duration max_age = idle_connection_age) {
    if (c->fd >= 0) {
      if (keep && pooling_ && idle_.size() < max_idle_connections && max_age > max_age.zero()) {
        idle_.push_back({c->fd, clock_type::now(), max_age}); // stays in the epoll set, to see a close
      } else
        ::close(c->fd); // which also takes it out of the epoll set
      c->fd = -1;
    }
    resp.id = c->req.id;
    // Answers of one round go to the host in one write (fewer wake-ups on both sides).
    try {
      out_ += gp::encode(resp);
    } catch (const std::exception& e) {
      out_ += gp::encode(agent_error(resp.id, 502, std::string{"cannot encode the answer: "} + e.what()));
    }
  }

  void flush() {
    if (out_.empty())
      return;
    {
      std::lock_guard guard{st.write_mu};
      if (st.host_fd >= 0 && !write_all(st.host_fd, out_.data(), out_.size()))
        say("write to host failed: " + std::string{std::strerror(errno)});
    }
    out_.clear();
    if (out_.capacity() > (1u << 20))
      out_.shrink_to_fit();
  }

  void fail(std::unique_ptr<forward_call> c, uint16_t status, const std::string& why) {
    auto id = c->req.id;
    finish(std::move(c), agent_error(id, status, why));
  }

  // Connects (again); a refused connect waits and retries while the program may still be
  // starting: fast at first (a refused loopback connect costs microseconds), then backing off.
  void connect(std::unique_ptr<forward_call> c) {
    c->fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (c->fd < 0) {
      fail(std::move(c), 503, "socket: " + std::string{std::strerror(errno)});
      return;
    }
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(app_port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int r = ::connect(c->fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
    if (r != 0 && errno != EINPROGRESS) {
      refused(std::move(c));
      return;
    }
    refusing_since_ = {}; // it listens (a refusal on loopback is immediate)
    // On loopback the handshake is usually done when connect() returns, even with
    // EINPROGRESS: write at once; a send that cannot go yet waits for EPOLLOUT.
    c->at = forward_call::phase::writing;
    // Edge-triggered for both directions: one epoll_ctl per call (close() removes it); each
    // event is followed by reading or writing until EAGAIN.
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLOUT | EPOLLET;
    ev.data.fd = c->fd;
    ::epoll_ctl(ep_, EPOLL_CTL_ADD, c->fd, &ev);
    int fd = c->fd;
    progress(calls_.emplace(fd, std::move(c)).first);
  }

  void refused(std::unique_ptr<forward_call> c) {
    ::close(c->fd);
    c->fd = -1;
    if (program_exited()) {
      fail(std::move(c), 502, "program exited");
      return;
    }
    auto now = clock_type::now();
    if (now + c->backoff > c->connect_deadline) {
      fail(std::move(c), 503, "program is not listening on port " + std::to_string(app_port));
      return;
    }
    if (refusing_since_ == clock_type::time_point{})
      refusing_since_ = now;
    c->at = forward_call::phase::waiting;
    c->retry_at = now + c->backoff;
    if (now - refusing_since_ >= eager_retries)
      c->backoff = std::min<std::chrono::microseconds>(c->backoff * 2, 200ms);
    waiting_.push_back(std::move(c));
  }

  void retry_due() {
    if (waiting_.empty())
      return;
    auto now = clock_type::now();
    std::vector<std::unique_ptr<forward_call>> due;
    for (auto i = waiting_.begin(); i != waiting_.end();) {
      if ((*i)->retry_at <= now) {
        due.push_back(std::move(*i));
        i = waiting_.erase(i);
      } else {
        ++i;
      }
    }
    for (auto& c : due)
      connect(std::move(c));
  }

  // Answers 504 to calls past their deadline (checked at most every 100 ms).
  void expire() {
    auto now = clock_type::now();
    if (now < next_expiry_)
      return;
    next_expiry_ = now + 100ms;
    expire_idle(now);
    std::vector<int> late;
    for (auto& [fd, c] : calls_)
      if (c->deadline <= now)
        late.push_back(fd);
    for (int fd : late) {
      auto node = calls_.extract(fd);
      fail(std::move(node.mapped()), 504, "program did not answer in time");
    }
  }

  void progress(call_map::iterator it) {
    auto& c = *it->second;
    auto take = [&] {
      auto node = calls_.extract(it);
      return std::move(node.mapped());
    };
    if (c.at == forward_call::phase::writing) {
      while (c.sent < c.raw.size()) {
        auto n = ::send(c.fd, c.raw.data() + c.sent, c.raw.size() - c.sent, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
          continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
          return; // EPOLLOUT again
        if (n <= 0 && retry_fresh(it, c.sent == 0))
          return;
        if (n < 0 && c.sent == 0
            && (errno == ECONNREFUSED || errno == ENOTCONN || errno == ECONNRESET)) {
          refused(take()); // the connect failed: the program is not listening (yet)
          return;
        }
        if (n <= 0) {
          fail(take(), 502, "program closed the connection");
          return;
        }
        c.sent += static_cast<std::size_t>(n);
      }
      c.at = forward_call::phase::reading;
      c.reading_since = clock_type::now();
      // The answer is often there already on loopback: fall through and try.
    }
    char buf[64 * 1024];
    for (;;) {
      auto n = ::read(c.fd, buf, sizeof buf);
      if (n < 0 && errno == EINTR)
        continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        return;
      if (n > 0 && c.stall_probed && c.parser.received() == 0
          && clock_type::now() - pool_closed_at_ < pool_stall)
        stop_pooling(); // answered as soon as the pool was closed: one connection at a time
      auto s = n > 0 ? c.parser.feed({buf, static_cast<std::size_t>(n)}) : c.parser.eof();
      if (n < 0)
        s = ag::response_parser::state::error;
      if (s == ag::response_parser::state::done) {
        gp::http_response r;
        r.status = static_cast<uint16_t>(c.parser.status());
        r.headers = c.parser.headers();
        r.body = std::move(c.parser.body());
        if (c.reused)
          reuse_proven_ = true;
        // Not after HEAD: a program may send a body anyway, after the head.
        bool keep = pooling_ && c.parser.keep_alive() && !ag::iequals(c.req.method, "HEAD")
                    && quiet(c.fd, clock_type::now());
        clock_type::duration max_age = idle_connection_age;
        if (auto t = c.parser.keep_alive_timeout())
          max_age = std::min<clock_type::duration>(max_age, std::chrono::seconds{*t} - idle_margin);
        finish(take(), std::move(r), keep, max_age);
        return;
      }
      if (s == ag::response_parser::state::error) {
        if (n <= 0 && retry_fresh(it, false))
          return;
        auto why = n < 0 ? std::string{"read failed: "} + std::strerror(errno)
                         : "bad response from program: " + c.parser.error();
        fail(take(), 502, why);
        return;
      }
      if (n == 0)
        return; // eof() decided above; not reached
    }
  }

  int ep_ = -1;
  int host_fd_ = -1;
  bool have_pwait2_ = true;
  clock_type::time_point refusing_since_{}; // the program refused since then (epoch: it listens)
  call_map calls_;
  std::vector<std::unique_ptr<forward_call>> waiting_;
  clock_type::time_point next_expiry_{};
  std::string out_; // encoded answers not yet written to the host
  std::vector<idle_connection> idle_; // pooled connections to the program, oldest first
  bool pooling_ = true;               // false once the program closes what it could keep
  clock_type::time_point pool_closed_at_{}; // check_stall() closed the pool then
  bool reuse_proven_ = false;         // a reused connection carried an answer
};

forwarder fwd;

void do_halt() {
  if (st.halting.exchange(true))
    return;
  if (st.child.load() <= 0) {
    sync_if_init();
    send_frame(gp::halted{0});
    ::_exit(0);
  }
  kill_program(SIGTERM);
  std::unique_lock lock{st.mu};
  if (st.cv.wait_for(lock, halt_grace, [] { return st.exited; }))
    return; // wait_program() reports and exits
  lock.unlock();
  kill_program(SIGKILL);
  // wait_program() reports and exits; this is only a safety net.
  std::this_thread::sleep_for(5s);
  while (st.finishing)
    std::this_thread::sleep_for(1s);
  sync_if_init();
  send_frame(gp::halted{128 + SIGKILL});
  ::_exit(0);
}

void dispatch(gp::frame f) {
  if (auto* cfg = std::get_if<gp::configure>(&f)) {
    if (st.configured) {
      send_frame(gp::configure_result{false, "already configured"});
      return;
    }
    app_port = cfg->app_port;
    auto error = do_configure(*cfg);
    if (error.empty())
      st.configured = true;
    else
      say("configure failed: " + error);
    send_frame(gp::configure_result{error.empty(), error});
    return;
  }
  if (auto* req = std::get_if<gp::http_request>(&f)) {
    if (!st.configured) {
      send_frame(agent_error(req->id, 503, "not configured"));
      return;
    }
    fwd.start(std::move(*req));
    return;
  }
  if (auto* ev = std::get_if<gp::event>(&f)) {
    // A message for a message-triggered program: POSTed to it as /aleph/event; the answer goes
    // back with id 0 (an event has no caller waiting for it).
    if (!st.configured) {
      send_frame(agent_error(0, 503, "not configured"));
      return;
    }
    gp::http_request req;
    req.id = 0;
    req.method = "POST";
    req.path = "/aleph/event";
    req.headers = {{"Content-Type", "application/json"}};
    req.body = std::move(ev->body);
    fwd.start(std::move(req));
    return;
  }
  if (std::holds_alternative<gp::halt>(f)) {
    do_halt();
    return;
  }
  if (std::holds_alternative<gp::ready>(f)) {
    // A host that took over (a restarted CRN) asks who we are: a VM's agent may not have
    // noticed that its port changed hands.
    send_frame(hello(st.configured));
    return;
  }
  say("ignoring unexpected frame '" + std::string{gp::type_name(f)} + "'");
}

int usage() {
  say("usage: alephd-guest (--socket PATH | --device PATH) [--reconnect-window SECONDS] "
      "[--halt-grace SECONDS] [--work-dir DIR] [--authorized-keys FILE] [--run-as UID:GID] "
      "[--seccomp]");
  return 64;
}

// A virtio-serial port has no connection of its own: read() returns 0 while
// no host is attached to QEMU's end of it (and poll() reports POLLHUP), and
// writes block until one is. Waits for a host (again), polling gently.
// False when `window` (if not zero) passed first.
bool wait_for_host(int fd, std::chrono::seconds window) {
  auto until = clock_type::now() + window;
  for (;;) {
    pollfd pfd{fd, POLLIN, 0};
    if (::poll(&pfd, 1, 0) == 1 && (pfd.revents & POLLHUP) == 0)
      return true;
    if (window.count() > 0 && clock_type::now() >= until)
      return false;
    std::this_thread::sleep_for(20ms);
  }
}

// A connected socket to the host, or -1 with errno set.
int dial(const std::string& socket_path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (socket_path.size() >= sizeof addr.sun_path) {
    errno = ENAMETOOLONG;
    return -1;
  }
  std::memcpy(addr.sun_path, socket_path.data(), socket_path.size());
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return -1;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    auto e = errno;
    ::close(fd);
    errno = e;
    return -1;
  }
  return fd;
}

bool connect_socket(const std::string& socket_path) {
  st.host_fd = dial(socket_path);
  if (st.host_fd < 0) {
    say("cannot connect to " + socket_path + ": " + std::strerror(errno));
    return false;
  }
  return true;
}

// The CRN went away while the program runs: the program keeps running, and
// the agent waits up to `window` for a CRN (a restarted one) to listen on the
// socket again, then says `ready` as an agent that is already configured.
// False when nobody came back in time.
bool reconnect(const std::string& socket_path, std::chrono::seconds window) {
  {
    std::lock_guard guard{st.write_mu};
    ::close(st.host_fd);
    st.host_fd = -1;
  }
  say("host connection lost; waiting up to " + std::to_string(window.count())
      + " s for it to come back");
  auto until = clock_type::now() + window;
  while (clock_type::now() < until) {
    if (st.halting)
      return false;
    int fd = dial(socket_path);
    if (fd >= 0) {
      {
        std::lock_guard guard{st.write_mu};
        st.host_fd = fd;
      }
      send_frame(hello(true));
      return true;
    }
    std::this_thread::sleep_for(100ms);
  }
  return false;
}

} // namespace

int main(int argc, char** argv) {
  std::string socket_path;
  std::string device_path;
  std::chrono::seconds reconnect_window{0};
  bool seccomp = false;
  for (int i = 1; i < argc; ++i) {
    std::string_view a{argv[i]};
    if (a == "--socket" && i + 1 < argc)
      socket_path = argv[++i];
    else if (a == "--reconnect-window" && i + 1 < argc)
      reconnect_window = std::chrono::seconds{std::strtoul(argv[++i], nullptr, 10)};
    else if (a == "--halt-grace" && i + 1 < argc) {
      char* end = nullptr;
      auto v = std::strtoul(argv[++i], &end, 10);
      if (end == argv[i] || *end != '\0' || v == 0 || v > 3600)
        return usage();
      halt_grace = std::chrono::seconds{v};
    } else if (a == "--device" && i + 1 < argc)
      device_path = argv[++i];
    else if (a == "--work-dir" && i + 1 < argc)
      st.work_dir = argv[++i];
    else if (a == "--authorized-keys" && i + 1 < argc)
      st.keys_file = argv[++i];
    else if (a == "--run-as" && i + 1 < argc) {
      unsigned long uid = 0, gid = 0;
      char* end = nullptr;
      std::string v = argv[++i];
      uid = std::strtoul(v.c_str(), &end, 10);
      if (end == v.c_str() || *end != ':')
        return usage();
      auto* g = end + 1;
      gid = std::strtoul(g, &end, 10);
      if (end == g || *end != '\0' || uid == 0 || gid == 0 || uid > 0xfffffffeul || gid > 0xfffffffeul)
        return usage();
      st.confine.drop_user = true;
      st.confine.uid = static_cast<uid_t>(uid);
      st.confine.gid = static_cast<gid_t>(gid);
    } else if (a == "--seccomp") {
      seccomp = true;
    } else
      return usage();
  }
  if (socket_path.empty() == device_path.empty())
    return usage();
  vm_init = !device_path.empty() && ::getpid() == 1;
  if (!socket_path.empty())
    st.host_dir = std::filesystem::path{socket_path}.parent_path().string();
  // As init we may start without stdin/stdout/stderr; keep 0-2 taken so that
  // pipes never land there.
  for (;;) {
    int fd = ::open("/dev/null", O_RDWR);
    if (fd < 0 || fd > 2) {
      if (fd > 2)
        ::close(fd);
      break;
    }
  }
  ::signal(SIGPIPE, SIG_IGN);

  if (!device_path.empty()) {
    st.host_fd = ::open(device_path.c_str(), O_RDWR | O_CLOEXEC | O_NOCTTY);
    if (st.host_fd < 0) {
      say("cannot open " + device_path + ": " + std::strerror(errno));
      return 1;
    }
  } else if (!connect_socket(socket_path))
    return 1;
  if (!fwd.open()) {
    say("epoll: " + std::string{std::strerror(errno)});
    return 1;
  }
  fwd.watch_host(-1, st.host_fd);
  send_frame(hello(false));
  if (seccomp) {
    // Built while the host gets `configure` ready, not before `ready`: off the cold start's path.
    std::string err;
    st.confine.filter = alephd::guest::compile_filter(err);
    if (st.confine.filter.empty()) { // never run a program unconfined
      send_frame(gp::log{"system", "cannot build the seccomp filter: " + err});
      die(70, "cannot build the seccomp filter: " + err);
    }
  }

  gp::decoder dec;
  std::vector<char> buf(64 * 1024);
  for (;;) {
    // Requests in flight move on; the host's frames are read once they are there.
    if (!fwd.poll(1000ms))
      continue;
    auto n = ::read(st.host_fd, buf.data(), buf.size());
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0 && device_path.empty() && reconnect_window.count() > 0 && st.configured
        && !st.halting) {
      if (!reconnect(socket_path, reconnect_window))
        die(1, "the host did not come back within " + std::to_string(reconnect_window.count())
                 + " s");
      fwd.watch_host(-1, st.host_fd);
      dec = gp::decoder{};
      continue;
    }
    if (n < 0)
      die(1, "read from host failed: " + std::string{std::strerror(errno)});
    if (n == 0 && device_path.empty())
      die(1, "host closed the connection");
    if (n == 0) {
      // The host left or is not there yet. Start afresh with the next one:
      // drop a partial frame, and say `ready` again (the host that left may
      // have been the only one to hear it), saying whether a program runs.
      // A program that runs waits at most the reconnect window (when set) for a restarted CRN;
      // before configure the host is only not there yet.
      if (!wait_for_host(st.host_fd, st.configured ? reconnect_window : std::chrono::seconds{0}))
        die(1, "the host did not come back within " + std::to_string(reconnect_window.count())
                 + " s");
      dec = gp::decoder{};
      send_frame(hello(st.configured));
      continue;
    }
    dec.feed(buf.data(), static_cast<std::size_t>(n));
    std::string error;
    while (auto f = dec.next(error))
      dispatch(std::move(*f));
    if (!error.empty())
      die(2, "bad frame from host: " + error);
  }
}
