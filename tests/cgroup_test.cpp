// alephd::cgroup against the real kernel: limits land in the files, the kernel
// enforces them (OOM kill, fork failures, CPU throttling), destroy() leaves no
// process and no directory behind. Needs root and writable cgroups; skips with
// the reason otherwise. The layout parser is tested on recorded host files.

#include "runtime/cgroup.hpp"

#include <gtest/gtest.h>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

using alephd::cgroup;
using alephd::cgroup_layout;
using alephd::cgroup_limits;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

constexpr uint64_t mib = 1024 * 1024;

std::string unique(const std::string& tag) {
  static std::atomic<int> counter{0};
  return tag + "-" + std::to_string(::getpid()) + "-" + std::to_string(++counter);
}

std::string slurp(const std::string& path) {
  std::ifstream in{path};
  std::stringstream ss;
  ss << in.rdbuf();
  auto s = ss.str();
  while (!s.empty() && s.back() == '\n')
    s.pop_back();
  return s;
}

uint64_t keyed(const std::string& path, const std::string& key) {
  std::ifstream in{path};
  std::string k;
  uint64_t v = 0;
  while (in >> k >> v)
    if (k == key)
      return v;
  return 0;
}

std::vector<pid_t> procs_of(const std::string& dir) {
  std::vector<pid_t> out;
  std::ifstream in{dir + "/cgroup.procs"};
  pid_t p = 0;
  while (in >> p)
    out.push_back(p);
  return out;
}

// Polls until `dir` holds `n` processes (they join right after fork).
std::vector<pid_t> wait_procs(const std::string& dir, size_t n, std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  auto inside = procs_of(dir);
  while (inside.size() != n && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(10ms);
    inside = procs_of(dir);
  }
  return inside;
}

// Gone, or a zombie nobody reaped yet (it holds no resources and no group).
bool process_gone(pid_t pid) {
  std::ifstream in{"/proc/" + std::to_string(pid) + "/stat"};
  std::string stat;
  if (!std::getline(in, stat))
    return true;
  auto close = stat.rfind(')');
  return close == std::string::npos || close + 2 >= stat.size() || stat[close + 2] == 'Z';
}

// Waits for a child; returns its wait status, or -1 after SIGKILL on timeout.
int wait_child(pid_t pid, std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  int status = 0;
  for (;;) {
    pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid)
      return status;
    if (r < 0)
      return -1;
    if (std::chrono::steady_clock::now() >= deadline) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      return -1;
    }
    std::this_thread::sleep_for(5ms);
  }
}

// Reads from `fd` until `needle` shows up, EOF, or the timeout.
std::string read_until(int fd, const std::string& needle, std::chrono::milliseconds timeout) {
  std::string out;
  auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    if (!needle.empty() && out.find(needle) != std::string::npos)
      return out;
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
      deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0)
      return out;
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left.count())) <= 0)
      return out;
    char buf[512];
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n <= 0)
      return out;
    out.append(buf, static_cast<size_t>(n));
  }
}

double now_seconds() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return double(ts.tv_sec) + double(ts.tv_nsec) / 1e9;
}

