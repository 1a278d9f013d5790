// Runs the real `alephd-guest` in a bubblewrap sandbox through alephd::sandbox,
// with tests/guest_test_app.cpp (and tests/sandbox_probe.cpp) as the program.
// Needs bwrap and the permission to create namespaces (root here).

#include "runtime/namespace_pool.hpp"
#include "runtime/sandbox.hpp"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <fcntl.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <linux/magic.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <fstream>
#include <iterator>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#ifndef ALEPHD_GUEST_BINARY
#  error "ALEPHD_GUEST_BINARY must name the static alephd-guest binary"
#endif
#ifndef ALEPHD_GUEST_TEST_APP
#  error "ALEPHD_GUEST_TEST_APP must name the guest_test_app binary"
#endif

namespace gp = alephd::guest;
using namespace std::chrono_literals;
using clock_type = std::chrono::steady_clock;

namespace {

std::string read_file(const std::string& path) {
  std::ifstream in{path, std::ios::binary};
  return {std::istreambuf_iterator<char>{in}, {}};
}

bool alive(int pid) {
  return pid > 0 && (::kill(pid, 0) == 0 || errno != ESRCH);
}

// Whether `pid` exists and is not a zombie. Sandbox processes other than bwrap
// itself are reparented to the host's init, which reaps them in its own time.
bool running_process(int pid) {
  auto stat = read_file("/proc/" + std::to_string(pid) + "/stat");
  auto paren = stat.rfind(')');
  if (paren == std::string::npos || paren + 2 >= stat.size())
    return false;
  char state = stat[paren + 2];
  return state != 'Z' && state != 'X';
}

// `pid` and all its descendants, from /proc/PID/task/TID/children.
std::set<int> process_tree(int pid) {
  std::set<int> out;
  std::vector<int> todo{pid};
  while (!todo.empty()) {
    int p = todo.back();
    todo.pop_back();
    if (!out.insert(p).second)
      continue;
    std::error_code ec;
    auto tasks = "/proc/" + std::to_string(p) + "/task";
    for (const auto& t : std::filesystem::directory_iterator{tasks, ec}) {
      std::istringstream in{read_file(t.path().string() + "/children")};
      for (int c; in >> c;)
        todo.push_back(c);
    }
  }
  return out;
}

bool wait_for(const std::function<bool()>& pred, std::chrono::milliseconds timeout) {
  auto until = clock_type::now() + timeout;
  while (!pred()) {
    if (clock_type::now() >= until)
      return false;
    std::this_thread::sleep_for(10ms);
  }
  return true;
}

gp::http_request get(uint64_t id, std::string path, std::string query = "") {
  return {id, "GET", std::move(path), std::move(query), {}, ""};
}

class sandbox : public ::testing::Test {
protected:
  void SetUp() override {
    char tmpl[] = "/tmp/sandbox_test_XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }

  void TearDown() override {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
    // The tests' parent cgroup, once no test uses it.
    alephd::cgroup::remove_orphans("alephd-sandbox-test", nullptr);
  }

  alephd::sandbox_options options() {
    alephd::sandbox_options o;
    o.guest_binary = ALEPHD_GUEST_BINARY;
    o.run_dir = dir_ + "/run";
    o.hostname = "sandbox-test";
    o.ready_timeout = 5000ms;
    return o;
  }

  // Port 8080 in every test: each sandbox has its own network namespace.
  static gp::configure config(const std::string& program) {
    gp::configure cfg;
    cfg.code = read_file(program);
    cfg.encoding = "plain";
    cfg.entrypoint = "app";
    cfg.variables = {{"GREETING", "hello-from-sandbox"}, {"APP_PORT", "8080"}};
    cfg.app_port = 8080;
    return cfg;
  }

#ifdef ALEPHD_SANDBOX_PROBE
  // The probe as the agent, misbehaving as `mode` says (see sandbox_probe.cpp).
  alephd::sandbox_options hostile(const std::string& mode) {
    auto o = options();
    o.guest_binary = ALEPHD_SANDBOX_PROBE;
    o.ready_timeout = 1000ms;
    o.extra_args = {"--setenv", "ALEPHD_HOSTILE_MODE", mode};
    return o;
  }
#endif

  std::string dir_;
};

} // namespace

// What a child process sees in the namespace of `fd`: 1 = `lo` up and no other interface up
// (a host with tunnel modules puts down sit0, gre0... in every new namespace); 0 = not so;
// -1 = cannot enter it.
static int only_loopback_up_in(int fd) {
  pid_t pid = ::fork();
  if (pid == 0) {
    if (::setns(fd, CLONE_NEWNET) != 0)
      ::_exit(2);
    int s = ::socket(AF_INET, SOCK_DGRAM, 0);
    auto up = [&](const char* name) {
      ifreq ifr{};
      std::strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
      return s >= 0 && ::ioctl(s, SIOCGIFFLAGS, &ifr) == 0 && (ifr.ifr_flags & IFF_UP) != 0;
    };
    bool lo_up = false, other_up = false;
    auto* names = ::if_nameindex();
    for (auto* n = names; n != nullptr && n->if_index != 0; ++n) {
      bool is_lo = std::string{n->if_name} == "lo";
      (is_lo ? lo_up : other_up) |= up(n->if_name);
    }
    if (names != nullptr)
      ::if_freenameindex(names);
    ::_exit(lo_up && !other_up ? 0 : 1);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) == 2)
    return -1;
  return WEXITSTATUS(status) == 0 ? 1 : 0;
}

static std::string ns_link(const std::string& path) {
  char buf[64];
  auto n = ::readlink(path.c_str(), buf, sizeof buf);
  return n > 0 ? std::string{buf, static_cast<std::size_t>(n)} : "";
}

