// Boots real QEMU microVMs through alephd::microvm with the assets of
// scripts/build-microvm-assets (built once per suite into
// $ALEPHD_MICROVM_ASSETS, default $TMPDIR/alephd-microvm-assets, and reused
// while the guest binary and the script are unchanged). The guest program is
// a shell script running busybox httpd with CGI scripts; an instance's disk
// with busybox's init is booted by alephd::instance_program. Skipped only when
// QEMU is not installed; TCG unless KVM is usable, so every test fits a
// 2-core machine without KVM.

#include "runtime/microvm.hpp"

#include <gtest/gtest.h>

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <condition_variable>
#include <mutex>
#include <optional>
#include <set>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <thread>
#include <vector>

#ifndef ALEPHD_GUEST_BINARY
#  error "ALEPHD_GUEST_BINARY must name the static alephd-guest binary"
#endif
#ifndef ALEPHD_MICROVM_SCRIPT
#  error "ALEPHD_MICROVM_SCRIPT must name scripts/build-microvm-assets"
#endif

namespace gp = alephd::guest;
namespace fs = std::filesystem;
using namespace std::chrono_literals;
using clock_type = std::chrono::steady_clock;

namespace {

constexpr const char* qemu = "/usr/bin/qemu-system-x86_64";

// The guest program. /cgi-bin/echo answers "QUERY GREETING HOSTNAME KEYS";
// /cgi-bin/disk prints what the instance disk holds, then writes to it;
// /cgi-bin/slow takes 5 s; /cgi-bin/crash SIGKILLs httpd (the program).
constexpr const char* program = R"sh(#!/bin/sh
mkdir -p /www/cgi-bin
cat >/www/cgi-bin/echo <<'EOF'
#!/bin/sh
printf 'Content-Type: text/plain\r\n\r\n'
printf '%s %s %s %s' "$QUERY_STRING" "$GREETING" "$(hostname)" "$(cat /root/.ssh/authorized_keys)"
EOF
cat >/www/cgi-bin/disk <<'EOF'
#!/bin/sh
printf 'Content-Type: text/plain\r\n\r\n'
cat /mnt/rootfs/hello.txt /mnt/rootfs/written.txt 2>/dev/null
echo "written by the guest" >/mnt/rootfs/written.txt && sync
EOF
printf '#!/bin/sh\nsleep 5\n' >/www/cgi-bin/slow
printf '#!/bin/sh\nkill -KILL $(cat /run/app.pid)\n' >/www/cgi-bin/crash
chmod +x /www/cgi-bin/echo /www/cgi-bin/disk /www/cgi-bin/slow /www/cgi-bin/crash
echo $$ >/run/app.pid
[ "$IGNORE_SIGTERM" = 1 ] && trap '' TERM
echo "listening on 8080"
# By path: an applet started by name may run inside the shell, with its
# signal settings reset.
exec /bin/busybox httpd -f -p 127.0.0.1:8080 -h /www
)sh";

std::string read_file(const fs::path& path) {
  std::ifstream in{path, std::ios::binary};
  return {std::istreambuf_iterator<char>{in}, {}};
}

bool alive(int pid) {
  return pid > 0 && (::kill(pid, 0) == 0 || errno != ESRCH);
}

// Gone, or a zombie that only waits to be reaped.
bool exited(int pid) {
  auto stat = read_file("/proc/" + std::to_string(pid) + "/stat");
  auto paren = stat.rfind(')');
  return paren == std::string::npos || paren + 2 >= stat.size()
         || stat[paren + 2] == 'Z';
}

double seconds_since(clock_type::time_point t0) {
  return std::chrono::duration<double>(clock_type::now() - t0).count();
}

gp::http_request get(uint64_t id, std::string path, std::string query = "") {
  return {id, "GET", std::move(path), std::move(query), {}, ""};
}

// A newc cpio archive with one executable file (what the kernel appends
// over the initramfs: a later entry replaces an earlier one).
std::string cpio_with(const std::string& name, const std::string& data) {
  auto entry = [](const std::string& n, const std::string& d, unsigned mode) {
    char head[111];
    std::snprintf(head, sizeof head,
                  "070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
                  0u, mode, 0u, 0u, 1u, 0u, static_cast<unsigned>(d.size()), 0u,
                  0u, 0u, 0u, static_cast<unsigned>(n.size() + 1), 0u);
    std::string out{head, 110};
    out += n;
    out.push_back('\0');
    out.append((4 - out.size() % 4) % 4, '\0');
    out += d;
    out.append((4 - out.size() % 4) % 4, '\0');
    return out;
  };
  return entry(name, data, 0100755) + entry("TRAILER!!!", "", 0);
}