// The test's own view of whether cgroups can be managed here, independent of
// the code under test.
std::string unusable_reason(const cgroup_layout& l) {
  if (l.version == 0)
    return "no usable cgroup hierarchy in /proc/self/mountinfo";
  if (l.version == 1) {
    for (const char* c : {"memory", "pids", "cpu", "cpuacct"}) {
      auto it = l.v1.find(c);
      if (it == l.v1.end())
        return std::string{"cgroup v1 controller "} + c + " is not mounted";
      if (::access(it->second.c_str(), W_OK) != 0)
        return it->second + " is not writable";
    }
    return "";
  }
  // A cgroup namespace root (it has cgroup.type, the kernel's root has not)
  // that holds this process cannot delegate controllers and has no parent
  // in sight: alephd must then be started in a leaf of a delegated subtree.
  auto own_enabled = " " + slurp(l.v2_self + "/cgroup.subtree_control") + " ";
  if (l.v2_self == l.v2_mount && fs::exists(l.v2_self + "/cgroup.type")
      && own_enabled.find(" memory ") == std::string::npos)
    return "cgroup v2: " + l.v2_self
           + " holds this process and is the top of the mount, so no group here can get "
             "controllers (the no-internal-processes rule)";
  for (auto dir : {l.v2_self, fs::path(l.v2_self).parent_path().string()}) {
    auto ctrls = " " + slurp(dir + "/cgroup.controllers") + " ";
    if (ctrls.find(" memory ") != std::string::npos && ctrls.find(" pids ") != std::string::npos
        && ctrls.find(" cpu ") != std::string::npos && ::access(dir.c_str(), W_OK) == 0)
      return "";
  }
  return "cgroup v2: memory, pids and cpu are not all available to " + l.v2_self;
}

class cgroup_test : public ::testing::Test {
protected:
  void SetUp() override {
    if (::geteuid() != 0)
      GTEST_SKIP() << "needs root to create cgroups";
    layout_ = cgroup_layout::detect();
    if (auto why = unusable_reason(layout_); !why.empty())
      GTEST_SKIP() << why;
    root_ = unique("alephd-test");
    // Orphaned grandchildren come back to this process to be reaped.
    ::prctl(PR_SET_CHILD_SUBREAPER, 1);
  }

  void TearDown() override {
    for (pid_t p : children_) {
      ::kill(p, SIGKILL);
      ::waitpid(p, nullptr, 0);
    }
    while (::waitpid(-1, nullptr, WNOHANG) > 0) {
    }
    if (!root_.empty()) {
      cgroup::remove_orphans(layout_, root_, nullptr);
      for (const auto& l : extra_layouts_)
        cgroup::remove_orphans(l, root_, nullptr);
      for (const auto& dir : created_roots_)
        EXPECT_FALSE(fs::exists(dir)) << dir << " left behind";
    }
  }

  cgroup make(const cgroup_limits& limits, const std::string& tag = "exec") {
    std::string err;
    auto g = cgroup::create(layout_, root_, unique(tag), limits, err);
    if (!g) {
      ADD_FAILURE() << "create: " << err;
      throw std::runtime_error(err); // ends the test; TearDown still cleans up
    }
    EXPECT_EQ(err, "");
    for (auto c : {"memory", "pids", "cpu", "cpuacct"})
      if (auto p = g->path(c); !p.empty())
        created_roots_.push_back(fs::path(p).parent_path().string());
    return std::move(*g);
  }

  // fork + attach_self_in_child + exec `/bin/sh -c script`, stdout and stderr
  // into `*out` (when given). The child exits 126 if it cannot join.
  pid_t spawn_shell(cgroup& g, const std::string& script, int* out = nullptr) {
    std::string err;
    EXPECT_TRUE(g.prepare_attach(err)) << err;
    int fds[2] = {-1, -1};
    if (out) {
      EXPECT_EQ(::pipe2(fds, O_CLOEXEC), 0);
    }
    pid_t pid = ::fork();
    if (pid == 0) {
      if (out) {
        ::dup2(fds[1], 1);
        ::dup2(fds[1], 2);
      }
      if (!g.attach_self_in_child())
        ::_exit(126);
      ::execl("/bin/sh", "sh", "-c", script.c_str(), static_cast<char*>(nullptr));
      ::_exit(127);
    }
    EXPECT_GT(pid, 0);
    if (out) {
      ::close(fds[1]);
      *out = fds[0];
    }
    if (pid > 0)
      children_.push_back(pid);
    return pid;
  }

  // Forks a child that joins `g` and runs `body` (async-signal-safe code).
  template <class F>
  pid_t spawn_fn(cgroup& g, F body) {
    std::string err;
    EXPECT_TRUE(g.prepare_attach(err)) << err;
    pid_t pid = ::fork();
    if (pid == 0) {
      if (!g.attach_self_in_child())
        ::_exit(126);
      body();
      ::_exit(0);
    }
    EXPECT_GT(pid, 0);
    if (pid > 0)
      children_.push_back(pid);
    return pid;
  }