TEST(namespace_pool, spare_namespaces_are_fresh_with_only_lo_up_and_each_handed_out_once) {
  alephd::namespace_pool pool{2};
  if (::geteuid() != 0) {
    // Without the privilege to make namespaces the pool stays empty: sandboxes use bwrap's.
    EXPECT_FALSE(pool.wait_ready(1, 10000ms));
    EXPECT_FALSE(pool.take());
    EXPECT_FALSE(pool.usable());
    return;
  }
  if (!pool.wait_ready(2, 10000ms) && !pool.usable())
    GTEST_SKIP() << "root without CAP_SYS_ADMIN: no namespaces here";
  ASSERT_TRUE(pool.wait_ready(2, 10000ms));
  EXPECT_TRUE(pool.usable());
  std::set<std::string> seen;
  for (const char* kind : {"net", "ipc", "uts"})
    seen.insert(ns_link(std::string{"/proc/self/ns/"} + kind));
  ASSERT_EQ(seen.size(), 3u);
  std::vector<alephd::spare_namespaces> taken;
  for (int round = 0; round < 3; ++round) { // taken ones are made again
    ASSERT_TRUE(pool.wait_ready(2, 10000ms)) << "round " << round;
    for (int i = 0; i < 2; ++i) {
      auto set = pool.take();
      ASSERT_TRUE(set);
      for (auto [fd, kind] : {std::pair{set.net, "net"}, {set.ipc, "ipc"}, {set.uts, "uts"}}) {
        auto link = ns_link("/proc/self/fd/" + std::to_string(fd));
        EXPECT_EQ(link.rfind(std::string{kind} + ":[", 0), 0u) << link;
        EXPECT_TRUE(seen.insert(link).second) << "a namespace handed out twice, or ours: " << link;
        EXPECT_NE(::fcntl(fd, F_GETFD) & FD_CLOEXEC, 0); // never leaks into a child
      }
      EXPECT_EQ(only_loopback_up_in(set.net), 1);
      taken.push_back(std::move(set));
    }
  }
  // This thread is still where it was: the pool's thread made them, not us.
  for (const char* kind : {"net", "ipc", "uts"})
    EXPECT_EQ(seen.count(ns_link(std::string{"/proc/self/ns/"} + kind)), 1u);
  auto fd = taken.front().net;
  auto fd_path = "/proc/self/fd/" + std::to_string(fd);
  auto before = ns_link(fd_path);
  ASSERT_FALSE(before.empty());
  taken.front().close();
  EXPECT_EQ(taken.front().net, -1);
  // Closed: the number names nothing, or (the pool's thread refills meanwhile) a new fd.
  EXPECT_NE(ns_link(fd_path), before);
}

TEST_F(sandbox, serves_a_request) {
  alephd::sandbox sb{options()};
  ASSERT_EQ(sb.start(config(ALEPHD_GUEST_TEST_APP)), "");
  EXPECT_TRUE(sb.running());
  EXPECT_GT(sb.pid(), 0);
  auto resp = sb.request(get(42, "/echo", "hello"), 5000ms);
  EXPECT_EQ(resp.id, 42u);
  EXPECT_EQ(resp.status, 200) << resp.error;
  EXPECT_EQ(resp.error, "");
  EXPECT_EQ(resp.body, "hello hello-from-sandbox");
  // The program went in as a file of the run dir, which the agent copied: gone from there.
  EXPECT_FALSE(std::filesystem::exists(dir_ + "/run/program"));
  EXPECT_TRUE(wait_for(
    [&] {
      for (const auto& l : sb.logs())
        if (l.stream == "stdout" && l.line.find("listening on 8080") != std::string::npos)
          return true;
      return false;
    },
    3000ms));
}

TEST_F(sandbox, ten_concurrent_requests_are_all_answered) {
  alephd::sandbox sb{options()};
  ASSERT_EQ(sb.start(config(ALEPHD_GUEST_TEST_APP)), "");
  std::vector<gp::http_response> answers(10);
  std::vector<std::thread> threads;
  for (std::size_t i = 0; i < answers.size(); ++i)
    threads.emplace_back([&, i] {
      // The same caller id everywhere: the sandbox must not mix them up.
      answers[i] = sb.request(get(7, "/echo", "n=" + std::to_string(i)), 8000ms);
    });
  for (auto& t : threads)
    t.join();
  for (std::size_t i = 0; i < answers.size(); ++i) {
    EXPECT_EQ(answers[i].status, 200) << i << ": " << answers[i].error;
    EXPECT_EQ(answers[i].id, 7u);
    EXPECT_EQ(answers[i].body, "n=" + std::to_string(i) + " hello-from-sandbox");
  }
}

