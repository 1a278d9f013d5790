#pragma once
// How the guest agent confines the program it starts in a sandbox: an unprivileged uid and
// gid, no new privileges, and a seccomp filter (libseccomp) that refuses the system calls a
// program uses to reach past its namespaces: ptrace, mount, kernel modules, raw and packet
// sockets, new namespaces, kexec, bpf, keyrings, and the like. They fail with EPERM.
//
// The filter is compiled once in the agent (compile_filter, which allocates); the forked child
// applies it with apply() between fork and exec, where only async-signal-safe calls are allowed.

#include <linux/filter.h>
#include <string>
#include <sys/types.h>
#include <vector>

namespace alephd::guest {

struct confinement {
  bool drop_user = false; ///< switch to uid/gid before exec
  uid_t uid = 65534;
  gid_t gid = 65534;
  std::vector<sock_filter> filter; ///< empty = no seccomp filter
};

/// The syscall filter as a classic BPF program; empty with `err` set on failure.
std::vector<sock_filter> compile_filter(std::string& err);

/// In the child after fork: drops to the user, sets no_new_privs, loads the filter. Returns 0 or
/// the errno of the step that failed (the child must then not exec).
int apply(const confinement& c);

} // namespace alephd::guest
