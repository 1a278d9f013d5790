#include "actors/crn_registry.hpp"

#include <caf/all.hpp>
#include <spdlog/spdlog.h>

#include "messages/codec.hpp"
#include "runtime/crypto.hpp"
#include "runtime/wall_clock.hpp"

namespace alephd {

namespace {

using crn_registry_pointer = crn_registry_actor::stateful_pointer<crn_registry_state>;

// Slots taken: linked CRNs plus the slots kept for CRNs that were linked before a restart.
size_t taken_slots(const crn_registry_state& st) {
  size_t n = 0;
  for (auto& [id, e] : st.crns)
    n += e.state == link_state::linked || e.reserved ? 1 : 0;
  return n;
}

void persist(crn_registry_pointer self, const crn_entry& e) {
  auto& st = self->state;
  if (!st.cfg.env)
    return;
  int rc = lmdb::put_committed(*st.cfg.env, st.db, e.info.id,
                               codec::encode(e.info, e.state, e.registered, e.wait_order, e.session));
  if (rc != 0)
    spdlog::error("crn_registry: cannot persist CRN {}: {}", e.info.id, lmdb::error_text(rc));
}

void restore(crn_registry_pointer self) {
  auto& st = self->state;
  std::string err;
  if (!st.cfg.env->open_db("registry", st.db, err)) {
    spdlog::error("crn_registry: {}; the registry will not survive a restart", err);
    st.cfg.env.reset();
    return;
  }
  lmdb::txn t{*st.cfg.env, false};
  t.for_each(st.db, false, [&](std::string_view, std::string_view v) {
    crn_entry e;
    link_state was = link_state::unlinked;
    if (!codec::decode(v, e.info, was, e.registered, e.wait_order, &e.session))
      return true;
    // Nobody is connected yet: known CRNs are down until they register again.
    e.state = was == link_state::unlinked ? link_state::unlinked : link_state::down;
    e.reserved = was == link_state::linked;
    st.next_order = std::max(st.next_order, e.wait_order + 1);
    st.crns.emplace(e.info.id, std::move(e));
    return true;
  });
  if (!st.crns.empty())
    spdlog::info("crn_registry: restored {} CRNs", st.crns.size());
}

void set_state(crn_registry_pointer self, crn_entry& e, link_state s) {
  if (e.state == s)
    return;
  spdlog::info("crn_registry: CRN {} ({}) {} -> {}", e.info.id, e.info.name, to_string(e.state),
               to_string(s));
  e.state = s;
  if (s == link_state::waiting)
    e.wait_order = self->state.next_order++;
  persist(self, e);
  if (e.link && (s == link_state::linked || s == link_state::waiting))
    self->send(e.link, atom::status_v, s);
  for (auto& l : self->state.listeners)
    self->send(l, atom::node_v, e.info, s, e.link);
}

// Fills free slots with the CRNs that have waited longest.
void promote(crn_registry_pointer self) {
  auto& st = self->state;
  while (taken_slots(st) < st.cfg.max_linked) {
    crn_entry* best = nullptr;
    for (auto& [id, e] : st.crns)
      if (e.state == link_state::waiting && (best == nullptr || e.wait_order < best->wait_order))
        best = &e;
    if (best == nullptr)
      return;
    set_state(self, *best, link_state::linked);
  }
}

void mark_down(crn_registry_pointer self, crn_entry& e, link_state to, const char* why) {
  if (e.state != link_state::linked && e.state != link_state::waiting)
    return;
  spdlog::warn("crn_registry: CRN {} is {}: {}", e.info.id, to_string(to), why);
  bool was_linked = e.state == link_state::linked;
  set_state(self, e, to);
  if (was_linked)
    promote(self);
}

// Linked when its slot was kept for it or a slot is free, else waiting.
void admit(crn_registry_pointer self, crn_entry& e) {
  if (e.state == link_state::linked)
    return;
  auto to = link_state::waiting;
  if (e.reserved) {
    e.reserved = false;
    to = link_state::linked;
  } else if (taken_slots(self->state) < self->state.cfg.max_linked) {
    to = link_state::linked;
  }
  if (e.state == link_state::waiting && to == link_state::waiting)
    return;
  set_state(self, e, to);
}

// Why an enrollment does not prove its CRN's identity; empty when it does.
std::string identity_problem(const crn_registry_state& st, const enrollment& en,
                             const crn_entry* known) {
  const auto& info = en.info;
  if (info.public_key.size() != 32)
    return "CRN " + info.id + " sent no node key";
  if (crypto::node_id_of(info.public_key) != info.id)
    return "CRN id " + info.id + " is not the hash of its node key";
  if (!crypto::ed25519_verify(info.public_key, signed_text(en), en.signature))
    return "the registration of CRN " + info.id + " is not signed by its node key";
  if (en.ccn_id != st.cfg.ccn_id)
    return "the registration of CRN " + info.id + " is meant for CCN " + en.ccn_id.substr(0, 80);
  auto now_ms = static_cast<int64_t>(unix_seconds() * 1000);
  auto skew = now_ms - static_cast<int64_t>(en.signed_at_ms);
  if (skew > st.cfg.max_clock_skew.count() || -skew > st.cfg.max_clock_skew.count())
    return "the registration of CRN " + info.id + " was signed " + std::to_string(skew / 1000)
           + " s from this CCN's clock (a replay, or a clock is wrong)";
  if (known != nullptr && en.signed_at_ms <= known->session)
    return "the registration of CRN " + info.id + " is not newer than the one accepted before (a replay)";
  return {};
}

bool link_alive(const crn_entry& e) {
  return e.link && (e.state == link_state::linked || e.state == link_state::waiting);
}

node_view view_of(const crn_registry_state& st, const crn_entry& e) {
  node_view v;
  v.id = e.info.id;
  v.role = "crn";
  v.name = e.info.name;
  v.address = e.info.address;
  v.status = to_string(e.state);
  v.software_version = e.info.software_version;
  v.ccn_id = st.cfg.ccn_id;
  v.vcpus = e.info.vcpus;
  v.memory_mib = e.info.memory_mib;
  v.disk_mib = e.info.disk_mib;
  v.registered = e.registered;
  v.last_heartbeat = e.last_heartbeat;
  return v;
}

} // namespace

crn_registry_actor::behavior_type
crn_registry(crn_registry_actor::stateful_pointer<crn_registry_state> self,
             crn_registry_config cfg) {
  self->state.cfg = std::move(cfg);
  self->state.started = self->clock().now();
  if (self->state.cfg.env)
    restore(self);
  self->set_down_handler([=](caf::down_msg& dm) {
    for (auto& [id, e] : self->state.crns)
      if (e.link && e.link.address() == dm.source)
        mark_down(self, e, link_state::down, "its process is gone");
  });
  self->send(self, atom::tick_v);
  return {
    [=](atom::enroll, enrollment& en, ccn_link_actor& link) -> caf::result<registration> {
      auto& st = self->state;
      auto& info = en.info;
      if (info.id.empty())
        return make_error(ec::invalid, "a CRN must have an id");
      auto known = st.crns.find(info.id);
      const crn_entry* prev = known == st.crns.end() ? nullptr : &known->second;
      if (st.cfg.verify_identity) {
        if (auto why = identity_problem(st, en, prev); !why.empty()) {
          spdlog::warn("crn_registry: refused: {}", why);
          return make_error(ec::refused, why);
        }
      }
      if (prev != nullptr && link_alive(*prev) && prev->link != link) {
        auto why = "CRN " + info.id + " is linked from another live process; try again once it is gone";
        spdlog::warn("crn_registry: refused: {}", why);
        return make_error(ec::refused, why);
      }
      auto& e = st.crns[info.id];
      e.session = en.signed_at_ms;
      e.last_seq = 0;
      if (e.link && e.link != link)
        self->demonitor(e.link.address());
      bool fresh = e.registered == 0;
      e.info = std::move(info);
      e.link = std::move(link);
      if (fresh)
        e.registered = unix_seconds();
      persist(self, e);
      e.last_heartbeat = unix_seconds();
      e.last_seen = self->clock().now();
      self->monitor(e.link);
      if (e.state == link_state::unlinked || e.state == link_state::down)
        admit(self, e);
      else // re-registration with a new link: tell listeners about the new handle
        for (auto& l : st.listeners)
          self->send(l, atom::node_v, e.info, e.state, e.link);
      return registration{e.state, st.cfg.ccn_id,
                          static_cast<uint32_t>(st.cfg.heartbeat.count())};
    },
    [=](atom::beat, const heartbeat& hb) -> caf::result<heartbeat_ack> {
      auto& st = self->state;
      auto i = st.crns.find(hb.crn_id);
      if (i == st.crns.end() || i->second.state == link_state::unlinked)
        return make_error(ec::not_found, "CRN " + hb.crn_id + " is not registered");
      auto& e = i->second;
      if (st.cfg.verify_identity
          && (hb.seq <= e.last_seq
              || !crypto::ed25519_verify(e.info.public_key, signed_text(hb, e.session), hb.signature)))
        return make_error(ec::refused, "a heartbeat of CRN " + hb.crn_id + " does not verify");
      e.last_seq = hb.seq;
      e.last_seen = self->clock().now();
      e.last_heartbeat = unix_seconds();
      if (e.state == link_state::down)
        admit(self, e); // a frozen CRN that came back
      return heartbeat_ack{st.cfg.ccn_id, hb.seq, e.state};
    },
    [=](atom::unlink, const std::string& id) {
      auto& st = self->state;
      if (auto i = st.crns.find(id); i != st.crns.end()) {
        // Only the CRN's own link may take it out.
        if (st.cfg.verify_identity
            && self->current_sender() != caf::actor_cast<caf::strong_actor_ptr>(i->second.link)) {
          spdlog::warn("crn_registry: ignored an unlink of CRN {} not sent by its link", id);
          return;
        }
        self->demonitor(i->second.link.address());
        mark_down(self, i->second, link_state::unlinked, "it left on purpose");
      }
    },
    [=](atom::list) {
      std::vector<node_view> out;
      for (auto& [id, e] : self->state.crns)
        out.push_back(view_of(self->state, e));
      return out;
    },
    [=](atom::subscribe, node_listener_actor& l) {
      // Only CRNs seen since this start: the rest have no link to reach them.
      for (auto& [id, e] : self->state.crns)
        if (e.link)
          self->send(l, atom::node_v, e.info, e.state, e.link);
      self->state.listeners.push_back(std::move(l));
    },
    [=](atom::tick) {
      auto& st = self->state;
      auto now = self->clock().now();
      for (auto& [id, e] : st.crns)
        if ((e.state == link_state::linked || e.state == link_state::waiting)
            && now - e.last_seen > st.cfg.failure_timeout)
          mark_down(self, e, link_state::down, "missed heartbeats");
      if (now - st.started >= st.cfg.reserve_grace) {
        bool freed = false;
        for (auto& [id, e] : st.crns)
          if (e.reserved) {
            spdlog::info("crn_registry: CRN {} did not come back; its slot is free", id);
            e.reserved = false;
            freed = true;
          }
        if (freed)
          promote(self);
      }
      self->delayed_send(self, st.cfg.heartbeat / 2, atom::tick_v);
    },
  };
}

} // namespace alephd
