// A node's content store: the front of its cache shards (CRN: the bounded cache of code,
// runtimes, volumes and rootfs images; CCN: the origin store of uploaded files). Routes each
// request to the shard that owns the hash, adds up usage, evicts least recently used files past
// the high watermark down to the low one, and tells listeners about uploads.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "actors/cache_shard.hpp"
#include "actors/interfaces.hpp"
#include "runtime/lmdb.hpp"

namespace alephd {

struct content_store_config {
  /// The blob directory (blobs under <root>/ab/…, temp files under <root>/tmp).
  std::string root;
  /// The blob files under `root`; made by the store when null. A node makes it before its
  /// HTTP server starts, so that clearing the temp files of an earlier run cannot race an upload.
  std::shared_ptr<blob_store> blobs;
  std::shared_ptr<lmdb::env> env;
  unsigned shards = 4;
  /// The bound on blob bytes (0 = none: a CCN's origin store).
  uint64_t max_bytes = 0;
  /// Eviction starts above high × max_bytes and stops at low × max_bytes.
  double high_watermark = 0.9;
  double low_watermark = 0.8;
  uint64_t max_file_bytes = 0;
  /// Uploaded and replicated files are kept (never evicted).
  bool keep_stored = true;
  /// A CRN's cache: `fetch` downloads missing files from the CCN of the link (atom::connect).
  bool fetch_missing = false;
  std::chrono::milliseconds fetch_timeout{60000};
  uint64_t scrub_bytes = 64ull << 20;
  std::chrono::milliseconds scrub_interval{60000};
  std::chrono::milliseconds download_idle{15000};
};

struct content_store_state {
  static inline const char* name = "content_store";
  content_store_config cfg;
  std::vector<cache_shard_actor> shards;
  std::vector<file_listener_actor> listeners;
  std::shared_ptr<std::atomic<uint64_t>> total = std::make_shared<std::atomic<uint64_t>>(0);
  unsigned next = 0; ///< round robin for work not tied to a hash
  bool evicting = false;
};

content_store_actor::behavior_type
content_store(content_store_actor::stateful_pointer<content_store_state> self,
              content_store_config cfg);

} // namespace alephd
