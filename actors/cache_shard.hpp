// One shard of a node's content-addressed files (see cache_shard_actor). The shards of a node
// share one blob directory and one LMDB environment; shard i holds the hashes whose first byte
// is i modulo the shard count.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "actors/interfaces.hpp"
#include "runtime/blob_store.hpp"
#include "runtime/lmdb.hpp"
#include "runtime/transfer.hpp"

namespace alephd {

struct cache_shard_config {
  unsigned index = 0;
  unsigned shards = 1;
  std::shared_ptr<lmdb::env> env;
  std::shared_ptr<blob_store> blobs;
  /// Bytes held by all shards together (shared).
  std::shared_ptr<std::atomic<uint64_t>> total_bytes;
  /// Above this total the shard asks its store to evict (0 = never).
  uint64_t high_bytes = 0;
  /// Files larger than this are refused (0 = no limit).
  uint64_t max_file_bytes = 0;
  /// Files stored here (not downloaded) are never evicted: a CCN's origin copies.
  bool keep_stored = true;
  /// `fetch` downloads a missing file from the CCN of the link (set with atom::connect): over
  /// HTTP when the CCN names its address, else over the link itself. False: not_found.
  bool fetch_missing = false;
  std::chrono::milliseconds fetch_timeout{60000};
  /// Each scrub round re-hashes up to this many bytes of blobs; 0 turns scrubbing off.
  uint64_t scrub_bytes = 64ull << 20;
  std::chrono::milliseconds scrub_interval{60000};
  /// Downloads that make no progress for this long fail.
  std::chrono::milliseconds download_idle{15000};
};

/// One file's index record.
struct cache_entry {
  uint64_t size = 0;
  double created = 0;
  double last_access = 0;
  bool keep = false;  ///< never evicted (a CCN's origin copy)
  bool duty = false;  ///< a replica this CRN holds for its CCN (pinned, across restarts too)
  std::string origin; ///< "upload", "peer", "download"
  std::string stamp;  ///< the blob's file_stamp when it was last verified
};

struct cache_shard_state {
  static inline const char* name = "cache_shard";
  cache_shard_config cfg;
  caf::actor store; ///< the content_store that owns this shard (stored / evict notices)
  file_source_actor link; ///< where missing files come from
  MDB_dbi db = 0;
  std::unordered_map<std::string, cache_entry> entries;
  std::unordered_map<std::string, std::map<std::string, unsigned>> pins; ///< hash -> owner -> n
  std::unordered_map<std::string, std::set<std::string>> owned;          ///< owner -> hashes
  std::set<std::string> forgotten; ///< removed while pinned: deleted at the last unpin
  std::set<std::string> dirty;     ///< last-access times not yet written
  struct flight {
    std::vector<caf::typed_response_promise<file_info>> waiters;
    std::vector<std::string> owners;
    std::vector<caf::actor> watchers;
    std::shared_ptr<std::atomic<bool>> cancel;
    std::thread worker;
    uint64_t last_logged = 0;
  };
  std::unordered_map<std::string, flight> flights;
  std::string scrub_cursor;
  uint64_t bytes = 0, downloads = 0, evicted = 0, corrupt = 0;

  ~cache_shard_state();
};

using cache_shard_pointer = cache_shard_actor::stateful_pointer<cache_shard_state>;

cache_shard_actor::behavior_type cache_shard(cache_shard_pointer self, cache_shard_config cfg,
                                             caf::actor store);

/// Which shard of `shards` holds `hash` (a sha256 hex string).
unsigned shard_of(const std::string& hash, unsigned shards);

} // namespace alephd