// `data` as the next member of an LZ4 legacy stream (the kernel's LZ4 initramfs): the
// magic, then one block of literals only, which is valid LZ4 without compressing.
std::string lz4_legacy_member(const std::string& data) {
  std::string block;
  if (data.size() < 15) {
    block.push_back(static_cast<char>(data.size() << 4)); // the count in the token
  } else {
    block.push_back(static_cast<char>(0xF0)); // 15 or more literals, no match
    for (auto n = data.size() - 15;; n -= 255) {
      block.push_back(static_cast<char>(std::min<std::size_t>(n, 255)));
      if (n < 255)
        break;
    }
  }
  block += data;
  std::string out;
  for (uint32_t v : {0x184C2102u, static_cast<uint32_t>(block.size())})
    for (int i = 0; i < 4; ++i)
      out.push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
  return out + block;
}

class microvm : public ::testing::Test {
protected:
  static void SetUpTestSuite() {
    if (::access(qemu, X_OK) != 0)
      return; // each test skips
    const char* env = std::getenv("ALEPHD_MICROVM_ASSETS");
    assets_ = env && *env ? fs::path{env}
                          : fs::temp_directory_path() / "alephd-microvm-assets";
    auto err = fs::temp_directory_path()
               / ("microvm_test_assets_" + std::to_string(::getpid()) + ".err");
    // Bounded: the first build downloads about 30 MB.
    auto cmd = "timeout 900 '" + std::string{ALEPHD_MICROVM_SCRIPT} + "' '"
               + assets_.string() + "' '" + ALEPHD_GUEST_BINARY + "' 2>'"
               + err.string() + "'";
    if (std::system(cmd.c_str()) != 0) {
      auto why = read_file(err);
      build_error_ = why.empty() ? "build-microvm-assets failed" : why;
    }
    std::error_code ec;
    fs::remove(err, ec);
  }

  void SetUp() override {
    if (::access(qemu, X_OK) != 0)
      GTEST_SKIP() << qemu << " is not installed (Debian: qemu-system-x86)";
    ASSERT_EQ(build_error_, "");
    char tmpl[] = "/tmp/microvm_test_XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }

  void TearDown() override {
    std::error_code ec;
    if (!dir_.empty())
      fs::remove_all(dir_, ec);
  }

  alephd::microvm_options options(const std::string& run = "run") {
    alephd::microvm_options o;
    o.kernel = (assets_ / "kernel").string();
    o.initrd = (assets_ / "initrd").string();
    o.run_dir = dir_ + "/" + run;
    o.hostname = "microvm-test";
    // A TCG boot takes about 2 s here; room for a busy 2-core machine.
    o.ready_timeout = 20s;
    return o;
  }

  static gp::configure config(bool ignore_sigterm = false) {
    gp::configure cfg;
    cfg.code = program;
    cfg.entrypoint = "app";
    cfg.variables = {{"GREETING", "hello-from-vm"},
                     {"PATH", "/usr/sbin:/usr/bin:/sbin:/bin"},
                     {"IGNORE_SIGTERM", ignore_sigterm ? "1" : "0"}};
    cfg.authorized_keys = {"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAItest test@alephd"};
    cfg.app_port = 8080;
    return cfg;
  }

  // An instance's disk as its VM left it (base and overlay) in one raw image; "" on failure.
  std::string flat_instance_disk(const alephd::microvm_options& o) {
    auto flat = dir_ + "/flat.raw";
    auto convert = "/usr/bin/qemu-img convert -O raw '" + o.run_dir + "/rootfs.qcow2' '" + flat + "'";
    return std::system(convert.c_str()) == 0 ? flat : "";
  }

  // What `path` holds in the ext4 image `image` (read with debugfs; "" when it cannot be read).
  std::string file_on_disk(const std::string& image, const std::string& path) {
    auto out = dir_ + "/debugfs.out";
    auto cat = "/sbin/debugfs -R 'cat " + path + "' '" + image + "' >'" + out + "' 2>/dev/null";
    return std::system(cat.c_str()) == 0 ? read_file(out) : "";
  }

  static inline fs::path assets_;
  static inline std::string build_error_;
  std::string dir_;
};

} // namespace

