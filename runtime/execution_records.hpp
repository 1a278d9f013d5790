#pragma once

// The CRN's durable record of each execution whose sandbox may outlive the
// CRN process (LMDB database "executions" in <data-dir>/lmdb): enough to find
// the sandbox again after a restart (bwrap and its namespace's init with start
// times, run dir, cgroup) and to know what it was (allocation, persistent).
// Written when an execution starts running, removed when it ends for good;
// a kill -9 of the CRN leaves it for the next start to re-adopt or clean up.

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "messages/types.hpp"
#include "runtime/microvm.hpp"
#include "runtime/sandbox.hpp"

namespace alephd {

namespace lmdb {
class env;
}

struct execution_record {
  allocation alloc;
  bool persistent = false;
  std::string executor = "sandbox"; ///< "sandbox" or "microvm"
  std::string run_dir;
  bool network = false;
  sandbox_handle handle; ///< a microVM uses pid and pid_start (QEMU)
  std::string sock_dir;  ///< a microVM's sockets (a sandbox's scratch dir is in `handle`)
  double started_at = 0;
  int64_t request_timeout_ms = 1000; ///< per call (resources.seconds)
  std::vector<std::string> files;    ///< cached files it uses (pinned again when re-adopted)

  /// Whether its sandbox or VM still runs.
  bool alive() const;
  /// SIGKILLs what is left of it.
  void kill() const;
  microvm_handle vm_handle() const { return microvm_handle{handle.pid, handle.pid_start, sock_dir}; }
};

class execution_records {
public:
  /// Opens <data_dir>/lmdb; nullptr and `err` on failure.
  static std::shared_ptr<execution_records> open(const std::string& data_dir, std::string& err);
  ~execution_records();

  /// Writes (replaces) the record of `r.alloc.item_hash`; false with `err`.
  bool put(const execution_record& r, std::string& err);
  void erase(const std::string& item_hash);
  std::optional<execution_record> get(const std::string& item_hash) const;
  /// Every record; unreadable ones are skipped (and logged).
  std::vector<execution_record> all() const;

  /// JSON text of a record and back (nullopt when malformed), for tests.
  static std::string encode(const execution_record& r);
  static std::optional<execution_record> decode(const std::string& text);

private:
  execution_records() = default;
  std::unique_ptr<lmdb::env> env_;
  unsigned db_ = 0;
};

} // namespace alephd
