#include "runtime/microvm.hpp"

#include "runtime/guest_link.hpp"
#include "runtime/process_state.hpp"

#include <boost/process.hpp>
#include <boost/process/extend.hpp>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>
#if defined(__x86_64__)
#  include <x86intrin.h>
#endif

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <thread>
#include <utility>

namespace alephd {

namespace bp = boost::process;
namespace fs = std::filesystem;
using namespace std::chrono_literals;
using clock_type = std::chrono::steady_clock;

namespace {

constexpr auto send_timeout = 5s;
constexpr auto destructor_grace = 2s;
constexpr auto accept_slice = 50ms;
constexpr auto qemu_img_timeout = 10s;
constexpr auto qmp_timeout = 1s;
constexpr const char* port_name = "org.alephd.guest";

// The last non-empty line (or the last kernel panic's line) of the guest's
// serial console, at most 200 printable characters; "" if there is none.
// Only the last 4 KiB are read.
std::string last_line(const fs::path& p) {
  int fd = ::open(p.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0)
    return "";
  struct stat st{};
  std::string text;
  if (::fstat(fd, &st) == 0 && S_ISREG(st.st_mode)) {
    off_t from = std::max<off_t>(0, st.st_size - 4096);
    text.resize(4096);
    auto n = ::pread(fd, text.data(), text.size(), from);
    text.resize(static_cast<std::size_t>(std::max<ssize_t>(n, 0)));
  }
  ::close(fd);
  // A panic's register dump follows its reason: the reason says more.
  std::size_t end = text.size();
  if (auto panic = text.rfind("Kernel panic"); panic != std::string::npos)
    end = std::min(end, text.find('\n', panic));
  while (end > 0) {
    auto nl = text.find_last_of("\r\n", end - 1);
    std::size_t begin = nl == std::string::npos ? 0 : nl + 1;
    std::string line;
    for (std::size_t i = begin; i < end; ++i)
      line.push_back(text[i] >= 32 && text[i] < 127 ? text[i] : '?');
    if (line.find_first_not_of(' ') != std::string::npos)
      return line.substr(0, 200);
    if (nl == std::string::npos)
      break;
    end = nl;
  }
  return "";
}

// First line of a regular file, at most 200 characters ("" if there is none).

// QEMU splits option values at commas; a literal comma is written twice.
std::string qemu_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    out.push_back(c);
    if (c == ',')
      out.push_back(',');
  }
  return out;
}

// The hostname goes onto the kernel command line, so it must not carry
// spaces or quotes (they would add kernel or init options).
bool valid_hostname(const std::string& h) {
  if (h.empty() || h.size() > 63 || h.front() == '-' || h.front() == '.')
    return false;
  return std::all_of(h.begin(), h.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
           || (c >= '0' && c <= '9') || c == '-' || c == '.';
  });
}

bool readable_file(const std::string& p) {
  return !p.empty() && ::access(p.c_str(), R_OK) == 0 && fs::is_regular_file(p);
}

// A listening unix socket at `path` (replacing a stale one), or -1 with `error`.
int listen_unix(const fs::path& path, std::string& error) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  auto s = path.string();
  if (s.size() >= sizeof addr.sun_path) {
    error = "run_dir path too long for a unix socket";
    return -1;
  }
  std::memcpy(addr.sun_path, s.data(), s.size());
  std::error_code ec;
  fs::remove(path, ec);
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    error = "socket: " + std::string{std::strerror(errno)};
    return -1;
  }
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0
      || ::listen(fd, 1) != 0) {
    error = "cannot listen on " + s + ": " + std::strerror(errno);
    ::close(fd);
    return -1;
  }
  return fd;
}

