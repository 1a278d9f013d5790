#include "runtime/sandbox.hpp"

#include "runtime/guest_link.hpp"
#include "runtime/namespace_pool.hpp"
#include "runtime/process_state.hpp"

// Boost.Process offers vfork only where POSIX still specifies it (before 2008); glibc has it.
#ifndef BOOST_POSIX_HAS_VFORK
#define BOOST_POSIX_HAS_VFORK 1
#endif
#include <boost/process.hpp>
#include <boost/process/extend.hpp>
#include <boost/process/posix.hpp>

#include <fcntl.h>
#include <spawn.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <linux/magic.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <sys/sysmacros.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <sstream>
#include <stdexcept>
#include <thread>
#include <utility>

namespace alephd {

namespace bp = boost::process;
using namespace std::chrono_literals;
using clock_type = std::chrono::steady_clock;

namespace {

constexpr const char* program_file = "program"; // a plain program on its way to the guest
constexpr const char* scratch_owner_file = ".owner"; // in a scratch group: whose it is
constexpr auto destructor_grace = 2s;
constexpr auto accept_slice = 50ms;
constexpr auto namespace_exit_timeout = 2s;

// The owner files this process holds (claim_scratch_group), by group.
std::mutex& claims_mu() {
  static std::mutex mu;
  return mu;
}
std::map<std::string, int>& claims() {
  static std::map<std::string, int> held;
  return held;
}

// Blocks every signal in this thread until restore() or the end of the scope.
struct signals_blocked {
  sigset_t old;
  bool blocked = true;
  signals_blocked() {
    sigset_t all;
    sigfillset(&all);
    ::pthread_sigmask(SIG_BLOCK, &all, &old);
  }
  void restore() {
    if (std::exchange(blocked, false))
      ::pthread_sigmask(SIG_SETMASK, &old, nullptr);
  }
  ~signals_blocked() { restore(); }
  signals_blocked(const signals_blocked&) = delete;
  signals_blocked& operator=(const signals_blocked&) = delete;
};

// The parents of the mount points in bwrap `mounts` that bwrap would create, shallowest first;
// not those under what the base layout already has (/usr, /tmp, /proc, /dev and the symlinks).
std::vector<std::string> parent_dirs(const std::vector<std::string>& mounts) {
  static const std::set<std::string> present{"/usr", "/tmp", "/proc", "/dev", "/lib", "/lib64",
                                             "/bin", "/sbin"};
  std::set<std::string> dirs;
  for (size_t i = 0; i < mounts.size(); ++i) {
    const auto& a = mounts[i];
    size_t dest = 0;
    bool bind = a == "--bind" || a == "--ro-bind" || a == "--dev-bind" || a == "--ro-bind-try";
    if (bind && i + 2 < mounts.size())
      dest = i + 2;
    else if ((a == "--tmpfs" || a == "--dir") && i + 1 < mounts.size())
      dest = i + 1;
    else
      continue;
    std::filesystem::path p{mounts[dest]};
    for (auto parent = p.parent_path(); parent.has_relative_path(); parent = parent.parent_path()) {
      auto top = "/" + parent.relative_path().begin()->string();
      if (present.count(top) == 0)
        dirs.insert(parent.lexically_normal().string());
    }
    i = dest;
  }
  std::vector<std::string> out{dirs.begin(), dirs.end()};
  std::stable_sort(out.begin(), out.end(), [](const std::string& a, const std::string& b) {
    return std::count(a.begin(), a.end(), '/') < std::count(b.begin(), b.end(), '/');
  });
  return out;
}

bool on_tmpfs(const std::string& path) {
  struct statfs fs {};
  return ::statfs(path.c_str(), &fs) == 0 && fs.f_type == TMPFS_MAGIC;
}

// Root's own tmpfs for scratch dirs at `dir` (under a /run only root may write), mounted by the
// first process that wants it and kept for the next ones (until the host restarts): unlike the
// /dev/shm and /run systemd mounts, it allows device nodes (a sandbox's own /dev, see
// make_dev_dir). "" when it cannot be had.
std::string own_tmpfs(const std::string& dir) {
  auto parent = std::filesystem::path{dir}.parent_path().string();
  struct stat ps {};
  if (::stat(parent.c_str(), &ps) != 0 || ps.st_uid != 0 || (ps.st_mode & 022) != 0)
    return {};
  // One process mounts it: two mounts on one directory would hide the first one's files.
  int lock = ::open((dir + ".lock").c_str(), O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (lock < 0)
    return {};
  std::string out;
  if (::flock(lock, LOCK_EX) == 0 && (::mkdir(dir.c_str(), 0700) == 0 || errno == EEXIST)) {
    struct stat st {};
    bool is_dir = ::lstat(dir.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
    bool mounted = is_dir && st.st_dev != ps.st_dev;
    if (is_dir && !mounted)
      // Not noexec: a sandbox's /dev is bound from here, with these flags (a program may map
      // /dev/zero executable, as it may bwrap's).
      mounted = ::mount("alephd-sandboxes", dir.c_str(), "tmpfs", MS_NOSUID, "mode=0700") == 0;
    if (mounted && on_tmpfs(dir) && ::lstat(dir.c_str(), &st) == 0 && st.st_uid == 0
        && (st.st_mode & 077) == 0)
      out = dir;
  }
  ::close(lock);
  return out;
}

// Where the scratch directories of this process's sandboxes go (see
// sandbox_options::scratch_on_tmpfs), made once; "" when no tmpfs is to be had. A directory of
// our own (0700, ours, no symlink), as /dev/shm is everyone's.
const std::string& scratch_root_dir() {
  static const std::string root = [] {
    auto uid = ::geteuid();
    if (uid == 0)
      if (auto own = own_tmpfs("/run/alephd-sandboxes"); !own.empty())
        return own;
    // Else /dev/shm: sticky (nobody can swap our directory there for another). Root never takes
    // a directory its environment names ($XDG_RUNTIME_DIR under sudo -E is a user's).
    std::vector<std::string> candidates{"/dev/shm/alephd-sandboxes-" + std::to_string(uid)};
    if (const char* x = std::getenv("XDG_RUNTIME_DIR"); uid != 0 && x != nullptr && x[0] == '/')
      candidates.push_back(std::string{x} + "/alephd-sandboxes");
    for (auto& c : candidates) {
      auto parent = std::filesystem::path{c}.parent_path().string();
      struct stat ps {};
      if (!on_tmpfs(parent) || ::stat(parent.c_str(), &ps) != 0
          || ((ps.st_mode & S_ISVTX) == 0 && (ps.st_uid != uid || (ps.st_mode & 022) != 0)))
        continue;
      if (::mkdir(c.c_str(), 0700) != 0 && errno != EEXIST)
        continue;
      struct stat st {};
      if (::lstat(c.c_str(), &st) == 0 && S_ISDIR(st.st_mode) && st.st_uid == uid
          && (st.st_mode & 077) == 0)
        return c;
    }
    return std::string{};
  }();
  return root;
}

// Whether `path` has the shape of a scratch dir of ours (root/XXXXXX or root/group/XXXXXX):
// what a record names is removed only then.
bool is_scratch_dir(const std::string& path, const std::string& root) {
  auto p = std::filesystem::path{path}.lexically_normal();
  auto name = p.filename().string();
  auto parent = p.parent_path();
  return !root.empty() && name.size() == 6 && name[0] != '.'
         && (parent == root || parent.parent_path() == root);
}

// Removes `path` (a dir or a file) and what is in it; whether anything went.
bool remove_tree(const std::filesystem::path& path) {
  std::error_code ec;
  auto n = std::filesystem::remove_all(path, ec);
  return !ec && n > 0;
}

// The directory of `group`'s scratch dirs under the scratch root ("" without a root): one per
// CRN, where it finds the leftovers of its earlier runs. A group that is not one plain name
// is the root itself.
std::string scratch_group_dir(const std::string& group) {
  const auto& root = scratch_root_dir();
  if (root.empty() || group.empty() || group == "." || group == ".."
      || group.find('/') != std::string::npos)
    return root;
  return root + "/" + group;
}

// A new scratch directory for one sandbox, or "" (its files then go to run_dir).
std::string make_scratch_dir(const std::string& group) {
  auto parent = scratch_group_dir(group);
  if (parent.empty() || (::mkdir(parent.c_str(), 0700) != 0 && errno != EEXIST))
    return {};
  auto tmpl = parent + "/XXXXXX";
  if (::mkdtemp(tmpl.data()) == nullptr)
    return {};
  return tmpl;
}

// Whether device nodes work on the scratch root (root's own tmpfs; not systemd's /dev/shm).
bool scratch_root_allows_devices() {
  static const bool yes = [] {
    struct statvfs vfs {};
    const auto& root = scratch_root_dir();
    return ::geteuid() == 0 && !root.empty() && ::statvfs(root.c_str(), &vfs) == 0
           && (vfs.f_flag & ST_NODEV) == 0;
  }();
  return yes;
}

// Makes `dir` a sandbox's /dev: the harmless devices (made with mknod: bwrap's --dev binds each
// from the host's /dev, six bind mounts and their remounts, ~1 ms of every cold start here),
// the /proc/self/fd links and an empty shm, in a directory the program may not write (root's,
// 0755). "" when made; else why not (the caller uses --dev).
std::string make_dev_dir(const std::filesystem::path& dir) {
  if (::mkdir(dir.c_str(), 0755) != 0)
    return std::string{"cannot create "} + dir.string() + ": " + std::strerror(errno);
  int fd = ::open(dir.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0)
    return std::string{"cannot open "} + dir.string() + ": " + std::strerror(errno);
  struct device {
    const char* name;
    unsigned major, minor; // Linux's fixed numbers (Documentation/admin-guide/devices.txt)
  };
  static constexpr device devices[] = {{"null", 1, 3},   {"zero", 1, 5},    {"full", 1, 7},
                                       {"random", 1, 8}, {"urandom", 1, 9}, {"tty", 5, 0}};
  static constexpr std::pair<const char*, const char*> links[] = {
    {"fd", "/proc/self/fd"}, {"stdin", "/proc/self/fd/0"}, {"stdout", "/proc/self/fd/1"},
    {"stderr", "/proc/self/fd/2"}};
  std::string error;
  for (const auto& d : devices) // the mode again after mknod, which the umask narrows
    if (::mknodat(fd, d.name, S_IFCHR | 0666, makedev(d.major, d.minor)) != 0
        || ::fchmodat(fd, d.name, 0666, 0) != 0) {
      error = std::string{"cannot make "} + d.name + ": " + std::strerror(errno);
      break;
    }
  for (const auto& [name, target] : links)
    if (error.empty() && ::symlinkat(target, fd, name) != 0)
      error = std::string{"cannot link "} + name + ": " + std::strerror(errno);
  if (error.empty() && ::mkdirat(fd, "shm", 0755) != 0)
    error = std::string{"cannot make shm: "} + std::strerror(errno);
  ::close(fd);
  return error;
}

// The first child of `pid` (the guest agent, init of the new pid namespace), or 0.
pid_t first_child(pid_t pid) {
  std::ifstream in{"/proc/" + std::to_string(pid) + "/task/"
                   + std::to_string(pid) + "/children"};
  pid_t c = 0;
  in >> c;
  return c;
}

} // namespace

struct sandbox::impl {
  explicit impl(sandbox_options o) : opts(std::move(o)) {
    guest_link::options lo;
    lo.eof_reason = "guest closed the connection";
    lo.kill = [this] { signal_child(SIGKILL); };
    lo.exit_note = [this] { return oom_note(); };
    link = std::make_unique<guest_link>(std::move(lo));
  }

  sandbox_options opts;

  std::mutex mu; // guards started, prepared, share and scratch
  bool started = false; // boot() was called
  // What the sandbox sees as /run/alephd (its socket, bwrap's output, a plain program on its
  // way in): a scratch directory on a tmpfs, ours to remove (`scratch`), or run_dir.
  std::filesystem::path share;
  bool scratch = false;

  std::filesystem::path share_dir() {
    std::lock_guard lock{mu};
    return share;
  }

  // Removes the scratch directory, if there is one: the sandbox is gone.
  void remove_scratch() {
    std::filesystem::path dir;
    {
      std::lock_guard lock{mu};
      if (!std::exchange(scratch, false))
        return;
      dir = share;
    }
    remove_tree(dir);
  }

  // The bwrap process (our child, or adopted from an earlier CRN process).
  watched_process proc;
  std::mutex proc_mu; // guards ns_init and slirp
  // The namespace's init (the guest agent): once it has exited, the kernel has
  // killed everything else in the namespace. It is not our child (nothing to
  // reap), so it is only watched; start time guards against pid reuse.
  pid_t ns_init = 0;
  std::string ns_init_start;

  std::optional<alephd::cgroup> group; // set by start() when opts.limits

  // " (out of memory: ...)" when the group saw an OOM kill.
  std::string oom_note() const {
    if (group && group->oom_killed())
      return " (out of memory: killed at the limit of "
             + std::to_string(opts.limits->memory_bytes >> 20) + " MiB)";
    return "";
  }

  // slirp4netns for a sandbox with network: it exits when slirp_exit_w closes.
  pid_t slirp = 0;
  int slirp_exit_w = -1;

  // Attaches slirp4netns to the namespace of ns_init and waits until tap0 is up.
  std::string start_slirp(clock_type::time_point deadline) {
    pid_t target;
    {
      std::lock_guard lock{proc_mu};
      target = ns_init;
    }
    if (target <= 0)
      return "cannot find the sandbox's network namespace";
    int ready[2], quit[2];
    if (::pipe2(ready, O_CLOEXEC) != 0)
      return "pipe: " + std::string{std::strerror(errno)};
    if (::pipe2(quit, O_CLOEXEC) != 0) {
      ::close(ready[0]);
      ::close(ready[1]);
      return "pipe: " + std::string{std::strerror(errno)};
    }
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, ready[1], 3);
    posix_spawn_file_actions_adddup2(&fa, quit[0], 4);
    auto log = (std::filesystem::path{opts.run_dir} / "slirp4netns.log").string();
    posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_adddup2(&fa, STDOUT_FILENO, STDERR_FILENO);
    posix_spawn_file_actions_addclosefrom_np(&fa, 5); // none of the CRN's sockets
    auto pid_text = std::to_string(target);
    std::vector<std::string> args{opts.slirp4netns, "--configure", "--mtu=65520",
                                  "--disable-host-loopback", "--ready-fd=3", "--exit-fd=4",
                                  pid_text, "tap0"};
    std::vector<char*> argv;
    for (auto& a : args)
      argv.push_back(a.data());
    argv.push_back(nullptr);
    char* envp[] = {nullptr};
    pid_t pid = 0;
    int rc = ::posix_spawn(&pid, opts.slirp4netns.c_str(), &fa, nullptr, argv.data(), envp);
    posix_spawn_file_actions_destroy(&fa);
    ::close(ready[1]);
    ::close(quit[0]);
    if (rc != 0) {
      ::close(ready[0]);
      ::close(quit[1]);
      return "cannot start " + opts.slirp4netns + ": " + std::strerror(rc);
    }
    {
      std::lock_guard lock{proc_mu};
      slirp = pid;
      slirp_exit_w = quit[1];
    }
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - clock_type::now());
    pollfd pfd{ready[0], POLLIN, 0};
    char c = 0;
    bool ok = ::poll(&pfd, 1, static_cast<int>(std::max<int64_t>(left.count(), 1))) == 1
              && ::read(ready[0], &c, 1) == 1;
    ::close(ready[0]);
    if (!ok)
      return "slirp4netns did not set up the network: " + first_line(log);
    return {};
  }