TEST_F(sandbox, the_guest_sees_no_host_files_pids_or_network) {
#ifndef ALEPHD_SANDBOX_PROBE
  GTEST_SKIP() << "ALEPHD_SANDBOX_PROBE (tests/sandbox_probe.cpp) not defined";
#else
  // A host port the guest must not reach.
  int lfd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(lfd, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(lfd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  ASSERT_EQ(::listen(lfd, 4), 0);
  socklen_t len = sizeof addr;
  ::getsockname(lfd, reinterpret_cast<sockaddr*>(&addr), &len);
  auto host_port = std::to_string(ntohs(addr.sin_port));

  // Both ways to the namespaces: made ahead (root only; the pool is full by now or soon), and
  // made by bwrap.
  if (::geteuid() == 0) {
    auto& pool = alephd::namespace_pool::shared();
    EXPECT_TRUE(pool.wait_ready(1, 10000ms) || !pool.usable());
  }
  std::set<std::string> sandbox_namespaces;
  // Both alive at once: the kernel reuses the number of a namespace that is gone.
  std::vector<std::unique_ptr<alephd::sandbox>> sandboxes;
  for (bool spare : {true, false}) {
    SCOPED_TRACE(spare ? "namespaces made ahead" : "namespaces made by bwrap");
    auto o = options();
    o.use_namespace_pool = spare;
    o.run_dir += spare ? "-spare" : "-bwrap";
    auto& sb = *sandboxes.emplace_back(std::make_unique<alephd::sandbox>(o));
    auto cfg = config(ALEPHD_SANDBOX_PROBE);
    cfg.variables["PROBE_PORT"] = host_port;
    ASSERT_EQ(sb.start(cfg), "");
    auto resp = sb.request(get(1, "/probe"), 5000ms);
    ASSERT_EQ(resp.status, 200) << resp.error;
    const auto& j = resp.body;
    EXPECT_NE(j.find("\"work\":false"), std::string::npos) << j;
    EXPECT_NE(j.find("\"etc_hostname\":false"), std::string::npos) << j;
    EXPECT_NE(j.find("\"root\":false"), std::string::npos) << j;
    EXPECT_NE(j.find("\"hostname\":\"sandbox-test\""), std::string::npos) << j;
    EXPECT_NE(j.find("\"host_port_reachable\":false"), std::string::npos) << j;
    auto probe = nlohmann::json::parse(j);
    // The agent is pid 1, the program 2: its own pid namespace.
    EXPECT_EQ(probe["pid"], 2) << j;
    // Its own network, IPC and UTS namespaces: not ours, not the other sandbox's.
    for (const char* kind : {"net", "ipc", "uts"}) {
      auto theirs = probe["ns"][kind].get<std::string>();
      EXPECT_EQ(theirs.rfind(std::string{kind} + ":[", 0), 0u) << j;
      EXPECT_NE(theirs, ns_link(std::string{"/proc/self/ns/"} + kind)) << j;
      EXPECT_TRUE(sandbox_namespaces.insert(theirs).second) << j;
    }
    // /dev: the harmless devices work, nothing of the host's is there, nothing can be added.
    auto devs = probe["dev"].get<std::vector<std::string>>();
    for (const char* need : {"null", "zero", "full", "random", "urandom", "tty", "fd", "shm"})
      EXPECT_NE(std::find(devs.begin(), devs.end(), need), devs.end()) << need << ": " << j;
    for (const char* host_only : {"kmsg", "mem", "vda", "sda", "kvm", "loop0", "fuse"})
      EXPECT_EQ(std::find(devs.begin(), devs.end(), host_only), devs.end()) << host_only << ": " << j;
    EXPECT_EQ(probe["dev_null_write"], "ok") << j;
    EXPECT_EQ(probe["dev_urandom_read"], "ok") << j;
    EXPECT_NE(probe["dev_create"], "ok") << j;
    pollfd pfd{lfd, POLLIN, 0};
    EXPECT_EQ(::poll(&pfd, 1, 0), 0) << "the guest reached a host port";
  }
  ::close(lfd);
#endif
}

TEST_F(sandbox, the_usual_escapes_are_refused_and_a_program_still_works) {
#ifndef ALEPHD_SANDBOX_PROBE
  GTEST_SKIP() << "ALEPHD_SANDBOX_PROBE (tests/sandbox_probe.cpp) not defined";
#else
  if (::geteuid() != 0)
    GTEST_SKIP() << "needs root: a sandbox started by root is the case to confine";
  alephd::sandbox sb{options()};
  ASSERT_EQ(sb.start(config(ALEPHD_SANDBOX_PROBE)), "");
  auto resp = sb.request(get(1, "/escapes"), 5000ms);
  ASSERT_EQ(resp.status, 200) << resp.error;
  auto j = nlohmann::json::parse(resp.body, nullptr, false);
  ASSERT_TRUE(j.is_object()) << resp.body;
  // An unprivileged user, no capabilities, no way to gain any, a seccomp filter.
  EXPECT_EQ(j["uid"], alephd::sandbox_user) << resp.body;
  EXPECT_EQ(j["euid"], alephd::sandbox_user) << resp.body;
  EXPECT_EQ(j["gid"], alephd::sandbox_user) << resp.body;
  EXPECT_EQ(j["no_new_privs"], 1) << resp.body;
  EXPECT_EQ(j["seccomp"], "2") << resp.body; // filter mode
  EXPECT_EQ(j["cap_eff"], "0000000000000000") << resp.body;
  for (const char* attempt : {"ptrace", "mount", "umount", "module_load", "init_module",
                              "raw_socket", "raw_socket6", "packet_socket", "sysrq", "kmsg",
                              "unshare_user", "unshare_net", "setuid_root", "chroot", "kexec",
                              "bpf", "reboot"})
    EXPECT_NE(j.value(attempt, std::string{"ok"}), "ok") << attempt << " worked: " << resp.body;
  // The filter, not only the missing capability, refuses the kernel's dangerous calls.
  for (const char* attempt : {"ptrace", "mount", "module_load", "raw_socket", "packet_socket",
                              "unshare_user", "kexec", "bpf"})
    EXPECT_EQ(j.value(attempt, std::string{}), "EPERM") << attempt << ": " << resp.body;
  // What programs legitimately do still works.
  for (const char* allowed : {"tcp_socket", "netlink_socket", "fork", "write_tmp"})
    EXPECT_EQ(j.value(allowed, std::string{}), "ok") << allowed << ": " << resp.body;
#endif
}

TEST_F(sandbox, the_program_reaches_volumes_at_nested_mount_points) {
  // bwrap would make /mnt and /mnt/deep mode 0700: out of reach of the program's user.
  auto vol = dir_ + "/vol";
  std::filesystem::create_directories(vol);
  std::ofstream{vol + "/hello.txt"} << "from the volume";
  auto o = options();
  o.extra_args = {"--ro-bind", vol, "/mnt/deep/vol", "--perms", "1777", "--size", "1048576",
                  "--tmpfs", "/srv/scratch/space"};
  alephd::sandbox sb{o};
  ASSERT_EQ(sb.start(config(ALEPHD_GUEST_TEST_APP)), "");
  auto r = sb.request(get(1, "/read", "mnt/deep/vol/hello.txt"), 5000ms);
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "from the volume");
  EXPECT_EQ(sb.request(get(2, "/write", "0:srv/scratch/space/f"), 5000ms).status, 200);
  // Read-only stays read-only.
  EXPECT_EQ(sb.request(get(3, "/write", "0:mnt/deep/vol/evil"), 5000ms).status, 507);
}

TEST_F(sandbox, a_crash_ends_the_guest_and_is_logged) {
  alephd::sandbox sb{options()};
  ASSERT_EQ(sb.start(config(ALEPHD_GUEST_TEST_APP)), "");
  auto resp = sb.request(get(3, "/crash"), 5000ms);
  EXPECT_EQ(resp.status, 502);
  EXPECT_NE(resp.error, "");
  EXPECT_TRUE(wait_for([&] { return !sb.running(); }, 5000ms));
  bool logged = false;
  for (const auto& l : sb.logs())
    logged = logged
             || (l.stream == "system"
                 && l.line.find("exited with code 3") != std::string::npos);
  EXPECT_TRUE(logged);
  auto after = sb.request(get(4, "/echo", "x"), 1000ms);
  EXPECT_EQ(after.status, 502);
  EXPECT_NE(after.error, "");
  auto t0 = clock_type::now();
  EXPECT_EQ(sb.stop(), 3);
  EXPECT_LT(clock_type::now() - t0, 2s);
  EXPECT_FALSE(alive(sb.pid())); // bwrap itself is reaped
}

TEST_F(sandbox, stop_halts_promptly_and_leaves_no_process) {
  alephd::sandbox sb{options()};
  ASSERT_EQ(sb.start(config(ALEPHD_GUEST_TEST_APP)), "");
  ASSERT_EQ(sb.request(get(1, "/echo", "x"), 5000ms).status, 200);
  auto tree = process_tree(sb.pid());
  EXPECT_GE(tree.size(), 3u) << "bwrap, the agent (the namespace's init) and the program";
  auto t0 = clock_type::now();
  EXPECT_EQ(sb.stop(), 128 + SIGTERM);
  EXPECT_LT(clock_type::now() - t0, 3s);
  EXPECT_FALSE(sb.running());
  EXPECT_FALSE(alive(sb.pid())); // bwrap itself is reaped
  for (int p : tree)
    EXPECT_FALSE(running_process(p)) << "pid " << p << " survived stop()";
  EXPECT_EQ(sb.stop(), 128 + SIGTERM); // idempotent
  auto resp = sb.request(get(2, "/echo", "x"), 1000ms);
  EXPECT_EQ(resp.status, 502);
}

TEST_F(sandbox, a_slow_answer_times_out_with_504) {
  alephd::sandbox sb{options()};
  auto cfg = config(ALEPHD_GUEST_TEST_APP);
  cfg.variables["START_DELAY_MS"] = "30000"; // never listens during the test
  ASSERT_EQ(sb.start(cfg), "");
  auto t0 = clock_type::now();
  auto resp = sb.request(get(9, "/echo", "x"), 300ms);
  EXPECT_EQ(resp.id, 9u);
  EXPECT_EQ(resp.status, 504);
  EXPECT_LT(clock_type::now() - t0, 1s);
  EXPECT_TRUE(sb.running());
}

TEST_F(sandbox, a_binary_that_is_not_the_agent_fails_start_in_time) {
  auto o = options();
  o.guest_binary = "/usr/bin/true";
  o.ready_timeout = 3000ms;
  alephd::sandbox sb{o};
  auto t0 = clock_type::now();
  auto error = sb.start(config(ALEPHD_GUEST_TEST_APP));
  EXPECT_NE(error, "");
  EXPECT_EQ(error.find('\n'), std::string::npos) << error;
  EXPECT_LT(clock_type::now() - t0, 3500ms);
  EXPECT_FALSE(sb.running());
  EXPECT_FALSE(alive(sb.pid()));
  EXPECT_EQ(sb.request(get(1, "/echo"), 500ms).status, 502);
}

// /dev/shm is a tmpfs on every machine this runs on (Debian mounts one); /run is one under systemd.
static bool a_tmpfs_is_at_hand() {
  struct statfs fs {};
  return ::statfs("/dev/shm", &fs) == 0 && fs.f_type == TMPFS_MAGIC;
}

static bool on_tmpfs(const std::string& path) {
  struct statfs fs {};
  return ::statfs(path.c_str(), &fs) == 0 && fs.f_type == TMPFS_MAGIC;
}

// The scratch dirs of `group` that sandboxes which ended without their owner left: each is
// swept by the group's next owner; then the group goes when it is empty.
static void sweep_scratch_group(const std::string& group, size_t expected) {
  if (alephd::sandbox::scratch_root().empty())
    return;
  EXPECT_EQ(alephd::sandbox::remove_scratch_orphans(group, {}), expected);
  alephd::sandbox::release_scratch_group(group);
  EXPECT_FALSE(std::filesystem::exists(std::filesystem::path{alephd::sandbox::scratch_root()} / group));
}

TEST_F(sandbox, the_files_of_a_start_are_on_a_tmpfs_and_leave_with_the_sandbox) {
  if (!a_tmpfs_is_at_hand())
    GTEST_SKIP() << "no tmpfs at /dev/shm";
  auto o = options();
  o.scratch_group = "test-" + std::to_string(::getpid());
  alephd::sandbox sb{o};
  ASSERT_EQ(sb.start(config(ALEPHD_GUEST_TEST_APP)), "");
  auto scratch = sb.handle().scratch_dir;
  ASSERT_NE(scratch, "");
  EXPECT_TRUE(on_tmpfs(scratch)) << scratch;
  EXPECT_EQ(std::filesystem::path{scratch}.parent_path(),
            std::filesystem::path{alephd::sandbox::scratch_root()} / o.scratch_group);
  struct stat st {};
  ASSERT_EQ(::stat(scratch.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u) << "only its owner (and the agent, root) goes there";
  EXPECT_EQ(sb.request(get(1, "/echo", "x"), 5000ms).body, "x hello-from-sandbox");
  // Nothing of the start on the run dir's disk.
  for (const char* name : {"guest.sock", "program", "bwrap.err", "bwrap.out"})
    EXPECT_FALSE(std::filesystem::exists(o.run_dir + "/" + name)) << name;
  sb.stop();
  EXPECT_FALSE(std::filesystem::exists(scratch)) << "left behind";
  EXPECT_EQ(sb.handle().scratch_dir, "");

  // Turned off: the files are in the run dir, as before.
  o.scratch_on_tmpfs = false;
  alephd::sandbox plain{o};
  ASSERT_EQ(plain.start(config(ALEPHD_GUEST_TEST_APP)), "");
  EXPECT_EQ(plain.handle().scratch_dir, "");
  EXPECT_TRUE(std::filesystem::exists(o.run_dir + "/bwrap.err"));
  EXPECT_EQ(plain.request(get(2, "/echo", "y"), 5000ms).body, "y hello-from-sandbox");
  plain.stop();
  std::error_code ec;
  std::filesystem::remove(std::filesystem::path{alephd::sandbox::scratch_root()} / o.scratch_group, ec);
}

TEST_F(sandbox, a_dev_of_its_own_works_and_takes_no_file_from_the_program) {
#ifndef ALEPHD_SANDBOX_PROBE
  GTEST_SKIP() << "ALEPHD_SANDBOX_PROBE (tests/sandbox_probe.cpp) not defined";
#else
  auto root = alephd::sandbox::scratch_root();
  struct statvfs vfs {};
  if (::geteuid() != 0 || root.empty() || ::statvfs(root.c_str(), &vfs) != 0
      || (vfs.f_flag & ST_NODEV) != 0)
    GTEST_SKIP() << "needs root and a scratch tmpfs that allows devices";
  auto probe_node = root + "/test-mknod-" + std::to_string(::getpid());
  if (::mknod(probe_node.c_str(), S_IFCHR | 0600, makedev(1, 3)) != 0)
    GTEST_SKIP() << "no mknod here (root in a user namespace?): " << std::strerror(errno);
  ::unlink(probe_node.c_str());
  for (bool own : {true, false}) {
    SCOPED_TRACE(own ? "its own /dev" : "bwrap's --dev");
    auto o = options();
    o.own_dev = own;
    alephd::sandbox sb{o};
    auto cfg = config(ALEPHD_SANDBOX_PROBE);
    cfg.variables["PROBE_PORT"] = "9";
    ASSERT_EQ(sb.start(cfg), "");
    auto dev = std::filesystem::path{sb.handle().scratch_dir} / "dev";
    struct stat st {};
    if (own) {
      ASSERT_EQ(::stat((dev / "null").c_str(), &st), 0) << dev;
      EXPECT_TRUE(S_ISCHR(st.st_mode));
      EXPECT_EQ(st.st_rdev, makedev(1, 3));
      EXPECT_EQ(st.st_mode & 0777, 0666u);
      ASSERT_EQ(::stat(dev.c_str(), &st), 0);
      EXPECT_EQ(st.st_uid, 0u);
      EXPECT_EQ(st.st_mode & 022, 0u) << "others may write to it";
    } else {
      EXPECT_FALSE(std::filesystem::exists(dev)) << "bwrap's --dev was asked for";
    }
    auto resp = sb.request(get(1, "/probe"), 5000ms);
    ASSERT_EQ(resp.status, 200) << resp.error;
    auto probe = nlohmann::json::parse(resp.body);
    auto devs = probe["dev"].get<std::vector<std::string>>();
    // Ours has no pseudo-terminals; bwrap's has a devpts of its own.
    EXPECT_EQ(std::find(devs.begin(), devs.end(), "pts") != devs.end(), !own) << resp.body;
    // Either way the devices work and the program adds nothing to /dev.
    EXPECT_EQ(probe["dev_null_write"], "ok") << resp.body;
    EXPECT_EQ(probe["dev_urandom_read"], "ok") << resp.body;
    EXPECT_NE(probe["dev_create"], "ok") << resp.body;
    sb.stop();
    if (own) {
      EXPECT_FALSE(std::filesystem::exists(dev));
    }
  }
#endif
}

TEST_F(sandbox, bwraps_complaint_is_in_the_start_error_and_no_scratch_dir_is_left) {
  auto o = options();
  o.guest_binary = dir_ + "/no-such-agent"; // bwrap cannot bind it
  o.scratch_group = "test-fail-" + std::to_string(::getpid());
  alephd::sandbox sb{o};
  auto error = sb.start(config(ALEPHD_GUEST_TEST_APP));
  EXPECT_NE(error.find("(bwrap: "), std::string::npos) << error;
  EXPECT_NE(error.find("no-such-agent"), std::string::npos) << error;
  EXPECT_EQ(sb.handle().scratch_dir, "");
  auto group = std::filesystem::path{alephd::sandbox::scratch_root()} / o.scratch_group;
  if (!alephd::sandbox::scratch_root().empty()) {
    std::error_code ec;
    EXPECT_TRUE(std::filesystem::is_empty(group, ec)) << "a scratch dir was left in " << group;
    std::filesystem::remove(group, ec);
  }
}

TEST_F(sandbox, a_refused_configure_fails_start) {
  alephd::sandbox sb{options()};
  auto cfg = config(ALEPHD_GUEST_TEST_APP);
  cfg.entrypoint = "";
  auto error = sb.start(cfg);
  EXPECT_NE(error.find("entrypoint"), std::string::npos) << error;
  EXPECT_FALSE(sb.running());
  EXPECT_FALSE(alive(sb.pid()));
}

TEST_F(sandbox, the_destructor_leaves_no_process) {
  std::set<int> tree;
  {
    alephd::sandbox sb{options()};
    ASSERT_EQ(sb.start(config(ALEPHD_GUEST_TEST_APP)), "");
    ASSERT_EQ(sb.request(get(1, "/echo", "x"), 5000ms).status, 200);
    tree = process_tree(sb.pid());
    EXPECT_GE(tree.size(), 3u); // bwrap, the agent and the program
  }
  for (int p : tree)
    EXPECT_FALSE(running_process(p)) << "pid " << p << " survived the destructor";
}

// --- hostile guests (tests/sandbox_probe.cpp started as the agent) -----------

#ifdef ALEPHD_SANDBOX_PROBE

TEST_F(sandbox, hostile_a_silent_guest_fails_start_at_the_ready_timeout) {
  alephd::sandbox sb{hostile("silent")};
  auto t0 = clock_type::now();
  auto error = sb.start(config(ALEPHD_GUEST_TEST_APP));
  auto took = clock_type::now() - t0;
  EXPECT_NE(error.find("ready"), std::string::npos) << error;
  EXPECT_GE(took, 900ms);
  EXPECT_LT(took, 3s);
  EXPECT_FALSE(sb.running());
  EXPECT_FALSE(alive(sb.pid()));
}

TEST_F(sandbox, hostile_garbage_before_configure_result_fails_start_at_once) {
  alephd::sandbox sb{hostile("garbage")};
  auto t0 = clock_type::now();
  auto error = sb.start(config(ALEPHD_GUEST_TEST_APP));
  EXPECT_NE(error.find("bad frame"), std::string::npos) << error;
  EXPECT_LT(clock_type::now() - t0, 900ms);
  EXPECT_FALSE(alive(sb.pid()));
}

TEST_F(sandbox, hostile_a_stuck_guest_times_out_and_is_killed) {
  alephd::sandbox sb{hostile("stuck")};
  ASSERT_EQ(sb.start(config(ALEPHD_GUEST_TEST_APP)), "");
  auto tree = process_tree(sb.pid());
  EXPECT_EQ(sb.request(get(1, "/echo"), 300ms).status, 504);
  auto t0 = clock_type::now();
  EXPECT_EQ(sb.stop(500ms), -1);
  EXPECT_LT(clock_type::now() - t0, 2s);
  EXPECT_FALSE(alive(sb.pid()));
  for (int p : tree)
    EXPECT_FALSE(running_process(p)) << "pid " << p << " survived stop()";
}

TEST_F(sandbox, hostile_garbage_instead_of_an_answer_gives_502_and_ends_it) {
  alephd::sandbox sb{hostile("later")};
  ASSERT_EQ(sb.start(config(ALEPHD_GUEST_TEST_APP)), "");
  auto t0 = clock_type::now();
  auto resp = sb.request(get(5, "/echo"), 5000ms);
  EXPECT_EQ(resp.id, 5u);
  EXPECT_EQ(resp.status, 502);
  EXPECT_NE(resp.error.find("bad frame"), std::string::npos) << resp.error;
  EXPECT_LT(clock_type::now() - t0, 2s);
  EXPECT_FALSE(sb.running());
  EXPECT_EQ(sb.stop(), -1);
  EXPECT_FALSE(alive(sb.pid()));
}

#endif

TEST_F(sandbox, async_requests_are_answered_concurrently_and_time_out) {
  alephd::sandbox sb{options()};
  ASSERT_EQ(sb.start(config(ALEPHD_GUEST_TEST_APP)), "");
  constexpr int n = 16;
  std::mutex mu;
  std::condition_variable cv;
  std::vector<gp::http_response> answers;
  for (int i = 0; i < n; ++i)
    sb.request_async(get(100 + i, "/echo", "n=" + std::to_string(i)), 5000ms,
                     [&](gp::http_response r) {
                       std::lock_guard lock{mu};
                       answers.push_back(std::move(r));
                       cv.notify_all();
                     });
  {
    std::unique_lock lock{mu};
    ASSERT_TRUE(cv.wait_for(lock, 10s, [&] { return answers.size() == n; }));
  }
  std::set<uint64_t> ids;
  for (auto& a : answers) {
    EXPECT_EQ(a.status, 200) << a.error;
    // Each answer carries the caller's id and the body of its own request.
    EXPECT_NE(a.body.find("n=" + std::to_string(a.id - 100)), std::string::npos) << a.body;
    ids.insert(a.id);
  }
  EXPECT_EQ(ids.size(), static_cast<size_t>(n));
  // A request the program never answers in time gets a 504 from the timeout.
  std::optional<gp::http_response> slow;
  auto t0 = clock_type::now();
  sb.request_async(get(7, "/sleep", "ms=3000"), 300ms, [&](gp::http_response r) {
    std::lock_guard lock{mu};
    slow = std::move(r);
    cv.notify_all();
  });
  std::unique_lock lock{mu};
  ASSERT_TRUE(cv.wait_for(lock, 5s, [&] { return slow.has_value(); }));
  EXPECT_EQ(slow->status, 504);
  EXPECT_EQ(slow->id, 7u);
  EXPECT_LT(clock_type::now() - t0, 1500ms);
}

TEST_F(sandbox, the_exit_handler_reports_a_crash_but_not_a_stop) {
  std::atomic<int> reports{0};
  std::atomic<int> code{-2};
  {
    alephd::sandbox sb{options()};
    sb.on_exit([&](int c, const std::string&) {
      code = c;
      ++reports;
    });
    ASSERT_EQ(sb.start(config(ALEPHD_GUEST_TEST_APP)), "");
    std::optional<gp::http_response> resp;
    sb.request_async(get(3, "/crash"), 5000ms, [&](gp::http_response r) { resp = r; });
    EXPECT_TRUE(wait_for([&] { return reports.load() == 1; }, 5000ms));
    EXPECT_EQ(code.load(), 3);
  }
  EXPECT_EQ(reports.load(), 1);
  std::atomic<int> stopped_reports{0};
  alephd::sandbox sb{options()};
  sb.on_exit([&](int, const std::string&) { ++stopped_reports; });
  ASSERT_EQ(sb.start(config(ALEPHD_GUEST_TEST_APP)), "");
  sb.stop();
  EXPECT_EQ(stopped_reports.load(), 0);
}

TEST_F(sandbox, a_program_past_its_memory_limit_is_killed_and_reported_as_oom) {
  auto o = options();
  o.limits = alephd::cgroup_limits{64ull << 20, 512, 1.0};
  o.cgroup_root = "alephd-sandbox-test";
  o.cgroup_name = "oom-" + std::to_string(::getpid());
  std::mutex mu;
  std::string why;
  alephd::sandbox sb{o};
  sb.on_exit([&](int, const std::string& w) {
    std::lock_guard lock{mu};
    why = w;
  });
  ASSERT_EQ(sb.start(config(ALEPHD_GUEST_TEST_APP)), "");
  // Well below the limit: fine.
  auto small = sb.request(get(1, "/alloc", "mb=8"), 5000ms);
  EXPECT_EQ(small.status, 200) << small.error;
  EXPECT_EQ(small.body, "8");
  auto big = sb.request(get(2, "/alloc", "mb=256"), 10000ms);
  EXPECT_EQ(big.status, 502) << big.body;
  ASSERT_TRUE(wait_for([&] {
    std::lock_guard lock{mu};
    return !why.empty();
  }, 10000ms));
  std::lock_guard lock{mu};
  EXPECT_NE(why.find("out of memory"), std::string::npos) << why;
}

TEST_F(sandbox, a_fork_bomb_is_stopped_by_the_pids_limit) {
  auto o = options();
  o.limits = alephd::cgroup_limits{256ull << 20, 32, 0};
  o.cgroup_root = "alephd-sandbox-test";
  o.cgroup_name = "pids-" + std::to_string(::getpid());
  alephd::sandbox sb{o};
  ASSERT_EQ(sb.start(config(ALEPHD_GUEST_TEST_APP)), "");
  auto resp = sb.request(get(1, "/fork", "n=200"), 10000ms);
  ASSERT_EQ(resp.status, 200) << resp.error;
  auto started = std::stoi(resp.body);
  EXPECT_LT(started, 32) << "the pids limit did not hold";
  EXPECT_GT(started, 0);
  // The sandbox answers again once the bomb's processes are gone (they sleep 5 s).
  EXPECT_TRUE(wait_for([&] { return sb.request(get(2, "/echo", "x"), 2000ms).status == 200; },
                       15000ms));
}

TEST_F(sandbox, a_program_cannot_read_host_files) {
  alephd::sandbox sb{options()};
  ASSERT_EQ(sb.start(config(ALEPHD_GUEST_TEST_APP)), "");
  // /etc is not in the sandbox; /usr is, read-only.
  EXPECT_EQ(sb.request(get(1, "/read", "etc/shadow"), 5000ms).status, 404);
  EXPECT_EQ(sb.request(get(2, "/read", "etc/hostname"), 5000ms).status, 404);
  EXPECT_EQ(sb.request(get(3, "/read", "root/.bashrc"), 5000ms).status, 404);
  EXPECT_EQ(sb.request(get(4, "/read", "usr/lib/os-release"), 5000ms).status, 200);
  // Nor write where the host keeps the sandbox's socket, or into the runtime.
  EXPECT_EQ(sb.request(get(5, "/write", "0:run/alephd/filler"), 5000ms).status, 507);
  EXPECT_EQ(sb.request(get(6, "/write", "0:usr/bin/evil"), 5000ms).status, 507);
  EXPECT_EQ(sb.request(get(7, "/write", "0:tmp/scratch"), 5000ms).status, 200);
}

#ifdef ALEPHD_SANDBOX_PROBE
TEST_F(sandbox, hostile_a_guest_that_hangs_up_before_ready_fails_start_at_once) {
  auto t0 = clock_type::now();
  alephd::sandbox sb{hostile("hangup")};
  auto err = sb.start(config(ALEPHD_GUEST_TEST_APP));
  EXPECT_NE(err.find("before 'ready'"), std::string::npos) << err;
  EXPECT_LT(clock_type::now() - t0, 900ms) << "it waited for the ready timeout";
  EXPECT_FALSE(sb.running());
}
#endif

namespace {

// A non-loopback IPv4 address of this host, or "".
std::string host_address() {
  ifaddrs* all = nullptr;
  if (::getifaddrs(&all) != 0)
    return "";
  std::string out;
  for (auto* i = all; i != nullptr && out.empty(); i = i->ifa_next)
    if (i->ifa_addr != nullptr && i->ifa_addr->sa_family == AF_INET
        && !(i->ifa_flags & IFF_LOOPBACK) && (i->ifa_flags & IFF_UP)) {
      char buf[INET_ADDRSTRLEN];
      ::inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(i->ifa_addr)->sin_addr, buf, sizeof buf);
      out = buf;
    }
  ::freeifaddrs(all);
  return out;
}

// A listening TCP socket on `address`, port chosen by the OS.
std::pair<int, uint16_t> listen_on(const std::string& address) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  ::inet_pton(AF_INET, address.c_str(), &a.sin_addr);
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  ::listen(fd, 16);
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  return {fd, ntohs(a.sin_port)};
}

} // namespace