// Under TCG the guest's TSC is the host's (QEMU's rdtsc reads the host's), but
// the guest cannot measure its rate: its calibration against the emulated PIT
// fails when the host is busy, the kernel marks the TSC unstable and, with no
// HPET or PM timer on a microVM, hangs before it prints another line (one
// boot in eight here on a loaded 2-core host). So the host measures the rate
// once and hands it over with tsc_early_khz. 0 when unknown.
unsigned long host_tsc_khz() {
  static const unsigned long khz = [] {
#if defined(__x86_64__)
    // Only a constant-rate TSC has one frequency to hand over.
    std::ifstream in{"/proc/cpuinfo"};
    std::string line;
    bool constant = false;
    while (std::getline(in, line))
      if (line.rfind("flags", 0) == 0) {
        constant = line.find(" constant_tsc") != std::string::npos;
        break;
      }
    if (!constant)
      return 0ul;
    auto t0 = clock_type::now();
    auto c0 = __rdtsc();
    std::this_thread::sleep_for(20ms);
    auto c1 = __rdtsc();
    std::chrono::duration<double, std::milli> ms = clock_type::now() - t0;
    return static_cast<unsigned long>(static_cast<double>(c1 - c0) / ms.count());
#else
    return 0ul;
#endif
  }();
  return khz;
}


// Runs a short helper (qemu-img) with a bounded wait; "" or a one-line error.

} // namespace

bool microvm::kvm_usable(std::string* why) {
  auto no = [&](std::string reason) {
    if (why)
      *why = std::move(reason);
    return false;
  };
  int fd = ::open("/dev/kvm", O_RDWR | O_CLOEXEC);
  if (fd < 0)
    return no("cannot open /dev/kvm: " + std::string{std::strerror(errno)});
  ::close(fd);
  // A built-in module shows up here too, through its parameters.
  if (!fs::exists("/sys/module/kvm_intel") && !fs::exists("/sys/module/kvm_amd"))
    return no(fs::exists("/sys/module/kvm_pvm")
                ? "/dev/kvm is kvm_pvm, which boots only PVM guest kernels"
                : "/dev/kvm has neither kvm_intel nor kvm_amd behind it");
  return true;
}

struct microvm::impl {
  explicit impl(microvm_options o) : opts(std::move(o)) {
    guest_link::options lo;
    lo.eof_reason = "the microVM ended"; // QEMU closes its end of the port only when it exits
    lo.kill = [this] { signal_child(SIGKILL); };
    link = std::make_unique<guest_link>(std::move(lo));
  }

  microvm_options opts;
  fs::path sock_dir;           // where guest.sock and qmp.sock are (run_dir, or a /tmp dir)
  bool temp_sock_dir = false;  // sock_dir is ours to remove

  mutable std::mutex mu;
  bool started = false; // start() was called
  bool with_kvm = false;

  // QMP, used only by stop() (under stop_mu) and teardown().
  int qmp_fd = -1;

  // The QEMU process (our child, or adopted from an earlier CRN process).
  watched_process proc;

  std::mutex stop_mu; // serializes stop() and the destructor
  bool stopped = false;
  int stop_code = -1;

  fs::path dir() const {
    return fs::path{opts.run_dir};
  }

  void signal_child(int sig) {
    proc.signal(sig);
  }

  bool try_reap() {
    return proc.try_reap();
  }

  void kill_and_reap() {
    proc.kill_and_reap();
  }

  // Polls until QEMU has exited and is reaped, or `deadline`.
  bool wait_exit(clock_type::time_point deadline) {
    while (!try_reap()) {
      if (clock_type::now() >= deadline)
        return false;
      std::this_thread::sleep_for(10ms);
    }
    return true;
  }

  // Kills what is left, closes the connections and joins the reader. Safe to
  // call more than once, and before start().
  void teardown() {
    kill_and_reap();
    if (temp_sock_dir) {
      std::error_code ec;
      fs::remove_all(sock_dir, ec);
    }
    link->close("microVM stopped");
    if (qmp_fd >= 0)
      ::close(qmp_fd);
    qmp_fd = -1;
  }

  // Tears down and returns `error`, with what QEMU or the console said last
  // when `hint` (not for the guest's own answer to configure).
  std::string fail_start(std::string error, bool hint = true) {
    link->expect_end(); // start() reports this failure itself
    teardown();
    if (!hint)
      return error;
    auto err = first_line((dir() / "qemu.err").string());
    if (!err.empty())
      error += " (qemu: " + err + ")";
    else if (auto con = last_line(dir() / "console.log"); !con.empty())
      error += " (console: " + con + ")";
    return error;
  }