  int reap(pid_t pid, std::chrono::milliseconds timeout) {
    int status = wait_child(pid, timeout);
    children_.erase(std::remove(children_.begin(), children_.end(), pid), children_.end());
    return status;
  }

  cgroup_layout layout_;
  std::vector<cgroup_layout> extra_layouts_; // cleaned up like layout_
  std::string root_;
  std::vector<std::string> created_roots_;
  std::vector<pid_t> children_;
};

// -- layout parsing (no root needed) -------------------------------------------

// This host: v1 hierarchies per controller, memory in a nested group, and an
// empty cgroup2 at /sys/fs/cgroup/unified.
constexpr const char* hybrid_mountinfo =
  "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
  "32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n"
  "33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct\n"
  "34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset\n"
  "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"
  "39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids\n"
  "40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd\n"
  "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
constexpr const char* hybrid_cgroup = "9:name=systemd:/\n8:pids:/\n4:memory:/process_api/25eb\n"
                                      "3:cpuset:/\n2:cpuacct:/\n1:cpu:/\n0::/\n";

TEST(cgroup_layout_test, hybrid_v1_host_resolves_each_controller) {
  auto l = cgroup_layout::parse(hybrid_mountinfo, hybrid_cgroup);
  EXPECT_EQ(l.version, 1);
  EXPECT_EQ(l.v1.at("memory"), "/sys/fs/cgroup/memory/process_api/25eb");
  EXPECT_EQ(l.v1.at("pids"), "/sys/fs/cgroup/pids");
  EXPECT_EQ(l.v1.at("cpu"), "/sys/fs/cgroup/cpu");
  EXPECT_EQ(l.v1.at("cpuacct"), "/sys/fs/cgroup/cpuacct");
  EXPECT_EQ(l.v1.count("cpuset"), 0u);
  EXPECT_EQ(l.v2_mount, "/sys/fs/cgroup/unified");
  EXPECT_EQ(l.v2_self, "/sys/fs/cgroup/unified");
}

TEST(cgroup_layout_test, pure_v2_host_uses_the_unified_hierarchy) {
  auto l = cgroup_layout::parse(
    "24 30 0:22 / /sys rw,nosuid shared:7 - sysfs sysfs rw\n"
    "26 24 0:24 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 "
    "rw,nsdelegate,memory_recursiveprot\n",
    "0::/system.slice/alephd.service\n");
  EXPECT_EQ(l.version, 2);
  EXPECT_TRUE(l.v1.empty());
  EXPECT_EQ(l.v2_mount, "/sys/fs/cgroup");
  EXPECT_EQ(l.v2_self, "/sys/fs/cgroup/system.slice/alephd.service");
}

TEST(cgroup_layout_test, comounted_cpu_and_cpuacct_share_a_directory) {
  auto l = cgroup_layout::parse(
    "30 25 0:26 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n"
    "31 25 0:27 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n",
    "5:cpu,cpuacct:/user.slice\n4:memory:/user.slice/user-0.slice\n");
  EXPECT_EQ(l.version, 1);
  EXPECT_EQ(l.v1.at("cpu"), "/sys/fs/cgroup/cpu,cpuacct/user.slice");
  EXPECT_EQ(l.v1.at("cpuacct"), "/sys/fs/cgroup/cpu,cpuacct/user.slice");
  EXPECT_EQ(l.v1.at("memory"), "/sys/fs/cgroup/memory/user.slice/user-0.slice");
  EXPECT_EQ(l.v1.count("pids"), 0u);
}