TEST_F(sandbox, internet_goes_out_through_slirp_but_never_to_the_hosts_loopback) {
  if (::access("/usr/bin/slirp4netns", X_OK) != 0)
    GTEST_SKIP() << "slirp4netns is not installed (scripts/install-deps installs it)";
  auto addr = host_address();
  if (addr.empty())
    GTEST_SKIP() << "this host has no non-loopback IPv4 address to connect to";
  // Both listeners stay on this machine: its own address, and its loopback.
  auto [outside_fd, outside_port] = listen_on(addr);
  auto [loop_fd, loop_port] = listen_on("127.0.0.1");
  auto o = options();
  o.network = true;
  alephd::sandbox with{o};
  ASSERT_EQ(with.start(config(ALEPHD_GUEST_TEST_APP)), "");
  auto out = with.request(get(1, "/connect", addr + ":" + std::to_string(outside_port)), 5000ms);
  EXPECT_EQ(out.body, "connected");
  // The host's loopback is not reachable: not as 127.0.0.1 (the sandbox's own lo), not through
  // slirp's gateway 10.0.2.2.
  EXPECT_NE(with.request(get(2, "/connect", "127.0.0.1:" + std::to_string(loop_port)), 5000ms).body,
            "connected");
  EXPECT_NE(with.request(get(3, "/connect", "10.0.2.2:" + std::to_string(loop_port)), 5000ms).body,
            "connected");
  with.stop();
  // Without network, nothing outside is reachable.
  alephd::sandbox without{options()};
  ASSERT_EQ(without.start(config(ALEPHD_GUEST_TEST_APP)), "");
  EXPECT_NE(without.request(get(4, "/connect", addr + ":" + std::to_string(outside_port)), 5000ms).body,
            "connected");
  without.stop();
  ::close(outside_fd);
  ::close(loop_fd);
}