  // Reads QMP lines until one is the answer to the command just sent.
  bool qmp_answer(std::string& buf, clock_type::time_point deadline) {
    for (;;) {
      for (auto nl = buf.find('\n'); nl != std::string::npos;
           nl = buf.find('\n')) {
        auto line = buf.substr(0, nl);
        buf.erase(0, nl + 1);
        // Greeting and events ({"QMP": …}, {"event": …}) are skipped.
        if (line.rfind("{\"return\"", 0) == 0)
          return true;
        if (line.rfind("{\"error\"", 0) == 0)
          return false;
      }
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - clock_type::now());
      if (left.count() <= 0)
        return false;
      pollfd pfd{qmp_fd, POLLIN, 0};
      if (::poll(&pfd, 1, static_cast<int>(left.count())) <= 0)
        continue;
      char chunk[4096];
      auto n = ::read(qmp_fd, chunk, sizeof chunk);
      if (n <= 0)
        return false;
      buf.append(chunk, static_cast<std::size_t>(n));
      if (buf.size() > 1 << 20)
        return false; // nothing QEMU says before our answer is this long
    }
  }

  bool qmp_send(const std::string& line) {
    auto data = line + "\n";
    return ::send(qmp_fd, data.data(), data.size(), MSG_NOSIGNAL)
           == static_cast<ssize_t>(data.size());
  }

  // The ACPI power button, through QMP. False if QEMU did not take it.
  bool powerdown(clock_type::time_point deadline) {
    if (qmp_fd < 0)
      return false;
    deadline = std::min(deadline, clock_type::now() + qmp_timeout);
    std::string buf;
    // The greeting comes first; capabilities negotiation ends QMP's
    // handshake mode, after which commands are accepted.
    return qmp_send(R"({"execute":"qmp_capabilities"})")
           && qmp_answer(buf, deadline)
           && qmp_send(R"({"execute":"system_powerdown"})")
           && qmp_answer(buf, deadline);
  }

  // Makes RUN_DIR/rootfs.qcow2 on top of the base image unless it exists.
  std::string make_overlay(const fs::path& overlay) {
    std::error_code ec;
    if (fs::exists(overlay, ec))
      return "";
    auto base = fs::canonical(opts.rootfs, ec);
    if (ec)
      return "cannot resolve rootfs " + opts.rootfs + ": " + ec.message();
    auto tmp = overlay;
    tmp += ".tmp";
    fs::remove(tmp, ec);
    std::vector<std::string> args{"create", "-q", "-f", "qcow2",
                                  "-b", base.string(), "-F", opts.rootfs_format,
                                  tmp.string()};
    if (!opts.overlay_size.empty())
      args.push_back(opts.overlay_size);
    auto error = run_tool(opts.qemu_img, args, (dir() / "qemu-img.err").string(),
                          qemu_img_timeout);
    if (!error.empty()) {
      fs::remove(tmp, ec);
      return "cannot create the rootfs overlay: " + error;
    }
    // Renamed only once complete, so that a half-made overlay is never reused.
    fs::rename(tmp, overlay, ec);
    return ec ? "cannot create the rootfs overlay: " + ec.message() : "";
  }

  std::string check_options() {
    if (opts.kernel.empty() || opts.initrd.empty() || opts.run_dir.empty())
      return "kernel, initrd and run_dir must be set";
    for (const auto* p : {&opts.kernel, &opts.initrd})
      if (!readable_file(*p))
        return "cannot read " + *p;
    if (::access(opts.qemu.c_str(), X_OK) != 0)
      return "cannot execute " + opts.qemu;
    if (!valid_hostname(opts.hostname))
      return "invalid hostname '" + opts.hostname.substr(0, 64) + "'";
    if (opts.memory_mib < 64 || opts.vcpus < 1 || opts.vcpus > 64)
      return "memory_mib must be at least 64 and vcpus 1 to 64";
    if (!opts.rootfs.empty()) {
      if (!readable_file(opts.rootfs))
        return "cannot read rootfs " + opts.rootfs;
      if (opts.rootfs_format != "raw" && opts.rootfs_format != "qcow2")
        return "rootfs_format must be raw or qcow2";
      if (opts.rootfs_overlay && ::access(opts.qemu_img.c_str(), X_OK) != 0)
        return "cannot execute " + opts.qemu_img;
    }
    return "";
  }

  std::vector<std::string> qemu_args() {
    auto d = dir();
    // panic=-1 with -no-reboot: the VM ends when its init (the agent) does;
    // reboot=t (triple fault), because the default ACPI-then-keyboard reset
    // left about one VM in five hanging after the panic here. The rest skips
    // what a microVM lacks (PCI, i8042, more UARTs) and the crypto
    // self-tests: about 0.3 s of a TCG boot.
    std::string append
      = "console=ttyS0 quiet panic=-1 reboot=t pci=off 8250.nr_uarts=1 i8042.noaux "
        "i8042.nomux i8042.nopnp i8042.dumbkbd cryptomgr.notests nowatchdog "
        "alephd.hostname="
        + opts.hostname;
    if (opts.adopt_window.count() > 0)
      append += " alephd.reconnect=" + std::to_string(opts.adopt_window.count());
    if (opts.halt_grace.count() > 0)
      append += " alephd.halt_grace=" + std::to_string(opts.halt_grace.count());
    if (!with_kvm)
      if (auto khz = host_tsc_khz(); khz > 0)
        append += " tsc_early_khz=" + std::to_string(khz) + " tsc=reliable";
    // An adoptable VM's QEMU connects its sockets again (every second) when its CRN is gone.
    std::string reconnect = opts.adopt_window.count() > 0 ? ",reconnect=1" : "";
    std::vector<std::string> args{
      "-M", "microvm,acpi=on",
      "-nodefaults", "-no-user-config", "-nographic",
      // Guest reboot (a panic after the agent exits) ends QEMU instead.
      "-no-reboot",
      // No exec, no privilege changes, no obsolete system calls.
      "-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
      "-chardev", "file,id=console,path=" + qemu_escape((d / "console.log").string()),
      "-serial", "chardev:console",
      "-kernel", opts.kernel,
      "-initrd", opts.initrd,
      "-m", std::to_string(opts.memory_mib),
      "-smp", std::to_string(opts.vcpus),
      // QEMU connects to our sockets (client mode) while it starts.
      "-chardev", "socket,id=guest,path=" + qemu_escape((sock_dir / "guest.sock").string())
                    + reconnect,
      "-device", "virtio-serial-device",
      "-device", std::string{"virtserialport,chardev=guest,name="} + port_name,
      "-chardev", "socket,id=qmp,path=" + qemu_escape((sock_dir / "qmp.sock").string())
                    + reconnect,
      "-mon", "chardev=qmp,mode=control",
    };
    if (with_kvm) {
      for (const char* a : {"-accel", "kvm", "-cpu", "host"})
        args.emplace_back(a);
    } else {
      for (const char* a : {"-accel", "tcg"})
        args.emplace_back(a);
    }
    if (!opts.rootfs.empty()) {
      std::string drive;
      if (opts.rootfs_overlay)
        drive = "file=" + qemu_escape((d / "rootfs.qcow2").string())
                + ",format=qcow2";
      else
        drive = "file=" + qemu_escape(opts.rootfs) + ",format="
                + opts.rootfs_format + ",readonly=on";
      args.insert(args.end(), {"-drive", drive + ",if=none,id=rootfs",
                               "-device", "virtio-blk-device,drive=rootfs"});
      append += opts.rootfs_overlay ? " alephd.rootfs=rw" : " alephd.rootfs=ro";
    }
    if (opts.network) {
      args.insert(args.end(), {"-netdev", "user,id=net0", "-device",
                               "virtio-net-device,netdev=net0"});
      append += " alephd.net=user";
    }
    args.insert(args.end(), {"-append", append});
    args.insert(args.end(), opts.extra_args.begin(), opts.extra_args.end());
    return args;
  }

  std::string start(const guest::configure& cfg) {
    {
      std::lock_guard lock{mu};
      if (started)
        return "already started";
      started = true;
    }
    auto deadline = clock_type::now() + opts.ready_timeout;
    if (auto error = check_options(); !error.empty())
      return fail_start(error);
    std::error_code ec;
    auto d = dir();
    fs::create_directories(d, ec);
    if (ec)
      return fail_start("cannot create " + opts.run_dir + ": " + ec.message());
    // Stale files of an earlier run would be read as this run's errors.
    for (const char* name : {"console.log", "qemu.err", "qemu-img.err"})
      fs::remove(d / name, ec);

    if (opts.kvm == kvm_mode::on) {
      std::string why;
      if (!microvm::kvm_usable(&why))
        return fail_start("KVM is not usable: " + why);
    }
    {
      std::lock_guard lock{mu};
      with_kvm = opts.kvm == kvm_mode::on
                 || (opts.kvm == kvm_mode::auto_detect && microvm::kvm_usable());
    }
    if (!opts.rootfs.empty() && opts.rootfs_overlay)
      if (auto error = make_overlay(d / "rootfs.qcow2"); !error.empty())
        return fail_start(error);

    // A unix socket path holds at most 107 bytes, for us and for QEMU: a long
    // run_dir gets its sockets in a private directory under /tmp instead.
    sock_dir = d;
    if ((d / "guest.sock").string().size() >= 100) {
      char tmpl[] = "/tmp/alephd-vm-XXXXXX";
      if (::mkdtemp(tmpl) == nullptr)
        return fail_start("cannot create a socket directory: " + std::string{std::strerror(errno)});
      sock_dir = tmpl;
      temp_sock_dir = true;
    }
    std::string error;
    int guest_listen = listen_unix(sock_dir / "guest.sock", error);
    if (guest_listen < 0)
      return fail_start(error);
    int qmp_listen = listen_unix(sock_dir / "qmp.sock", error);
    if (qmp_listen < 0) {
      ::close(guest_listen);
      return fail_start(error);
    }
    auto close_listeners = [&] {
      ::close(guest_listen);
      ::close(qmp_listen);
      fs::remove(sock_dir / "guest.sock", ec); // nobody else may connect
      fs::remove(sock_dir / "qmp.sock", ec);
      if (temp_sock_dir)
        fs::remove(sock_dir, ec);
    };

    try {
      std::error_code spawn_ec;
      bp::child c{
        bp::exe = opts.qemu, bp::args = qemu_args(), bp::std_in < bp::null,
        bp::std_out > (d / "qemu.out").string(),
        bp::std_err > (d / "qemu.err").string(),
        bp::extend::on_exec_setup =
          [parent = ::getpid(), setup = opts.child_setup,
           outlive = opts.adopt_window.count() > 0](auto&) {
            // In the child, before exec: async-signal-safe calls only. Its
            // own session keeps a terminal's Ctrl-C for us (we stop the VM);
            // PDEATHSIG ends it if we die without stopping it, unless it is
            // to outlive us for a restarted CRN to adopt.
            ::setsid();
            cloexec_from(3); // none of the CRN's sockets goes into QEMU
            if (!outlive)
              ::prctl(PR_SET_PDEATHSIG, SIGKILL);
            if (::getppid() != parent)
              ::_exit(127);
            if (setup)
              setup();
          },
        spawn_ec};
      if (spawn_ec) {
        close_listeners();
        return fail_start("cannot spawn " + opts.qemu + ": "
                          + spawn_ec.message());
      }
      // We reap it ourselves (see kill_and_reap), so boost must not.
      proc.set_child(c.id());
      c.detach();
    } catch (const std::exception& e) {
      close_listeners();
      return fail_start("cannot spawn " + opts.qemu + ": " + e.what());
    }

    // QEMU connects both sockets while it sets up its devices, before the
    // guest runs.
    int fd = -1;
    error = accept_qemu(guest_listen, qmp_listen, deadline, fd);
    close_listeners();
    if (!error.empty())
      return fail_start(error);
    link->attach(fd);
    if (error = link->wait_ready(deadline); !error.empty())
      return fail_start(error);
    bool answered = false;
    if (error = link->configure(cfg, deadline, &answered); !error.empty())
      return fail_start(error, !answered);
    return {};
  }

  // Accepts QEMU's connections to both sockets (in slices, so that a QEMU that exits early,
  // e.g. on a bad option, fails at once); sets qmp_fd and `fd`, or returns why not.
  std::string accept_qemu(int guest_listen, int qmp_listen, clock_type::time_point deadline,
                          int& fd) {
    fd = -1;
    while (fd < 0 || qmp_fd < 0) {
      std::string error;
      if (try_reap())
        error = "qemu exited before it connected";
      else if (clock_type::now() >= deadline)
        error = "qemu did not connect in time";
      if (!error.empty()) {
        if (fd >= 0)
          ::close(fd);
        fd = -1;
        return error;
      }
      pollfd pfds[2] = {{guest_listen, POLLIN, 0}, {qmp_listen, POLLIN, 0}};
      if (::poll(pfds, 2, static_cast<int>(accept_slice.count())) <= 0)
        continue;
      if (fd < 0 && (pfds[0].revents & POLLIN))
        fd = ::accept4(guest_listen, nullptr, nullptr, SOCK_CLOEXEC);
      if (qmp_fd < 0 && (pfds[1].revents & POLLIN))
        qmp_fd = ::accept4(qmp_listen, nullptr, nullptr, SOCK_CLOEXEC);
    }
    timeval tv{std::chrono::duration_cast<std::chrono::seconds>(send_timeout).count(), 0};
    ::setsockopt(qmp_fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    return {};
  }

  // Takes over a VM an earlier CRN process left running: QEMU reconnects to our sockets.
  std::string adopt(const microvm_handle& h, clock_type::time_point deadline) {
    {
      std::lock_guard lock{mu};
      if (started)
        return "already started";
      started = true;
    }
    if (!process_is(h.pid, h.pid_start))
      return fail_start("the microVM is no longer running", false);
    proc.adopt(h.pid, h.pid_start);
    sock_dir = h.sock_dir;
    temp_sock_dir = sock_dir != dir();
    std::error_code ec;
    fs::create_directories(sock_dir, ec);
    std::string error;
    int guest_listen = listen_unix(sock_dir / "guest.sock", error);
    if (guest_listen < 0)
      return fail_start(error, false);
    int qmp_listen = listen_unix(sock_dir / "qmp.sock", error);
    if (qmp_listen < 0) {
      ::close(guest_listen);
      return fail_start(error, false);
    }
    int fd = -1;
    error = accept_qemu(guest_listen, qmp_listen, deadline, fd);
    ::close(guest_listen);
    ::close(qmp_listen);
    fs::remove(sock_dir / "guest.sock", ec);
    fs::remove(sock_dir / "qmp.sock", ec);
    if (!error.empty())
      return fail_start(error, false);
    if (error = link->take_over(fd, deadline); !error.empty())
      return fail_start(error, false);
    return {};
  }

  // Lets the VM run on without us: QEMU reconnects for the next CRN process.
  void detach() {
    std::lock_guard stop_lock{stop_mu};
    if (stopped)
      return;
    stopped = true;
    link->expect_end();
    link->close("detached");
    if (qmp_fd >= 0)
      ::close(qmp_fd);
    qmp_fd = -1;
    proc.forget();
  }

  int stop(std::chrono::milliseconds grace) {
    std::lock_guard stop_lock{stop_mu};
    if (stopped)
      return stop_code;
    stopped = true;
    link->expect_end();
    auto now = clock_type::now();
    auto deadline = now + grace;
    // 1. The agent stops the program, says `halted` and exits; as the VM's
    //    init that ends the VM (panic=-1, -no-reboot).
    if (link->halt(now + grace / 2))
      wait_exit(now + grace / 2);
    // 2. The ACPI power button: acpid in the guest SIGTERMs everything and
    //    powers off.
    if (!try_reap() && powerdown(deadline))
      wait_exit(deadline);
    // 3. SIGKILL.
    teardown();
    stop_code = link->halted_code();
    return stop_code;
  }

  // Declared last: destroyed first, so its threads are gone before the rest.
  std::unique_ptr<guest_link> link;
};

