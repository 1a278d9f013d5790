#include "guest/confine.hpp"

#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <grp.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <seccomp.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <unistd.h>

namespace alephd::guest {

namespace {

// Refused outright (EPERM): what a container runtime's default profile refuses, less what an
// unprivileged program legitimately needs.
constexpr const char* denied[] = {
  "ptrace", "process_vm_readv", "process_vm_writev", "kcmp",
  "mount", "umount2", "pivot_root", "chroot", "move_mount", "open_tree", "fsopen", "fsconfig",
  "fsmount", "fspick", "mount_setattr",
  "init_module", "finit_module", "delete_module", "create_module", "query_module",
  "get_kernel_syms", "kexec_load", "kexec_file_load", "reboot", "swapon", "swapoff", "acct",
  "bpf", "perf_event_open", "userfaultfd", "add_key", "request_key", "keyctl",
  "unshare", "setns", "open_by_handle_at", "name_to_handle_at", "quotactl", "syslog",
  "lookup_dcookie", "iopl", "ioperm", "settimeofday", "clock_settime", "clock_adjtime",
  "adjtimex", "stime", "sethostname", "setdomainname", "uselib", "nfsservctl", "vm86",
  "vm86old", "_sysctl", "sysfs", "ustat", "personality", "io_uring_setup", "io_uring_enter",
  "io_uring_register",
};

// New namespaces through clone(): each flag refused on its own.
constexpr unsigned long namespace_flags[] = {CLONE_NEWNS,  CLONE_NEWUSER, CLONE_NEWNET,
                                             CLONE_NEWPID, CLONE_NEWUTS,  CLONE_NEWIPC,
                                             CLONE_NEWCGROUP};

struct ctx_guard {
  scmp_filter_ctx ctx;
  ~ctx_guard() {
    seccomp_release(ctx);
  }
};

} // namespace

std::vector<sock_filter> compile_filter(std::string& err) {
  ctx_guard g{seccomp_init(SCMP_ACT_ALLOW)};
  if (g.ctx == nullptr) {
    err = "seccomp_init failed";
    return {};
  }
  auto refuse = SCMP_ACT_ERRNO(EPERM);
  int rc = 0;
  for (const char* name : denied) {
    int nr = seccomp_syscall_resolve_name(name);
    if (nr == __NR_SCMP_ERROR || nr < 0)
      continue; // not a syscall on this architecture
    if ((rc = seccomp_rule_add(g.ctx, refuse, nr, 0)) != 0) {
      err = std::string{"seccomp rule for "} + name + ": " + std::strerror(-rc);
      return {};
    }
  }
  for (auto flag : namespace_flags)
    if ((rc = seccomp_rule_add(g.ctx, refuse, SCMP_SYS(clone), 1,
                               SCMP_A0(SCMP_CMP_MASKED_EQ, flag, flag)))
        != 0) {
      err = std::string{"seccomp rule for clone: "} + std::strerror(-rc);
      return {};
    }
  // clone3 passes its flags in memory a filter cannot read: ENOSYS makes libc fall back to clone.
  if ((rc = seccomp_rule_add(g.ctx, SCMP_ACT_ERRNO(ENOSYS), SCMP_SYS(clone3), 0)) != 0) {
    err = std::string{"seccomp rule for clone3: "} + std::strerror(-rc);
    return {};
  }
  // Packet sockets, and raw IP sockets (netlink, which libc uses for getaddrinfo, stays).
  rc = seccomp_rule_add(g.ctx, refuse, SCMP_SYS(socket), 1, SCMP_A0(SCMP_CMP_EQ, AF_PACKET));
  for (int domain : {AF_INET, AF_INET6})
    if (rc == 0)
      rc = seccomp_rule_add(g.ctx, refuse, SCMP_SYS(socket), 2, SCMP_A0(SCMP_CMP_EQ, static_cast<scmp_datum_t>(domain)),
                            SCMP_A1(SCMP_CMP_MASKED_EQ, 0xf, SOCK_RAW));
  if (rc != 0) {
    err = std::string{"seccomp rule for socket: "} + std::strerror(-rc);
    return {};
  }
  // libseccomp 2.5 exports to a file descriptor only.
  int fd = ::memfd_create("alephd-seccomp", MFD_CLOEXEC);
  if (fd < 0) {
    err = std::string{"memfd_create: "} + std::strerror(errno);
    return {};
  }
  std::vector<sock_filter> prog;
  if ((rc = seccomp_export_bpf(g.ctx, fd)) != 0) {
    err = std::string{"seccomp_export_bpf: "} + std::strerror(-rc);
  } else {
    auto size = ::lseek(fd, 0, SEEK_END);
    if (size <= 0 || size % static_cast<off_t>(sizeof(sock_filter)) != 0) {
      err = "seccomp_export_bpf wrote no program";
    } else {
      prog.resize(static_cast<size_t>(size) / sizeof(sock_filter));
      if (::pread(fd, prog.data(), static_cast<size_t>(size), 0) != size) {
        err = std::string{"reading the seccomp program: "} + std::strerror(errno);
        prog.clear();
      }
    }
  }
  ::close(fd);
  return prog;
}

int apply(const confinement& c) {
  if (c.drop_user) {
    if (::setgroups(0, nullptr) != 0 || ::setresgid(c.gid, c.gid, c.gid) != 0
        || ::setresuid(c.uid, c.uid, c.uid) != 0)
      return errno;
  }
  if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
    return errno;
  if (!c.filter.empty()) {
    sock_fprog prog{static_cast<unsigned short>(c.filter.size()),
                    const_cast<sock_filter*>(c.filter.data())};
    if (::prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0)
      return errno;
  }
  return 0;
}

} // namespace alephd::guest
