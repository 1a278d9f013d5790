#include "actors/ccn_peer.hpp"

#include <algorithm>
#include <chrono>

#include <caf/all.hpp>
#include <spdlog/spdlog.h>

#include "actors/ccn_node.hpp"
#include "messages/aleph_message.hpp"
#include "runtime/crypto.hpp"
#include "runtime/wall_clock.hpp"

namespace alephd {

namespace {

using ccn_peer_pointer = ccn_peer_actor::stateful_pointer<ccn_peer_state>;
constexpr auto request_timeout = std::chrono::seconds(30);

ccn_peer_actor as_peer(const caf::actor& a) {
  return caf::actor_cast<ccn_peer_actor>(a);
}

void push_message(ccn_peer_pointer self, const caf::actor& to, const std::string& hash) {
  self->request(self->state.messages, request_timeout, atom::get_v, hash)
    .then([=](const stored_message& m) { self->send(as_peer(to), atom::replicate_v, m); },
          [=](caf::error& err) {
            spdlog::warn("ccn_peer: cannot read message {}: {}", hash, describe(err));
          });
}

// A small file travels whole; a large one is offered for the peer to fetch over HTTP.
void push_file(ccn_peer_pointer self, const caf::actor& to, const std::string& hash) {
  auto fail = [=](caf::error& err) {
    spdlog::warn("ccn_peer: cannot read file {}: {}", hash, describe(err));
  };
  self->request(self->state.files, request_timeout, atom::get_v, hash)
    .then(
      [=](const file_info& f) {
        auto& st = self->state;
        auto url = st.cfg.http ? st.cfg.http->get() : std::string{};
        if (f.size > st.cfg.inline_bytes && !url.empty()) {
          self->send(as_peer(to), atom::replicate_v, hash, url);
          return;
        }
        self->request(st.files, request_timeout, atom::read_v, hash)
          .then([=](const file_blob& b) { self->send(as_peer(to), atom::replicate_v, b); }, fail);
      },
      fail);
}

// What `ours` holds that `theirs` lacks. Both are usually sorted (LMDB lists keys in order):
// then a linear merge, without building a set of either.
std::vector<std::string> lacking(const std::vector<std::string>& ours, std::vector<std::string>& theirs) {
  if (!std::is_sorted(theirs.begin(), theirs.end()))
    std::sort(theirs.begin(), theirs.end());
  std::vector<std::string> out;
  if (!std::is_sorted(ours.begin(), ours.end())) {
    for (auto& h : ours)
      if (!std::binary_search(theirs.begin(), theirs.end(), h))
        out.push_back(h);
    return out;
  }
  std::set_difference(ours.begin(), ours.end(), theirs.begin(), theirs.end(), std::back_inserter(out));
  return out;
}

// Pushes to `to` everything we hold that its inventory lacks.
void sync_with(ccn_peer_pointer self, const caf::actor& to, peer_inventory theirs) {
  auto inv = std::make_shared<peer_inventory>(std::move(theirs));
  auto log_error = [](caf::error& err) {
    spdlog::warn("ccn_peer: cannot list what to send a peer: {}", describe(err));
  };
  self->request(self->state.messages, request_timeout, atom::inventory_v)
    .then(
      [=](const std::vector<std::string>& ours) {
        for (auto& h : lacking(ours, inv->messages))
          push_message(self, to, h);
      },
      log_error);
  self->request(self->state.files, request_timeout, atom::inventory_v)
    .then(
      [=](const std::vector<std::string>& ours) {
        for (auto& h : lacking(ours, inv->files))
          push_file(self, to, h);
      },
      log_error);
}

void add_peer(ccn_peer_pointer self, const std::string& id, const caf::actor& handle,
              const std::string& endpoint) {
  auto& p = self->state.peers[id];
  if (p.handle && p.handle != handle)
    self->demonitor(p.handle);
  p.handle = handle;
  p.since = unix_seconds();
  p.up = true;
  if (!endpoint.empty())
    p.endpoint = endpoint;
  self->monitor(handle);
  spdlog::info("ccn_peer: {} linked with peer CCN {}", self->state.cfg.ccn_id, id);
}

// A pushed message or file could not be stored: once in a while, say hello to every peer again;
// each one, hearing from us after a while, pushes what we lack.
void catch_up(ccn_peer_pointer self) {
  auto& st = self->state;
  auto now = self->clock().now();
  if (!st.behind || now - st.last_catch_up < 5 * st.cfg.retry)
    return;
  st.behind = false;
  st.last_catch_up = now;
  for (auto& [id, p] : st.peers) {
    if (!p.up)
      continue;
    st.synced_back[id] = now; // its hello back must not bounce back to it
    auto peer = p.handle;
    auto peer_id = id;
    self->request(as_peer(peer), request_timeout, atom::hello_v, st.cfg.ccn_id, caf::actor_cast<caf::actor>(self))
      .then([=](peer_inventory& inv) { sync_with(self, peer, std::move(inv)); },
            [=](caf::error& err) {
              self->state.behind = true;
              spdlog::warn("ccn_peer: catching up with {} failed: {}", peer_id, describe(err));
            });
  }
}

void fell_behind(ccn_peer_pointer self, const std::string& what, const caf::error& err) {
  auto& st = self->state;
  if (!st.behind)
    spdlog::error("ccn_peer: cannot store {}: {}; the peers will be asked again", what, describe(err));
  else
    spdlog::debug("ccn_peer: cannot store {}: {}", what, describe(err));
  st.behind = true;
}

// A failure that may pass by itself: a full disk, a store too busy to answer in time.
bool passing(const caf::error& err) {
  return (err.category() == caf::atom("alephd") && static_cast<ec>(err.code()) == ec::no_space)
         || err == caf::sec::request_timeout;
}

bool room_for(ccn_peer_pointer self, uint64_t bytes) {
  auto& st = self->state;
  return st.held_bytes + bytes <= st.cfg.max_held_bytes;
}

void release(ccn_peer_pointer self, const std::string& key, uint64_t bytes) {
  auto& st = self->state;
  st.held_keys.erase(key);
  st.held_bytes -= std::min(bytes, st.held_bytes);
}

// Something a peer pushed could not be stored: kept to be stored again on the next ticks (a
// full disk frees up) when the failure may pass and there is room, else the peers are asked
// again. Counted in held_bytes until it is stored or given up.
template <class T>
void hold_new(ccn_peer_pointer self, std::deque<T>& queue, const std::string& key, T item, uint64_t bytes,
              const std::string& what, const caf::error& err) {
  auto& st = self->state;
  if (st.held_keys.count(key) > 0)
    return; // kept already (pushed twice)
  if (!passing(err) || !room_for(self, bytes)) {
    fell_behind(self, what, err);
    return;
  }
  if (st.held_keys.empty())
    spdlog::warn("ccn_peer: cannot store {}: {}; kept to store again", what, describe(err));
  st.held_keys.insert(key);
  st.held_bytes += bytes;
  queue.push_back(std::move(item));
}

// A kept item failed again: kept on (still counted), unless the failure will not pass.
template <class T>
void hold_again(ccn_peer_pointer self, std::deque<T>& queue, const std::string& key, T item, uint64_t bytes,
                const std::string& what, const caf::error& err) {
  if (!passing(err)) {
    release(self, key, bytes);
    fell_behind(self, what, err);
    return;
  }
  queue.push_back(std::move(item));
}

uint64_t size_of(const stored_message& m) {
  return m.json.size() + m.item_hash.size();
}

uint64_t size_of(const file_blob& b) {
  return b.data.size() + b.hash.size();
}

uint64_t size_of(const std::pair<std::string, std::string>& offer) {
  return offer.first.size() + offer.second.size();
}

// Stores what a peer pushed (not kept already). A copy is kept while the store answers if there
// is room to hold it should the store fail (a full disk): then it is stored again on the next
// ticks; else the peers are asked again.
template <class Result, class Dest, class Atom, class T>
void store_pushed(ccn_peer_pointer self, const Dest& dest, Atom op, T item, const std::string& key,
                  std::deque<T> ccn_peer_state::*queue, const char* what) {
  if (self->state.held_keys.count(key) > 0)
    return; // kept from an earlier push: stored on a tick
  auto bytes = size_of(item);
  if (!room_for(self, bytes)) {
    self->request(dest, request_timeout, op, std::move(item))
      .then([](const Result&) {}, [=](caf::error& err) { fell_behind(self, what, err); });
    return;
  }
  auto kept = std::make_shared<T>(item);
  self->request(dest, request_timeout, op, std::move(item))
    .then([](const Result&) {},
          [=](caf::error& err) { hold_new(self, self->state.*queue, key, std::move(*kept), bytes, what, err); });
}

// One round of storing again what peers pushed and was kept; what fails again is kept again.
// Offers of large files are fetched one by one, apart from the round (a fetch can take long).
void store_held(ccn_peer_pointer self) {
  auto& st = self->state;
  while (!st.held_offers.empty()) {
    auto offer = std::move(st.held_offers.front());
    st.held_offers.pop_front();
    self->request(st.files, caf::infinite, atom::fetch_v, offer.first, offer.second)
      .then([=](const file_info&) { release(self, offer.first, size_of(offer)); },
            [=](caf::error& err) {
              hold_again(self, self->state.held_offers, offer.first, offer, size_of(offer), "a file a peer offered", err);
            });
  }
  if (st.storing_held || (st.held_messages.empty() && st.held_files.empty()))
    return;
  st.storing_held = true;
  auto messages = std::move(st.held_messages);
  auto files = std::move(st.held_files);
  st.held_messages.clear();
  st.held_files.clear();
  auto left = std::make_shared<std::size_t>(messages.size() + files.size());
  auto done = [=] {
    if (--*left == 0)
      self->state.storing_held = false;
  };
  for (auto& m : messages)
    self->request(st.messages, request_timeout, atom::append_v, m)
      .then(
        [=](const append_result&) {
          release(self, m.item_hash, size_of(m));
          done();
        },
        [=](caf::error& err) {
          hold_again(self, self->state.held_messages, m.item_hash, m, size_of(m), "a replicated message", err);
          done();
        });
  for (auto& b : files)
    self->request(st.files, request_timeout, atom::put_v, b)
      .then(
        [=](const file_info&) {
          release(self, b.hash, size_of(b));
          done();
        },
        [=](caf::error& err) {
          hold_again(self, self->state.held_files, b.hash, b, size_of(b), "a replicated file", err);
          done();
        });
}

// Why a message a peer pushed is not acceptable ("" when it is), as the HTTP intake checks.
std::string check_replicated(const stored_message& msg, bool verify_signatures) {
  auto parsed = aleph::parse_message(std::string_view{msg.json});
  if (!parsed.ok())
    return "invalid: " + parsed.error.field + " " + parsed.error.reason;
  if (parsed.msg->item_hash != msg.item_hash || aleph::to_string(parsed.msg->type) != msg.type)
    return "its item hash or type does not match its content";
  if (verify_signatures) {
    const auto& m = *parsed.msg;
    if (auto why = crypto::verify_message_signature(m.chain, m.sender, aleph::to_string(m.type),
                                                    m.item_hash, m.signature))
      return "invalid signature: " + *why;
  }
  return {};
}

// Introduces ourselves to a peer's ccn_node and syncs both ways.
void meet(ccn_peer_pointer self, const ccn_node_actor& node, const std::string& endpoint) {
  self->request(node, request_timeout, atom::hello_v)
    .then(
      [=](const crn_registry_actor&, const caf::actor& peer, const std::string& peer_id) {
        self->state.connecting.erase(endpoint);
        if (peer_id == self->state.cfg.ccn_id)
          return; // ourselves
        self->state.endpoint_peer[endpoint] = peer_id;
        add_peer(self, peer_id, peer, endpoint);
        self->state.synced_back[peer_id] = self->clock().now(); // its hello back ends the round
        self->request(as_peer(peer), request_timeout, atom::hello_v, self->state.cfg.ccn_id,
                      caf::actor_cast<caf::actor>(self))
          .then([=](peer_inventory& inv) { sync_with(self, peer, std::move(inv)); },
                [=](caf::error& err) {
                  spdlog::warn("ccn_peer: hello to {} failed: {}", peer_id, describe(err));
                });
      },
      [=](caf::error& err) {
        self->state.connecting.erase(endpoint);
        spdlog::debug("ccn_peer: peer {} not reachable: {}", endpoint, describe(err));
      });
}

bool connected(ccn_peer_pointer self, const std::string& endpoint) {
  auto i = self->state.endpoint_peer.find(endpoint);
  if (i == self->state.endpoint_peer.end())
    return false;
  auto p = self->state.peers.find(i->second);
  return p != self->state.peers.end() && p->second.up;
}

void connect_all(ccn_peer_pointer self) {
  auto& st = self->state;
  for (auto& ep : st.cfg.endpoints) {
    if (connected(self, ep) || st.connecting.count(ep) > 0)
      continue;
    st.connecting.insert(ep);
    connect_ccn_node(
      self, ep, request_timeout, [=](const ccn_node_actor& node) { meet(self, node, ep); },
      [=](caf::error&) { self->state.connecting.erase(ep); });
  }
}

} // namespace

ccn_peer_actor::behavior_type ccn_peer(ccn_peer_actor::stateful_pointer<ccn_peer_state> self,
                                       ccn_peer_config cfg, message_store_actor messages,
                                       content_store_actor files) {
  auto& st = self->state;
  st.cfg = std::move(cfg);
  st.messages = std::move(messages);
  st.files = std::move(files);
  self->send(st.messages, atom::subscribe_v, caf::actor_cast<message_listener_actor>(self));
  self->send(st.files, atom::subscribe_v, caf::actor_cast<file_listener_actor>(self));
  for (size_t i = 0; i < st.cfg.direct.size(); ++i)
    meet(self, st.cfg.direct[i], "direct:" + std::to_string(i));
  self->set_down_handler([=](caf::down_msg& dm) {
    for (auto& [id, p] : self->state.peers)
      if (p.handle && p.handle.address() == dm.source && p.up) {
        p.up = false;
        spdlog::warn("ccn_peer: peer CCN {} is down", id);
      }
  });
  // Ticks connect to endpoints and catch up after a failed store: needed with direct peers too.
  if (!st.cfg.endpoints.empty() || !st.cfg.direct.empty())
    self->send(self, atom::tick_v);
  return {
    [=](atom::published, const stored_message& msg) {
      // Peers form a full mesh: forward only what this CCN accepted, never echo.
      if (msg.origin != self->state.cfg.ccn_id)
        return;
      // One message shared by every peer's mailbox (copied when a peer takes it).
      auto m = caf::make_message(atom::replicate_v, msg);
      for (auto& [id, p] : self->state.peers)
        if (p.up)
          caf::anon_send(p.handle, m);
    },
    [=](atom::stored, const file_info& info) {
      for (auto& [id, p] : self->state.peers)
        if (p.up)
          push_file(self, p.handle, info.hash);
    },
    [=](atom::hello, const std::string& peer_id, const caf::actor& peer)
      -> caf::result<peer_inventory> {
      auto& st = self->state;
      auto known = st.peers.find(peer_id);
      auto now = self->clock().now();
      auto last = st.synced_back.find(peer_id);
      // A peer we know that says hello again after a while is catching up: push what it lacks.
      bool catching_up = last == st.synced_back.end() || now - last->second > st.cfg.retry;
      if (known == st.peers.end() || !known->second.up || known->second.handle != peer || catching_up) {
        st.synced_back[peer_id] = now;
        if (known == st.peers.end() || !known->second.up || known->second.handle != peer)
          add_peer(self, peer_id, peer, {});
        // Introduce ourselves back, so that the peer pushes what we lack.
        self->request(as_peer(peer), request_timeout, atom::hello_v, st.cfg.ccn_id,
                      caf::actor_cast<caf::actor>(self))
          .then([=](peer_inventory& inv) { sync_with(self, peer, std::move(inv)); },
                [=](caf::error& err) {
                  spdlog::warn("ccn_peer: hello back to {} failed: {}", peer_id, describe(err));
                });
      }
      auto rp = self->make_response_promise<peer_inventory>();
      auto inv = std::make_shared<peer_inventory>();
      inv->ccn_id = st.cfg.ccn_id;
      self->request(st.messages, request_timeout, atom::inventory_v)
        .then([=](std::vector<std::string>& msgs) mutable {
          inv->messages = std::move(msgs);
          self->request(self->state.files, request_timeout, atom::inventory_v)
            .then([=](std::vector<std::string>& fs) mutable {
              inv->files = std::move(fs);
              rp.deliver(*inv);
            },
                  [=](caf::error& err) mutable { rp.deliver(err); });
        },
              [=](caf::error& err) mutable { rp.deliver(err); });
      return rp;
    },
    [=](atom::replicate, stored_message& msg) {
      // A peer's message is checked like a client's: schema, item hash, signature.
      auto& cfg = self->state.cfg;
      std::string key;
      std::optional<std::string> verdict;
      if (cfg.verdicts) {
        // Length-prefixed fields: no two different messages make the same key.
        key = std::string{cfg.verify_signatures ? "1:" : "0:"} + std::to_string(msg.item_hash.size()) + ':'
              + msg.item_hash + std::to_string(msg.type.size()) + ':' + msg.type + msg.json;
        verdict = cfg.verdicts->find(key);
      }
      if (!verdict) {
        verdict = check_replicated(msg, cfg.verify_signatures);
        if (cfg.verdicts)
          cfg.verdicts->put(key, *verdict);
      }
      if (!verdict->empty()) {
        spdlog::warn("ccn_peer: refused replicated message {}: {}", msg.item_hash.substr(0, 80), *verdict);
        return;
      }
      auto hash = msg.item_hash;
      store_pushed<append_result>(self, self->state.messages, atom::append_v, std::move(msg), hash,
                                  &ccn_peer_state::held_messages, "a replicated message");
    },
    [=](atom::replicate, std::string& hash, std::string& url) {
      if (self->state.held_keys.count(hash) > 0)
        return;
      self->request(self->state.files, caf::infinite, atom::fetch_v, hash, url)
        .then([](const file_info&) {},
              [=](caf::error& err) {
                auto offer = std::make_pair(hash, url);
                hold_new(self, self->state.held_offers, hash, offer, size_of(offer), "a file a peer offered", err);
              });
    },
    [=](atom::replicate, file_blob& blob) {
      auto hash = blob.hash;
      store_pushed<file_info>(self, self->state.files, atom::put_v, std::move(blob), hash, &ccn_peer_state::held_files,
                              "a replicated file");
    },
    [=](atom::list) {
      std::vector<node_view> out;
      for (auto& [id, p] : self->state.peers) {
        node_view v;
        v.id = id;
        v.role = "ccn";
        v.address = p.endpoint;
        v.status = p.up ? "active" : "down";
        v.registered = p.since;
        out.push_back(std::move(v));
      }
      return out;
    },
    [=](atom::tick) {
      connect_all(self);
      store_held(self);
      catch_up(self);
      self->delayed_send(self, self->state.cfg.retry, atom::tick_v);
    },
  };
}

} // namespace alephd