microvm::microvm(microvm_options o)
  : impl_{std::make_unique<impl>(std::move(o))} {
}

microvm::~microvm() {
  try {
    impl_->stop(destructor_grace);
  } catch (...) {
    // stop() only throws on resource exhaustion; make sure nothing is left.
    impl_->kill_and_reap();
    impl_->link->close("microVM stopped");
  }
}

std::string microvm::start(const guest::configure& cfg) {
  return impl_->start(cfg);
}

guest::http_response microvm::request(guest::http_request req,
                                      std::chrono::milliseconds timeout) {
  return impl_->link->request(std::move(req), timeout);
}

int microvm::stop(std::chrono::milliseconds grace) {
  return impl_->stop(grace);
}

bool microvm::running() const {
  return impl_->link->running();
}

int microvm::pid() const {
  return impl_->proc.pid();
}

void microvm::request_async(guest::http_request req,
                            std::chrono::milliseconds timeout,
                            reply_handler done) {
  impl_->link->request_async(std::move(req), timeout, std::move(done));
}

std::vector<timed_log> microvm::logs() const {
  return impl_->link->logs();
}

void microvm::on_exit(exit_handler h) {
  impl_->link->on_exit(std::move(h));
}

void microvm::on_log(log_handler h) {
  impl_->link->on_log(std::move(h));
}