  void stop_slirp() {
    pid_t pid;
    {
      std::lock_guard lock{proc_mu};
      pid = slirp;
      slirp = 0;
      if (slirp_exit_w >= 0)
        ::close(slirp_exit_w); // it exits on this
      slirp_exit_w = -1;
    }
    if (pid <= 0)
      return;
    auto until = clock_type::now() + 1s;
    while (::waitpid(pid, nullptr, WNOHANG) == 0) {
      if (clock_type::now() >= until) {
        ::kill(pid, SIGKILL);
        ::waitpid(pid, nullptr, 0);
        break;
      }
      std::this_thread::sleep_for(5ms);
    }
  }

  std::mutex stop_mu; // serializes stop() and the destructor
  bool stopped = false;
  int stop_code = -1;

  // SIGKILLs the namespace's init, which takes every process of the sandbox
  // with it (bwrap itself then exits); needed where bwrap has no
  // --die-with-parent to pass our SIGKILL on.
  void kill_namespace() {
    std::lock_guard lock{proc_mu};
    if (ns_init <= 0)
      return;
    auto st = proc_state(ns_init);
    if (st && st->first != 'Z' && st->second == ns_init_start)
      ::kill(ns_init, SIGKILL);
  }

  void signal_child(int sig) {
    proc.signal(sig);
  }

