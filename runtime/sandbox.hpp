#pragma once

// The `sandbox` executor: runs the guest agent (`alephd-guest`) as the first
// process of a bubblewrap container (own pid, ipc, uts and, by default, net
// namespaces; /usr read-only, an empty /tmp, no host files) and speaks the
// guest protocol to it over a unix socket in a per-execution run directory.
// No CAF here: an actor owns one `sandbox` and calls it from a blocking
// context. Every wait is bounded, and the destructor never leaves a process
// behind.

#include "runtime/cgroup.hpp"
#include "runtime/executor.hpp"
#include "runtime/guest_protocol.hpp"

#include <functional>
#include <chrono>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace alephd {

/// How to build the sandbox of one execution.
/// The uid and gid sandboxed programs run as by default ("nobody"): never root.
inline constexpr uint32_t sandbox_user = 65534;

struct sandbox_options {
  std::string bwrap = "/usr/bin/bwrap";
  std::string guest_binary; ///< path of the static alephd-guest
  std::string run_dir;      ///< per-execution host dir (created): logs; see scratch_on_tmpfs
  std::string hostname = "alephd";
  /// The sandbox always has its own network namespace. false: only `lo`.
  /// true: outbound access through slirp4netns (user-mode NAT on tap0,
  /// 10.0.2.100/24, DNS 10.0.2.3), with the host's loopback unreachable.
  bool network = false;
  std::string slirp4netns = "/usr/bin/slirp4netns";
  /// Enter fresh network, IPC and UTS namespaces made ahead by namespace_pool::shared() when a
  /// set is ready and we are root (a faster start); otherwise, or false, bwrap makes them
  /// (--unshare-net/-ipc/-uts). Either way they are the sandbox's alone.
  bool use_namespace_pool = true;
  /// The files of each start (the guest's socket, a plain program on its way in, bwrap's output)
  /// go to a directory of its own on a tmpfs, which the sandbox sees as /run/alephd: on a
  /// journalled disk, making and deleting them cost up to several ms of every cold start. The
  /// tmpfs is root's own at /run/alephd-sandboxes, else /dev/shm or (not root) $XDG_RUNTIME_DIR;
  /// with none, or false, they go to run_dir.
  bool scratch_on_tmpfs = true;
  /// Run by root with a scratch dir on a tmpfs that allows devices (root mounts its own at
  /// /run/alephd-sandboxes): /dev is a directory of the sandbox's own there with the harmless
  /// devices (mknod), bound in one mount. Otherwise, or false, bwrap's --dev (a tmpfs with each
  /// device bound from the host's /dev, and a devpts).
  bool own_dev = true;
  /// The scratch dirs go in a directory of this name under that tmpfs (one per CRN: see
  /// remove_scratch_orphans); "" puts them at its top.
  std::string scratch_group;
  std::chrono::milliseconds ready_timeout{10000};
  /// Extra bwrap arguments before the command (bind mounts of volumes, tmpfs).
  std::vector<std::string> extra_args;
  /// Runs in the child between vfork and exec, on memory it shares with the
  /// CRN: async-signal-safe calls only, no allocation, no locks, no writes
  /// to shared state.
  std::function<void()> child_setup;
  /// When set, the sandbox runs in its own cgroup `cgroup_root/cgroup_name`
  /// with these limits (created by start(), removed when it stops); an OOM
  /// kill is named in the exit report.
  std::optional<cgroup_limits> limits;
  std::string cgroup_root = "alephd";
  std::string cgroup_name;
  /// 0: the sandbox dies with the process that started it. More: it outlives
  /// that process (no --die-with-parent), and its agent waits this long for a
  /// restarted CRN to adopt it (see adopt()) before it stops the program.
  std::chrono::seconds adopt_window{0};
  /// The program runs as this uid and gid, with no new privileges and the agent's seccomp
  /// filter; the agent itself keeps only CAP_SETUID, CAP_SETGID and CAP_KILL (to switch to them
  /// and to signal the program).
  uint32_t uid = sandbox_user;
  uint32_t gid = sandbox_user;
  bool seccomp = true;
};

/// What identifies a running sandbox across CRN processes: bwrap and the
/// namespace's init, each with its start time (against pid reuse).
struct sandbox_handle {
  int pid = 0;
  std::string pid_start;
  int ns_init = 0;
  std::string ns_init_start;
  std::string cgroup_name; ///< its group under cgroup_root ("" without one)
  std::string scratch_dir; ///< its /run/alephd on a tmpfs ("": run_dir)
};

