#include "actors/ccn_link.hpp"
#include "runtime/endpoint.hpp"

#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>

#include <caf/all.hpp>
#include <spdlog/spdlog.h>

#include "actors/ccn_node.hpp"
#include "runtime/wall_clock.hpp"

namespace alephd {

namespace {

using ccn_link_pointer = ccn_link_actor::stateful_pointer<ccn_link_state>;
using std::chrono::milliseconds;

size_t endpoint_count(const ccn_link_config& cfg) {
  return cfg.direct.empty() ? cfg.endpoints.size() : cfg.direct.size();
}

std::string endpoint_name(const ccn_link_config& cfg, size_t i) {
  return cfg.direct.empty() ? cfg.endpoints[i] : "in-process:" + std::to_string(i);
}

// The CCN at `endpoint`: one of `direct` for its name ("in-process:N"), else through the
// middleman.
template <class OnOk, class OnError>
void reach_ccn(ccn_link_pointer self, const std::string& endpoint, caf::timespan timeout, OnOk on_ok,
               OnError on_error) {
  auto& cfg = self->state.cfg;
  if (!cfg.direct.empty()) {
    for (size_t i = 0; i < cfg.direct.size(); ++i)
      if (endpoint_name(cfg, i) == endpoint)
        return on_ok(cfg.direct[i]);
    auto err = make_error(ec::invalid, "no in-process CCN " + endpoint);
    return on_error(err);
  }
  connect_ccn_node(self, endpoint, timeout, on_ok, on_error);
}

// Lets go of the current CCN; callbacks of its requests see a new generation and do nothing.
void forget_ccn(ccn_link_pointer self, link_phase next) {
  auto& st = self->state;
  if (st.registry)
    self->demonitor(st.registry.address());
  st.registry = nullptr;
  st.node = nullptr;
  st.phase = next;
  st.info.connected = false;
  st.info.state = link_state::unlinked;
  ++st.generation;
}

// The CCN is unreachable or gone: try the next one after a jittered back-off.
void fail(ccn_link_pointer self, const std::string& why) {
  auto& st = self->state;
  if (st.phase == link_phase::disconnected)
    return;
  forget_ccn(self, link_phase::disconnected);
  ++st.info.reconnects;
  if (endpoint_count(st.cfg) > 0)
    st.endpoint_index = (st.endpoint_index + 1) % endpoint_count(st.cfg);
  st.backoff = st.backoff.count() == 0 ? st.cfg.backoff_initial
                                       : std::min(st.backoff * 2, st.cfg.backoff_max);
  std::uniform_real_distribution<double> jitter{0.5, 1.5};
  auto delay = milliseconds{static_cast<int64_t>(static_cast<double>(st.backoff.count()) * jitter(st.rng))};
  delay = std::min(delay, st.cfg.backoff_max);
  spdlog::warn("ccn_link {}: {}; next try {} in {} ms", st.cfg.info.id, why,
               endpoint_name(st.cfg, st.endpoint_index), delay.count());
  self->delayed_send(self, delay, atom::connect_v);
}

void remember_ccn(ccn_link_pointer self, const std::string& id, const std::string& endpoint);

void enroll(ccn_link_pointer self, const ccn_node_actor& node, const std::string& endpoint) {
  auto gen = self->state.generation;
  auto timeout = self->state.cfg.failure_timeout;
  self->request(node, timeout, atom::hello_v)
    .then(
      [=](crn_registry_actor& registry, const caf::actor&, const std::string& ccn_id) {
        if (gen != self->state.generation)
          return;
        auto& st = self->state;
        st.registry = registry;
        self->monitor(registry);
        // Each enrollment is newer than the last (the CCN refuses replays).
        enrollment en;
        en.info = st.cfg.info;
        en.ccn_id = ccn_id;
        en.signed_at_ms = std::max(static_cast<uint64_t>(unix_seconds() * 1000), st.session + 1);
        if (st.cfg.sign)
          en.signature = st.cfg.sign(signed_text(en));
        st.session = en.signed_at_ms;
        self->request(registry, timeout, atom::enroll_v, std::move(en),
                      caf::actor_cast<ccn_link_actor>(self))
          .then(
            [=](const registration& reg) {
              auto& st = self->state;
              if (gen != st.generation)
                return;
              st.phase = link_phase::registered;
              st.node = node;
              st.backoff = milliseconds{0};
              st.last_ack = self->clock().now();
              st.info.connected = true;
              st.info.state = reg.state;
              st.info.ccn_id = ccn_id;
              st.info.ccn_endpoint = endpoint;
              st.info.last_ack = unix_seconds();
              remember_ccn(self, ccn_id, endpoint);
              if (reg.heartbeat_ms > 0)
                st.cfg.heartbeat = milliseconds{reg.heartbeat_ms};
              spdlog::info("ccn_link {}: registered with CCN {} at {} as {}", st.cfg.info.id,
                           ccn_id, endpoint, to_string(reg.state));
              // What the CCN places here now: its executions here that it moved elsewhere
              // meanwhile must stop.
              st.fresh.clear();
              st.listing = true;
              self->request(node, timeout, atom::list_v, st.cfg.info.id)
                .then(
                  [=](std::vector<placement>& mine) {
                    auto& st = self->state;
                    if (gen != st.generation)
                      return;
                    st.listing = false;
                    // Allocations that overtook this answer are placements it may not show.
                    mine.insert(mine.end(), st.fresh.begin(), st.fresh.end());
                    st.fresh.clear();
                    if (st.broker)
                      self->send(st.broker, atom::confirm_v, ccn_id, std::move(mine));
                  },
                  [=](caf::error& err) {
                    spdlog::warn("ccn_link {}: cannot get its placements: {}",
                                 self->state.cfg.info.id, describe(err));
                  });
            },
            [=](caf::error& err) {
              if (gen == self->state.generation)
                fail(self, "registration failed: " + describe(err));
            });
      },
      [=](caf::error& err) {
        if (gen == self->state.generation)
          fail(self, "CCN " + endpoint + " did not answer: " + describe(err));
      });
}

void connect(ccn_link_pointer self) {
  auto& st = self->state;
  if (st.phase != link_phase::disconnected || endpoint_count(st.cfg) == 0)
    return;
  st.phase = link_phase::connecting;
  auto i = st.endpoint_index;
  auto name = endpoint_name(st.cfg, i);
  if (!st.cfg.direct.empty()) {
    enroll(self, st.cfg.direct[i], name);
    return;
  }
  auto gen = st.generation;
  connect_ccn_node(
    self, name, st.cfg.failure_timeout,
    [=](const ccn_node_actor& node) {
      if (gen == self->state.generation)
        enroll(self, node, name);
    },
    [=](caf::error& err) {
      if (gen == self->state.generation)
        fail(self, "cannot connect to CCN " + name + ": " + describe(err));
    });
}

void beat(ccn_link_pointer self) {
  auto& st = self->state;
  if (st.phase != link_phase::registered)
    return;
  if (self->clock().now() - st.last_ack > st.cfg.failure_timeout) {
    fail(self, "CCN missed heartbeats for " + std::to_string(st.cfg.failure_timeout.count()) + " ms");
    return;
  }
  auto gen = st.generation;
  heartbeat hb{st.cfg.info.id, ++st.seq, {}};
  if (st.cfg.sign)
    hb.signature = st.cfg.sign(signed_text(hb, st.session));
  ++st.info.heartbeats_sent;
  self->request(st.registry, st.cfg.heartbeat, atom::beat_v, hb)
    .then(
      [=](const heartbeat_ack& ack) {
        auto& st = self->state;
        if (gen != st.generation)
          return;
        st.last_ack = self->clock().now();
        st.info.last_ack = unix_seconds();
        st.info.state = ack.state;
      },
      [=](caf::error& err) {
        auto& st = self->state;
        if (gen != st.generation)
          return;
        ++st.info.heartbeats_missed;
        if (is(err, ec::not_found)) {
          // The CCN forgot us (it restarted): register again with the same CCN.
          if (st.registry)
            self->demonitor(st.registry.address());
          st.phase = link_phase::disconnected;
          ++st.generation;
          connect(self);
        }
      });
}

void go_home(ccn_link_pointer self, const ccn_node_actor& node, const std::string& home, uint64_t gen);

// Linked away from home (the first CCN of the list, where the operator put this CRN; it went
// elsewhere when home was gone): go back once home answers again, so that every CCN gets its
// CRNs back after a crash and the CCN that placed our workloads confirms or fences them.
void fail_back(ccn_link_pointer self) {
  auto& st = self->state;
  if (st.phase != link_phase::registered || st.endpoint_index == 0 || st.probing_home
      || endpoint_count(st.cfg) == 0)
    return;
  auto every = st.cfg.failback.count() > 0 ? st.cfg.failback : 4 * st.cfg.failure_timeout;
  auto now = self->clock().now();
  if (now - st.last_home_try < every)
    return;
  st.last_home_try = now;
  st.probing_home = true;
  auto gen = st.generation;
  auto home = endpoint_name(st.cfg, 0);
  reach_ccn(
    self, home, st.cfg.failure_timeout,
    [=](const ccn_node_actor& node) {
      // A connection CAF kept from before may connect without the CCN being there: it must
      // answer first.
      self->request(node, self->state.cfg.failure_timeout, atom::hello_v)
        .then(
          [=](const crn_registry_actor&, const caf::actor&, const std::string&) {
            go_home(self, node, home, gen);
          },
          [=](caf::error&) { self->state.probing_home = false; });
    },
    [=](caf::error&) { self->state.probing_home = false; });
}

// Leaves the current CCN for home. The workloads the current CCN placed here are its to place
// again elsewhere once we leave (it sees the unlink), so they stop here.
void go_home(ccn_link_pointer self, const ccn_node_actor& node, const std::string& home, uint64_t gen) {
  auto& st = self->state;
  st.probing_home = false;
  if (gen != st.generation || st.phase != link_phase::registered)
    return; // the link moved meanwhile
  spdlog::info("ccn_link {}: CCN {} answers again; moving back to it", st.cfg.info.id, home);
  if (st.broker && !st.info.ccn_id.empty())
    self->send(st.broker, atom::confirm_v, st.info.ccn_id, std::vector<placement>{});
  if (st.registry)
    self->send(st.registry, atom::unlink_v, st.cfg.info.id);
  forget_ccn(self, link_phase::connecting);
  st.endpoint_index = 0;
  enroll(self, node, home);
}

// Workloads placed here by a CCN this link has left (it failed over, or that CCN froze) keep
// running: the CCNs of a lost CCN's CRNs must not stop them. But that CCN, back, may have placed
// them elsewhere meanwhile, and only it can fence its own workloads. So once in a while the link
// asks every CCN it registered with before what it places where, and the job broker stops that
// CCN's executions here that it now places on another CRN, or no longer places at all. One that
// is pending (no CRN) keeps running here; a CCN that does not answer changes nothing; an answer
// that an allocation or a move of the link overtook is dropped (asked again next time).
void check_owners(ccn_link_pointer self) {
  auto& st = self->state;
  if (st.phase != link_phase::registered || !st.broker || st.met.size() < 2)
    return;
  auto every = st.cfg.failback.count() > 0 ? st.cfg.failback : 4 * st.cfg.failure_timeout;
  auto now = self->clock().now();
  if (now - st.last_owner_check < every)
    return;
  st.last_owner_check = now;
  for (auto& [id, endpoint] : st.met) {
    if (id == st.info.ccn_id)
      continue;
    auto owner = id;
    auto timeout = st.cfg.failure_timeout;
    auto gen = st.generation;
    auto allocations = st.allocations;
    auto current = [=] {
      auto& st = self->state;
      return st.generation == gen && st.allocations == allocations && st.phase == link_phase::registered
             && st.info.ccn_id != owner;
    };
    reach_ccn(
      self, endpoint, timeout,
      [=](const ccn_node_actor& node) {
        self->request(node, timeout, atom::hello_v)
          .then(
            [=](const crn_registry_actor&, const caf::actor&, const std::string& answered) {
              if (answered != owner || !current())
                return; // another CCN listens there now, or the link moved
              self->request(node, timeout, atom::list_v, std::string{})
                .then(
                  [=](const std::vector<placement>& all) {
                    if (!current())
                      return;
                    auto& st = self->state;
                    std::vector<placement> keep;
                    for (auto& p : all)
                      if (p.crn_id == st.cfg.info.id || p.crn_id.empty())
                        keep.push_back(p);
                    self->send(st.broker, atom::confirm_v, owner, std::move(keep));
                  },
                  [](caf::error&) {});
            },
            [](caf::error&) {});
      },
      [](caf::error&) {});
  }
}

// Notes a CCN the link registered with, and keeps the list on disk.
void remember_ccn(ccn_link_pointer self, const std::string& id, const std::string& endpoint) {
  auto& st = self->state;
  auto i = st.met.find(id);
  if (i != st.met.end() && i->second == endpoint)
    return;
  st.met[id] = endpoint;
  if (st.cfg.met_file.empty())
    return;
  auto tmp = st.cfg.met_file + ".tmp";
  {
    std::ofstream out{tmp, std::ios::trunc};
    for (auto& [ccn, ep] : st.met)
      out << ccn << ' ' << ep << '\n';
    if (!out.flush())
      return;
  }
  std::rename(tmp.c_str(), st.cfg.met_file.c_str());
}

// Ships the ledger entries the CCN has not acknowledged, a batch at a time; the CCN's answer
// (the highest seq it holds for us) is the acknowledgement. Sent again after a lost answer,
// a batch is skipped by the CCN, so nothing is counted twice.
void ship(ccn_link_pointer self);

// The CCN that last received ledger entries, kept across restarts: a CRN killed while a batch
// was on its way does not know whether that CCN stored it.
void note_shipped_to(ccn_link_pointer self, const std::string& ccn, const std::string& endpoint) {
  auto& st = self->state;
  if (st.cfg.shipped_to_file.empty() || st.shipped_to == ccn)
    return;
  auto tmp = st.cfg.shipped_to_file + ".tmp";
  {
    std::ofstream out{tmp, std::ios::trunc};
    out << ccn << ' ' << endpoint << '\n';
    if (!out.flush())
      return;
  }
  if (std::rename(tmp.c_str(), st.cfg.shipped_to_file.c_str()) == 0)
    st.shipped_to = ccn;
}

// Asks the CCN that may hold a batch whose answer was lost what it holds, so that those entries
// are not shipped (and counted) a second time elsewhere. Until it answers, nothing is shipped.
void resolve_doubt(ccn_link_pointer self) {
  auto& st = self->state;
  if (st.doubt_endpoint.empty()) {
    st.doubt_ccn.clear();
    return;
  }
  st.shipping = true;
  auto endpoint = st.doubt_endpoint;
  auto done = [=](bool resolved) {
    auto& st = self->state;
    st.shipping = false;
    if (resolved && st.doubt_endpoint == endpoint) {
      st.doubt_ccn.clear();
      st.doubt_endpoint.clear();
      ship(self);
    }
  };
  reach_ccn(
    self, endpoint, st.cfg.failure_timeout,
    [=](const ccn_node_actor& node) {
      self->request(node, self->state.cfg.failure_timeout, atom::usage_v, self->state.cfg.info.id,
                    std::vector<usage_entry>{})
        .then(
          [=](uint64_t held) {
            spdlog::info("ccn_link {}: CCN {} holds our ledger up to entry {}", self->state.cfg.info.id,
                         endpoint, held);
            self->send(self->state.cfg.ledger, atom::confirm_v, held);
            done(true);
          },
          [=](caf::error& err) {
            spdlog::warn("ccn_link {}: CCN {} may hold ledger entries it did not acknowledge and "
                         "does not say ({}); they wait", self->state.cfg.info.id, endpoint, describe(err));
            done(false);
          });
    },
    [=](caf::error& err) {
      if (is(err, ec::invalid)) {
        // Not a CCN this link can name (a data dir used with other CCN settings): nobody to ask.
        spdlog::warn("ccn_link {}: cannot ask {} about ledger entries: {}", self->state.cfg.info.id,
                     endpoint, describe(err));
        auto& st = self->state;
        st.doubt_ccn.clear();
        st.doubt_endpoint.clear();
        st.shipping = false;
        ship(self);
        return;
      }
      done(false);
    });
}

void ship(ccn_link_pointer self) {
  auto& st = self->state;
  if (!st.cfg.ledger || st.shipping || st.phase != link_phase::registered || !st.node)
    return;
  if (!st.doubt_ccn.empty()) {
    if (st.doubt_ccn != st.info.ccn_id) {
      resolve_doubt(self);
      return;
    }
    // The same CCN: it skips what it holds already.
    st.doubt_ccn.clear();
    st.doubt_endpoint.clear();
  }
  st.shipping = true;
  auto gen = st.generation;
  auto ccn = st.info.ccn_id;
  auto endpoint = st.info.ccn_endpoint;
  note_shipped_to(self, ccn, endpoint);
  auto done = [=] {
    self->state.shipping = false;
  };
  self->request(st.cfg.ledger, st.cfg.failure_timeout, atom::get_v, st.cfg.ship_batch)
    .then(
      [=](std::vector<usage_entry>& entries) {
        auto& st = self->state;
        if (entries.empty() || gen != st.generation || !st.node) {
          done();
          return;
        }
        auto full = entries.size() >= st.cfg.ship_batch;
        auto last = entries.back().seq;
        self->request(st.node, st.cfg.failure_timeout, atom::usage_v, st.cfg.info.id, std::move(entries))
          .then(
            [=](uint64_t held) {
              auto& st = self->state;
              self->send(st.cfg.ledger, atom::confirm_v, held);
              done();
              if (full && held >= last && gen == st.generation)
                ship(self); // more are waiting
            },
            [=](caf::error& err) {
              spdlog::warn("ccn_link {}: shipping ledger entries: {}", self->state.cfg.info.id,
                           describe(err));
              // Unless the CCN said no, it may have stored them.
              if (!is(err, ec::refused) && !is(err, ec::invalid)) {
                self->state.doubt_ccn = ccn;
                self->state.doubt_endpoint = endpoint;
              }
              done();
            });
      },
      [=](caf::error& err) {
        spdlog::warn("ccn_link {}: reading the ledger: {}", self->state.cfg.info.id, describe(err));
        done();
      });
}

} // namespace

ccn_link_actor::behavior_type ccn_link(ccn_link_actor::stateful_pointer<ccn_link_state> self,
                                       ccn_link_config cfg, job_broker_actor broker) {
  auto& st = self->state;
  st.cfg = std::move(cfg);
  st.broker = std::move(broker);
  st.rng.seed(std::hash<std::string>{}(st.cfg.info.id));
  // A previous process shipped to this CCN last: it may hold entries it never acknowledged.
  if (!st.cfg.shipped_to_file.empty()) {
    std::ifstream in{st.cfg.shipped_to_file};
    std::string ccn, endpoint;
    if (in >> ccn >> endpoint) {
      st.shipped_to = ccn;
      st.doubt_ccn = ccn;
      st.doubt_endpoint = endpoint;
    }
  }
  // The CCNs a previous process registered with: what they placed here may still run here.
  if (!st.cfg.met_file.empty()) {
    std::ifstream in{st.cfg.met_file};
    std::string ccn, endpoint;
    while (in >> ccn >> endpoint)
      st.met[ccn] = endpoint;
  }
  self->set_down_handler([=](caf::down_msg& dm) {
    if (self->state.registry && dm.source == self->state.registry.address())
      fail(self, "CCN is gone (" + caf::to_string(dm.reason) + ")");
  });
  self->set_exit_handler([=](caf::exit_msg& em) {
    auto& st = self->state;
    if (st.phase == link_phase::registered && st.registry)
      self->send(st.registry, atom::unlink_v, st.cfg.info.id);
    self->quit(em.reason);
  });
  self->send(self, atom::connect_v);
  self->send(self, atom::tick_v);
  return {
    [=](atom::connect) { connect(self); },
    [=](atom::tick) {
      beat(self);
      ship(self);
      fail_back(self);
      check_owners(self);
      self->delayed_send(self, self->state.cfg.heartbeat, atom::tick_v);
    },
    [=](atom::status, link_state s) {
      if (self->state.phase == link_phase::registered) {
        spdlog::info("ccn_link {}: CCN says {}", self->state.cfg.info.id, to_string(s));
        self->state.info.state = s;
      }
    },
    [=](atom::allocate, allocation& a) {
      auto& st = self->state;
      ++st.allocations;
      if (st.listing)
        st.fresh.push_back(placement{a.item_hash, a.kind, st.cfg.info.id, a.epoch, "allocated", {}});
      return self->delegate(st.broker, atom::allocate_v, std::move(a));
    },
    [=](atom::get) { return self->state.info; },
    [=](atom::exited, execution_info& info) {
      auto& st = self->state;
      if (st.phase == link_phase::registered && st.node)
        self->send(st.node, atom::exited_v, st.cfg.info.id, std::move(info));
      else
        spdlog::warn("ccn_link {}: cannot report the failure of {}: not connected",
                     st.cfg.info.id, info.item_hash);
    },
    [=](atom::run, std::string& program, stored_message& event) {
      return self->delegate(self->state.broker, atom::run_v, std::move(program), std::move(event));
    },
    [=](atom::get, std::string& hash) -> caf::result<stored_message> {
      auto& st = self->state;
      if (st.phase != link_phase::registered || !st.node)
        return make_error(ec::unavailable, "not connected to a CCN");
      return self->delegate(st.node, atom::get_v, std::move(hash));
    },
    [=](atom::get, std::string& ref, bool latest) -> caf::result<stored_message> {
      auto& st = self->state;
      if (st.phase != link_phase::registered || !st.node)
        return make_error(ec::unavailable, "not connected to a CCN");
      return self->delegate(st.node, atom::get_v, std::move(ref), latest);
    },
    [=](atom::read, std::string& hash) -> caf::result<file_blob> {
      auto& st = self->state;
      if (st.phase != link_phase::registered || !st.node)
        return make_error(ec::unavailable, "not connected to a CCN");
      return self->delegate(st.node, atom::read_v, std::move(hash));
    },
    [=](atom::replicate, const std::string& hash) -> caf::result<file_info> {
      auto& st = self->state;
      if (!st.cfg.files)
        return make_error(ec::refused, "this CRN keeps no files");
      return self->delegate(st.cfg.files, atom::fetch_v, hash, "replica:" + hash, caf::actor{});
    },
    [=](atom::remove, const std::string& hash) {
      auto& st = self->state;
      if (!st.cfg.files)
        return;
      self->send(st.cfg.files, atom::unpin_v, "replica:" + hash);
      self->request(st.cfg.files, std::chrono::seconds(30), atom::remove_v, hash)
        .then([=](bool held) {
                if (held)
                  spdlog::info("ccn_link {}: file {} forgotten", self->state.cfg.info.id, hash);
              },
              [](caf::error&) {});
    },
    [=](atom::confirm, const std::vector<std::string>& duties) {
      if (self->state.cfg.files)
        self->send(self->state.cfg.files, atom::confirm_v, duties);
    },
    [=](atom::locate, const std::string& hash) -> caf::result<std::string> {
      auto& st = self->state;
      if (st.phase != link_phase::registered || !st.node)
        return make_error(ec::unavailable, "not connected to a CCN");
      auto rp = self->make_response_promise<std::string>();
      auto via = st.info.ccn_endpoint;
      self->request(st.node, std::chrono::seconds(10), atom::locate_v, hash)
        .then(
          [=](std::string& url) mutable {
            // A CCN listening on every address names it 0.0.0.0: reach it where its node port
            // was reached.
            std::string host;
            uint16_t port = 0;
            for (std::string any : {"http://0.0.0.0:", "http://[::]:"})
              if (url.rfind(any, 0) == 0 && split_endpoint(via, host, port))
                url = "http://" + (host.find(':') != std::string::npos ? "[" + host + "]" : host)
                      + ":" + url.substr(any.size());
            rp.deliver(std::move(url));
          },
          [=](caf::error& err) mutable { rp.deliver(std::move(err)); });
      return rp;
    },
  };
}

} // namespace alephd
