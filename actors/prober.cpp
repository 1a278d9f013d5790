#include "actors/prober.hpp"

#include <algorithm>
#include <set>

#include <caf/all.hpp>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "runtime/lmdb.hpp"
#include "runtime/transfer.hpp"
#include "runtime/wall_clock.hpp"

namespace alephd {

using nlohmann::json;

namespace {

using prober_pointer = prober_actor::stateful_pointer<prober_state>;

json opt(const std::optional<double>& v) {
  return v ? json(*v) : json(nullptr);
}

std::optional<double> opt_of(const json& j, const char* key) {
  auto i = j.find(key);
  if (i == j.end() || !i->is_number())
    return std::nullopt;
  return i->get<double>();
}

std::string probe_key(const std::string& id, double time) {
  return id + '\0' + lmdb::be64(static_cast<uint64_t>(std::max(0.0, time) * 1000));
}

void keep(prober_pointer self, const std::string& id, rewards::crn_probe p) {
  auto& st = self->state;
  auto& list = st.probes[id];
  list.push_back(std::move(p));
  auto cutoff = unix_seconds() - static_cast<double>(st.cfg.window.count());
  while (!list.empty() && list.front().time < cutoff)
    list.pop_front();
}

// Deletes stored probes older than the window (all nodes), one transaction.
void trim_store(prober_pointer self) {
  auto& st = self->state;
  if (!st.cfg.env)
    return;
  auto cutoff = unix_seconds() - static_cast<double>(st.cfg.window.count());
  lmdb::txn t{*st.cfg.env, true};
  if (t.status() != 0)
    return;
  std::vector<std::string> old;
  t.for_each(st.db, false, [&](std::string_view key, std::string_view value) {
    auto p = decode_probe(value);
    if (!p || p->time < cutoff)
      old.emplace_back(key);
    return true;
  });
  for (auto& k : old)
    t.del(st.db, k);
  t.commit();
}

void start_round(prober_pointer self) {
  auto& st = self->state;
  if (st.busy || st.nodes.empty())
    return;
  st.busy = true;
  std::vector<crn_info> nodes;
  for (auto& [id, info] : st.nodes)
    nodes.push_back(info);
  auto probe = st.cfg.probe;
  if (!probe) {
    auto ref = st.cfg.diagnostic_ref;
    auto timeout = st.cfg.timeout;
    probe = [ref, timeout](const crn_info& c) { return http_probe(c, ref, timeout); };
  }
  auto me = caf::actor_cast<prober_actor>(self);
  auto work = [me, nodes, probe] {
    for (auto& n : nodes) {
      try {
        caf::anon_send(me, atom::probe_v, n.id, encode_probe(probe(n)));
      } catch (const std::exception& e) {
        spdlog::warn("prober: probing {}: {}", n.id, e.what());
      }
    }
    caf::anon_send(me, atom::probe_v); // the round ends whatever happened
  };
  if (!st.cfg.threaded) {
    work();
    return;
  }
  self->home_system().spawn<caf::detached>([work](caf::event_based_actor* w) {
    work();
    w->quit();
  });
}

} // namespace

std::string encode_probe(const rewards::crn_probe& p) {
  return json{{"t", p.time}, {"b", opt(p.base_s)}, {"d", opt(p.diag_s)}, {"f", opt(p.full_s)},
              {"v", p.version}}
    .dump(-1, ' ', false, json::error_handler_t::replace);
}

std::optional<rewards::crn_probe> decode_probe(std::string_view text) {
  auto j = json::parse(text, nullptr, false);
  if (!j.is_object() || !j.contains("t") || !j["t"].is_number())
    return std::nullopt;
  rewards::crn_probe p;
  p.time = j["t"].get<double>();
  p.base_s = opt_of(j, "b");
  p.diag_s = opt_of(j, "d");
  p.full_s = opt_of(j, "f");
  if (j.contains("v") && j["v"].is_string())
    p.version = j["v"].get<std::string>();
  return p;
}

rewards::crn_probe http_probe(const crn_info& crn, const std::string& diagnostic_ref,
                              std::chrono::milliseconds timeout) {
  rewards::crn_probe p;
  p.time = unix_seconds();
  auto timed = [&](const std::string& target, bool want_401, std::chrono::milliseconds t)
    -> std::optional<double> {
    auto r = transfer::probe(crn.address, target, t);
    bool ok = want_401 ? r.status == 401 : r.status / 100 == 2;
    return ok ? std::optional<double>{r.seconds} : std::nullopt;
  };
  p.base_s = timed("/about/login", true, timeout);
  p.diag_s = diagnostic_ref.empty() ? p.base_s
                                    : timed("/vm/" + diagnostic_ref + "/", false, timeout);
  p.full_s = timed("/status/check/fastapi", false, timeout * 2);
  auto root = transfer::probe(crn.address, "/", timeout);
  if (root.status / 100 == 2) {
    // "alephd/0.1.0" or "aleph-vm/1.2.3": the version is what follows the slash.
    auto slash = root.server.find('/');
    p.version = slash == std::string::npos ? "" : root.server.substr(slash + 1, 64);
    // Whatever a CRN sends is kept as printable ASCII only.
    for (auto& c : p.version)
      if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) > 0x7e)
        c = '?';
  }
  return p;
}