/// One guest agent in a bubblewrap sandbox. All members are thread-safe.
class sandbox final : public executor {
public:
  explicit sandbox(sandbox_options o);
  /// Halts (2 s grace) or kills, and reaps; never leaves a process behind.
  ~sandbox() override;

  sandbox(const sandbox&) = delete;
  sandbox& operator=(const sandbox&) = delete;

  /// Spawns bwrap with the guest agent as the sandbox's first process, waits
  /// for `ready`, sends `configure`, waits for `configure_result` (all within
  /// ready_timeout). Returns "" or a one-line error; call it once.
  std::string start(const guest::configure& cfg) override;

  /// start() in two steps, for a pool of pre-started sandboxes: boot() spawns
  /// the sandbox and waits for the agent's `ready` (within ready_timeout);
  /// configure() later sends `configure` and waits for the result. Each
  /// returns "" or a one-line error, and either may be called once.
  std::string boot();
  std::string configure(const guest::configure& cfg, std::chrono::milliseconds timeout);

  /// Instead of start(): takes over a sandbox that an earlier CRN process
  /// started with an adopt window (same options: run_dir, cgroup, network) and
  /// left running. Its agent reconnects to guest.sock in its /run/alephd (h.scratch_dir, or
  /// run_dir for a sandbox without one) and must say that
  /// it runs a program, within `timeout`. "" or a one-line error (then what is
  /// left of it is killed).
  std::string adopt(const sandbox_handle& h, std::chrono::milliseconds timeout);

  /// Lets the sandbox run on without this process (the agent waits for a
  /// restarted CRN to adopt it); the object is done with it afterwards.
  void detach();

  /// The running sandbox's identity, for adopt() by a later CRN process.
  sandbox_handle handle() const;

  /// Whether both processes of `h` still run.
  static bool alive(const sandbox_handle& h);
  /// SIGKILLs what is left of `h` (an orphan nobody adopts) and removes its scratch dir.
  static void kill(const sandbox_handle& h);
  /// Removes the scratch dirs of `group` (sandbox_options::scratch_group) but those in `keep`:
  /// the leftovers of sandboxes that died with an earlier run of the CRN. Returns how many.
  static size_t remove_scratch_orphans(const std::string& group, const std::set<std::string>& keep);
  /// The tmpfs directory this process's scratch dirs go under, made on first use; "" without one.
  static std::string scratch_root();
  /// Makes `group`'s directory and names `owner` (a CRN's data dir) in it: once `owner` is gone
  /// (the CRN with it), remove_abandoned_scratch_groups() takes the group away.
  static void claim_scratch_group(const std::string& group, const std::string& owner);
  /// Removes `group`'s directory if no scratch dir is left in it (a CRN that stops).
  static void release_scratch_group(const std::string& group);
  /// Removes every group whose owner no longer exists (nobody can re-adopt its sandboxes), with
  /// what is in it. Returns how many.
  static size_t remove_abandoned_scratch_groups();

  /// Changes the limits of the sandbox's cgroup (a pooled sandbox gets the
  /// execution's limits when it is taken). False with `err` without a cgroup.
  bool set_limits(const cgroup_limits& limits, std::string& err);

  /// Sends one request and waits for its response (concurrent calls allowed;
  /// the caller's id is kept, the wire uses its own). On timeout returns
  /// status 504; if the guest is gone, status 502 with `error` set.
  guest::http_response request(guest::http_request req,
                               std::chrono::milliseconds timeout);

  /// The same without blocking: `done` runs on the sandbox's reader thread
  /// (or the caller's, if the guest is already gone). Timeouts are checked
  /// about every 100 ms.
  void request_async(guest::http_request req, std::chrono::milliseconds timeout,
                     reply_handler done) override;

  /// Sends halt, waits up to `grace` for `halted` and the process to exit,
  /// then SIGKILLs and reaps. Returns the exit code from `halted`, or -1.
  int stop(std::chrono::milliseconds grace = std::chrono::seconds(6)) override;

  /// False once the guest halted, died or broke the protocol.
  bool running() const override;

  /// Host pid of the bwrap process (0 before start).
  int pid() const override;

  /// From its cgroup when it has one (every process in the sandbox), else from bwrap.
  executor_usage usage() const override;

  /// Log frames received so far (the last 1000).
  std::vector<timed_log> logs() const override;

  /// Called once when the guest halts, dies or breaks the protocol, unless
  /// stop() or the destructor ended it.
  void on_exit(exit_handler h) override;

  void on_log(log_handler h) override;

  /// Largest number of log frames kept.
  static constexpr std::size_t max_logs = 1000;

private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

} // namespace alephd
