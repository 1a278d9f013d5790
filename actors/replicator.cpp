#include "actors/replicator.hpp"

#include <algorithm>

#include <caf/all.hpp>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "messages/aleph_message.hpp"
#include "runtime/blob_store.hpp"

namespace alephd {

namespace {

using replicator_pointer = replicator_actor::stateful_pointer<replicator_state>;
using nlohmann::json;

void place(replicator_pointer self, const std::string& hash);

// A refusal whose rest ended `refusal_pause` ago or more is forgotten.
bool long_past(replicator_pointer self, const refusal& r) {
  return self->clock().now() > r.until + self->state.cfg.refusal_pause;
}

std::string encode(const replica_set& r) {
  return json{{"stores", r.stores}, {"owner", r.owner}, {"wanted", r.wanted}, {"holders", r.holders}}
    .dump();
}

bool decode(std::string_view text, replica_set& r) {
  auto j = json::parse(text, nullptr, false);
  if (!j.is_object())
    return false;
  r.stores = j.value("stores", std::set<std::string>{});
  r.owner = j.value("owner", std::string{});
  r.wanted = j.value("wanted", uint32_t{0});
  r.holders = j.value("holders", std::set<std::string>{});
  return true;
}

void persist(replicator_pointer self, const std::string& hash) {
  auto& st = self->state;
  if (!st.cfg.env)
    return;
  auto it = st.sets.find(hash);
  int rc = it != st.sets.end() ? lmdb::put_committed(*st.cfg.env, st.db, hash, encode(it->second))
                               : lmdb::del_committed(*st.cfg.env, st.db, hash);
  if (rc != 0)
    spdlog::error("replicator: cannot persist the replicas of {}: {}", hash, lmdb::error_text(rc));
}

void arm_retry(replicator_pointer self) {
  if (self->state.retry_armed)
    return;
  self->state.retry_armed = true;
  self->delayed_send(self, self->state.cfg.retry, atom::tick_v);
}

// Asks a CRN to hold a copy; it becomes a holder once it has the file.
void assign(replicator_pointer self, const std::string& hash, const std::string& crn_id) {
  auto& st = self->state;
  auto& set = st.sets.at(hash);
  set.pending.insert(crn_id);
  auto link = st.crns.at(crn_id).link;
  self->request(link, st.cfg.fetch_timeout, atom::replicate_v, hash)
    .then(
      [=](const file_info&) {
        auto& st = self->state;
        auto it = st.sets.find(hash);
        if (it == st.sets.end() || it->second.pending.erase(crn_id) == 0)
          return; // forgotten, or the CRN went down meanwhile
        it->second.holders.insert(crn_id);
        it->second.refused.erase(crn_id);
        persist(self, hash);
        spdlog::info("replicator: {} holds a replica of {} ({} of {})", crn_id, hash,
                     it->second.holders.size(), it->second.wanted);
      },
      [=](caf::error& err) {
        auto& st = self->state;
        auto it = st.sets.find(hash);
        if (it == st.sets.end() || it->second.pending.erase(crn_id) == 0)
          return;
        spdlog::warn("replicator: {} could not take a replica of {}: {}", crn_id, hash,
                     describe(err));
        // A CRN that said no for want of room is left alone for a while; one that could not
        // fetch for now (e.g. it was asked while still registering with its CCN) is asked
        // again at the next retry, or a lone CRN would stay short of a copy for the pause.
        bool passing = is(err, ec::unavailable) || err == caf::sec::request_timeout
                       || err == caf::sec::request_receiver_down;
        auto& r = it->second.refused[crn_id];
        if (long_past(self, r))
          r.in_a_row = 0; // the last failure was long ago: start over
        auto pause = st.cfg.refusal_pause;
        if (passing) {
          auto n = std::min<uint32_t>(r.in_a_row++, 16);
          pause = std::min<std::chrono::milliseconds>(st.cfg.retry * (1u << n), pause);
        }
        r.until = self->clock().now() + pause;
        place(self, hash); // another CRN, if there is one
      });
}

// Tops up the copies of a file on linked CRNs that hold none yet, the least loaded first.
void place(replicator_pointer self, const std::string& hash) {
  auto& st = self->state;
  auto& set = st.sets.at(hash);
  // A CRN that never links again leaves no refusal behind.
  std::erase_if(set.refused, [&](auto& r) { return long_past(self, r.second); });
  auto now = self->clock().now();
  auto have = set.holders.size() + set.pending.size();
  if (have >= set.wanted)
    return;
  std::map<std::string, size_t> load;
  for (auto& [h, s] : st.sets)
    for (auto& c : s.holders)
      ++load[c];
  auto resting = [&](const std::string& id) {
    auto r = set.refused.find(id);
    return r != set.refused.end() && now < r->second.until;
  };
  std::vector<std::string> candidates;
  for (auto& [id, c] : st.crns)
    if (c.state == link_state::linked && c.link && set.holders.count(id) == 0
        && set.pending.count(id) == 0 && !resting(id))
      candidates.push_back(id);
  std::stable_sort(candidates.begin(), candidates.end(),
                   [&](auto& a, auto& b) { return load[a] < load[b]; });
  for (auto& id : candidates) {
    if (have >= set.wanted)
      break;
    assign(self, hash, id);
    ++have;
  }
  if (have < set.wanted)
    arm_retry(self); // fewer linked CRNs than copies asked for: when more link
}

void record_store(replicator_pointer self, const stored_message& msg, const aleph::message& m,
                  const aleph::store_content& sc) {
  auto& st = self->state;
  if (sc.item_type != "storage" || !is_sha256_hex(sc.item_hash))
    return; // IPFS content is not held by CCNs
  auto& set = st.sets[sc.item_hash];
  if (!set.stores.insert(msg.item_hash).second)
    return;
  if (set.owner.empty())
    set.owner = sc.address;
  if (msg.origin == st.cfg.ccn_id) {
    uint32_t wanted = st.cfg.default_replicas;
    if (auto r = m.raw_content.find("replicas");
        r != m.raw_content.end() && r->is_number_unsigned())
      wanted = static_cast<uint32_t>(std::min<uint64_t>(r->get<uint64_t>(), 16));
    set.wanted = std::max(set.wanted, wanted);
  }
  persist(self, sc.item_hash);
  place(self, sc.item_hash);
}

// FORGET: each STORE it names (by its owner) no longer names its file; a file no STORE names
// is dropped from every CRN and from this CCN.
void forget(replicator_pointer self, const aleph::message& m, const aleph::forget_content& fc) {
  auto& st = self->state;
  std::set<std::string> named{fc.hashes.begin(), fc.hashes.end()};
  std::vector<std::string> dropped;
  for (auto& [hash, set] : st.sets) {
    bool changed = false;
    for (auto it = set.stores.begin(); it != set.stores.end();) {
      if (named.count(*it) > 0 && (m.sender == set.owner || fc.address == set.owner)) {
        it = set.stores.erase(it);
        changed = true;
      } else {
        ++it;
      }
    }
    if (changed && set.stores.empty())
      dropped.push_back(hash);
    else if (changed)
      persist(self, hash);
  }
  for (auto& hash : dropped) {
    st.sets.erase(hash);
    persist(self, hash);
    for (auto& [id, c] : st.crns)
      if (c.link && c.state == link_state::linked)
        self->send(c.link, atom::remove_v, hash);
    if (st.files)
      self->request(st.files, std::chrono::seconds(30), atom::remove_v, hash)
        .then([](bool) {}, [](caf::error&) {});
    spdlog::info("replicator: file {} forgotten: dropped from this CCN and its CRNs", hash);
  }
}

void restore(replicator_pointer self) {
  auto& st = self->state;
  std::string err;
  if (!st.cfg.env->open_db("replicas", st.db, err)) {
    spdlog::error("replicator: {}", err);
    st.cfg.env.reset();
    return;
  }
  lmdb::txn t{*st.cfg.env, false};
  t.for_each(st.db, false, [&](std::string_view k, std::string_view v) {
    replica_set r;
    if (decode(v, r))
      st.sets.emplace(std::string{k}, std::move(r));
    return true;
  });
}

} // namespace

replicator_actor::behavior_type
replicator(replicator_actor::stateful_pointer<replicator_state> self, replicator_config cfg,
           content_store_actor files) {
  self->state.cfg = std::move(cfg);
  self->state.files = std::move(files);
  if (self->state.cfg.env)
    restore(self);
  return {
    [=](atom::published, const stored_message& msg) {
      if (msg.type != "STORE" && msg.type != "FORGET")
        return;
      auto parsed = aleph::parse_message(std::string_view{msg.json});
      if (!parsed.ok())
        return;
      if (auto* sc = std::get_if<aleph::store_content>(&parsed.msg->content))
        record_store(self, msg, *parsed.msg, *sc);
      else if (auto* fc = std::get_if<aleph::forget_content>(&parsed.msg->content))
        forget(self, *parsed.msg, *fc);
    },
    [=](atom::node, const crn_info& info, link_state state, const ccn_link_actor& link) {
      auto& st = self->state;
      auto& c = st.crns[info.id];
      c.info = info;
      c.state = state;
      c.link = link;
      if (state == link_state::linked) {
        // A CRN that restarted forgot its duty pins: assert them again. One that refused a
        // replica may have room now.
        for (auto& [hash, set] : st.sets) {
          set.refused.erase(info.id);
          if (set.holders.erase(info.id) > 0)
            assign(self, hash, info.id);
        }
        for (auto& [hash, set] : st.sets)
          place(self, hash);
        std::vector<std::string> duties;
        for (auto& [hash, set] : st.sets)
          if (set.holders.count(info.id) > 0 || set.pending.count(info.id) > 0)
            duties.push_back(hash);
        self->send(link, atom::confirm_v, duties);
        return;
      }
      std::vector<std::string> lost;
      for (auto& [hash, set] : st.sets)
        if (set.holders.erase(info.id) + set.pending.erase(info.id) > 0)
          lost.push_back(hash);
      for (auto& hash : lost) {
        spdlog::info("replicator: CRN {} is {}: placing its replica of {} elsewhere", info.id,
                     to_string(state), hash);
        persist(self, hash);
        place(self, hash);
      }
    },
    [=](atom::list) {
      std::map<std::string, std::vector<std::string>> out;
      for (auto& [hash, set] : self->state.sets)
        out[hash] = {set.holders.begin(), set.holders.end()};
      return out;
    },
    [=](atom::locate, const std::string& hash) -> caf::result<std::string> {
      auto& st = self->state;
      auto it = st.sets.find(hash);
      if (it != st.sets.end())
        for (auto& id : it->second.holders)
          if (auto c = st.crns.find(id); c != st.crns.end() && c->second.state == link_state::linked)
            return c->second.info.address;
      return make_error(ec::not_found, "no CRN holds a replica of " + hash);
    },
    [=](atom::read, const std::string& hash) -> caf::result<file_blob> {
      return make_error(ec::not_found, "file " + hash + " not found");
    },
    [=](atom::tick) {
      auto& st = self->state;
      st.retry_armed = false;
      for (auto& [hash, set] : st.sets)
        place(self, hash);
    },
  };
}

} // namespace alephd