TEST_F(microvm, serves_requests_with_its_variables_hostname_and_keys) {
  alephd::microvm vm{options()};
  ASSERT_EQ(vm.start(config()), "");
  EXPECT_TRUE(vm.running());
  EXPECT_GT(vm.pid(), 0);
  auto resp = vm.request(get(42, "/cgi-bin/echo", "hello"), 10s);
  EXPECT_EQ(resp.id, 42u);
  EXPECT_EQ(resp.status, 200) << resp.error;
  EXPECT_EQ(resp.body, "hello hello-from-vm microvm-test "
                       "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAItest test@alephd");
  std::vector<gp::http_response> answers(8);
  std::vector<std::thread> threads;
  for (std::size_t i = 0; i < answers.size(); ++i)
    threads.emplace_back([&, i] {
      answers[i] = vm.request(get(7, "/cgi-bin/echo", "n=" + std::to_string(i)), 20s);
    });
  for (auto& t : threads)
    t.join();
  for (std::size_t i = 0; i < answers.size(); ++i) {
    EXPECT_EQ(answers[i].status, 200) << i << ": " << answers[i].error;
    EXPECT_EQ(answers[i].body.rfind("n=" + std::to_string(i) + " hello-from-vm", 0), 0u)
      << answers[i].body;
  }
  auto slow = vm.request(get(9, "/cgi-bin/slow"), 500ms);
  EXPECT_EQ(slow.status, 504);
  EXPECT_EQ(slow.id, 9u);

  // The executor interface: answers by callback, each with its caller's id.
  std::mutex mu;
  std::condition_variable cv;
  std::vector<gp::http_response> async;
  std::optional<gp::http_response> async_slow;
  for (int i = 0; i < 8; ++i)
    vm.request_async(get(100 + i, "/cgi-bin/echo", "a=" + std::to_string(i)), 20s,
                     [&](gp::http_response r) {
                       std::lock_guard lock{mu};
                       async.push_back(std::move(r));
                       cv.notify_all();
                     });
  auto t0 = clock_type::now();
  vm.request_async(get(7, "/cgi-bin/slow"), 300ms, [&](gp::http_response r) {
    std::lock_guard lock{mu};
    async_slow = std::move(r);
    cv.notify_all();
  });
  {
    std::unique_lock lock{mu};
    ASSERT_TRUE(cv.wait_for(lock, 25s, [&] { return async.size() == 8 && async_slow; }));
  }
  std::set<uint64_t> ids;
  for (const auto& a : async) {
    EXPECT_EQ(a.status, 200) << a.error;
    EXPECT_EQ(a.body.rfind("a=" + std::to_string(a.id - 100) + " ", 0), 0u) << a.body;
    ids.insert(a.id);
  }
  EXPECT_EQ(ids.size(), 8u);
  EXPECT_EQ(async_slow->status, 504);
  EXPECT_EQ(async_slow->id, 7u);
  EXPECT_LT(seconds_since(t0), 20.0);
  bool listening = false;
  for (const auto& l : vm.logs())
    listening |= l.stream == "stdout" && l.line == "listening on 8080";
  EXPECT_TRUE(listening);
}

TEST_F(microvm, stop_halts_the_program_and_leaves_no_qemu) {
  alephd::microvm vm{options()};
  std::atomic<int> reports{0};
  vm.on_exit([&](int, const std::string&) { ++reports; });
  ASSERT_EQ(vm.start(config()), "");
  int pid = vm.pid();
  ASSERT_TRUE(alive(pid));
  auto t0 = clock_type::now();
  // httpd ends on the agent's SIGTERM: 128 + 15.
  EXPECT_EQ(vm.stop(6s), 143);
  EXPECT_LT(seconds_since(t0), 2.0);
  EXPECT_FALSE(alive(pid));
  EXPECT_FALSE(vm.running());
  auto resp = vm.request(get(1, "/cgi-bin/echo"), 1s);
  EXPECT_EQ(resp.status, 502);
  EXPECT_EQ(vm.stop(1s), 143); // a second stop() only repeats the result
  EXPECT_EQ(reports.load(), 0) << "a stop is not an exit to report";
}

