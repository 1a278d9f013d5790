#pragma once

// The output of one execution as it happens: the program's stdout/stderr and
// the CRN's own notes, the last `capacity` lines kept, and followers that get
// every new line (`/control/machine/{ref}/stream_logs`). Thread-safe; no CAF.

#include "runtime/executor.hpp"

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <vector>

namespace alephd {

class log_feed {
public:
  /// Gets each line; called under the feed's lock, so it must be quick, must
  /// not block and must not call back into the feed.
  using listener = std::function<void(const timed_log&)>;
  /// Called once when the feed ends (under the same rules).
  using closer = std::function<void()>;

  explicit log_feed(std::size_t capacity = 1000) : capacity_(capacity) {
  }

  void push(timed_log line) {
    std::lock_guard lock{mu_};
    if (closed_)
      return;
    for (auto& [id, f] : followers_)
      f.first(line);
    lines_.push_back(std::move(line));
    if (lines_.size() > capacity_)
      lines_.pop_front();
  }

  std::vector<timed_log> snapshot() const {
    std::lock_guard lock{mu_};
    return {lines_.begin(), lines_.end()};
  }

  /// Hands `l` the kept lines, then every new one, until unfollow() or the
  /// feed's end (then `c`). Returns an id for unfollow(); 0 when the feed has
  /// already ended (the kept lines and `c` were delivered at once).
  uint64_t follow(listener l, closer c) {
    std::lock_guard lock{mu_};
    for (auto& line : lines_)
      l(line);
    if (closed_) {
      c();
      return 0;
    }
    auto id = next_id_++;
    followers_.emplace(id, std::make_pair(std::move(l), std::move(c)));
    return id;
  }

  void unfollow(uint64_t id) {
    std::lock_guard lock{mu_};
    followers_.erase(id);
  }

  /// Ends the feed: followers get their closer; later pushes are dropped.
  void close() {
    std::lock_guard lock{mu_};
    if (closed_)
      return;
    closed_ = true;
    for (auto& [id, f] : followers_)
      f.second();
    followers_.clear();
  }

  std::size_t followers() const {
    std::lock_guard lock{mu_};
    return followers_.size();
  }

private:
  mutable std::mutex mu_;
  std::size_t capacity_;
  std::deque<timed_log> lines_;
  std::map<uint64_t, std::pair<listener, closer>> followers_;
  uint64_t next_id_ = 1;
  bool closed_ = false;
};

} // namespace alephd