prober_actor::behavior_type prober(prober_actor::stateful_pointer<prober_state> self,
                                   prober_config cfg) {
  auto& st = self->state;
  st.cfg = std::move(cfg);
  if (st.cfg.env) {
    std::string err;
    MDB_dbi db = 0;
    if (!st.cfg.env->open_db("probes", db, err)) {
      self->quit(make_error(ec::storage_failure, "prober: " + err));
      return prober_actor::behavior_type::make_empty_behavior();
    }
    st.db = db;
    // Probes of the window survive a CCN restart.
    auto cutoff = unix_seconds() - static_cast<double>(st.cfg.window.count());
    lmdb::txn t{*st.cfg.env, false};
    if (t.status() == 0)
      t.for_each(st.db, false, [&](std::string_view key, std::string_view value) {
        auto p = decode_probe(value);
        auto nul = key.find('\0');
        if (p && nul != std::string_view::npos && p->time >= cutoff)
          st.probes[std::string{key.substr(0, nul)}].push_back(*p);
        return true;
      });
  }
  self->delayed_send(self, st.cfg.interval, atom::tick_v);
  return {
    [=](atom::node, const crn_info& info, link_state state, const ccn_link_actor&) {
      auto& st = self->state;
      if (state == link_state::linked || state == link_state::down)
        st.nodes[info.id] = info;
      else
        st.nodes.erase(info.id);
    },
    [=](atom::tick) {
      self->delayed_send(self, self->state.cfg.interval, atom::tick_v);
      start_round(self);
    },
    [=](atom::probe, const std::string& id, const std::string& text) {
      auto& st = self->state;
      auto p = decode_probe(text);
      if (!p)
        return;
      if (st.cfg.env) {
        if (int rc = lmdb::put_committed(*st.cfg.env, st.db, probe_key(id, p->time), text); rc != 0)
          spdlog::warn("prober: cannot store a probe of {}: {}", id, lmdb::error_text(rc));
      }
      keep(self, id, std::move(*p));
    },
    [=](atom::probe) {
      auto& st = self->state;
      st.busy = false;
      if (++st.rounds % 60 == 0)
        trim_store(self);
    },
    [=](atom::list) {
      auto& st = self->state;
      std::map<std::string, std::size_t> per_asn;
      for (auto& [id, info] : st.nodes)
        if (!info.asn.empty())
          ++per_asn[info.asn];
      std::vector<node_score> out;
      auto accepted = st.cfg.accepted_versions;
      for (auto& [id, info] : st.nodes) {
        // A CRN that declares no ASN gets no credit for decentralization.
        auto dec = info.asn.empty() ? 0.0 : rewards::decentralization(per_asn[info.asn], st.nodes.size());
        auto i = st.probes.find(id);
        std::vector<rewards::crn_probe> probes;
        if (i != st.probes.end())
          probes.assign(i->second.begin(), i->second.end());
        auto s = rewards::score_crn(probes, accepted, dec, st.cfg.scales);
        out.push_back(node_score{id, info.name, info.asn, s.samples, s.base_p25, s.base_p95,
                                 s.diag_p25, s.full_p25, s.performance, s.version, s.total,
                                 s.decentralization, s.multiplier});
      }
      return out;
    },
  };
}

} // namespace alephd