TEST(cgroup_layout_test, container_mount_roots_and_namespaces) {
  // A container that sees its own group mounted at the hierarchy's place.
  auto l = cgroup_layout::parse(
    "40 35 0:32 /docker/abc /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
    "41 35 0:33 /docker/abc /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids\n",
    "8:pids:/docker/abc/sub\n4:memory:/docker/abc\n");
  EXPECT_EQ(l.v1.at("memory"), "/sys/fs/cgroup/memory");
  EXPECT_EQ(l.v1.at("pids"), "/sys/fs/cgroup/pids/sub");
  // A group outside the mount root, or outside the cgroup namespace, is unusable.
  auto outside = cgroup_layout::parse(
    "40 35 0:32 /docker/abc /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
    "26 24 0:24 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n",
    "4:memory:/docker/abcdef\n0::/../../system.slice\n");
  EXPECT_EQ(outside.version, 0);
  EXPECT_TRUE(outside.v1.empty());
  EXPECT_EQ(outside.v2_self, "");
  // A cgroup namespace root.
  auto ns = cgroup_layout::parse("26 24 0:24 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n", "0::/\n");
  EXPECT_EQ(ns.version, 2);
  EXPECT_EQ(ns.v2_self, "/sys/fs/cgroup");
}

TEST(cgroup_layout_test, escaped_mount_points_are_decoded) {
  auto l = cgroup_layout::parse("26 24 0:24 / /mnt/my\\040cg rw - cgroup2 none rw\n", "0::/a\n");
  EXPECT_EQ(l.v2_self, "/mnt/my cg/a");
}

TEST(cgroup_layout_test, hostile_input_yields_nothing_usable) {
  for (const char* m : {"", "\n\n", "- - - -", "1 2 3 4 5 6 - cgroup2", "a b c d e f g h - cgroup",
                        "1 2 3 relative /x rw - cgroup2 x rw\n", "1 2 3 / x rw - cgroup2 x rw\n"}) {
    for (const char* c : {"", "0::", "0::relative", ":::", "1:memory", "4:memory:/x\n0::/"}) {
      auto l = cgroup_layout::parse(m, c);
      EXPECT_EQ(l.version, 0) << "mountinfo '" << m << "' cgroup '" << c << "'";
    }
  }
  std::string huge(1 << 20, 'x');
  EXPECT_EQ(cgroup_layout::parse(huge, huge).version, 0);
}

TEST(cgroup_layout_test, bad_names_and_limits_are_errors_not_exceptions) {
  auto l = cgroup_layout::parse(hybrid_mountinfo, hybrid_cgroup);
  for (const char* bad : {"", ".", "..", "a/b", "../x", "a b", "x\n"}) {
    std::string err;
    EXPECT_FALSE(cgroup::create(l, "alephd-x", bad, {}, err)) << bad;
    EXPECT_NE(err.find("invalid group name"), std::string::npos) << err;
    EXPECT_FALSE(cgroup::create(l, bad, "exec", {}, err)) << bad;
  }
  for (double cpus : {-1.0, 1e9, std::numeric_limits<double>::quiet_NaN()}) {
    std::string err;
    EXPECT_FALSE(cgroup::create(l, "alephd-x", "exec", {0, 0, cpus}, err));
    EXPECT_NE(err.find("cpus"), std::string::npos) << err;
  }
  std::string err;
  EXPECT_FALSE(cgroup::create(cgroup_layout{}, "alephd-x", "exec", {}, err));
  EXPECT_NE(err.find("no usable cgroup hierarchy"), std::string::npos) << err;
}

// -- the real kernel ------------------------------------------------------------