TEST_F(microvm, the_exit_handler_reports_a_crash_and_the_vm_ends) {
  alephd::microvm vm{options()};
  std::mutex mu;
  std::condition_variable cv;
  int reports = 0;
  int code = 0;
  std::string why;
  vm.on_exit([&](int c, const std::string& w) {
    std::lock_guard lock{mu};
    ++reports;
    code = c;
    why = w;
    cv.notify_all();
  });
  ASSERT_EQ(vm.start(config()), "");
  int pid = vm.pid();
  vm.request_async(get(3, "/cgi-bin/crash"), 10s, [](gp::http_response) {});
  {
    std::unique_lock lock{mu};
    ASSERT_TRUE(cv.wait_for(lock, 10s, [&] { return reports > 0; }));
    EXPECT_EQ(code, 128 + SIGKILL);
    EXPECT_EQ(why, "program exited with code 137");
  }
  // The agent exits after `halted`, and QEMU with it (a zombie until
  // stop() reaps it).
  auto t0 = clock_type::now();
  while (!exited(pid) && seconds_since(t0) < 5.0)
    std::this_thread::sleep_for(20ms);
  EXPECT_TRUE(exited(pid)) << "QEMU did not end with its guest";
  EXPECT_FALSE(vm.running());
  EXPECT_EQ(vm.stop(1s), 137);
  EXPECT_FALSE(alive(pid));
  std::lock_guard lock{mu};
  EXPECT_EQ(reports, 1);
}

TEST_F(microvm, the_destructor_leaves_no_qemu) {
  int pid = 0;
  {
    alephd::microvm vm{options()};
    ASSERT_EQ(vm.start(config()), "");
    pid = vm.pid();
    ASSERT_TRUE(alive(pid));
  }
  EXPECT_FALSE(alive(pid));
}

TEST_F(microvm, the_acpi_power_button_stops_a_guest_that_ignores_halt) {
  alephd::microvm vm{options()};
  ASSERT_EQ(vm.start(config(/*ignore_sigterm=*/true)), "");
  // Once httpd answers, the script has set its trap.
  ASSERT_EQ(vm.request(get(1, "/cgi-bin/echo"), 10s).status, 200);
  int pid = vm.pid();
  auto t0 = clock_type::now();
  // The agent's SIGTERM is ignored (its SIGKILL would come after 5 s): at
  // 2 s stop() presses the power button and acpid powers the VM off.
  EXPECT_EQ(vm.stop(5s), -1);
  EXPECT_LT(seconds_since(t0), 4.5) << "QEMU was killed, not powered off";
  EXPECT_FALSE(alive(pid));
  EXPECT_NE(read_file(options().run_dir + "/console.log").find("reboot: Power down"),
            std::string::npos);
}

TEST_F(microvm, a_guest_that_never_answers_fails_start_in_time) {
  // The real initramfs with /init replaced by a sleep: the kernel boots, the
  // agent never runs.
  auto initrd = read_file(options().initrd);
  ASSERT_FALSE(initrd.empty());
  auto init = cpio_with("init", "#!/bin/busybox sh\nexec /bin/busybox sleep 3600\n");
  if (initrd.rfind(std::string{"\x02\x21\x4c\x18", 4}, 0) == 0) {
    initrd += lz4_legacy_member(init); // the kernel reads on to the end of the stream
  } else {
    initrd.append((4 - initrd.size() % 4) % 4, '\0'); // archives start 4-aligned
    initrd += init; // after a gzip member, a plain archive
  }
  auto mute = dir_ + "/mute.initrd";
  std::ofstream{mute, std::ios::binary} << initrd;
  auto o = options();
  o.initrd = mute;
  o.ready_timeout = 4s;
  alephd::microvm vm{o};
  auto t0 = clock_type::now();
  auto error = vm.start(config());
  auto took = seconds_since(t0);
  EXPECT_EQ(error.rfind("no 'ready' from the guest in time", 0), 0u) << error;
  EXPECT_GE(took, 3.9);
  EXPECT_LT(took, 6.0);
  EXPECT_FALSE(alive(vm.pid()));
  EXPECT_FALSE(vm.running());
}