// ---- adoption by a restarted CRN -------------------------------------------------------------

TEST_F(sandbox, a_detached_sandbox_is_adopted_by_a_new_owner_with_its_program_still_running) {
  auto o = options();
  o.adopt_window = 20s;
  o.limits = alephd::cgroup_limits{128ull << 20, 512, 1.0};
  o.cgroup_root = "alephd-sandbox-test";
  o.cgroup_name = "adopt-" + std::to_string(::getpid());
  alephd::sandbox_handle h;
  std::string instance;
  {
    alephd::sandbox first{o};
    ASSERT_EQ(first.start(config(ALEPHD_GUEST_TEST_APP)), "");
    auto r = first.request(get(1, "/instance"), 5000ms);
    ASSERT_EQ(r.status, 200) << r.error;
    instance = r.body;
    h = first.handle();
    EXPECT_GT(h.pid, 0);
    EXPECT_GT(h.ns_init, 0);
    if (a_tmpfs_is_at_hand()) {
      EXPECT_NE(h.scratch_dir, "");
    }
    first.detach(); // as a CRN that exits and leaves it running
  }
  ASSERT_TRUE(alephd::sandbox::alive(h));
  if (!h.scratch_dir.empty()) {
    EXPECT_TRUE(std::filesystem::exists(h.scratch_dir)) << "a detached sandbox keeps its scratch dir";
  }
  // The new owner: the same options, and the handle the old one recorded.
  alephd::sandbox second{o};
  ASSERT_EQ(second.adopt(h, 5000ms), "");
  EXPECT_TRUE(second.running());
  auto again = second.request(get(2, "/instance"), 5000ms);
  ASSERT_EQ(again.status, 200) << again.error;
  EXPECT_EQ(again.body, instance) << "the program was restarted, not adopted";
  EXPECT_EQ(second.request(get(3, "/echo", "adopted"), 5000ms).body, "adopted hello-from-sandbox");
  EXPECT_EQ(second.pid(), h.pid);
  // Its cgroup came along: a stop removes it, and nothing is left.
  second.stop(3000ms);
  EXPECT_TRUE(wait_for([&] { return !alephd::sandbox::alive(h); }, 3000ms));
  EXPECT_FALSE(running_process(h.ns_init));
  std::string err;
  EXPECT_FALSE(alephd::cgroup::open(o.cgroup_root, o.cgroup_name, err)) << "cgroup left behind";
  if (!h.scratch_dir.empty()) {
    EXPECT_FALSE(std::filesystem::exists(h.scratch_dir)) << "scratch dir left behind";
  }
}

