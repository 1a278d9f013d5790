// CCN: replication with peer CCNs (full mesh). New local messages and files are
// pushed to every peer; when two peers meet they swap inventories and each
// pushes what the other lacks, so a peer that was down catches up.
#pragma once

#include <deque>
#include <unordered_set>

#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <unordered_map>
#include <set>

#include "actors/ccn_node.hpp"
#include "actors/interfaces.hpp"

namespace alephd {

/// Verdicts on replicated messages, shared by the CCNs of one process (the in-process
/// simulator): checking a message is a pure function of its bytes, so a message that reaches
/// many of them is parsed and verified once. Bounded; thread-safe.
class message_verdicts {
public:
  /// The verdict on `key` ("" = valid, else why not), if known.
  std::optional<std::string> find(const std::string& key) const {
    std::lock_guard lock{m_};
    auto i = map_.find(key);
    return i == map_.end() ? std::nullopt : std::optional<std::string>{i->second};
  }
  void put(const std::string& key, std::string verdict) {
    std::lock_guard lock{m_};
    if (map_.size() >= max_entries)
      map_.clear();
    map_.emplace(key, std::move(verdict));
  }
  static constexpr std::size_t max_entries = 200000;

private:
  mutable std::mutex m_;
  std::unordered_map<std::string, std::string> map_;
};

struct ccn_peer_config {
  std::string ccn_id;
  std::vector<std::string> endpoints;     ///< "host:port" node ports of peer CCNs
  std::vector<ccn_node_actor> direct;     ///< in-process peers (tests, dev)
  std::chrono::milliseconds retry{1000};
  /// This CCN's HTTP address, for peers to fetch large files from (none: files go whole).
  std::shared_ptr<const http_locator> http;
  /// Files up to this size travel whole over the node link; larger ones are offered and
  /// fetched over HTTP, streamed.
  uint64_t inline_bytes = 1 << 20;
  /// Refuse replicated messages whose wallet signature does not verify (as the HTTP intake).
  bool verify_signatures = true;
  /// Shared verdicts of the CCNs in this process (null: each message is checked here).
  std::shared_ptr<message_verdicts> verdicts;
  /// What peers pushed that could not be stored (a full disk, say) is kept, up to this many
  /// bytes, and stored again every `retry`; past that the peers are asked again instead.
  uint64_t max_held_bytes = uint64_t{64} << 20;
};

struct peer_entry {
  caf::actor handle;
  std::string endpoint;
  double since = 0;
  bool up = true;
};

struct ccn_peer_state {
  static inline const char* name = "ccn_peer";
  ccn_peer_config cfg;
  message_store_actor messages;
  content_store_actor files;
  std::map<std::string, peer_entry> peers; ///< by CCN id
  std::set<std::string> connecting;        ///< endpoints with a connect under way
  std::map<std::string, std::string> endpoint_peer; ///< endpoint -> CCN id once connected
  /// When we last asked each peer to push what we lack (by CCN id).
  std::map<std::string, caf::actor_clock::time_point> synced_back;
  /// Pushed by peers, not stored yet (see max_held_bytes): messages, small files, offers of large
  /// files (hash, URL).
  std::deque<stored_message> held_messages;
  std::deque<file_blob> held_files;
  std::deque<std::pair<std::string, std::string>> held_offers;
  std::unordered_set<std::string> held_keys; ///< hashes kept or being stored again
  uint64_t held_bytes = 0;                   ///< their bytes
  bool storing_held = false; ///< a round of storing them again is under way
  /// Something a peer pushed could not be stored, nor kept: ask the peers again.
  bool behind = false;
  caf::actor_clock::time_point last_catch_up;
};

ccn_peer_actor::behavior_type ccn_peer(ccn_peer_actor::stateful_pointer<ccn_peer_state> self,
                                       ccn_peer_config cfg, message_store_actor messages,
                                       content_store_actor files);

} // namespace alephd
