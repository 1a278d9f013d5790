#include "actors/cache_shard.hpp"

#include <algorithm>
#include <filesystem>

#include <caf/all.hpp>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include "runtime/multipart.hpp"
#include "runtime/wall_clock.hpp"

namespace alephd {

namespace {

using nlohmann::json;
namespace fs = std::filesystem;

constexpr auto flush_interval = std::chrono::seconds(5);

std::string encode(const cache_entry& e) {
  return json{{"size", e.size},     {"created", e.created}, {"last_access", e.last_access},
              {"keep", e.keep},     {"origin", e.origin},   {"stamp", e.stamp},
              {"duty", e.duty}}
    .dump();
}

bool decode(std::string_view text, cache_entry& e) {
  auto j = json::parse(text, nullptr, false);
  if (!j.is_object())
    return false;
  e.size = j.value("size", uint64_t{0});
  e.created = j.value("created", 0.0);
  e.last_access = j.value("last_access", 0.0);
  e.keep = j.value("keep", false);
  e.duty = j.value("duty", false);
  e.origin = j.value("origin", std::string{});
  e.stamp = j.value("stamp", std::string{});
  return true;
}

const char* shard_tag(cache_shard_pointer self) {
  static thread_local std::string tag;
  tag = "cache_shard " + std::to_string(self->state.cfg.index);
  return tag.c_str();
}

// Writes (or, with null, deletes) one index record; logs a failure.
void persist(cache_shard_pointer self, const std::string& hash, const cache_entry* e) {
  auto& st = self->state;
  lmdb::txn t{*st.cfg.env, true};
  int rc = e != nullptr ? t.put(st.db, hash, encode(*e)) : t.del(st.db, hash);
  if (rc == 0 || (e == nullptr && rc == MDB_NOTFOUND))
    rc = t.commit();
  if (rc != 0)
    spdlog::error("{}: cannot write the index entry of {}: {}", shard_tag(self), hash,
                  lmdb::error_text(rc));
}

file_info info_of(cache_shard_pointer self, const std::string& hash, const cache_entry& e) {
  return file_info{hash, e.size, self->state.cfg.blobs->path_of(hash), e.created};
}

bool pinned(cache_shard_pointer self, const std::string& hash) {
  auto it = self->state.pins.find(hash);
  return it != self->state.pins.end() && !it->second.empty();
}

std::string duty_owner(const std::string& hash) {
  return "replica:" + hash;
}

// An execution's pins live in memory (a re-adopted execution pins its files again). A storage
// duty pin ("replica:<hash>") is also written to the index, so that it holds across a restart;
// the CCN confirms the full list when the CRN links (atom::confirm) and stale ones end then.
void pin(cache_shard_pointer self, const std::string& hash, const std::string& owner) {
  if (owner.empty())
    return;
  auto& st = self->state;
  ++st.pins[hash][owner];
  st.owned[owner].insert(hash);
  if (auto it = st.entries.find(hash);
      owner == duty_owner(hash) && it != st.entries.end() && !it->second.duty) {
    it->second.duty = true;
    persist(self, hash, &it->second);
  }
}

void unpin(cache_shard_pointer self, const std::string& owner);

// Deletes a blob and its index record (its pins stay: a re-fetched copy is pinned again).
void drop(cache_shard_pointer self, const std::string& hash) {
  auto& st = self->state;
  auto it = st.entries.find(hash);
  if (it == st.entries.end())
    return;
  st.cfg.blobs->remove(hash);
  st.bytes -= it->second.size;
  st.cfg.total_bytes->fetch_sub(it->second.size);
  st.entries.erase(it);
  st.dirty.erase(hash);
  st.forgotten.erase(hash);
  persist(self, hash, nullptr);
}

void maybe_evict(cache_shard_pointer self) {
  auto& st = self->state;
  if (st.cfg.high_bytes > 0 && st.cfg.total_bytes->load() > st.cfg.high_bytes)
    self->send(caf::actor_cast<content_store_actor>(st.store), atom::evict_v);
}

// Indexes a blob that is now in place.
file_info add(cache_shard_pointer self, const std::string& hash, uint64_t size, const std::string& origin) {
  auto& st = self->state;
  auto now = unix_seconds();
  if (auto it = st.entries.find(hash); it != st.entries.end()) {
    it->second.last_access = now;
    st.dirty.insert(hash);
    return info_of(self, hash, it->second);
  }
  cache_entry e;
  e.size = size;
  e.created = now;
  e.last_access = now;
  e.keep = st.cfg.keep_stored && origin != "download";
  e.origin = origin;
  e.stamp = file_stamp(st.cfg.blobs->path_of(hash));
  persist(self, hash, &e);
  st.entries.emplace(hash, e);
  st.bytes += size;
  st.cfg.total_bytes->fetch_add(size);
  auto info = info_of(self, hash, e);
  self->send(caf::actor_cast<content_store_actor>(st.store), atom::stored_v, info,
             origin == "upload");
  maybe_evict(self);
  return info;
}

// The entry of a held, intact blob; null when missing. A blob changed on disk since it was last
// verified is hashed again, and deleted when it no longer matches its name: never served.
const cache_entry* verified(cache_shard_pointer self, const std::string& hash) {
  auto& st = self->state;
  auto it = st.entries.find(hash);
  if (it == st.entries.end())
    return nullptr;
  auto now = file_stamp(st.cfg.blobs->path_of(hash));
  if (now.empty()) {
    spdlog::warn("{}: blob {} vanished from disk; dropping it", shard_tag(self), hash);
    drop(self, hash);
    return nullptr;
  }
  if (now == it->second.stamp)
    return &it->second;
  if (!st.cfg.blobs->verify(hash)) {
    spdlog::error("{}: blob {} was altered on disk; deleted (it is fetched again when needed)",
                  shard_tag(self), hash);
    ++st.corrupt;
    drop(self, hash);
    return nullptr;
  }
  it->second.stamp = now;
  persist(self, hash, &it->second);
  return &it->second;
}

void touch(cache_shard_pointer self, const std::string& hash) {
  auto& st = self->state;
  if (auto it = st.entries.find(hash); it != st.entries.end()) {
    it->second.last_access = unix_seconds();
    st.dirty.insert(hash);
  }
}

caf::error blob_failure(const blob_error& e) {
  return make_error(e.no_space ? ec::no_space : ec::storage_failure, e.text);
}

enum class fetch_kind : uint8_t { ok = 0, not_found, no_space, failed };

// Answers everyone waiting for a download of `hash` (and pins it for their owners).
void finish_download(cache_shard_pointer self, const std::string& hash, caf::error failure) {
  auto& st = self->state;
  auto it = st.flights.find(hash);
  if (it == st.flights.end())
    return;
  auto f = std::move(it->second);
  st.flights.erase(it);
  if (f.worker.joinable())
    f.worker.join();
  const cache_entry* e = failure ? nullptr : verified(self, hash);
  if (!failure && e == nullptr)
    failure = make_error(ec::storage_failure, "file " + hash + " vanished after its download");
  if (failure)
    spdlog::warn("{}: download of {} failed: {}", shard_tag(self), hash, describe(failure));
  for (auto& owner : f.owners)
    if (!failure)
      pin(self, hash, owner);
  for (auto& rp : f.waiters) {
    if (failure)
      rp.deliver(failure);
    else
      rp.deliver(info_of(self, hash, *e));
  }
}

// Streams the file from the CCN's HTTP API on a thread of its own (the actor stays free).
void download_http(cache_shard_pointer self, const std::string& hash, const std::string& base_url) {
  auto& st = self->state;
  auto& f = st.flights[hash];
  auto dest = st.cfg.blobs->temp_path("fetch");
  auto me = caf::actor_cast<cache_shard_actor>(self);
  auto cancel = f.cancel;
  auto limit = st.cfg.max_file_bytes > 0 ? st.cfg.max_file_bytes : UINT64_MAX;
  auto idle = st.cfg.download_idle;
  f.worker = std::thread([=] {
    transfer::options o;
    o.idle_timeout = idle;
    o.cancel = cancel.get();
    auto last = std::chrono::steady_clock::now();
    o.progress = [&](uint64_t done, uint64_t total) {
      auto now = std::chrono::steady_clock::now();
      if (now - last >= std::chrono::milliseconds(250) || done == total) {
        last = now;
        caf::anon_send(me, atom::progress_v, hash, done, total);
      }
    };
    auto r = transfer::download(base_url, "/api/v0/storage/raw/" + hash, dest, limit, o);
    auto kind = fetch_kind::ok;
    if (r.error.empty() && r.sha256 != hash)
      r.error = "the downloaded bytes do not match the hash";
    if (!r.error.empty()) {
      ::unlink(dest.c_str());
      kind = r.status == 404 ? fetch_kind::not_found
             : r.no_space    ? fetch_kind::no_space
                             : fetch_kind::failed;
    }
    caf::anon_send(me, atom::fetched_v, hash, dest, r.error, static_cast<uint8_t>(kind));
  });
}

// Asks the CCN for the file's bytes over the link itself (no HTTP address known).
void download_link(cache_shard_pointer self, const std::string& hash) {
  auto& st = self->state;
  self->request(st.link, st.cfg.fetch_timeout, atom::read_v, hash)
    .then(
      [=](file_blob& blob) {
        auto& st = self->state;
        if (st.cfg.max_file_bytes > 0 && blob.data.size() > st.cfg.max_file_bytes)
          return finish_download(self, hash, make_error(ec::too_large, "file " + hash + " is too large"));
        std::string got;
        if (auto e = st.cfg.blobs->write(blob.data, got, hash))
          return finish_download(self, hash, got != hash ? make_error(ec::unavailable, e.text)
                                                         : blob_failure(e));
        add(self, hash, blob.data.size(), "download");
        ++st.downloads;
        finish_download(self, hash, caf::error{});
      },
      [=](caf::error& err) {
        if (is(err, ec::not_found))
          return finish_download(self, hash, make_error(ec::not_found, "file " + hash + " not found at the CCN"));
        finish_download(self, hash, make_error(ec::unavailable, "cannot download " + hash + ": " + describe(err)));
      });
}

// Starts the one download of `hash` that every waiter in its flight shares.
void start_download(cache_shard_pointer self, const std::string& hash) {
  auto& st = self->state;
  auto& f = st.flights[hash];
  if (f.cancel)
    return; // already under way
  f.cancel = std::make_shared<std::atomic<bool>>(false);
  if (!st.link)
    return finish_download(self, hash, make_error(ec::unavailable, "no CCN link to fetch " + hash + " from"));
  spdlog::info("{}: downloading {}", shard_tag(self), hash);
  self->request(st.link, std::chrono::seconds(10), atom::locate_v, hash)
    .then(
      [=](std::string& url) {
        if (self->state.flights.count(hash) == 0)
          return;
        if (url.empty())
          download_link(self, hash);
        else
          download_http(self, hash, url);
      },
      [=](caf::error&) {
        if (self->state.flights.count(hash) > 0)
          download_link(self, hash);
      });
}

// A download thread ended: the temp file becomes the blob.
void downloaded(cache_shard_pointer self, const std::string& hash, const std::string& temp,
                const std::string& err, fetch_kind kind) {
  auto& st = self->state;
  if (st.flights.count(hash) == 0) {
    ::unlink(temp.c_str());
    return;
  }
  if (!err.empty()) {
    auto code = kind == fetch_kind::not_found ? ec::not_found
                : kind == fetch_kind::no_space ? ec::no_space
                                               : ec::unavailable;
    return finish_download(self, hash,
                           make_error(code, kind == fetch_kind::not_found
                                              ? "file " + hash + " not found at the CCN"
                                              : "cannot download " + hash + ": " + err));
  }
  if (auto e = st.cfg.blobs->adopt(temp, hash))
    return finish_download(self, hash, blob_failure(e));
  std::error_code ec;
  auto size = fs::file_size(st.cfg.blobs->path_of(hash), ec);
  add(self, hash, size, "download");
  ++st.downloads;
  spdlog::info("{}: downloaded {} ({} bytes)", shard_tag(self), hash, size);
  finish_download(self, hash, caf::error{});
}

void unpin(cache_shard_pointer self, const std::string& owner) {
  auto& st = self->state;
  auto it = st.owned.find(owner);
  if (it == st.owned.end())
    return;
  for (auto& hash : it->second) {
    auto p = st.pins.find(hash);
    if (p == st.pins.end())
      continue;
    p->second.erase(owner);
    if (auto e = st.entries.find(hash);
        owner == duty_owner(hash) && e != st.entries.end() && e->second.duty) {
      e->second.duty = false;
      persist(self, hash, &e->second);
    }
    if (!p->second.empty())
      continue;
    st.pins.erase(p);
    if (st.forgotten.count(hash) > 0) {
      spdlog::info("{}: deleting forgotten file {} (no longer pinned)", shard_tag(self), hash);
      drop(self, hash);
    }
  }
  st.owned.erase(it);
  maybe_evict(self); // unpinned files may now go
}

// Loads the index and reconciles it with the blob directory: records whose blob is gone are
// dropped, blobs without a record (an index lost, or written by an older version) are verified
// and indexed.
void load(cache_shard_pointer self) {
  auto& st = self->state;
  std::vector<std::string> gone;
  {
    lmdb::txn t{*st.cfg.env, false};
    t.for_each(st.db, false, [&](std::string_view k, std::string_view v) {
      cache_entry e;
      std::string hash{k};
      std::error_code ec;
      if (!decode(v, e) || !fs::exists(st.cfg.blobs->path_of(hash), ec)) {
        gone.push_back(hash);
        return true;
      }
      st.bytes += e.size;
      st.entries.emplace(std::move(hash), std::move(e));
      return true;
    });
  }
  for (auto& h : gone)
    persist(self, h, nullptr);
  for (auto& [h, e] : st.entries)
    if (e.duty)
      pin(self, h, duty_owner(h)); // held for the CCN until it confirms otherwise
  st.cfg.total_bytes->fetch_add(st.bytes);
  std::error_code ec;
  size_t recovered = 0;
  for (auto& dir : fs::directory_iterator{st.cfg.blobs->root(), ec}) {
    auto prefix = dir.path().filename().string();
    if (prefix.size() != 2 || !dir.is_directory() || shard_of(prefix + std::string(62, '0'), st.cfg.shards) != st.cfg.index)
      continue;
    for (auto& file : fs::directory_iterator{dir.path(), ec}) {
      auto hash = prefix + file.path().filename().string();
      if (!is_sha256_hex(hash) || st.entries.count(hash) > 0)
        continue;
      if (!st.cfg.blobs->verify(hash)) {
        spdlog::warn("{}: {} does not match its name; deleted", shard_tag(self), file.path().string());
        st.cfg.blobs->remove(hash);
        continue;
      }
      add(self, hash, file.file_size(ec), "recovered");
      ++recovered;
    }
  }
  if (recovered > 0 || !gone.empty())
    spdlog::info("{}: indexed {} blobs found on disk, dropped {} records without a blob",
                 shard_tag(self), recovered, gone.size());
}

void flush_access(cache_shard_pointer self) {
  auto& st = self->state;
  if (st.dirty.empty())
    return;
  lmdb::txn t{*st.cfg.env, true};
  int rc = 0;
  for (auto& h : st.dirty)
    if (auto it = st.entries.find(h); it != st.entries.end() && rc == 0)
      rc = t.put(st.db, h, encode(it->second));
  if (rc == 0)
    rc = t.commit();
  if (rc != 0)
    spdlog::warn("{}: cannot save access times: {}", shard_tag(self), lmdb::error_text(rc));
  st.dirty.clear();
}

// Re-hashes blobs in hash order from where the last round stopped, up to scrub_bytes.
void scrub_round(cache_shard_pointer self) {
  auto& st = self->state;
  std::vector<std::string> keys;
  keys.reserve(st.entries.size());
  for (auto& [h, e] : st.entries)
    keys.push_back(h);
  std::sort(keys.begin(), keys.end());
  auto it = std::upper_bound(keys.begin(), keys.end(), st.scrub_cursor);
  if (it == keys.end()) {
    st.scrub_cursor.clear();
    it = keys.begin();
  }
  uint64_t budget = st.cfg.scrub_bytes;
  for (; it != keys.end() && budget > 0; ++it) {
    auto& hash = *it;
    st.scrub_cursor = hash;
    auto e = st.entries.find(hash);
    if (e == st.entries.end() || st.flights.count(hash) > 0)
      continue;
    budget -= std::min(budget, std::max<uint64_t>(e->second.size, 1));
    if (st.cfg.blobs->verify(hash)) {
      auto stamp = file_stamp(st.cfg.blobs->path_of(hash));
      if (stamp != e->second.stamp) {
        e->second.stamp = stamp;
        persist(self, hash, &e->second);
      }
      continue;
    }
    spdlog::error("{}: scrub: blob {} was altered on disk; deleted", shard_tag(self), hash);
    ++st.corrupt;
    drop(self, hash);
    if (pinned(self, hash) && st.cfg.fetch_missing)
      start_download(self, hash); // a running execution needs it: fetch it again now
  }
}

} // namespace

unsigned shard_of(const std::string& hash, unsigned shards) {
  if (shards <= 1 || hash.size() < 2)
    return 0;
  auto nibble = [](char c) { return c <= '9' ? c - '0' : c - 'a' + 10; };
  return static_cast<unsigned>(nibble(hash[0]) * 16 + nibble(hash[1])) % shards;
}

cache_shard_state::~cache_shard_state() {
  for (auto& [h, f] : flights)
    if (f.cancel)
      f.cancel->store(true);
  for (auto& [h, f] : flights)
    if (f.worker.joinable())
      f.worker.join();
}

cache_shard_actor::behavior_type cache_shard(cache_shard_pointer self, cache_shard_config cfg,
                                             caf::actor store) {
  auto& st = self->state;
  st.cfg = std::move(cfg);
  st.store = std::move(store);
  std::string err;
  auto name = "cache." + std::to_string(st.cfg.index);
  if (!st.cfg.env->open_db(name.c_str(), st.db, err)) {
    spdlog::error("{}: {}", shard_tag(self), err);
    self->quit(make_error(ec::storage_failure, err));
    return cache_shard_actor::behavior_type::make_empty_behavior();
  }
  load(self);
  self->delayed_send(self, flush_interval, atom::tick_v);
  if (st.cfg.scrub_bytes > 0)
    self->delayed_send(self, st.cfg.scrub_interval, atom::scrub_v);
  return {
    [=](atom::put, const std::string& data, const std::string& expected,
        const std::string& origin) -> caf::result<file_info> {
      auto& st = self->state;
      if (st.cfg.max_file_bytes > 0 && data.size() > st.cfg.max_file_bytes)
        return make_error(ec::too_large, "file too large (limit "
                                           + std::to_string(st.cfg.max_file_bytes) + " bytes)");
      if (verified(self, expected) != nullptr)
        return add(self, expected, data.size(), origin);
      std::string hash;
      if (auto e = st.cfg.blobs->write(data, hash, expected)) {
        spdlog::error("{}: {}", shard_tag(self), e.text);
        return hash != expected ? make_error(ec::invalid, e.text) : blob_failure(e);
      }
      return add(self, hash, data.size(), origin);
    },
    [=](atom::put, const file_source& src) -> caf::result<file_info> {
      auto& st = self->state;
      auto ours = src.path.rfind(st.cfg.blobs->root() + "/tmp/", 0) == 0;
      auto discard = [&] {
        if (ours)
          ::unlink(src.path.c_str());
      };
      if (!is_sha256_hex(src.sha256)) {
        discard();
        return make_error(ec::invalid, "a stored file needs its sha256");
      }
      if (st.cfg.max_file_bytes > 0 && src.length > st.cfg.max_file_bytes) {
        discard();
        return make_error(ec::too_large, "file too large (limit "
                                           + std::to_string(st.cfg.max_file_bytes) + " bytes)");
      }
      if (verified(self, src.sha256) != nullptr) {
        discard();
        return add(self, src.sha256, src.length, "upload");
      }
      std::error_code ec;
      bool whole = src.offset == 0 && fs::file_size(src.path, ec) == src.length && !ec;
      blob_error e;
      if (ours && whole) {
        e = st.cfg.blobs->adopt(src.path, src.sha256);
      } else {
        std::string hash;
        e = st.cfg.blobs->copy_in(src.path, src.offset, src.length, hash, src.sha256);
        discard();
      }
      if (e)
        return e.text.find("does not match") != std::string::npos ? make_error(ec::invalid, e.text)
                                                                   : blob_failure(e);
      return add(self, src.sha256, src.length, "upload");
    },
    [=](atom::prepare, const file_source& src) -> caf::result<file_source> {
      auto& st = self->state;
      auto range = multipart::part{src.offset, src.length};
      if (!src.boundary.empty()) {
        auto read = multipart::file_reader(src.path);
        auto inner = [&](uint64_t off, uint64_t n) {
          if (off >= src.length)
            return std::string{};
          return read(src.offset + off, std::min(n, src.length - off));
        };
        auto p = multipart::find_file(inner, src.length, src.boundary);
        if (!p)
          return make_error(ec::invalid, "malformed multipart body: expected a part named \"file\"");
        range = multipart::part{src.offset + p->offset, p->length};
      }
      if (range.length == 0)
        return make_error(ec::invalid, "empty file");
      if (st.cfg.max_file_bytes > 0 && range.length > st.cfg.max_file_bytes)
        return make_error(ec::too_large, "file too large (limit "
                                           + std::to_string(st.cfg.max_file_bytes) + " bytes)");
      file_source out;
      out.length = range.length;
      if (auto e = st.cfg.blobs->hash_copy(src.path, range.offset, range.length, out.path, out.sha256))
        return blob_failure(e);
      return out;
    },
    [=](atom::get, const std::string& hash) -> caf::result<file_info> {
      auto* e = verified(self, hash);
      if (e == nullptr)
        return make_error(ec::not_found, "file " + hash + " not found");
      touch(self, hash);
      return info_of(self, hash, *e);
    },
    [=](atom::fetch, const std::string& hash, const std::string& owner,
        const caf::actor& watcher) -> caf::result<file_info> {
      auto& st = self->state;
      if (auto* e = verified(self, hash); e != nullptr) {
        pin(self, hash, owner);
        touch(self, hash);
        return info_of(self, hash, *e);
      }
      if (!st.cfg.fetch_missing)
        return make_error(ec::not_found, "file " + hash + " not found");
      auto rp = self->make_response_promise<file_info>();
      auto& f = st.flights[hash];
      f.waiters.push_back(rp);
      if (!owner.empty())
        f.owners.push_back(owner);
      if (watcher)
        f.watchers.push_back(watcher);
      start_download(self, hash);
      return rp;
    },
    [=](atom::fetch, const std::string& hash, const std::string& url) -> caf::result<file_info> {
      auto& st = self->state;
      if (auto* e = verified(self, hash); e != nullptr) {
        touch(self, hash);
        return info_of(self, hash, *e);
      }
      auto rp = self->make_response_promise<file_info>();
      auto& f = st.flights[hash];
      f.waiters.push_back(rp);
      if (!f.cancel) {
        f.cancel = std::make_shared<std::atomic<bool>>(false);
        spdlog::info("{}: downloading {} from {}", shard_tag(self), hash, url);
        download_http(self, hash, url);
      }
      return rp;
    },
    [=](atom::fetched, const std::string& hash, const std::string& temp, const std::string& err,
        uint8_t kind) { downloaded(self, hash, temp, err, static_cast<fetch_kind>(kind)); },
    [=](atom::connect, const file_source_actor& link) { self->state.link = link; },
    [=](atom::progress, const std::string& hash, uint64_t done, uint64_t total) {
      auto& st = self->state;
      auto it = st.flights.find(hash);
      if (it == st.flights.end())
        return;
      for (auto& w : it->second.watchers)
        caf::anon_send(w, atom::progress_v, hash, done, total);
      // One log line per 10 % (or per 64 MiB when the size is unknown).
      auto step = total > 0 ? std::max<uint64_t>(total / 10, 1) : uint64_t{64} << 20;
      if (done / step > it->second.last_logged / step && done < total) {
        it->second.last_logged = done;
        if (total > 0)
          spdlog::info("{}: downloading {}: {} of {} MiB ({}%)", shard_tag(self), hash, done >> 20,
                       total >> 20, done * 100 / total);
        else
          spdlog::info("{}: downloading {}: {} MiB", shard_tag(self), hash, done >> 20);
      }
    },
    [=](atom::unpin, const std::string& owner) { unpin(self, owner); },
    [=](atom::confirm, const std::vector<std::string>& duties) {
      // The CCN's full list of this CRN's replicas: any other duty kept from before ends.
      auto& st = self->state;
      std::set<std::string> keep{duties.begin(), duties.end()};
      std::vector<std::string> stale;
      for (auto& [h, e] : st.entries)
        if (e.duty && keep.count(h) == 0)
          stale.push_back(h);
      for (auto& h : stale) {
        spdlog::info("{}: no longer a replica of {}", shard_tag(self), h);
        unpin(self, duty_owner(h));
      }
    },
    [=](atom::remove, const std::string& hash) -> bool {
      auto& st = self->state;
      if (st.entries.count(hash) == 0)
        return false;
      if (pinned(self, hash)) {
        st.forgotten.insert(hash);
        return true;
      }
      drop(self, hash);
      return true;
    },
    [=](atom::evict, const std::vector<std::string>& hashes) -> uint64_t {
      auto& st = self->state;
      uint64_t freed = 0;
      for (auto& h : hashes) {
        auto it = st.entries.find(h);
        if (it == st.entries.end() || it->second.keep || pinned(self, h) || st.flights.count(h) > 0)
          continue;
        freed += it->second.size;
        ++st.evicted;
        drop(self, h);
      }
      return freed;
    },
    [=](atom::evict, uint64_t need) -> std::vector<evict_candidate> {
      auto& st = self->state;
      std::vector<evict_candidate> all;
      for (auto& [h, e] : st.entries)
        if (!e.keep && !pinned(self, h) && st.flights.count(h) == 0)
          all.push_back(evict_candidate{h, e.size, e.last_access});
      std::sort(all.begin(), all.end(),
                [](auto& a, auto& b) { return a.last_access < b.last_access; });
      uint64_t sum = 0;
      size_t n = 0;
      while (n < all.size() && sum < need)
        sum += all[n++].size;
      all.resize(n);
      return all;
    },
    [=](atom::read, const std::string& hash) -> caf::result<file_blob> {
      file_blob blob{hash, {}};
      if (verified(self, hash) == nullptr || !self->state.cfg.blobs->read(hash, blob.data))
        return make_error(ec::not_found, "file " + hash + " not found");
      return blob;
    },
    [=](atom::inventory) {
      std::vector<std::string> out;
      for (auto& [h, e] : self->state.entries)
        out.push_back(h);
      return out;
    },
    [=](atom::usage) {
      auto& st = self->state;
      cache_usage u;
      u.bytes = st.bytes;
      u.files = st.entries.size();
      for (auto& [h, owners] : st.pins)
        if (auto it = st.entries.find(h); it != st.entries.end() && !owners.empty())
          u.pinned_bytes += it->second.size;
      for (auto& [h, e] : st.entries)
        if (e.keep && st.pins.count(h) == 0)
          u.pinned_bytes += e.size;
      u.downloads = st.downloads;
      u.evicted = st.evicted;
      u.corrupt = st.corrupt;
      return u;
    },
    [=](atom::scrub) {
      scrub_round(self);
      self->delayed_send(self, self->state.cfg.scrub_interval, atom::scrub_v);
    },
    [=](atom::tick) {
      flush_access(self);
      self->delayed_send(self, flush_interval, atom::tick_v);
    },
  };
}

} // namespace alephd