TEST_F(sandbox, scratch_dirs_left_by_an_earlier_owner_are_removed_but_those_of_live_sandboxes) {
  if (!a_tmpfs_is_at_hand())
    GTEST_SKIP() << "no tmpfs at /dev/shm";
  auto o = options();
  o.adopt_window = 30s;
  o.scratch_group = "test-orphans-" + std::to_string(::getpid());
  auto start_detached = [&](const std::string& run) {
    auto oo = o;
    oo.run_dir = dir_ + "/" + run;
    alephd::sandbox sb{oo};
    EXPECT_EQ(sb.start(config(ALEPHD_GUEST_TEST_APP)), "");
    auto h = sb.handle();
    sb.detach();
    return h;
  };
  auto live = start_detached("live");
  auto dead = start_detached("dead");
  ASSERT_NE(live.scratch_dir, "");
  ASSERT_NE(dead.scratch_dir, "");
  // One dies without its owner (as with a CRN killed by the OOM killer): its dir stays.
  ::kill(dead.ns_init, SIGKILL);
  ::kill(dead.pid, SIGKILL);
  EXPECT_TRUE(wait_for([&] { return !alephd::sandbox::alive(dead); }, 3000ms));
  EXPECT_TRUE(std::filesystem::exists(dead.scratch_dir));
  // The next owner keeps the dirs of the sandboxes it re-adopts.
  EXPECT_EQ(alephd::sandbox::remove_scratch_orphans(o.scratch_group, {live.scratch_dir}), 1u);
  EXPECT_FALSE(std::filesystem::exists(dead.scratch_dir));
  EXPECT_TRUE(std::filesystem::exists(live.scratch_dir));
  auto oo = o;
  oo.run_dir = dir_ + "/live";
  alephd::sandbox adopter{oo};
  ASSERT_EQ(adopter.adopt(live, 5000ms), "");
  EXPECT_EQ(adopter.request(get(1, "/echo", "still"), 5000ms).body, "still hello-from-sandbox");
  EXPECT_EQ(adopter.handle().scratch_dir, live.scratch_dir);
  adopter.stop();
  EXPECT_FALSE(std::filesystem::exists(live.scratch_dir));
  // The top of the tmpfs dir (other processes' sandboxes) is never swept.
  EXPECT_EQ(alephd::sandbox::remove_scratch_orphans("", {}), 0u);
  sweep_scratch_group(o.scratch_group, 0);
}