TEST_F(microvm, a_refused_configure_fails_start_and_leaves_no_qemu) {
  alephd::microvm vm{options()};
  auto cfg = config();
  // A second line would be a second entry of authorized_keys.
  cfg.authorized_keys = {"ssh-ed25519 AAAA a\ncommand=\"sh\" ssh-ed25519 AAAA b"};
  EXPECT_EQ(vm.start(cfg), "configure failed: authorized key with a line break or NUL");
  EXPECT_FALSE(alive(vm.pid()));
  EXPECT_FALSE(vm.running());
}

TEST_F(microvm, bad_options_and_a_bad_kernel_fail_start_at_once) {
  {
    auto o = options();
    o.kernel = dir_ + "/missing-vmlinuz";
    alephd::microvm vm{o};
    EXPECT_EQ(vm.start(config()), "cannot read " + o.kernel);
    EXPECT_EQ(vm.pid(), 0);
  }
  {
    auto o = options();
    o.hostname = "x alephd.rootfs=rw init=/bin/sh"; // would extend the kernel command line
    alephd::microvm vm{o};
    EXPECT_EQ(vm.start(config()).rfind("invalid hostname", 0), 0u);
  }
  {
    auto o = options();
    o.kernel = dir_ + "/garbage";
    std::ofstream{o.kernel} << "not a kernel\n";
    alephd::microvm vm{o};
    auto t0 = clock_type::now();
    auto error = vm.start(config());
    EXPECT_LT(seconds_since(t0), 5.0);
    EXPECT_NE(error.find("(qemu: "), std::string::npos) << error;
    EXPECT_FALSE(alive(vm.pid()));
  }
}

TEST_F(microvm, an_instance_overlay_boots_keeps_its_writes_and_spares_the_base) {
  if (::access("/sbin/mkfs.ext4", X_OK) != 0)
    GTEST_SKIP() << "/sbin/mkfs.ext4 is not installed (Debian: e2fsprogs)";
  if (::access("/usr/bin/qemu-img", X_OK) != 0)
    GTEST_SKIP() << "/usr/bin/qemu-img is not installed (Debian: qemu-utils)";
  auto content = dir_ + "/content";
  fs::create_directories(content);
  std::ofstream{content + "/hello.txt"} << "from the base image\n";
  auto base = dir_ + "/base.raw";
  auto mkfs = "/sbin/mkfs.ext4 -q -F -d '" + content + "' '" + base + "' 16M >/dev/null 2>&1";
  ASSERT_EQ(std::system(mkfs.c_str()), 0);
  auto before = read_file(base);

  auto o = options("instance");
  o.rootfs = base;
  o.rootfs_format = "raw";
  o.overlay_size = "32M";
  {
    alephd::microvm vm{o};
    ASSERT_EQ(vm.start(config()), "");
    auto resp = vm.request(get(1, "/cgi-bin/disk"), 10s);
    EXPECT_EQ(resp.status, 200) << resp.error;
    EXPECT_EQ(resp.body, "from the base image\n");
    EXPECT_EQ(vm.stop(6s), 143);
  }
  EXPECT_TRUE(fs::exists(o.run_dir + "/rootfs.qcow2"));
  EXPECT_TRUE(read_file(base) == before) << "the base image was written to";
  // The same run_dir again: the overlay, and so the guest's write, is kept.
  alephd::microvm again{o};
  ASSERT_EQ(again.start(config()), "");
  auto resp = again.request(get(2, "/cgi-bin/disk"), 10s);
  EXPECT_EQ(resp.body, "from the base image\nwritten by the guest\n");
}