TEST_F(cgroup_test, create_writes_limits_and_destroy_removes_the_directories) {
  auto g = make({64 * mib, 8, 1.5});
  ASSERT_TRUE(fs::is_directory(g.path()));
  EXPECT_EQ(g.path(), g.path("memory"));
  EXPECT_NE(g.path().find(root_), std::string::npos);
  std::vector<std::string> dirs;
  if (layout_.version == 1) {
    EXPECT_EQ(slurp(g.path("memory") + "/memory.limit_in_bytes"), std::to_string(64 * mib));
    if (fs::exists(g.path("memory") + "/memory.memsw.limit_in_bytes")) {
      EXPECT_EQ(slurp(g.path("memory") + "/memory.memsw.limit_in_bytes"),
                std::to_string(64 * mib));
    }
    EXPECT_EQ(slurp(g.path("pids") + "/pids.max"), "8");
    auto period = std::stoull(slurp(g.path("cpu") + "/cpu.cfs_period_us"));
    EXPECT_EQ(slurp(g.path("cpu") + "/cpu.cfs_quota_us"), std::to_string(period * 3 / 2));
    EXPECT_FALSE(g.path("cpuacct").empty());
    for (auto c : {"memory", "pids", "cpu", "cpuacct"})
      dirs.push_back(g.path(c));
  } else {
    EXPECT_EQ(slurp(g.path() + "/memory.max"), std::to_string(64 * mib));
    EXPECT_EQ(slurp(g.path() + "/pids.max"), "8");
    EXPECT_EQ(slurp(g.path() + "/cpu.max"), "150000 100000");
    dirs.push_back(g.path());
  }
  for (const auto& d : dirs)
    EXPECT_TRUE(fs::is_directory(d)) << d;

  auto name = fs::path(g.path()).filename().string();
  std::string err;
  EXPECT_FALSE(cgroup::create(layout_, root_, name, {}, err)) << "a second create must fail";
  EXPECT_NE(err.find("already exists"), std::string::npos) << err;
  EXPECT_TRUE(fs::is_directory(g.path())) << "a failed create must not remove the live group";

  auto stats = g.stats();
  EXPECT_EQ(stats.pids_current, 0u);
  EXPECT_FALSE(g.oom_killed());
  EXPECT_TRUE(g.destroy(err)) << err;
  for (const auto& d : dirs)
    EXPECT_FALSE(fs::exists(d)) << d;
  EXPECT_TRUE(g.destroy(err)) << "idempotent: " << err;
  EXPECT_FALSE(g.prepare_attach(err));
  // The name is free again.
  auto again = cgroup::create(layout_, root_, name, {}, err);
  ASSERT_TRUE(again) << err;
  EXPECT_TRUE(again->destroy(err)) << err;
}

TEST_F(cgroup_test, no_limits_need_no_controllers_and_a_missing_one_is_named) {
  if (layout_.version != 1)
    GTEST_SKIP() << "removing a controller from the layout is a v1 scenario";
  auto l = layout_;
  l.v1.erase("cpu");
  std::string err;
  EXPECT_FALSE(cgroup::create(l, root_, unique("nocpu"), {16 * mib, 8, 0.5}, err));
  EXPECT_NE(err.find("cpu"), std::string::npos) << err;
  EXPECT_NE(err.find("not mounted"), std::string::npos) << err;
  auto g = cgroup::create(l, root_, unique("nocpu"), {16 * mib, 8, 0}, err);
  ASSERT_TRUE(g) << err;
  EXPECT_EQ(g->path("cpu"), "");
  created_roots_.push_back(fs::path(g->path()).parent_path().string());
  EXPECT_TRUE(g->destroy(err)) << err;
}

