// CCN: the first content store — sha256-named blob files plus an LMDB index.
// A file is acknowledged only after its blob is fsynced and renamed and its
// index entry committed. (The storage issue turns this into cache shards.)
#pragma once

#include <memory>
#include <vector>

#include "actors/interfaces.hpp"
#include "runtime/blob_store.hpp"
#include "runtime/lmdb.hpp"

namespace alephd {

struct content_store_state {
  static inline const char* name = "content_store";
  std::shared_ptr<lmdb::env> env;
  MDB_dbi files = 0; ///< sha256 -> file record
  std::unique_ptr<blob_store> blobs;
  uint64_t max_bytes = 0;
  std::vector<file_listener_actor> listeners;
};

content_store_actor::behavior_type
content_store(content_store_actor::stateful_pointer<content_store_state> self,
              std::shared_ptr<lmdb::env> env, std::string blob_dir, uint64_t max_bytes);

} // namespace alephd
