// One Linux control group per execution, with memory, pids and CPU limits, on
// cgroup v1 (one hierarchy per controller, or co-mounted ones) and on cgroup v2
// (the unified hierarchy). No CAF here: the CRN's executor owns one `cgroup`
// per sandbox and calls it from a blocking context.
//
// Layout. Every execution group lives under a parent group `root_name` (e.g.
// "alephd-<node id>") placed relative to this process's own cgroup, which is
// read from /proc/self/cgroup and /proc/self/mountinfo, never assumed:
// - v1: <own cgroup in each hierarchy>/<root_name>/<name>, in the memory, pids,
//   cpu and cpuacct hierarchies that are mounted (co-mounted ones count once);
// - v2: <base>/<root_name>/<name>, where <base> is this process's own cgroup if
//   the controllers can be enabled in its cgroup.subtree_control, else its
//   parent (the "no internal processes" rule makes a non-root cgroup that holds
//   processes unable to delegate controllers). The parent group holds no
//   process and gets +memory +pids +cpu in its cgroup.subtree_control.
//
// Errors are one-line strings starting with "cgroup"; nothing throws.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace alephd {

/// Limits of one execution's group, all written before any process joins.
struct cgroup_limits {
  /// Memory limit in bytes, 0 = none. Swap is capped too: memory.memsw = the
  /// same value on v1, memory.swap.max = 0 on v2 (where those files exist).
  uint64_t memory_bytes = 0;
  /// pids.max (tasks, i.e. threads, on v1 and v2), 0 = none.
  uint32_t pids_max = 512;
  /// CPU quota in cores (1.5 = 150 ms per 100 ms period), 0 = none.
  double cpus = 0;
};

/// What a group used so far (0 where the kernel does not expose it).
struct cgroup_stats {
  uint64_t memory_current = 0; ///< memory.current / memory.usage_in_bytes
  uint64_t memory_peak = 0;    ///< memory.peak (v2, 5.19+) / memory.max_usage_in_bytes
  uint64_t cpu_usage_ns = 0;   ///< cpu.stat usage_usec * 1000 / cpuacct.usage
  uint32_t pids_current = 0;   ///< pids.current
  uint64_t oom_kills = 0;      ///< memory.events oom_kill / memory.oom_control oom_kill
};

/// Where this process's cgroups are. `detect()` reads the running process;
/// `parse()` takes the two files' text (for tests and diagnostics).
struct cgroup_layout {
  /// 1 when memory, pids or cpu is on a v1 hierarchy; else 2 when this process
  /// is in a mounted cgroup2; else 0 (nothing usable).
  int version = 0;
  /// Where cgroup2 is mounted and this process's cgroup directory in it ("" if
  /// none). Filled on hybrid v1 hosts too.
  std::string v2_mount, v2_self;
  /// v1: controller ("memory", "pids", "cpu", "cpuacct") -> this process's
  /// cgroup directory in that controller's hierarchy. Missing = not mounted.
  std::map<std::string, std::string> v1;

  static cgroup_layout detect();
  static cgroup_layout parse(std::string_view mountinfo, std::string_view proc_self_cgroup);
};

/// One execution's cgroup. Movable, not copyable, not thread-safe (one
/// owner). The destructor closes file descriptors but leaves the group in
/// place: call destroy() to kill its processes and remove it.
class cgroup {
public:
  /// Creates <root_name>/<name> (root_name is created if missing and kept) and
  /// writes `limits`. Fails, with `err` set to one line, when a name is not
  /// [A-Za-z0-9._-]+, when the group already exists (see remove_orphans), or
  /// when a controller a non-zero limit needs is not available (the message
  /// names it). Nothing is left behind on failure except the root group.
  static std::optional<cgroup> create(const std::string& root_name, const std::string& name,
                                      const cgroup_limits& limits, std::string& err);
  /// The same on an explicit layout.
  static std::optional<cgroup> create(const cgroup_layout& layout, const std::string& root_name,
                                      const std::string& name, const cgroup_limits& limits,
                                      std::string& err);

