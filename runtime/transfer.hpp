// Streaming HTTP transfers of whole files (Boost.Beast client, one connection each): a CRN's
// cache download from its CCN and `alephd upload`. Neither holds the file in memory.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace alephd::transfer {

/// Called as bytes move: (bytes so far, total bytes or 0 when unknown).
using progress_fn = std::function<void(uint64_t, uint64_t)>;

struct options {
  /// Each connect, send and receive must make progress within this time.
  std::chrono::milliseconds idle_timeout{30000};
  /// Stops the transfer (checked between chunks); may be null.
  const std::atomic<bool>* cancel = nullptr;
  /// Called at most every 64 KiB moved; may be empty.
  progress_fn progress;
  /// Extra request header fields.
  std::vector<std::pair<std::string, std::string>> headers;
};

struct result {
  /// The HTTP status; 0 when there was no answer (then `error` says why).
  unsigned status = 0;
  /// Empty on success (a 2xx answer fully received); else a one-line error.
  std::string error;
  /// Download: bytes written and their sha256. Upload: the answer's body.
  uint64_t size = 0;
  std::string sha256;
  std::string body;
  /// The local disk filled up while writing.
  bool no_space = false;
};

/// Splits "http://host[:port]" into host and port; false when it is not such a URL.
bool parse_base_url(const std::string& url, std::string& host, uint16_t& port);

/// GETs `target` from `base_url` into the new file `dest` (fsynced; removed on any failure),
/// hashing it on the way. More than `max_bytes` of body fails the download.
result download(const std::string& base_url, const std::string& target, const std::string& dest,
                uint64_t max_bytes, const options& o);

/// POSTs the file `path` as an application/octet-stream body to `target`.
result upload(const std::string& base_url, const std::string& target, const std::string& path,
              const options& o);

/// What one timed GET saw (the CCN's prober).
struct probe_result {
  unsigned status = 0;  ///< 0: no answer (`error` says why)
  std::string error;
  std::string server;   ///< the Server header
  double seconds = 0;   ///< from connecting to the whole answer read
};

/// GETs `target` from `base_url` within `timeout` in all, reading at most 64 KiB of body.
probe_result probe(const std::string& base_url, const std::string& target,
                   std::chrono::milliseconds timeout);

} // namespace alephd::transfer
