#include "actors/crn_registry.hpp"

#include <caf/all.hpp>
#include <spdlog/spdlog.h>

namespace alephd {

namespace {

using self_ptr = crn_registry_actor::stateful_pointer<crn_registry_state>;

double wall_now() {
  using namespace std::chrono;
  return duration<double>(system_clock::now().time_since_epoch()).count();
}

size_t linked_count(const crn_registry_state& st) {
  size_t n = 0;
  for (auto& [id, e] : st.crns)
    n += e.state == link_state::linked ? 1 : 0;
  return n;
}

void set_state(self_ptr self, crn_entry& e, link_state s) {
  if (e.state == s)
    return;
  spdlog::info("crn_registry: CRN {} ({}) {} -> {}", e.info.id, e.info.name, to_string(e.state),
               to_string(s));
  e.state = s;
  if (s == link_state::waiting)
    e.wait_order = self->state.next_order++;
  if (e.link && (s == link_state::linked || s == link_state::waiting))
    self->send(e.link, atom::status_v, s);
  for (auto& l : self->state.listeners)
    self->send(l, atom::node_v, e.info, s, e.link);
}

// Fills free slots with the CRNs that have waited longest.
void promote(self_ptr self) {
  auto& st = self->state;
  while (linked_count(st) < st.cfg.max_linked) {
    crn_entry* best = nullptr;
    for (auto& [id, e] : st.crns)
      if (e.state == link_state::waiting && (best == nullptr || e.wait_order < best->wait_order))
        best = &e;
    if (best == nullptr)
      return;
    set_state(self, *best, link_state::linked);
  }
}

void mark_down(self_ptr self, crn_entry& e, link_state to, const char* why) {
  if (e.state != link_state::linked && e.state != link_state::waiting)
    return;
  spdlog::warn("crn_registry: CRN {} is {}: {}", e.info.id, to_string(to), why);
  bool was_linked = e.state == link_state::linked;
  set_state(self, e, to);
  if (was_linked)
    promote(self);
}

// Linked when a slot is free, else waiting.
void admit(self_ptr self, crn_entry& e) {
  if (e.state == link_state::linked)
    return;
  auto to = linked_count(self->state) < self->state.cfg.max_linked ? link_state::linked
                                                                    : link_state::waiting;
  if (e.state == link_state::waiting && to == link_state::waiting)
    return;
  set_state(self, e, to);
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
  self->set_down_handler([=](caf::down_msg& dm) {
    for (auto& [id, e] : self->state.crns)
      if (e.link && e.link.address() == dm.source)
        mark_down(self, e, link_state::down, "its process is gone");
  });
  self->send(self, atom::tick_v);
  return {
    [=](atom::enroll, crn_info& info, ccn_link_actor& link) -> caf::result<registration> {
      auto& st = self->state;
      if (info.id.empty())
        return make_error(ec::invalid, "a CRN must have an id");
      auto& e = st.crns[info.id];
      if (e.link && e.link != link)
        self->demonitor(e.link.address());
      bool fresh = e.registered == 0;
      e.info = std::move(info);
      e.link = std::move(link);
      if (fresh)
        e.registered = wall_now();
      e.last_heartbeat = wall_now();
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
      e.last_seen = self->clock().now();
      e.last_heartbeat = wall_now();
      if (e.state == link_state::down)
        admit(self, e); // a frozen CRN that came back
      return heartbeat_ack{st.cfg.ccn_id, hb.seq, e.state};
    },
    [=](atom::unlink, const std::string& id) {
      auto& st = self->state;
      if (auto i = st.crns.find(id); i != st.crns.end()) {
        self->demonitor(i->second.link.address());
        mark_down(self, i->second, link_state::unlinked, "it unlinked");
      }
    },
    [=](atom::list) {
      std::vector<node_view> out;
      for (auto& [id, e] : self->state.crns)
        out.push_back(view_of(self->state, e));
      return out;
    },
    [=](atom::subscribe, node_listener_actor& l) {
      for (auto& [id, e] : self->state.crns)
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
      self->delayed_send(self, st.cfg.heartbeat / 2, atom::tick_v);
    },
  };
}

} // namespace alephd