  /// The existing group <root_name>/<name> (one a sandbox left running by an
  /// earlier CRN process is in), with the limits it has.
  static std::optional<cgroup> open(const std::string& root_name, const std::string& name,
                                    std::string& err);

  cgroup(cgroup&& other) noexcept;
  cgroup& operator=(cgroup&& other) noexcept;
  cgroup(const cgroup&) = delete;
  cgroup& operator=(const cgroup&) = delete;
  ~cgroup();

  /// Opens (O_CLOEXEC) each group's cgroup.procs so that a child can join
  /// between fork and exec with attach_self_in_child(). Call it in the parent
  /// before forking; idempotent.
  bool prepare_attach(std::string& err);

  /// In a forked child: writes "0" to every fd opened by prepare_attach(),
  /// moving the calling process into the group. Async-signal-safe; returns
  /// false if prepare_attach() was not called or a write failed, in which case
  /// the child must not exec the workload (e.g. `_exit(127)`).
  [[nodiscard]] bool attach_self_in_child() const noexcept;

  /// Changes the limits of the group (0 leaves that limit as it is). A memory
  /// limit below what the group uses now makes the kernel reclaim or OOM-kill.
  bool update(const cgroup_limits& limits, std::string& err);

  /// Moves a running process (all its threads) into the group.
  bool attach(pid_t pid, std::string& err);

  /// Current usage; missing files read as 0.
  cgroup_stats stats() const;

  /// True once the kernel OOM-killed a process of the group: memory.events
  /// oom_kill > 0 on v2, memory.oom_control oom_kill > 0 on v1 (Linux 4.13+;
  /// older v1 kernels lack the line and memory.failcnt > 0 is used instead,
  /// which also counts reclaimed limit hits).
  bool oom_killed() const;

  /// SIGKILLs every process in the group and its sub-groups (v2: cgroup.kill
  /// when present; otherwise, and on v1 in every hierarchy, a kill loop over
  /// cgroup.procs) and removes the directories, within `timeout`. True when
  /// the group is gone; idempotent. Reaping direct children stays the
  /// caller's job (a zombie does not keep a group busy).
  bool destroy(std::string& err,
               std::chrono::milliseconds timeout = std::chrono::milliseconds(3000));

  /// Main directory for logs (the memory hierarchy's on v1).
  std::string path() const;
  /// Directory that holds `controller` ("memory", "pids", "cpu", "cpuacct"),
  /// or "" if the group does not have it.
  std::string path(std::string_view controller) const;

  /// 1 or 2 for the running host, 0 if no hierarchy is usable.
  static int version();

  /// The root group a CRN makes its executions' groups under: "alephd-" and the first 12
  /// characters of its node id.
  static std::string root_name_for(const std::string& node_id) {
    return "alephd-" + node_id.substr(0, 12);
  }

  /// Kills and removes every group under root_name for which keep(name) is
  /// false (a null keep keeps nothing), e.g. at startup after a crash; returns
  /// how many were removed. When nothing remains, the root group is removed
  /// too. Do not run it concurrently with create() on the same root_name.
  static size_t remove_orphans(const std::string& root_name,
                               const std::function<bool(const std::string&)>& keep);
  /// The same on an explicit layout.
  static size_t remove_orphans(const cgroup_layout& layout, const std::string& root_name,
                               const std::function<bool(const std::string&)>& keep);

private:
  cgroup() = default;
  void close_fds() noexcept;

  int version_ = 0;
  /// Distinct group directories, main first (v2: exactly one).
  std::vector<std::string> dirs_;
  /// controller -> directory in dirs_ (v2: the controllers enabled for it).
  std::map<std::string, std::string, std::less<>> controllers_;
  std::vector<int> procs_fds_;
  bool destroyed_ = false;
};

} // namespace alephd