TEST_F(sandbox, an_orphan_nobody_adopts_ends_after_its_window) {
  auto o = options();
  o.adopt_window = 1s;
  o.scratch_group = "test-window-" + std::to_string(::getpid());
  alephd::sandbox_handle h;
  {
    alephd::sandbox sb{o};
    ASSERT_EQ(sb.start(config(ALEPHD_GUEST_TEST_APP)), "");
    h = sb.handle();
    sb.detach();
  }
  EXPECT_TRUE(alephd::sandbox::alive(h));
  EXPECT_TRUE(wait_for([&] { return !alephd::sandbox::alive(h); }, 6000ms))
    << "the agent did not give up after its reconnect window";
  sweep_scratch_group(o.scratch_group, 1);
}

TEST_F(sandbox, a_scratch_group_nobody_holds_whose_owner_is_gone_is_removed_whole) {
  if (!a_tmpfs_is_at_hand())
    GTEST_SKIP() << "no tmpfs at /dev/shm";
  auto pid = std::to_string(::getpid());
  auto root = std::filesystem::path{alephd::sandbox::scratch_root()};
  auto owner = dir_ + "/crn-data";
  std::filesystem::create_directories(owner);
  auto o = options();
  o.scratch_group = "test-owned-" + pid;
  alephd::sandbox::claim_scratch_group(o.scratch_group, owner); // held while we run
  // The group of a CRN that died and whose data dir was deleted: nobody holds its owner file.
  auto dead = root / ("test-owner-gone-" + pid);
  std::filesystem::create_directories(dead / "AbCdEf");
  std::ofstream{(dead / ".owner").string()} << dir_ << "/deleted-crn-data\n";
  // Its data dir is there: a CRN that stopped may come back to re-adopt.
  auto stopped = root / ("test-owner-stopped-" + pid);
  std::filesystem::create_directories(stopped / "GhIjKl");
  std::ofstream{(stopped / ".owner").string()} << owner << "\n";
  std::filesystem::create_directories(root / ("test-no-owner-" + pid));
  alephd::sandbox sb{o};
  ASSERT_EQ(sb.start(config(ALEPHD_GUEST_TEST_APP)), "");
  auto scratch = sb.handle().scratch_dir;
  EXPECT_EQ(std::filesystem::path{scratch}.parent_path(), root / o.scratch_group);
  // (Other tests' CRNs whose data dir is gone may go too: at least the dead one.)
  EXPECT_GE(alephd::sandbox::remove_abandoned_scratch_groups(), 1u);
  EXPECT_FALSE(std::filesystem::exists(dead));
  EXPECT_TRUE(std::filesystem::exists(stopped / "GhIjKl"));
  EXPECT_TRUE(std::filesystem::exists(root / ("test-no-owner-" + pid)));
  EXPECT_TRUE(std::filesystem::exists(scratch));
  // Its data dir gone, a group whose CRN still runs (holds it) stays.
  std::filesystem::remove_all(owner);
  alephd::sandbox::remove_abandoned_scratch_groups();
  EXPECT_TRUE(std::filesystem::exists(scratch)) << "a running CRN's group was swept";
  EXPECT_FALSE(std::filesystem::exists(stopped)) << "its owner's data dir is gone too";
  // The CRN ends (its running sandbox kept): the group stays until a sweep finds it abandoned.
  alephd::sandbox::release_scratch_group(o.scratch_group);
  EXPECT_TRUE(std::filesystem::exists(root / o.scratch_group));
  EXPECT_GE(alephd::sandbox::remove_abandoned_scratch_groups(), 1u);
  EXPECT_FALSE(std::filesystem::exists(root / o.scratch_group));
  EXPECT_EQ(sb.request(get(1, "/echo", "z"), 5000ms).body, "z hello-from-sandbox")
    << "a running sandbox keeps working without its scratch dir";
  sb.stop();
  std::filesystem::remove(root / ("test-no-owner-" + pid));
}

