#include "actors/content_store.hpp"

#include <chrono>

#include <caf/all.hpp>
#include <spdlog/spdlog.h>

#include "messages/codec.hpp"
#include "runtime/wall_clock.hpp"

namespace alephd {

namespace {

using self_ptr = content_store_actor::stateful_pointer<content_store_state>;

// `expected` is the hash a replicated blob must have; replicated files are not announced to
// listeners again (peers form a full mesh, so nobody needs an echo).
caf::result<file_info> store(self_ptr self, std::string_view data, std::string_view expected) {
  auto& st = self->state;
  if (st.max_bytes > 0 && data.size() > st.max_bytes)
    return make_error(ec::too_large,
                      "file too large (limit " + std::to_string(st.max_bytes) + " bytes)");
  std::string hash;
  if (auto err = st.blobs->write(data, hash, expected); !err.empty()) {
    spdlog::error("content_store: {}", err);
    return make_error(expected.empty() || hash == expected ? ec::storage_failure : ec::invalid,
                      err);
  }
  file_info info{hash, data.size(), st.blobs->path_of(hash), unix_seconds()};
  lmdb::txn t{*st.env, true};
  file_info first;
  if (auto known = t.get(st.files, hash); known && codec::decode(*known, first)) {
    first.path = info.path; // a known file keeps its first record
    info = std::move(first);
  } else {
    int rc = t.put(st.files, hash, codec::encode(info));
    if (rc == 0)
      rc = t.commit();
    if (rc != 0)
      return make_error(ec::storage_failure, "cannot index file: " + lmdb::error_text(rc));
    if (expected.empty())
      for (auto& l : st.listeners)
        self->send(l, atom::stored_v, info);
  }
  return info;
}

} // namespace

content_store_actor::behavior_type
content_store(content_store_actor::stateful_pointer<content_store_state> self,
              std::shared_ptr<lmdb::env> env, std::string blob_dir, uint64_t max_bytes) {
  auto& st = self->state;
  st.env = std::move(env);
  st.max_bytes = max_bytes;
  st.blobs = std::make_unique<blob_store>(std::move(blob_dir));
  std::string err;
  if (!st.env->open_db("files", st.files, err)) {
    spdlog::error("content_store: {}", err);
    self->quit(make_error(ec::storage_failure, err));
    return content_store_actor::behavior_type::make_empty_behavior();
  }
  return {
    [=](atom::put, const std::string& data) { return store(self, data, {}); },
    [=](atom::put, const file_blob& blob) { return store(self, blob.data, blob.hash); },
    [=](atom::get, const std::string& hash) -> caf::result<file_info> {
      auto& st = self->state;
      if (!is_sha256_hex(hash))
        return make_error(ec::invalid, "not a sha256 hash: must be 64 lowercase hex digits");
      lmdb::txn t{*st.env, false};
      auto v = t.get(st.files, hash);
      file_info info;
      if (!v || !codec::decode(*v, info))
        return make_error(ec::not_found, "file " + hash + " not found");
      info.path = st.blobs->path_of(hash);
      return info;
    },
    [=](atom::read, const std::string& hash) -> caf::result<file_blob> {
      file_blob blob{hash, {}};
      if (!self->state.blobs->read(hash, blob.data))
        return make_error(ec::not_found, "file " + hash + " not found");
      return blob;
    },
    [=](atom::inventory) -> std::vector<std::string> {
      auto& st = self->state;
      std::vector<std::string> out;
      lmdb::txn t{*st.env, false};
      t.for_each(st.files, false, [&](std::string_view k, std::string_view) {
        out.emplace_back(k);
        return true;
      });
      return out;
    },
    [=](atom::subscribe, file_listener_actor& l) {
      self->state.listeners.push_back(std::move(l));
    },
  };
}

} // namespace alephd