  bool try_reap() {
    return proc.try_reap();
  }

  void kill_and_reap() {
    proc.kill_and_reap(namespace_exit_timeout);
  }

  // After bwrap is reaped: waits (bounded) until the namespace's init has
  // exited too, i.e. no process of the sandbox runs any more. Its parent
  // died with SIGKILL, and --die-with-parent sends it SIGKILL in turn.
  void wait_namespace_empty() {
    pid_t init;
    std::string start;
    {
      std::lock_guard lock{proc_mu};
      init = ns_init;
      start = ns_init_start;
    }
    if (init <= 0)
      return;
    auto until = clock_type::now() + namespace_exit_timeout;
    for (;;) {
      auto st = proc_state(init);
      if (!st || st->first == 'Z' || st->first == 'X' || st->second != start)
        return;
      if (clock_type::now() >= until) {
        ::kill(init, SIGKILL); // last resort (start time checked just above)
        return;
      }
      std::this_thread::sleep_for(5ms);
    }
  }

  // Kills what is left, closes the connection and joins its threads. Safe to
  // call more than once, and before start().
  void teardown() {
    kill_namespace();
    kill_and_reap();
    wait_namespace_empty();
    stop_slirp();
    link->close("sandbox stopped");
    if (group) {
      std::string err;
      if (!group->destroy(err))
        std::fprintf(stderr, "sandbox: cannot remove cgroup %s: %s\n", group->path().c_str(),
                     err.c_str());
    }
  }