TEST_F(microvm, an_instance_disk_with_an_init_is_booted_with_its_hostname_and_keys) {
  for (const char* tool : {"/sbin/mkfs.ext4", "/sbin/debugfs", "/sbin/dumpe2fs", "/usr/bin/qemu-img"})
    if (::access(tool, X_OK) != 0)
      GTEST_SKIP() << tool << " is not installed (Debian: e2fsprogs, qemu-utils)";
  // A disk with busybox's init: its inittab starts a web server whose CGI says who PID 1 is
  // and what the disk holds, and its shutdown action leaves a mark on the disk.
  auto content = fs::path{dir_} / "content";
  for (auto d : {"bin", "sbin", "etc", "www/cgi-bin", "proc", "sys", "dev", "root/.ssh"})
    fs::create_directories(content / d);
  // A key and a hosts file already on the disk, neither ending its last line: both are kept.
  std::ofstream{content / "root/.ssh/authorized_keys"} << "ssh-rsa AAAAB3Nza existing@disk";
  std::ofstream{content / "etc/hosts"} << "127.0.0.1 localhost";
  fs::copy_file(assets_ / "busybox", content / "bin/busybox");
  fs::permissions(content / "bin/busybox", fs::perms(0755));
  fs::create_symlink("/bin/busybox", content / "sbin/init"); // absolute, as in real images
  for (auto applet : {"sh", "cat", "hostname", "printf", "echo", "sync", "tr", "grep", "sleep"})
    fs::create_symlink("busybox", content / "bin" / applet);
  std::ofstream{content / "etc/inittab"}
    << "::sysinit:/bin/echo rootfs-init-started\n"
       "::respawn:/bin/busybox httpd -f -p 8080 -h /www\n"
       // Slower than the agent's default grace of 5 s: the instance's grace is what lets it end.
       "::shutdown:/bin/sh -c 'sleep 7; echo clean >/shutdown-ran; sync'\n";
  std::ofstream{content / "www/cgi-bin/who"}
    << "#!/bin/sh\n"
       "printf 'Content-Type: text/plain\\r\\n\\r\\n'\n"
       "printf '%s|%s|%s|%s|%s|%s' \"$(cat /proc/1/comm)\" \"$(cat /etc/hostname)\" "
       "\"$(hostname)\" \"$(cat /root/.ssh/authorized_keys)\" \"$(cat /etc/hosts)\" "
       "\"$(tr '\\0' '\\n' </proc/1/environ | grep -c .)/$(tr '\\0' '\\n' </proc/1/environ | grep ^container=)\"\n";
  fs::permissions(content / "www/cgi-bin/who", fs::perms(0755));
  auto base = dir_ + "/base.raw";
  auto mkfs = "/sbin/mkfs.ext4 -q -F -d '" + content.string() + "' '" + base + "' 16M >/dev/null 2>&1";
  ASSERT_EQ(std::system(mkfs.c_str()), 0);

  auto o = options("instance");
  o.rootfs = base;
  o.rootfs_format = "raw";
  o.overlay_size = "32M";
  o.halt_grace = 18s; // as a CRN boots an instance (execution_env::instance_halt_grace)
  auto cfg = config();
  cfg.code = alephd::instance_program;
  cfg.entrypoint = "instance";
  alephd::microvm vm{o};
  ASSERT_EQ(vm.start(cfg), "");
  // Served by the disk's own web server, started by the disk's own init as PID 1.
  gp::http_response who;
  for (auto t0 = clock_type::now();;) { // the disk's init starts its server in its own time
    who = vm.request(get(1, "/cgi-bin/who"), 10s);
    if (who.status == 200 || seconds_since(t0) > 20)
      break;
    std::this_thread::sleep_for(100ms);
  }
  auto logs = [&] {
    std::string all;
    for (const auto& l : vm.logs())
      all += l.stream + ": " + l.line + "\n";
    return all;
  };
  ASSERT_EQ(who.status, 200) << who.error << " " << who.body << "\n" << logs();
  // PID 1 is the disk's init, with a clean environment that names the container.
  EXPECT_EQ(who.body, "init|microvm-test|microvm-test|"
                      "ssh-rsa AAAAB3Nza existing@disk\n"
                      "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAItest test@alephd|"
                      "127.0.0.1 localhost\n127.0.1.1 microvm-test|"
                      "2/container=alephd") << logs();
  bool booted = false, started = false;
  for (const auto& l : vm.logs()) {
    booted |= l.line == "instance: booting /sbin/init from its disk";
    started |= l.line.find("rootfs-init-started") != std::string::npos;
  }
  EXPECT_TRUE(booted);
  EXPECT_TRUE(started) << "the disk's inittab did not run";
  // A stop powers the disk's init off: its shutdown action ran and reached the disk.
  auto stop_started = clock_type::now();
  vm.stop(45s); // execution_env::instance_stop_grace
  auto stop_took = seconds_since(stop_started);
  EXPECT_GT(stop_took, 6.0) << "the disk's shutdown action was cut short";
  EXPECT_LT(stop_took, 18.0) << "the stop waited for a grace to run out";
  EXPECT_FALSE(alive(vm.pid()));
  auto flat = flat_instance_disk(o);
  ASSERT_NE(flat, "");
  EXPECT_EQ(file_on_disk(flat, "/shutdown-ran"), "clean\n") << "the disk's init did not shut down cleanly";
  // And the disk was left clean: remounted read-only, its journal has nothing to replay.
  auto features = dir_ + "/features.out";
  auto dump = "/sbin/dumpe2fs -h '" + flat + "' 2>/dev/null | grep '^Filesystem features:' >'"
              + features + "'";
  ASSERT_EQ(std::system(dump.c_str()), 0);
  EXPECT_NE(read_file(features).find("has_journal"), std::string::npos) << read_file(features);
  EXPECT_EQ(read_file(features).find("needs_recovery"), std::string::npos)
    << "the instance disk was left needing a journal replay";
}

