#pragma once

// The `microvm` executor: boots a QEMU microVM (`-M microvm`: no PCI, no
// firmware beyond qboot, virtio-mmio devices) with the kernel and initramfs
// of scripts/build-microvm-assets, whose /init becomes the guest agent
// (`alephd-guest --device`), and speaks the guest protocol to it over a
// virtio-serial port. The host listens on RUN_DIR/guest.sock and QEMU
// connects to it while it starts, before the guest boots, so the guest never
// writes to an unattached port. QMP (RUN_DIR/qmp.sock, same direction) gives
// the ACPI power button for stop(). No CAF here: an actor owns one `microvm`
// and calls it from a blocking context. Every wait is bounded, and the
// destructor never leaves a process behind.

#include "runtime/executor.hpp"
#include "runtime/guest_protocol.hpp"

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace alephd {

/// Whether QEMU runs the guest with KVM or emulates it (TCG).
enum class kvm_mode : uint8_t {
  auto_detect, ///< KVM when microvm::kvm_usable(), else TCG
  on,          ///< KVM or fail
  off,         ///< TCG
};

/// How to boot the microVM of one execution.
struct microvm_options {
  std::string qemu = "/usr/bin/qemu-system-x86_64";
  std::string qemu_img = "/usr/bin/qemu-img"; ///< for the rootfs overlay
  std::string kernel; ///< an ELF with a PVH entry or a bzImage (scripts/build-microvm-assets)
  std::string initrd; ///< an initramfs with the guest agent and /init (any compression the kernel reads)
  std::string run_dir; ///< per-execution host dir (created): sockets, logs, overlay
  std::string hostname = "alephd"; ///< letters, digits, '-' and '.'; at most 63
  unsigned memory_mib = 256;
  unsigned vcpus = 1;
  kvm_mode kvm = kvm_mode::auto_detect;
  bool network = false; ///< true: QEMU user networking (NAT) on the guest's eth0
  /// Optional disk image the guest mounts at /mnt/rootfs (ext4), "" for none.
  std::string rootfs;
  std::string rootfs_format = "raw"; ///< "raw" or "qcow2"
  /// true: writes go to RUN_DIR/rootfs.qcow2, a qcow2 overlay on `rootfs`
  /// made with qemu-img (kept across runs of the same run_dir: an instance's
  /// disk); the base image is never written. false: `rootfs` read-only.
  bool rootfs_overlay = true;
  std::string overlay_size; ///< e.g. "2G"; "" keeps the base image's size
  std::chrono::milliseconds ready_timeout{10000};
  /// Extra QEMU arguments (devices, objects), after ours.
  std::vector<std::string> extra_args;
  /// Runs in the child between fork and exec (e.g. joining a cgroup); must
  /// only make async-signal-safe calls.
  std::function<void()> child_setup;
  /// 0: QEMU dies with the thread that started it. More: it outlives that
  /// process (no PDEATHSIG; QEMU reconnects its sockets every second), and
  /// the guest agent waits this long for a restarted CRN to adopt the VM
  /// (see adopt()) before it stops the program and the VM ends.
  std::chrono::seconds adopt_window{0};
  /// How long the guest agent lets the program end after SIGTERM on stop() before SIGKILL
  /// (0: the agent's 5 s). stop() gives this step half its grace.
  std::chrono::seconds halt_grace{0};
};

/// What identifies a running microVM across CRN processes.
struct microvm_handle {
  int pid = 0;              ///< QEMU
  std::string pid_start;    ///< its start time (against pid reuse)
  std::string sock_dir;     ///< where QEMU connects guest.sock and qmp.sock
};

/// One guest agent in a QEMU microVM. All members are thread-safe.
///
/// Without an adopt window QEMU gets PR_SET_PDEATHSIG: it dies with the
/// *thread* that called start(), so call start() from a thread that outlives
/// the VM.
class microvm final : public executor {
public:
  explicit microvm(microvm_options o);
  /// Halts (2 s grace) or kills, and reaps; never leaves a process behind.
  ~microvm() override;

  microvm(const microvm&) = delete;
  microvm& operator=(const microvm&) = delete;

  /// Boots QEMU, waits for `ready`, sends `configure`, waits for
  /// `configure_result` (all within ready_timeout; the overlay is made
  /// first). Returns "" or a one-line error; call it once.
  std::string start(const guest::configure& cfg) override;

  /// Sends one request and waits for its response (concurrent calls allowed;
  /// the caller's id is kept, the wire uses its own). On timeout returns
  /// status 504; if the guest is gone, status 502 with `error` set.
  guest::http_response request(guest::http_request req,
                               std::chrono::milliseconds timeout);

  /// The same without blocking: `done` runs on the microVM's reader thread
  /// (or the caller's, if the guest is already gone). Timeouts are checked
  /// about every 100 ms.
  void request_async(guest::http_request req, std::chrono::milliseconds timeout,
                     reply_handler done) override;

  /// Sends halt and waits up to half of `grace` for QEMU to exit (the agent
  /// reports `halted`, exits, and the VM ends with it); then presses the ACPI
  /// power button (QMP system_powerdown) and waits up to the rest; then
  /// SIGKILLs and reaps. Returns the exit code from `halted`, or -1.
  int stop(std::chrono::milliseconds grace = std::chrono::seconds(6)) override;

  /// False once the guest halted, died or broke the protocol.
  bool running() const override;

  /// Host pid of the QEMU process (0 before start).
  int pid() const override;

  /// Log frames received so far (the last 1000).
  std::vector<timed_log> logs() const override;

  /// Called once when the guest halts, dies or breaks the protocol, or QEMU
  /// exits, unless stop() or the destructor ended it.
  void on_exit(exit_handler h) override;

  void on_log(log_handler h) override;

  /// Whether QEMU got KVM (known once start() has spawned it).
  bool kvm() const;

  /// Instead of start(): takes over a microVM that an earlier CRN process
  /// started with an adopt window and left running: listens where QEMU
  /// reconnects, and the agent must say that it runs a program, within
  /// `timeout`. "" or a one-line error (then the VM is killed).
  std::string adopt(const microvm_handle& h, std::chrono::milliseconds timeout);
  /// Lets the VM run on without this process; the object is done with it.
  void detach();
  /// The running VM's identity, for adopt() by a later CRN process.
  microvm_handle handle() const;
  /// Whether the QEMU process of `h` still runs.
  static bool alive(const microvm_handle& h);
  /// SIGKILLs the QEMU process of `h` (an orphan nobody adopts).
  static void kill(const microvm_handle& h);

  /// Whether KVM can run a stock guest kernel here: /dev/kvm opens and the
  /// hardware-assisted module (kvm_intel or kvm_amd) is loaded. A /dev/kvm
  /// from another provider (e.g. kvm_pvm, which needs a PVM-built guest
  /// kernel) does not count. Sets `why` when false.
  static bool kvm_usable(std::string* why = nullptr);

  /// Largest number of log frames kept.
  static constexpr std::size_t max_logs = 1000;

private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

/// What an instance's microVM runs (its `configure` code, a shell script for the initramfs):
/// it boots the init of the instance's disk (mounted at /mnt/rootfs) with the VM's hostname
/// and the owner's SSH keys written into the disk first, or serves a listing of a disk that has
/// no init on port 8080. See microvm.cpp.
extern const char* const instance_program;

} // namespace alephd