TEST_F(cgroup_test, a_child_beyond_the_memory_limit_is_oom_killed) {
  auto g = make({32 * mib, 64, 0}, "oom");
  // Touches 200 MiB after joining: the kernel must kill it with SIGKILL.
  pid_t pid = spawn_fn(g, [] {
    size_t size = 200 * mib;
    void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
      ::_exit(3);
    for (size_t i = 0; i < size; i += 4096)
      static_cast<volatile char*>(p)[i] = 1;
    ::_exit(4); // survived: the limit did not apply
  });
  int status = reap(pid, 10s);
  ASSERT_NE(status, -1) << "the child did not finish within 10 s";
  ASSERT_TRUE(WIFSIGNALED(status)) << "exit code " << WEXITSTATUS(status);
  EXPECT_EQ(WTERMSIG(status), SIGKILL);
  EXPECT_TRUE(g.oom_killed());
  auto s = g.stats();
  EXPECT_GE(s.oom_kills, 1u);
  EXPECT_GE(s.memory_peak, 16 * mib) << "the child got close to the limit";
  EXPECT_LE(s.memory_peak, 33 * mib);
  EXPECT_GT(s.cpu_usage_ns, 0u);

  // The shell form: a pipeline whose tail buffers 200 MiB without a newline.
  auto sh = make({32 * mib, 64, 0}, "oomsh");
  pid_t shell = spawn_shell(sh, "exec 2>/dev/null; head -c 200M /dev/zero | tail > /dev/null");
  status = reap(shell, 10s);
  ASSERT_NE(status, -1);
  // The OOM killer picks a process of the group: the shell reports its pipeline's SIGKILL, or
  // is the one killed.
  EXPECT_TRUE((WIFEXITED(status) && WEXITSTATUS(status) == 128 + SIGKILL)
              || (WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL))
    << status;
  EXPECT_TRUE(sh.oom_killed());
  std::string err;
  EXPECT_TRUE(g.destroy(err)) << err;
  EXPECT_TRUE(sh.destroy(err)) << err;
}

TEST_F(cgroup_test, a_child_under_the_memory_limit_is_not_oom_killed) {
  auto g = make({32 * mib, 64, 0}, "fits");
  pid_t pid = spawn_fn(g, [] {
    size_t size = 8 * mib;
    void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
      ::_exit(3);
    for (size_t i = 0; i < size; i += 4096)
      static_cast<volatile char*>(p)[i] = 1;
  });
  int status = reap(pid, 10s);
  ASSERT_TRUE(WIFEXITED(status)) << status;
  EXPECT_EQ(WEXITSTATUS(status), 0);
  EXPECT_FALSE(g.oom_killed());
  auto s = g.stats();
  EXPECT_EQ(s.oom_kills, 0u);
  EXPECT_GE(s.memory_peak, 8 * mib);
  std::string err;
  EXPECT_TRUE(g.destroy(err)) << err;
}

TEST_F(cgroup_test, the_pids_limit_makes_forks_fail_and_nothing_survives_destroy) {
  auto g = make({0, 8, 0}, "pids");
  int out = -1;
  pid_t shell = spawn_shell(
    g,
    "i=0; while [ $i -lt 50 ]; do sleep 30 </dev/null >/dev/null 2>&1 & echo pid $!; "
    "i=$((i+1)); done; echo finished",
    &out);
  ASSERT_GE(out, 0);
  auto text = read_until(out, "", 5s); // until EOF: the shell exited
  ::close(out);
  int status = reap(shell, 5s);
  ASSERT_NE(status, -1);
  EXPECT_EQ(text.find("finished"), std::string::npos) << text;
  auto lower = text;
  for (auto& c : lower)
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  EXPECT_NE(lower.find("fork"), std::string::npos) << "no fork failure reported:\n" << text;

  std::vector<pid_t> sleeps;
  std::istringstream lines{text};
  for (std::string word; lines >> word;)
    if (word == "pid") {
      pid_t p = 0;
      lines >> p;
      sleeps.push_back(p);
    }
  EXPECT_GE(sleeps.size(), 1u);
  EXPECT_LT(sleeps.size(), 8u) << "the shell itself counts against pids.max 8";
  auto in_group = procs_of(g.path("pids"));
  for (pid_t p : sleeps)
    EXPECT_NE(std::find(in_group.begin(), in_group.end(), p), in_group.end()) << p;
  auto s = g.stats();
  EXPECT_LE(s.pids_current, 8u);
  EXPECT_EQ(s.pids_current, sleeps.size());

  std::string err;
  EXPECT_TRUE(g.destroy(err)) << err;
  for (pid_t p : sleeps)
    EXPECT_TRUE(process_gone(p)) << p;
  EXPECT_FALSE(fs::exists(g.path("pids")));
}