// A disk whose init is systemd (a Debian system, as real instance images are). Opt-in: it
// needs a root file system made by hand, which CI does not have:
//   debootstrap --variant=minbase --include=systemd-sysv,busybox bookworm DIR
//   ALEPHD_TEST_SYSTEMD_ROOTFS=DIR ctest -R microvm_test
// systemd boots as PID 1 in the instance's namespaces, starts a unit of the disk's, and a
// stop powers it off (SIGRTMIN+4): its units' stop actions run and reach the disk.
TEST_F(microvm, an_instance_disk_with_systemd_boots_and_powers_off) {
  const char* root = std::getenv("ALEPHD_TEST_SYSTEMD_ROOTFS");
  if (root == nullptr || *root == '\0')
    GTEST_SKIP() << "set ALEPHD_TEST_SYSTEMD_ROOTFS to a debootstrap'd Debian with systemd-sysv and busybox";
  for (const char* tool : {"/sbin/mkfs.ext4", "/sbin/debugfs", "/usr/bin/qemu-img"})
    if (::access(tool, X_OK) != 0)
      GTEST_SKIP() << tool << " is not installed (Debian: e2fsprogs, qemu-utils)";
  ASSERT_TRUE(fs::exists(fs::path{root} / "lib/systemd/systemd")) << root << " has no systemd";
  auto base = dir_ + "/base.raw";
  auto mkfs = "/sbin/mkfs.ext4 -q -F -d '" + std::string{root} + "' '" + base + "' 1G >/dev/null 2>&1";
  ASSERT_EQ(std::system(mkfs.c_str()), 0);
  // The test's own files go into the image, not into the given directory.
  auto file = [&](const std::string& name, const std::string& text) {
    auto path = dir_ + "/" + name;
    std::ofstream{path} << text;
    return path;
  };
  auto who = file("who", "#!/bin/sh\n"
                         "printf 'Content-Type: text/plain\\r\\n\\r\\n'\n"
                         "printf '%s|%s|%s' \"$(cat /proc/1/comm)\" \"$(hostname)\" "
                         "\"$(systemctl is-active web.service mark.service)\"\n");
  auto web = file("web.service", "[Unit]\nDescription=test web server\n"
                                 "[Service]\nExecStart=/bin/busybox httpd -f -p 8080 -h /www\n"
                                 "[Install]\nWantedBy=multi-user.target\n");
  // Slower than the agent's default grace of 5 s, as in the busybox test above.
  auto mark = file("mark.service", "[Unit]\nDescription=leaves a mark when stopped\n"
                                   "[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/true\n"
                                   "ExecStop=/bin/sh -c 'sleep 7; echo clean >/shutdown-ran; sync'\n"
                                   "TimeoutStopSec=30\n"
                                   "[Install]\nWantedBy=multi-user.target\n");
  auto cmds = file("debugfs.cmds",
                   "mkdir /www\nmkdir /www/cgi-bin\n"
                   "write " + who + " /www/cgi-bin/who\nsif /www/cgi-bin/who mode 0100755\n"
                   "write " + web + " /etc/systemd/system/web.service\n"
                   "write " + mark + " /etc/systemd/system/mark.service\n"
                   "symlink /etc/systemd/system/multi-user.target.wants/web.service /etc/systemd/system/web.service\n"
                   "symlink /etc/systemd/system/multi-user.target.wants/mark.service /etc/systemd/system/mark.service\n");
  auto edit = "/sbin/debugfs -w -f '" + cmds + "' '" + base + "' >/dev/null 2>&1";
  ASSERT_EQ(std::system(edit.c_str()), 0);

  auto o = options("instance");
  o.rootfs = base;
  o.rootfs_format = "raw";
  o.overlay_size = "2G";
  o.halt_grace = 18s; // execution_env::instance_halt_grace
  auto cfg = config();
  cfg.code = alephd::instance_program;
  cfg.entrypoint = "instance";
  alephd::microvm vm{o};
  ASSERT_EQ(vm.start(cfg), "");
  auto logs = [&] {
    std::string all;
    for (const auto& l : vm.logs())
      all += l.stream + ": " + l.line + "\n";
    return all;
  };
  gp::http_response answer;
  auto t0 = clock_type::now();
  for (;;) { // systemd under TCG takes its time
    answer = vm.request(get(1, "/cgi-bin/who"), 10s);
    if (answer.status == 200 || seconds_since(t0) > 120)
      break;
    std::this_thread::sleep_for(500ms);
  }
  ASSERT_EQ(answer.status, 200) << answer.error << " " << answer.body << "\n" << logs();
  std::printf("systemd's web unit answered %.1f s after start\n", seconds_since(t0));
  EXPECT_EQ(answer.body, "systemd|microvm-test|active\nactive") << logs();
  auto stop_started = clock_type::now();
  vm.stop(45s); // execution_env::instance_stop_grace
  auto stop_took = seconds_since(stop_started);
  std::printf("the stop took %.1f s\n", stop_took);
  EXPECT_GT(stop_took, 6.0) << "the unit's stop action was cut short";
  EXPECT_LT(stop_took, 17.0) << "the stop waited for the agent's grace to run out\n" << logs();
  EXPECT_FALSE(alive(vm.pid()));
  auto flat = flat_instance_disk(o);
  ASSERT_NE(flat, "");
  EXPECT_EQ(file_on_disk(flat, "/shutdown-ran"), "clean\n") << "systemd did not stop the disk's units\n" << logs();
}

