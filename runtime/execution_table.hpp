#pragma once

// The CRN's table of running executions that can take HTTP calls. A
// vm_supervisor puts its execution here once it runs and takes it out before
// it stops; the `/vm/{ref}` route reads it on every call, so a warm call goes
// from the HTTP thread straight to the executor without an actor hop.

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

#include "runtime/executor.hpp"
#include "runtime/log_feed.hpp"

namespace alephd {

/// One running execution as the HTTP route sees it.
struct live_execution {
  std::string item_hash;
  std::shared_ptr<executor> exec;
  std::chrono::milliseconds timeout{1000}; ///< per request (`resources.seconds`)
  std::atomic<uint32_t> in_flight{0};
  std::atomic<uint64_t> requests{0};
  std::atomic<uint64_t> bytes_in{0};  ///< request bodies
  std::atomic<uint64_t> bytes_out{0}; ///< response bodies
  /// steady_clock milliseconds of the last call's end (or of the start).
  std::atomic<int64_t> last_used_ms{0};

  static int64_t now_ms() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
  }
};

class execution_table {
public:
  std::shared_ptr<live_execution> find(const std::string& hash) const {
    std::lock_guard lock{mu_};
    auto i = map_.find(hash);
    return i == map_.end() ? nullptr : i->second;
  }

  void put(std::shared_ptr<live_execution> e) {
    std::lock_guard lock{mu_};
    map_[e->item_hash] = std::move(e);
  }

  /// Removes `hash` if it is still `which` (a newer run may have replaced it).
  void remove(const std::string& hash, const live_execution* which) {
    std::lock_guard lock{mu_};
    if (auto i = map_.find(hash); i != map_.end() && i->second.get() == which)
      map_.erase(i);
  }

  /// Calls in flight over every execution, and calls waiting for their program to start.
  uint32_t in_flight() const {
    std::lock_guard lock{mu_};
    uint32_t n = starting.load();
    for (auto& [hash, e] : map_)
      n += e->in_flight.load();
    return n;
  }

  /// Calls waiting for a cold start (they count as in flight for the drain).
  std::atomic<uint32_t> starting{0};

  /// Once set, new calls are refused with 503 (SIGTERM).
  std::atomic<bool> draining{false};

  /// The log feed of each execution whose supervisor is alive (running or
  /// not), for `stream_logs`.
  void put_feed(const std::string& hash, std::shared_ptr<log_feed> f) {
    std::lock_guard lock{mu_};
    feeds_[hash] = std::move(f);
  }

  std::shared_ptr<log_feed> find_feed(const std::string& hash) const {
    std::lock_guard lock{mu_};
    auto i = feeds_.find(hash);
    return i == feeds_.end() ? nullptr : i->second;
  }

  /// Removes `hash`'s feed if it is still `which`.
  void remove_feed(const std::string& hash, const log_feed* which) {
    std::lock_guard lock{mu_};
    if (auto i = feeds_.find(hash); i != feeds_.end() && i->second.get() == which)
      feeds_.erase(i);
  }

private:
  mutable std::mutex mu_;
  std::unordered_map<std::string, std::shared_ptr<live_execution>> map_;
  std::unordered_map<std::string, std::shared_ptr<log_feed>> feeds_;
};

} // namespace alephd
