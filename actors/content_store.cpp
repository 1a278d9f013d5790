#include "actors/content_store.hpp"

#include <algorithm>
#include <map>

#include <caf/all.hpp>
#include <spdlog/spdlog.h>

#include "messages/aleph_message.hpp"

namespace alephd {

namespace {

using content_store_pointer = content_store_actor::stateful_pointer<content_store_state>;

const cache_shard_actor& shard(content_store_pointer self, const std::string& hash) {
  auto& st = self->state;
  return st.shards[shard_of(hash, static_cast<unsigned>(st.shards.size()))];
}

caf::error bad_hash(const std::string& hash) {
  return make_error(ec::invalid, "not a sha256 hash: must be 64 lowercase hex digits, got \""
                                   + hash.substr(0, 80) + "\"");
}

// Asks every shard and combines the answers; `done` gets them all (or the first error).
// No timeout: the shards are linked to us (a shard that dies takes the store along), and CAF
// 0.17 keeps each request's timeout in its clock until it fires, even once answered: 60 s
// timeouts held ~780 bytes per /about/usage/system call for a minute under load.
template <class T, class Done, class... Ts>
void ask_all(content_store_pointer self, Done done, Ts... xs) {
  auto& st = self->state;
  auto results = std::make_shared<std::vector<T>>();
  auto pending = std::make_shared<size_t>(st.shards.size());
  auto failed = std::make_shared<bool>(false);
  for (auto& s : st.shards)
    self->request(s, caf::infinite, xs...)
      .then(
        [=](T& x) mutable {
          results->push_back(std::move(x));
          if (--*pending == 0 && !*failed)
            done(*results, caf::error{});
        },
        [=](caf::error& err) mutable {
          if (!*failed) {
            *failed = true;
            done(*results, std::move(err));
          }
        });
}

// Frees space down to the low watermark: the least recently used unpinned files of all shards.
void evict(content_store_pointer self) {
  auto& st = self->state;
  auto high = static_cast<uint64_t>(static_cast<double>(st.cfg.max_bytes) * st.cfg.high_watermark);
  auto low = static_cast<uint64_t>(static_cast<double>(st.cfg.max_bytes) * st.cfg.low_watermark);
  auto total = st.total->load();
  if (st.evicting || st.cfg.max_bytes == 0 || total <= high)
    return;
  st.evicting = true;
  auto need = total - low;
  ask_all<std::vector<evict_candidate>>(
    self,
    [=](std::vector<std::vector<evict_candidate>>& lists, caf::error err) {
      auto& st = self->state;
      if (err) {
        st.evicting = false;
        spdlog::warn("content_store: eviction: {}", describe(err));
        return;
      }
      std::vector<evict_candidate> all;
      for (auto& l : lists)
        all.insert(all.end(), l.begin(), l.end());
      std::sort(all.begin(), all.end(),
                [](auto& a, auto& b) { return a.last_access < b.last_access; });
      std::map<unsigned, std::vector<std::string>> plan;
      uint64_t planned = 0;
      for (auto& c : all) {
        if (planned >= need)
          break;
        planned += c.size;
        plan[shard_of(c.hash, static_cast<unsigned>(st.shards.size()))].push_back(c.hash);
      }
      if (plan.empty()) {
        st.evicting = false;
        spdlog::warn("content_store: {} bytes over the cache's high watermark, but every file "
                     "is pinned", st.total->load() - low);
        return;
      }
      auto pending = std::make_shared<size_t>(plan.size());
      auto freed = std::make_shared<uint64_t>(0);
      for (auto& [i, hashes] : plan)
        self->request(st.shards[i], std::chrono::seconds(60), atom::evict_v, hashes)
          .then(
            [=](uint64_t n) {
              *freed += n;
              if (--*pending == 0) {
                auto& st = self->state;
                st.evicting = false;
                spdlog::info("content_store: evicted {} bytes; {} of {} bytes used", *freed,
                             st.total->load(), st.cfg.max_bytes);
                evict(self); // more may have arrived meanwhile
              }
            },
            [=](caf::error&) {
              if (--*pending == 0)
                self->state.evicting = false;
            });
    },
    atom::evict_v, need);
}

} // namespace

content_store_actor::behavior_type
content_store(content_store_actor::stateful_pointer<content_store_state> self,
              content_store_config cfg) {
  auto& st = self->state;
  st.cfg = std::move(cfg);
  auto blobs = st.cfg.blobs ? st.cfg.blobs : std::make_shared<blob_store>(st.cfg.root);
  auto n = std::max(1u, st.cfg.shards);
  auto high = static_cast<uint64_t>(static_cast<double>(st.cfg.max_bytes) * st.cfg.high_watermark);
  for (unsigned i = 0; i < n; ++i) {
    cache_shard_config sc;
    sc.index = i;
    sc.shards = n;
    sc.env = st.cfg.env;
    sc.blobs = blobs;
    sc.total_bytes = st.total;
    sc.high_bytes = st.cfg.max_bytes > 0 ? std::max<uint64_t>(high, 1) : 0;
    sc.max_file_bytes = st.cfg.max_file_bytes;
    sc.keep_stored = st.cfg.keep_stored;
    sc.fetch_missing = st.cfg.fetch_missing;
    sc.fetch_timeout = st.cfg.fetch_timeout;
    sc.scrub_bytes = st.cfg.scrub_bytes;
    sc.scrub_interval = st.cfg.scrub_interval;
    sc.download_idle = st.cfg.download_idle;
    st.shards.push_back(self->spawn<caf::linked>(cache_shard, sc, caf::actor_cast<caf::actor>(self)));
  }
  self->send(self, atom::evict_v); // a bound lowered since the last run
  return {
    [=](atom::put, std::string& data) -> caf::result<file_info> {
      auto& st = self->state;
      if (st.cfg.max_file_bytes > 0 && data.size() > st.cfg.max_file_bytes)
        return make_error(ec::too_large, "file too large (limit "
                                           + std::to_string(st.cfg.max_file_bytes) + " bytes)");
      auto hash = aleph::sha256_hex(data);
      return self->delegate(shard(self, hash), atom::put_v, std::move(data), hash,
                            std::string{"upload"});
    },
    [=](atom::put, file_blob& blob) -> caf::result<file_info> {
      if (!is_sha256_hex(blob.hash))
        return bad_hash(blob.hash);
      auto& s = shard(self, blob.hash);
      return self->delegate(s, atom::put_v, std::move(blob.data), blob.hash, std::string{"peer"});
    },
    [=](atom::put, file_source& src) -> caf::result<file_info> {
      auto& st = self->state;
      if (!src.sha256.empty() && src.boundary.empty())
        return self->delegate(shard(self, src.sha256), atom::put_v, std::move(src));
      // The hash is not known yet: one shard copies and hashes it, the owner stores it.
      auto rp = self->make_response_promise<file_info>();
      auto& worker = st.shards[st.next++ % st.shards.size()];
      self->request(worker, caf::infinite, atom::prepare_v, src)
        .then([=](file_source& f) mutable { rp.delegate(shard(self, f.sha256), atom::put_v, f); },
              [=](caf::error& err) mutable { rp.deliver(std::move(err)); });
      return rp;
    },
    [=](atom::get, std::string& hash) -> caf::result<file_info> {
      if (!is_sha256_hex(hash))
        return bad_hash(hash);
      return self->delegate(shard(self, hash), atom::get_v, std::move(hash));
    },
    [=](atom::fetch, std::string& hash, std::string& owner,
        caf::actor& watcher) -> caf::result<file_info> {
      if (!is_sha256_hex(hash))
        return bad_hash(hash);
      auto& st = self->state;
      auto& s = shard(self, hash);
      if (owner.rfind("replica:", 0) != 0 || st.cfg.max_bytes == 0)
        return self->delegate(s, atom::fetch_v, std::move(hash), std::move(owner), std::move(watcher));
      // Storage duty takes only room that pinned files leave under the high watermark: replicas
      // never crowd out the executions' files.
      auto rp = self->make_response_promise<file_info>();
      ask_all<cache_usage>(
        self,
        [=](std::vector<cache_usage>& parts, caf::error err) mutable {
          uint64_t pinned = 0;
          for (auto& u : parts)
            pinned += u.pinned_bytes;
          auto& st = self->state;
          auto high = static_cast<uint64_t>(static_cast<double>(st.cfg.max_bytes) * st.cfg.high_watermark);
          if (err)
            rp.deliver(std::move(err));
          else if (pinned >= high)
            rp.deliver(make_error(ec::no_space, "the cache holds " + std::to_string(pinned)
                                                  + " pinned bytes of " + std::to_string(st.cfg.max_bytes)
                                                  + ": no room for another replica"));
          else
            rp.delegate(shard(self, hash), atom::fetch_v, hash, owner, watcher);
        },
        atom::usage_v);
      return rp;
    },
    [=](atom::fetch, std::string& hash, std::string& url) -> caf::result<file_info> {
      if (!is_sha256_hex(hash))
        return bad_hash(hash);
      auto& s = shard(self, hash);
      return self->delegate(s, atom::fetch_v, std::move(hash), std::move(url));
    },
    [=](atom::confirm, const std::vector<std::string>& duties) {
      for (auto& s : self->state.shards)
        self->send(s, atom::confirm_v, duties);
    },
    [=](atom::unpin, const std::string& owner) {
      for (auto& s : self->state.shards)
        self->send(s, atom::unpin_v, owner);
    },
    [=](atom::remove, std::string& hash) -> caf::result<bool> {
      if (!is_sha256_hex(hash))
        return bad_hash(hash);
      return self->delegate(shard(self, hash), atom::remove_v, std::move(hash));
    },
    [=](atom::read, std::string& hash) -> caf::result<file_blob> {
      if (!is_sha256_hex(hash))
        return bad_hash(hash);
      return self->delegate(shard(self, hash), atom::read_v, std::move(hash));
    },
    [=](atom::inventory) -> caf::result<std::vector<std::string>> {
      auto rp = self->make_response_promise<std::vector<std::string>>();
      ask_all<std::vector<std::string>>(
        self,
        [=](std::vector<std::vector<std::string>>& parts, caf::error err) mutable {
          if (err) {
            rp.deliver(std::move(err));
            return;
          }
          std::vector<std::string> all;
          for (auto& p : parts)
            all.insert(all.end(), p.begin(), p.end());
          std::sort(all.begin(), all.end());
          rp.deliver(std::move(all));
        },
        atom::inventory_v);
      return rp;
    },
    [=](atom::usage) -> caf::result<cache_usage> {
      auto rp = self->make_response_promise<cache_usage>();
      ask_all<cache_usage>(
        self,
        [=](std::vector<cache_usage>& parts, caf::error err) mutable {
          if (err) {
            rp.deliver(std::move(err));
            return;
          }
          cache_usage sum;
          for (auto& u : parts) {
            sum.bytes += u.bytes;
            sum.files += u.files;
            sum.pinned_bytes += u.pinned_bytes;
            sum.downloads += u.downloads;
            sum.evicted += u.evicted;
            sum.corrupt += u.corrupt;
          }
          sum.max_bytes = self->state.cfg.max_bytes;
          rp.deliver(sum);
        },
        atom::usage_v);
      return rp;
    },
    [=](atom::subscribe, file_listener_actor& l) {
      self->state.listeners.push_back(std::move(l));
    },
    [=](atom::stored, const file_info& info, bool announce) {
      if (announce)
        for (auto& l : self->state.listeners)
          self->send(l, atom::stored_v, info);
    },
    [=](atom::connect, const file_source_actor& link) {
      for (auto& s : self->state.shards)
        self->send(s, atom::connect_v, link);
    },
    [=](atom::evict) { evict(self); },
  };
}

} // namespace alephd