TEST_F(microvm, a_detached_vm_is_adopted_by_a_new_owner_without_a_reboot) {
  auto o = options();
  o.adopt_window = 30s;
  alephd::microvm_handle h;
  {
    alephd::microvm first{o};
    ASSERT_EQ(first.start(config()), "");
    h = first.handle();
    EXPECT_GT(h.pid, 0);
    first.detach(); // as a CRN that dies or exits with keep-on-shutdown
  }
  ASSERT_TRUE(alephd::microvm::alive(h));
  alephd::microvm second{o};
  ASSERT_EQ(second.adopt(h, 15s), "");
  EXPECT_EQ(second.pid(), h.pid) << "the same QEMU process serves";
  auto resp = second.request(get(1, "/cgi-bin/echo", "adopted"), 10s);
  EXPECT_EQ(resp.status, 200) << resp.error;
  EXPECT_EQ(resp.body.rfind("adopted hello-from-vm", 0), 0u) << resp.body;
  EXPECT_EQ(second.stop(6s), 143);
  EXPECT_FALSE(alephd::microvm::alive(h));
}

TEST_F(microvm, an_orphan_vm_nobody_adopts_ends_after_its_window) {
  auto o = options();
  o.adopt_window = 2s;
  alephd::microvm_handle h;
  {
    alephd::microvm vm{o};
    ASSERT_EQ(vm.start(config()), "");
    h = vm.handle();
    vm.detach();
  }
  EXPECT_TRUE(alephd::microvm::alive(h));
  auto until = clock_type::now() + 20s;
  while (alephd::microvm::alive(h) && clock_type::now() < until)
    std::this_thread::sleep_for(100ms);
  EXPECT_FALSE(alephd::microvm::alive(h)) << "the VM outlived its adopt window";
  alephd::microvm::kill(h); // (a no-op once it is gone)
}