TEST_F(cgroup_test, destroy_kills_a_process_tree_and_an_attached_process) {
  auto g = make({64 * mib, 64, 0}, "tree");
  int out = -1;
  pid_t shell = spawn_shell(g,
                            "sh -c 'sleep 30 & sleep 30 & wait' & "
                            "(setsid sleep 30 </dev/null >/dev/null 2>&1 &); "
                            "sleep 30 & echo ready; wait",
                            &out);
  ASSERT_GE(out, 0);
  EXPECT_NE(read_until(out, "ready", 5s).find("ready"), std::string::npos);
  ::close(out);

  // A process started outside, then moved in.
  pid_t outsider = ::fork();
  if (outsider == 0) {
    ::execl("/bin/sleep", "sleep", "30", static_cast<char*>(nullptr));
    ::_exit(127);
  }
  ASSERT_GT(outsider, 0);
  children_.push_back(outsider);
  std::string err;
  ASSERT_TRUE(g.attach(outsider, err)) << err;
  auto name = fs::path(g.path()).filename().string();
  EXPECT_NE(slurp("/proc/" + std::to_string(outsider) + "/cgroup").find(name), std::string::npos);
  EXPECT_FALSE(g.attach(-5, err));

  // top shell, inner shell, its two sleeps, the setsid sleep, a sleep, the outsider
  auto inside = wait_procs(g.path(), 7, 3s);
  std::this_thread::sleep_for(200ms); // the subshell around setsid exits
  inside = procs_of(g.path());
  ASSERT_EQ(inside.size(), 7u);
  EXPECT_EQ(g.stats().pids_current, 7u);

  auto started = std::chrono::steady_clock::now();
  ASSERT_TRUE(g.destroy(err)) << err;
  EXPECT_LT(std::chrono::steady_clock::now() - started, 2s);
  for (pid_t p : inside)
    EXPECT_TRUE(process_gone(p)) << p;
  for (pid_t p : {shell, outsider}) {
    int status = reap(p, 2s);
    ASSERT_TRUE(WIFSIGNALED(status)) << status;
    EXPECT_EQ(WTERMSIG(status), SIGKILL);
  }
  EXPECT_FALSE(fs::exists(g.path()));
}

TEST_F(cgroup_test, the_cpu_quota_throttles_a_busy_child) {
  auto g = make({0, 8, 0.2}, "cpu");
  // Spins for 0.6 s of wall time; at 0.2 cores it gets about 0.12 s of CPU.
  pid_t pid = spawn_fn(g, [] {
    double end = now_seconds() + 0.6;
    while (now_seconds() < end) {
    }
  });
  int status = reap(pid, 5s);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  auto s = g.stats();
  EXPECT_GT(s.cpu_usage_ns, 10'000'000u);
  EXPECT_LT(s.cpu_usage_ns, 350'000'000u) << "0.2 cores for 0.6 s";
  EXPECT_GT(keyed(g.path("cpu") + "/cpu.stat", "nr_throttled"), 0u);
  std::string err;
  EXPECT_TRUE(g.destroy(err)) << err;
}