std::string microvm::adopt(const microvm_handle& h, std::chrono::milliseconds timeout) {
  return impl_->adopt(h, clock_type::now() + timeout);
}

void microvm::detach() {
  impl_->detach();
}

microvm_handle microvm::handle() const {
  return microvm_handle{impl_->proc.pid(), impl_->proc.start(), impl_->sock_dir.string()};
}

bool microvm::alive(const microvm_handle& h) {
  return process_is(h.pid, h.pid_start);
}

void microvm::kill(const microvm_handle& h) {
  if (process_is(h.pid, h.pid_start))
    ::kill(h.pid, SIGKILL);
}

bool microvm::kvm() const {
  std::lock_guard lock{impl_->mu};
  return impl_->with_kvm;
}

// The initramfs has mounted the instance's disk at /mnt/rootfs. A disk with an init of its own
// (every OS image has one) is booted in a container of the VM: its init runs as PID 1 of new
// PID, mount and IPC namespaces rooted at the disk, with a clean environment that says
// `container=alephd` (so systemd behaves as in a container) and a read-only /sys, and shares the
// VM's network and hostname: its services (sshd, a web server) answer on the VM's addresses,
// port 8080 also through /vm/{ref}. The guest agent stays the VM's PID 1 and keeps the link to
// the CRN. This is not isolation (the VM is the boundary; its only tenant is the owner).
// Before the boot, the VM's hostname goes to the disk's /etc/hostname and /etc/hosts, and the
// owner's SSH keys are added to its /root/.ssh/authorized_keys (what cloud-init does
// elsewhere). The init runs in a session of its own, out of reach of the agent's signals to
// this script's process group; a stop (SIGTERM or SIGINT here, or the ACPI power button, whose
// handler signals the pid in /run/alephd-instance.pid) becomes a power-off request to the init,
// repeated every second until it ends (an init drops a request that comes before it has set its
// handlers): SIGRTMIN+4 for systemd, SIGUSR2 for others (busybox init). Then the disk is
// unmounted from the container, remounted read-only and synced. A disk without an init is
// served as a listing on port 8080 (index.html names the VM, rootfs.txt lists the disk).
const char* const instance_program = R"sh(#!/bin/sh
r=/mnt/rootfs
# The first of these that is an executable file once its links are followed (an absolute link
# is read inside the disk, as the booted system would).
init=
for c in /sbin/init /lib/systemd/systemd /usr/lib/systemd/systemd /init; do
  p=$r$c
  n=0
  while [ -L "$p" ] && [ $n -lt 8 ]; do
    t=$(readlink "$p")
    case $t in
      /*) p=$r$t ;;
      *) p=${p%/*}/$t ;;
    esac
    n=$((n + 1))
  done
  if [ -f "$p" ] && [ -x "$p" ]; then
    init=$c
    break
  fi
done
if [ -z "$init" ]; then
  mkdir -p /tmp/www
  echo "instance $(hostname)" >/tmp/www/index.html
  [ -d "$r" ] && ls "$r" >/tmp/www/rootfs.txt
  exec /bin/busybox httpd -f -p 8080 -h /tmp/www
fi
# Whether a line ends the file (else a line appended would join its last one).
ends_line() { [ ! -s "$1" ] || [ -z "$(tail -c 1 "$1")" ]; }
name=$(hostname)
mkdir -p "$r/etc" && echo "$name" >"$r/etc/hostname"
if ! grep -qs "[[:space:]]$name\$" "$r/etc/hosts"; then
  ends_line "$r/etc/hosts" || echo >>"$r/etc/hosts"
  echo "127.0.1.1 $name" >>"$r/etc/hosts"
fi
if [ -s /root/.ssh/authorized_keys ]; then
  keys=$r/root/.ssh/authorized_keys
  mkdir -p "$r/root/.ssh" && chmod 700 "$r/root/.ssh"
  ends_line "$keys" || echo >>"$keys"
  while IFS= read -r key; do
    [ -z "$key" ] || grep -qsxF -e "$key" "$keys" || printf '%s\n' "$key" >>"$keys"
  done </root/.ssh/authorized_keys
  chmod 600 "$keys"
fi
for d in dev proc sys run tmp; do
  mkdir -p "$r/$d"
done
mount --rbind /dev "$r/dev"
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$r/sys"
# Not ended (a zombie has).
alive() {
  local state
  read -r _ _ state _ 2>/dev/null <"/proc/$1/stat" || return 1
  [ "$state" != Z ]
}
init_pid=
stop=
power_off() {
  [ -n "$init_pid" ] || return 0
  case $(readlink "/proc/$init_pid/exe" 2>/dev/null) in
    *systemd*) kill -38 "$init_pid" 2>/dev/null ;; # SIGRTMIN+4 (glibc's 34 + 4): poweroff
    *) kill -USR2 "$init_pid" 2>/dev/null ;;        # busybox init: poweroff
  esac
}
trap 'stop=1; power_off' TERM INT
echo $$ >/run/alephd-instance.pid
echo "instance: booting $init from its disk"
# PID 1 of the new namespaces mounts their /proc on the disk, then becomes the disk's init.
setsid unshare --pid --ipc --mount --fork /bin/busybox sh -c \
  'mount -t proc proc "$0/proc" && exec env -i container=alephd PATH=/usr/sbin:/usr/bin:/sbin:/bin chroot "$0" "$1"' \
  "$r" "$init" </dev/null &
launcher=$!
tries=0
while [ -z "$init_pid" ] && [ $tries -lt 500 ] && alive "$launcher"; do
  read -r init_pid _ 2>/dev/null <"/proc/$launcher/task/$launcher/children"
  [ -n "$init_pid" ] || usleep 10000
  tries=$((tries + 1))
done
[ -z "$stop" ] || power_off
# Until both the launcher and the init have ended (the init outlives a launcher killed by the
# power button's SIGTERM to everything), looking every 100 ms: a blocking `wait` could sleep
# through the repeats of a power-off request whose trap ran just before it.
status=
ticks=0
while :; do
  if [ -z "$status" ] && ! alive "$launcher"; then
    wait "$launcher"
    status=$?
  fi
  if [ -n "$status" ] && { [ -z "$init_pid" ] || ! alive "$init_pid"; }; then
    break
  fi
  ticks=$((ticks + 1))
  if [ -n "$stop" ] && [ $((ticks % 10)) -eq 0 ]; then
    power_off
  fi
  usleep 100000
done
echo "instance: $init ended ($status)"
umount -l "$r/sys" 2>/dev/null
umount -l "$r/dev" 2>/dev/null
mount -o remount,ro "$r" 2>/dev/null
sync
rm -f /run/alephd-instance.pid
exit "$status"
)sh";

} // namespace alephd
