#pragma once

// Namespaces made ahead of need for sandboxes. A sandbox always gets network, IPC and UTS
// namespaces of its own (`lo` up, nothing else); making them is among the dearest steps of
// bwrap's start (~1.5 ms of a ~7 ms cold start on a 2-core VM, most of it the network one), so
// a thread keeps a few fresh sets ready and a sandbox enters one (setns) before bwrap starts,
// instead of bwrap's --unshare-net/-ipc/-uts. Each set is handed out once. Making them needs
// CAP_SYS_ADMIN: without it the pool stays empty and sandboxes fall back to bwrap's; short of
// memory or fds, it tries again a second later.

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <mutex>
#include <thread>
#include <vector>

namespace alephd {

/// One set of fresh namespaces: fds (O_CLOEXEC) the holder owns and closes (-1: none).
struct spare_namespaces {
  int net = -1;
  int ipc = -1;
  int uts = -1;

  spare_namespaces() = default;
  spare_namespaces(int n, int i, int u) : net{n}, ipc{i}, uts{u} {}
  spare_namespaces(spare_namespaces&& other) noexcept;
  spare_namespaces& operator=(spare_namespaces&& other) noexcept;
  spare_namespaces(const spare_namespaces&) = delete;
  spare_namespaces& operator=(const spare_namespaces&) = delete;
  ~spare_namespaces();

  explicit operator bool() const { return net >= 0 && ipc >= 0 && uts >= 0; }
  void close();
};

class namespace_pool {
public:
  /// Keeps `spares` sets ready (a thread makes them).
  explicit namespace_pool(std::size_t spares);
  /// Stops the thread and closes the sets nobody took.
  ~namespace_pool();

  namespace_pool(const namespace_pool&) = delete;
  namespace_pool& operator=(const namespace_pool&) = delete;

  /// A fresh set (network with `lo` up, IPC, UTS); an empty one when none is ready (or
  /// namespaces cannot be made here).
  spare_namespaces take();

  /// Blocks until `n` sets are ready or `timeout` passes; false also when the pool cannot make
  /// namespaces (tests).
  bool wait_ready(std::size_t n, std::chrono::milliseconds timeout);

  /// False once making namespaces failed (no privilege): take() then always comes back empty.
  bool usable() const;

  /// The process's pool, started on first use with 2 spares.
  static namespace_pool& shared();

private:
  void fill();

  std::size_t spares_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<spare_namespaces> ready_;
  bool usable_ = true;
  bool stopping_ = false;
  std::thread thread_;
};

} // namespace alephd