TEST_F(cgroup_test, remove_orphans_removes_the_groups_not_kept) {
  std::string keep_name, busy_dir, idle_dir, kept_dir;
  pid_t sleeper = -1;
  {
    // The objects go away without destroy(), as after a crash.
    auto kept = make({0, 8, 0}, "kept");
    auto busy = make({0, 8, 0}, "busy");
    auto idle = make({0, 8, 0}, "idle");
    keep_name = fs::path(kept.path()).filename().string();
    kept_dir = kept.path();
    busy_dir = busy.path();
    idle_dir = idle.path();
    sleeper = spawn_fn(busy, [] {
      ::execl("/bin/sleep", "sleep", "30", static_cast<char*>(nullptr));
      ::_exit(127);
    });
  }
  for (const auto& dir : {kept_dir, busy_dir, idle_dir})
    EXPECT_TRUE(fs::is_directory(dir)) << "the destructor must not remove the group";
  EXPECT_EQ(wait_procs(busy_dir, 1, 3s).size(), 1u);

  auto keep = [&](const std::string& n) { return n == keep_name; };
  auto removed = cgroup::remove_orphans(layout_, root_, keep);
  EXPECT_EQ(removed, 2u);
  EXPECT_TRUE(fs::is_directory(kept_dir));
  EXPECT_FALSE(fs::exists(busy_dir));
  EXPECT_FALSE(fs::exists(idle_dir));
  int status = reap(sleeper, 2s);
  ASSERT_TRUE(WIFSIGNALED(status)) << status;
  EXPECT_EQ(WTERMSIG(status), SIGKILL);

  EXPECT_EQ(cgroup::remove_orphans(layout_, root_, nullptr), 1u);
  EXPECT_FALSE(fs::exists(kept_dir));
  EXPECT_FALSE(fs::exists(fs::path(kept_dir).parent_path())) << "the empty root group is removed";
  EXPECT_EQ(cgroup::remove_orphans(layout_, root_, nullptr), 0u);
}

// On a hybrid host the v2 code path runs against the cgroup2 mount that has no
// controllers: a limit is refused with the controller named, and a group
// without limits still tracks, stats and kills its processes (cgroup.kill).
TEST_F(cgroup_test, v2_path_on_a_controllerless_unified_hierarchy) {
  if (layout_.version == 2)
    GTEST_SKIP() << "a v2 host runs the v2 path in every other test";
  if (layout_.v2_self.empty() || ::access(layout_.v2_self.c_str(), W_OK) != 0)
    GTEST_SKIP() << "no writable cgroup2 mount holds this process";
  if (slurp(layout_.v2_self + "/cgroup.controllers").find("memory") != std::string::npos)
    GTEST_SKIP() << "the cgroup2 mount has the memory controller";
  auto l = layout_;
  l.version = 2;
  l.v1.clear();
  extra_layouts_.push_back(l);
  std::string err;
  EXPECT_FALSE(cgroup::create(l, root_, unique("v2"), {32 * mib, 0, 0}, err));
  EXPECT_NE(err.find("cgroup v2: controller memory not available"), std::string::npos) << err;
  EXPECT_FALSE(cgroup::create(l, root_, unique("v2"), {0, 0, 1}, err));
  EXPECT_NE(err.find("cpu"), std::string::npos) << err;

  auto g = cgroup::create(l, root_, unique("v2"), {0, 0, 0}, err);
  ASSERT_TRUE(g) << err;
  EXPECT_EQ(g->path("memory"), "");
  pid_t child = spawn_fn(*g, [] {
    const char* script = "sleep 30 & i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; wait";
    ::execl("/bin/sh", "sh", "-c", script, static_cast<char*>(nullptr));
    ::_exit(127);
  });
  auto inside = wait_procs(g->path(), 2, 3s);
  EXPECT_EQ(inside.size(), 2u);
  auto rel = g->path().substr(l.v2_mount.size());
  EXPECT_NE(slurp("/proc/" + std::to_string(child) + "/cgroup").find("0::" + rel),
            std::string::npos);
  std::this_thread::sleep_for(50ms);
  EXPECT_GT(g->stats().cpu_usage_ns, 0u);
  EXPECT_FALSE(g->oom_killed());
  ASSERT_TRUE(g->destroy(err)) << err;
  for (pid_t p : inside)
    EXPECT_TRUE(process_gone(p)) << p;
  int status = reap(child, 2s);
  ASSERT_TRUE(WIFSIGNALED(status)) << status;
  EXPECT_FALSE(fs::exists(g->path()));
  EXPECT_EQ(cgroup::remove_orphans(l, root_, nullptr), 0u);
  EXPECT_FALSE(fs::exists(fs::path(g->path()).parent_path()));
}

} // namespace