TEST_F(sandbox, an_orphan_can_be_killed_and_a_dead_one_is_not_adopted) {
  auto o = options();
  o.adopt_window = 30s;
  alephd::sandbox_handle h;
  {
    alephd::sandbox sb{o};
    ASSERT_EQ(sb.start(config(ALEPHD_GUEST_TEST_APP)), "");
    h = sb.handle();
    sb.detach();
  }
  ASSERT_TRUE(alephd::sandbox::alive(h));
  alephd::sandbox::kill(h);
  EXPECT_TRUE(wait_for([&] { return !alephd::sandbox::alive(h); }, 3000ms));
  if (!h.scratch_dir.empty()) {
    EXPECT_FALSE(std::filesystem::exists(h.scratch_dir)) << "kill() leaves its scratch dir";
  }
  alephd::sandbox late{o};
  auto err = late.adopt(h, 1000ms);
  EXPECT_NE(err.find("no longer running"), std::string::npos) << err;
  // A handle whose pid now belongs to another process (start time differs) is not alive.
  auto forged = h;
  forged.pid = ::getpid();
  EXPECT_FALSE(alephd::sandbox::alive(forged));
}

TEST_F(sandbox, a_sandbox_without_an_adopt_window_dies_with_its_owner) {
  // The default: bwrap --die-with-parent, and an agent that exits when its host goes away.
  auto o = options();
  o.scratch_group = "test-dies-" + std::to_string(::getpid());
  alephd::sandbox_handle h;
  {
    alephd::sandbox sb{o};
    ASSERT_EQ(sb.start(config(ALEPHD_GUEST_TEST_APP)), "");
    h = sb.handle();
    sb.detach();
  }
  EXPECT_TRUE(wait_for([&] { return !alephd::sandbox::alive(h); }, 5000ms));
  sweep_scratch_group(o.scratch_group, 1);
}