  std::string fail_start(std::string error) {
    link->expect_end(); // start() reports this failure itself
    teardown();
    bool written;
    {
      std::lock_guard lock{mu};
      written = std::exchange(prepared, std::nullopt).has_value();
    }
    auto dir = share_dir();
    if (written) {
      std::error_code ec;
      std::filesystem::remove(dir / program_file, ec);
    }
    auto err = dir.empty() ? std::string{} : first_line((dir / "bwrap.err").string());
    if (!err.empty())
      error += " (bwrap: " + err + ")";
    remove_scratch();
    return error;
  }

  std::string start(const guest::configure& cfg) {
    auto deadline = clock_type::now() + opts.ready_timeout;
    if (auto error = boot(deadline, &cfg); !error.empty())
      return error;
    return configure(cfg, deadline);
  }

  // Listens on guest.sock in the share dir (replacing a stale one); the fd, or -1 with `error`.
  int listen_guest(std::string& error) {
    auto dir = share_dir();
    auto sock_path = (dir / "guest.sock").string();
    std::error_code ec;
    std::filesystem::remove(sock_path, ec);
    // A unix socket path holds at most 107 bytes; a long run_dir is reached
    // through /proc/self/fd/N instead, which bind() resolves like any path.
    int dir_fd = -1;
    auto bind_path = sock_path;
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (bind_path.size() >= sizeof addr.sun_path) {
      dir_fd = ::open(dir.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
      if (dir_fd < 0) {
        error = "cannot open " + dir.string() + ": " + std::strerror(errno);
        return -1;
      }
      bind_path = "/proc/self/fd/" + std::to_string(dir_fd) + "/guest.sock";
    }
    std::memcpy(addr.sun_path, bind_path.data(), bind_path.size());
    int listen_fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (listen_fd < 0) {
      error = "socket: " + std::string{std::strerror(errno)};
      if (dir_fd >= 0)
        ::close(dir_fd);
      return -1;
    }
    bool bound = ::bind(listen_fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0
                 && ::listen(listen_fd, 1) == 0;
    auto bind_errno = errno;
    if (dir_fd >= 0)
      ::close(dir_fd);
    if (!bound) {
      ::close(listen_fd);
      error = "cannot listen on " + sock_path + ": " + std::strerror(bind_errno);
      return -1;
    }
    return listen_fd;
  }

  // Accepts the agent's connection in slices, so that a sandbox that exits early fails at once;
  // closes `listen_fd`. "" with `fd` set, or "exited" or "late".
  std::string accept_guest(int listen_fd, clock_type::time_point deadline, int& fd) {
    fd = -1;
    std::string error;
    while (fd < 0 && error.empty()) {
      if (try_reap())
        error = "exited";
      else if (clock_type::now() >= deadline)
        error = "late";
      pollfd pfd{listen_fd, POLLIN, 0};
      if (error.empty() && ::poll(&pfd, 1, static_cast<int>(accept_slice.count())) == 1)
        fd = ::accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
    }
    ::close(listen_fd);
    return error;
  }

  // Spawns the sandbox and waits for the agent's `ready`.
  // With `cfg`, a plain program is written for the agent (see configure()) while bwrap starts.
  std::string boot(clock_type::time_point deadline, const guest::configure* cfg = nullptr) {
    {
      std::lock_guard lock{mu};
      if (started)
        return "already started";
      started = true;
    }
    if (opts.guest_binary.empty() || opts.run_dir.empty())
      return fail_start("guest_binary and run_dir must be set");
    if (opts.hostname.empty() || opts.hostname.size() > 64) // sethostname's limit
      return fail_start("invalid hostname '" + opts.hostname.substr(0, 64) + "'");
    std::error_code ec;
    std::filesystem::path dir{opts.run_dir};
    std::filesystem::create_directories(dir, ec);
    if (ec)
      return fail_start("cannot create " + opts.run_dir + ": " + ec.message());
    std::filesystem::path io = opts.scratch_on_tmpfs ? make_scratch_dir(opts.scratch_group)
                                                     : std::string{};
    {
      std::lock_guard lock{mu};
      scratch = !io.empty();
      share = scratch ? io : dir;
      io = share;
    }
    // Stale files of an earlier run would be read as this run's errors (a scratch dir is new).
    if (io == dir)
      for (const char* name : {"guest.sock", "bwrap.out", "bwrap.err", program_file})
        std::filesystem::remove(dir / name, ec);
    auto sock_path = (io / "guest.sock").string();
    std::string listen_error;
    int listen_fd = listen_guest(listen_error);
    if (listen_fd < 0)
      return fail_start(listen_error);

    std::vector<std::string> args{
      // An empty environment but what --setenv adds after this (extra_args may add some): the
      // run dir names the sandbox in ps (bwrap's command line), as when it was /run/alephd.
      // The agent keeps it to itself: a program gets its own variables only.
      "--clearenv", "--setenv", "ALEPHD_RUN_DIR", opts.run_dir,
      "--ro-bind", "/usr", "/usr",
      "--symlink", "usr/lib", "/lib",
      "--symlink", "usr/lib64", "/lib64",
      "--symlink", "usr/bin", "/bin",
      "--symlink", "usr/sbin", "/sbin",
      "--proc", "/proc",
      "--perms", "1777", "--tmpfs", "/tmp",
      // The agent is the namespace's init (it reaps orphans as PID 1, as in a microVM): no
      // reaper process of bwrap's own, one process (and its memory) less per sandbox.
      "--unshare-pid", "--as-pid-1",
    };
    // The sandbox's own /dev in its scratch dir (root, on a tmpfs that allows devices: see
    // own_tmpfs); else bwrap's. Without root bwrap works in a user namespace: no mknod there.
    if (io != dir && opts.own_dev && scratch_root_allows_devices()
        && make_dev_dir(io / "dev").empty())
      args.insert(args.end(), {"--dev-bind", (io / "dev").string(), "/dev"});
    else
      args.insert(args.end(), {"--dev", "/dev"});
    // Namespaces made ahead, entered by the child before bwrap runs; or bwrap makes them.
    // Root only: bwrap run by another user makes a user namespace, which must own the network
    // namespace too (slirp4netns configures it from there).
    spare_namespaces spare;
    if (opts.use_namespace_pool && ::geteuid() == 0)
      spare = namespace_pool::shared().take();
    if (!spare)
      args.insert(args.end(), {"--unshare-net", "--unshare-ipc", "--unshare-uts",
                               "--hostname", opts.hostname});
    // bwrap run by root keeps every capability unless told otherwise: the agent keeps only what
    // it needs to switch the program to its uid and to signal it there; the program ends with
    // none. Without root, bwrap's user namespace maps only our own uid: the program runs as
    // that (unprivileged) user, still with no_new_privs and the seccomp filter.
    bool as_root = ::geteuid() == 0;
    if (as_root)
      args.insert(args.end(), {"--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add",
                               "CAP_SETGID", "--cap-add", "CAP_KILL"});
    std::vector<std::string> mounts{
      "--ro-bind", opts.guest_binary, "/opt/alephd/guest",
      // Read-only: the guest only connects to the socket there (a socket on a read-only mount
      // still accepts connections), and may not fill the host's disk through it.
      "--ro-bind", io.string(), "/run/alephd",
      // The dynamic linker's cache of the /usr above: without it every program probes a dozen
      // directories for each library it loads.
      "--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache",
    };
    if (opts.network) {
      // DNS through slirp's resolver (the sandbox's /etc has only this and ld.so.cache).
      std::ofstream{(io / "resolv.conf").string()} << "nameserver 10.0.2.3\n";
      mounts.insert(mounts.end(), {"--ro-bind", (io / "resolv.conf").string(), "/etc/resolv.conf"});
    }
    mounts.insert(mounts.end(), opts.extra_args.begin(), opts.extra_args.end());
    // bwrap makes the missing parents of a mount point mode 0700: the program's user could not
    // reach its code, volumes or resolv.conf. They are made 0755 first.
    for (auto& d : parent_dirs(mounts))
      args.insert(args.end(), {"--perms", "0755", "--dir", d});
    args.insert(args.end(), mounts.begin(), mounts.end());
    // An adoptable sandbox outlives a CRN that dies, for a restarted one to adopt it.
    if (opts.adopt_window.count() == 0)
      args.emplace_back("--die-with-parent");
    for (const char* a : {"--new-session", "--chdir", "/tmp", "/opt/alephd/guest", "--socket",
                          "/run/alephd/guest.sock", "--work-dir", "/tmp/work"})
      args.emplace_back(a);
    if (opts.adopt_window.count() > 0)
      args.insert(args.end(), {"--reconnect-window", std::to_string(opts.adopt_window.count())});
    if (as_root && opts.uid != 0 && opts.gid != 0)
      args.insert(args.end(), {"--run-as", std::to_string(opts.uid) + ":" + std::to_string(opts.gid)});
    if (opts.seccomp)
      args.emplace_back("--seccomp");

    try {
      std::error_code spawn_ec;
      if (opts.limits) {
        std::string err;
        auto name = opts.cgroup_name.empty() ? "sandbox-" + std::to_string(::getpid())
                                             : opts.cgroup_name;
        group = alephd::cgroup::create(opts.cgroup_root, name, *opts.limits, err);
        if (!group || !group->prepare_attach(err)) {
          ::close(listen_fd);
          return fail_start("cannot set up the cgroup: " + err);
        }
      }
      auto setup = opts.child_setup;
      const alephd::cgroup* cg = group ? &*group : nullptr;
      // vfork: a fork would copy the page tables of the whole CRN first (~1 ms of the cold
      // start). The child shares our memory until it execs, so no signal handler may run in
      // it: signals stay blocked until just before the exec.
      signals_blocked blocked;
      auto old = blocked.old;
      bp::child c{bp::exe = opts.bwrap, bp::args = args,
                  bp::std_in < bp::null,
                  bp::std_out > (io / "bwrap.out").string(),
                  bp::std_err > (io / "bwrap.err").string(),
                  bp::posix::use_vfork,
                  bp::extend::on_exec_setup = [setup, cg, old, &spare,
                                               host = opts.hostname.c_str()](auto&) {
                    if (spare
                        && (::setns(spare.net, CLONE_NEWNET) != 0
                            || ::setns(spare.ipc, CLONE_NEWIPC) != 0
                            || ::setns(spare.uts, CLONE_NEWUTS) != 0
                            || ::sethostname(host, std::strlen(host)) != 0))
                      ::_exit(127);
                    cloexec_from(3); // none of the CRN's sockets goes into the sandbox
                    // Join the cgroup before bwrap forks anything.
                    if (cg != nullptr && !cg->attach_self_in_child())
                      ::_exit(127);
                    if (setup)
                      setup();
                    // Our handlers must not run here, on memory shared with us (the handler
                    // table is the child's own copy): caught signals go back to their default.
                    for (int sig = 1; sig < NSIG; ++sig) {
                      struct sigaction sa {};
                      if (::sigaction(sig, nullptr, &sa) == 0 && sa.sa_handler != SIG_DFL
                          && sa.sa_handler != SIG_IGN) {
                        sa = {};
                        sa.sa_handler = SIG_DFL;
                        ::sigaction(sig, &sa, nullptr);
                      }
                    }
                    ::sigprocmask(SIG_SETMASK, &old, nullptr);
                  },
                  spawn_ec};
      blocked.restore();
      if (spawn_ec) {
        ::close(listen_fd);
        return fail_start("cannot spawn " + opts.bwrap + ": "
                          + spawn_ec.message());
      }
      // We reap it ourselves (see kill_and_reap), so boost must not.
      proc.set_child(c.id());
      c.detach();
    } catch (const std::exception& e) {
      ::close(listen_fd);
      return fail_start("cannot spawn " + opts.bwrap + ": " + e.what());
    }
    if (cfg != nullptr) {
      auto light = code_as_file(*cfg, io / program_file);
      std::lock_guard lock{mu};
      prepared = std::move(light);
    }

    // Accept in slices so that a bwrap that exits early fails at once.
    int fd = -1;
    if (auto e = accept_guest(listen_fd, deadline, fd); !e.empty())
      return fail_start(e == "exited" ? "the sandbox exited before the guest connected"
                                      : "the guest did not connect in time");
    std::filesystem::remove(sock_path, ec); // nobody else may connect
    {
      // The guest connected, so bwrap has forked it, the namespace's init, by now.
      std::lock_guard lock{proc_mu};
      ns_init = first_child(proc.pid());
      if (ns_init > 0) {
        if (auto st = proc_state(ns_init))
          ns_init_start = st->second;
        else
          ns_init = 0;
      }
    }
    if (opts.network) {
      if (auto error = start_slirp(deadline); !error.empty()) {
        ::close(fd);
        return fail_start(error);
      }
    }
    link->attach(fd);
    if (auto error = link->wait_ready(deadline); !error.empty())
      return fail_start(error);
    return {};
  }

  // Finds the agent of a sandbox an earlier CRN process left running: it reconnects to our
  // socket within `deadline` and says it runs a program.
  std::string adopt(const sandbox_handle& h, clock_type::time_point deadline) {
    {
      std::lock_guard lock{mu};
      if (started)
        return "already started";
      started = true;
    }
    if (!sandbox::alive(h)) {
      if (is_scratch_dir(h.scratch_dir, scratch_root_dir()))
        remove_tree(h.scratch_dir); // nothing uses it any more
      return fail_start("the sandbox is no longer running");
    }
    proc.adopt(h.pid, h.pid_start);
    {
      std::lock_guard lock{mu};
      scratch = !h.scratch_dir.empty();
      share = scratch ? std::filesystem::path{h.scratch_dir} : std::filesystem::path{opts.run_dir};
    }
    {
      std::lock_guard lock{proc_mu};
      ns_init = h.ns_init;
      ns_init_start = h.ns_init_start;
    }
    if (!h.cgroup_name.empty()) {
      std::string err;
      group = alephd::cgroup::open(opts.cgroup_root, h.cgroup_name, err);
      if (!group)
        return fail_start("cannot find its cgroup: " + err);
    }
    std::string error;
    int listen_fd = listen_guest(error);
    if (listen_fd < 0)
      return fail_start(error);
    int fd = -1;
    if (auto e = accept_guest(listen_fd, deadline, fd); !e.empty())
      return fail_start(e == "exited" ? "the sandbox exited before its guest came back"
                                      : "its guest did not come back in time");
    std::error_code ec;
    std::filesystem::remove(share_dir() / "guest.sock", ec);
    if (opts.network) {
      // slirp4netns ended with the CRN that started it: a new one serves the namespace.
      if (auto e = start_slirp(deadline); !e.empty()) {
        ::close(fd);
        return fail_start(e);
      }
    }
    if (auto e = link->take_over(fd, deadline); !e.empty())
      return fail_start(e);
    return {};
  }

  // Lets the sandbox run on without us (a CRN stopping with keep-on-shutdown): the agent
  // waits for a restarted CRN to adopt it.
  void detach() {
    std::lock_guard stop_lock{stop_mu};
    if (stopped)
      return;
    stopped = true;
    link->expect_end();
    link->close("detached");
    stop_slirp();
    proc.forget();
  }

  // Sends `configure` to a booted agent and waits for its result.
  std::string configure(const guest::configure& cfg, clock_type::time_point deadline) {
    if (!link->ready_seen())
      return "not booted";
    // A plain program goes to the guest as a file in its /run/alephd (read-only there), which
    // the agent copies in the kernel: a large program does not cross the socket in a frame
    // that both sides must build, copy and decode (most of a pre-started sandbox's cold start).
    std::string error;
    auto code_file = share_dir() / program_file;
    std::optional<guest::configure> light;
    {
      std::lock_guard lock{mu};
      light = std::exchange(prepared, std::nullopt); // written during boot()
    }
    bool ours = light.has_value();
    if (!link->guest_has("code_file")) // an older agent gets the code in the frame
      light.reset();
    else if (!light)
      ours = (light = code_as_file(cfg, code_file)).has_value();
    error = link->configure(light ? *light : cfg, deadline);
    // Only a file this call wrote goes (O_EXCL): a configure racing this one, refused as
    // "already configured", leaves the other's alone.
    std::error_code ec;
    if (ours)
      std::filesystem::remove(code_file, ec); // copied by now, or of no use
    if (!error.empty())
      return error == "already configured" ? error : fail_start(error);
    return {};
  }

  // `cfg` without its code, written to `file` instead; nothing when that cannot be done (the
  // code then goes in the frame).
  static std::optional<guest::configure> code_as_file(const guest::configure& cfg,
                                                       const std::filesystem::path& file) {
    if (cfg.encoding != "plain" || cfg.code.empty() || !cfg.code_file.empty())
      return std::nullopt;
    // O_EXCL: a configure racing this one (refused as "already configured") leaves it alone.
    int fd = ::open(file.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (fd < 0)
      return std::nullopt;
    bool ok = true;
    for (size_t off = 0; ok && off < cfg.code.size();) {
      auto n = ::write(fd, cfg.code.data() + off, cfg.code.size() - off);
      if (n < 0 && errno == EINTR)
        continue;
      ok = n > 0;
      off += ok ? static_cast<size_t>(n) : 0;
    }
    ::close(fd);
    if (!ok) { // a full disk: the frame still works
      std::error_code ec;
      std::filesystem::remove(file, ec);
      return std::nullopt;
    }
    auto light = cfg;
    light.code.clear();
    light.code.shrink_to_fit();
    light.code_file = file.filename().string();
    return light;
  }

  int stop(std::chrono::milliseconds grace) {
    std::lock_guard stop_lock{stop_mu};
    if (stopped)
      return stop_code;
    stopped = true;
    link->expect_end();
    auto deadline = clock_type::now() + grace;
    link->halt(deadline);
    while (!try_reap() && clock_type::now() < deadline)
      std::this_thread::sleep_for(10ms);
    teardown();
    remove_scratch();
    stop_code = link->halted_code();
    return stop_code;
  }

  // `configure` with the code as a file, written by boot() for start()'s configure().
  std::optional<guest::configure> prepared;

  // Declared last: destroyed first, so its threads are gone before the rest.
  std::unique_ptr<guest_link> link;
};

sandbox::sandbox(sandbox_options o)
  : impl_{std::make_unique<impl>(std::move(o))} {
}

sandbox::~sandbox() {
  try {
    impl_->stop(destructor_grace);
  } catch (...) {
    // stop() only throws on resource exhaustion; make sure nothing is left.
    impl_->kill_and_reap();
    impl_->link->close("sandbox stopped");
  }
}

std::string sandbox::start(const guest::configure& cfg) {
  return impl_->start(cfg);
}

std::string sandbox::boot() {
  return impl_->boot(clock_type::now() + impl_->opts.ready_timeout);
}

std::string sandbox::configure(const guest::configure& cfg, std::chrono::milliseconds timeout) {
  return impl_->configure(cfg, clock_type::now() + timeout);
}

std::string sandbox::adopt(const sandbox_handle& h, std::chrono::milliseconds timeout) {
  return impl_->adopt(h, clock_type::now() + timeout);
}

void sandbox::detach() {
  impl_->detach();
}

sandbox_handle sandbox::handle() const {
  std::string scratch;
  {
    std::lock_guard lock{impl_->mu};
    if (impl_->scratch)
      scratch = impl_->share.string();
  }
  std::lock_guard lock{impl_->proc_mu};
  auto name = impl_->group ? std::filesystem::path{impl_->group->path()}.filename().string()
                           : std::string{};
  return sandbox_handle{impl_->proc.pid(), impl_->proc.start(), impl_->ns_init,
                        impl_->ns_init_start, name, scratch};
}

bool sandbox::alive(const sandbox_handle& h) {
  if (h.pid <= 0 || h.ns_init <= 0)
    return false;
  return process_is(h.pid, h.pid_start) && process_is(h.ns_init, h.ns_init_start);
}

void sandbox::kill(const sandbox_handle& h) {
  for (auto [pid, start] : {std::pair{h.ns_init, h.ns_init_start}, std::pair{h.pid, h.pid_start}}) {
    if (pid <= 0)
      continue;
    auto st = proc_state(pid);
    if (st && st->second == start)
      ::kill(pid, SIGKILL);
  }
  if (is_scratch_dir(h.scratch_dir, scratch_root_dir()))
    remove_tree(h.scratch_dir);
}

std::string sandbox::scratch_root() {
  return scratch_root_dir();
}

void sandbox::claim_scratch_group(const std::string& group, const std::string& owner) {
  auto dir = scratch_group_dir(group);
  if (dir.empty() || dir == scratch_root_dir()
      || (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST))
    return;
  // Held (shared) while this process lives: a group whose file nobody holds has no CRN at work.
  int fd = ::open((dir + "/" + scratch_owner_file).c_str(),
                  O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0)
    return;
  if (::flock(fd, LOCK_SH) != 0 || ::ftruncate(fd, 0) != 0) {
    ::close(fd);
    return;
  }
  auto text = owner + "\n";
  if (::pwrite(fd, text.data(), text.size(), 0) != static_cast<ssize_t>(text.size())) {
    ::close(fd);
    return;
  }
  std::lock_guard lock{claims_mu()};
  if (auto [it, added] = claims().emplace(group, fd); !added) {
    ::close(it->second); // claimed again: the newer file descriptor holds it
    it->second = fd;
  }
}

void sandbox::release_scratch_group(const std::string& group) {
  auto dir = scratch_group_dir(group);
  if (dir.empty() || dir == scratch_root_dir())
    return;
  bool empty = true;
  std::error_code ec;
  for (auto& e : std::filesystem::directory_iterator{dir, ec})
    if (e.path().filename() != scratch_owner_file)
      empty = false; // a kept workload's: the next run of its CRN takes it over
  if (empty) {
    std::filesystem::remove(std::filesystem::path{dir} / scratch_owner_file, ec);
    std::filesystem::remove(dir, ec);
  }
  std::lock_guard lock{claims_mu()};
  if (auto it = claims().find(group); it != claims().end()) {
    ::close(it->second);
    claims().erase(it);
  }
}

size_t sandbox::remove_abandoned_scratch_groups() {
  const auto& root = scratch_root_dir();
  if (root.empty())
    return 0;
  std::vector<std::filesystem::path> gone;
  std::error_code ec;
  for (auto& e : std::filesystem::directory_iterator{root, ec}) {
    // Abandoned: no process holds its owner file, and the owner's data dir does not exist (a
    // CRN stopped or dead may come back to re-adopt its sandboxes while its data dir is there).
    int fd = ::open((e.path() / scratch_owner_file).c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
      continue;
    char buf[4096];
    auto n = ::pread(fd, buf, sizeof buf - 1, 0);
    bool unheld = ::flock(fd, LOCK_EX | LOCK_NB) == 0;
    ::close(fd);
    if (!unheld || n <= 0)
      continue;
    std::string owner{buf, static_cast<size_t>(n)};
    if (auto nl = owner.find('\n'); nl != std::string::npos)
      owner.resize(nl);
    struct stat st {};
    if (!owner.empty() && owner[0] == '/' && ::stat(owner.c_str(), &st) != 0 && errno == ENOENT)
      gone.push_back(e.path());
  }
  size_t removed = 0;
  for (auto& p : gone)
    removed += remove_tree(p) ? 1 : 0;
  return removed;
}

size_t sandbox::remove_scratch_orphans(const std::string& group,
                                       const std::set<std::string>& keep) {
  auto dir = scratch_group_dir(group);
  if (dir.empty() || dir == scratch_root_dir()) // another process's may be there too
    return 0;
  std::set<std::string> kept;
  for (const auto& k : keep)
    kept.insert(std::filesystem::path{k}.lexically_normal().string());
  std::vector<std::filesystem::path> gone;
  std::error_code ec;
  for (auto& e : std::filesystem::directory_iterator{dir, ec})
    if (e.path().filename() != scratch_owner_file
        && kept.count(e.path().lexically_normal().string()) == 0)
      gone.push_back(e.path());
  size_t removed = 0;
  for (auto& p : gone)
    removed += remove_tree(p) ? 1 : 0;
  return removed;
}

bool sandbox::set_limits(const cgroup_limits& limits, std::string& err) {
  if (!impl_->group) {
    err = "the sandbox has no cgroup";
    return false;
  }
  return impl_->group->update(limits, err);
}

guest::http_response sandbox::request(guest::http_request req,
                                      std::chrono::milliseconds timeout) {
  return impl_->link->request(std::move(req), timeout);
}

int sandbox::stop(std::chrono::milliseconds grace) {
  return impl_->stop(grace);
}

bool sandbox::running() const {
  return impl_->link->running();
}

int sandbox::pid() const {
  return impl_->proc.pid();
}

executor_usage sandbox::usage() const {
  if (impl_->group) {
    auto s = impl_->group->stats();
    return executor_usage{s.cpu_usage_ns, s.memory_current, std::max(s.memory_peak, s.memory_current)};
  }
  return process_usage(pid());
}

void sandbox::request_async(guest::http_request req, std::chrono::milliseconds timeout,
                            reply_handler done) {
  impl_->link->request_async(std::move(req), timeout, std::move(done));
}

std::vector<timed_log> sandbox::logs() const {
  return impl_->link->logs();
}

void sandbox::on_exit(exit_handler h) {
  impl_->link->on_exit(std::move(h));
}

void sandbox::on_log(log_handler h) {
  impl_->link->on_log(std::move(h));
}

} // namespace alephd
