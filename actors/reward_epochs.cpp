#include "actors/reward_epochs.hpp"

#include <algorithm>
#include <cmath>

#include <caf/all.hpp>
#include <spdlog/spdlog.h>

#include "runtime/lmdb.hpp"
#include "runtime/wall_clock.hpp"

namespace alephd {

namespace {

using reward_epochs_pointer = reward_epochs_actor::stateful_pointer<reward_epochs_state>;

constexpr auto ask_timeout = std::chrono::seconds(30);

double wall_now(const reward_epochs_config& cfg) {
  return cfg.now ? cfg.now() : unix_seconds();
}

uint64_t epoch_now(const reward_epochs_config& cfg) {
  auto now = wall_now(cfg);
  return static_cast<uint64_t>(std::floor(now / static_cast<double>(cfg.epoch_seconds.count())));
}

std::map<std::string, double> stakes_of(const reward_epochs_config& cfg, const std::string& id,
                                        const std::string& name) {
  std::map<std::string, double> out;
  for (auto& s : cfg.stakes)
    if (s.ccn == id || (!name.empty() && s.ccn == name))
      out[s.address] += s.amount;
  return out;
}

void compute(reward_epochs_pointer self, uint64_t epoch);

// Computes the next epoch if one ended and nothing is being computed.
void maybe_compute(reward_epochs_pointer self) {
  auto& st = self->state;
  if (!st.busy && st.last + 1 < epoch_now(st.cfg) && wall_now(st.cfg) >= st.retry_at)
    compute(self, st.last + 1);
}

// Everything gathered, the epoch is computed and stored.
void finish(reward_epochs_pointer self, uint64_t epoch, const std::vector<node_score>& scores,
            const std::vector<node_view>& crns, const std::vector<node_view>& peers) {
  auto& st = self->state;
  auto& cfg = st.cfg;
  epoch_input in;
  in.epoch = epoch;
  in.start = static_cast<double>(epoch * cfg.epoch_seconds.count());
  in.end = in.start + static_cast<double>(cfg.epoch_seconds.count());
  in.params = cfg.params;
  for (auto& s : scores)
    in.crns.push_back(rewards::crn_input{s.id, s.total, s.decentralization});
  // Its own CRNs in the order they registered (the first max-paid scoring ones are paid).
  auto mine = crns;
  std::sort(mine.begin(), mine.end(), [](auto& a, auto& b) {
    return std::tie(a.registered, a.id) < std::tie(b.registered, b.id);
  });
  rewards::ccn_input self_ccn{cfg.ccn_id, true, 1.0, {}, stakes_of(cfg, cfg.ccn_id, cfg.ccn_name)};
  for (auto& n : mine)
    if (n.status == "linked" || n.status == "down")
      self_ccn.linked_crns.push_back(n.id);
  in.ccns.push_back(std::move(self_ccn));
  // Peers: active while connected; each computes its own legacy share and its stakers' (it
  // knows its CRNs), so here those are booked as computed there.
  for (auto& p : peers)
    if (p.id != cfg.ccn_id)
      in.ccns.push_back(rewards::ccn_input{p.id, p.status == "active", p.status == "active" ? 1.0 : 0.0,
                                           {}, stakes_of(cfg, p.id, p.name), true});
  std::map<std::string, uint64_t> after;
  auto stored = stored_epochs(*cfg.env);
  if (!stored.empty())
    if (auto prev = load_epoch(*cfg.env, stored.back()))
      for (auto& [node, range] : prev->input.ranges)
        after[node] = range.second;
  // Nodes counted before but without new entries keep their cursor.
  in.ranges = usage_ranges(*cfg.env, after);
  std::vector<rewards::usage_input> usage;
  std::string err;
  if (!collect_usage(*cfg.env, in.ranges, usage, err)) {
    spdlog::error("reward_epochs: epoch {}: {}; trying again in a minute", epoch, err);
    st.busy = false;
    st.retry_at = wall_now(cfg) + 60;
    return;
  }
  auto record = compute_epoch(in, usage);
  if (!store_epoch(*cfg.env, record, err)) {
    spdlog::error("reward_epochs: cannot store epoch {}: {}; trying again in a minute", epoch, err);
    st.busy = false;
    st.retry_at = wall_now(cfg) + 60;
    return;
  }
  spdlog::info("reward_epochs: epoch {} computed: {} CRNs scored, {} executions metered", epoch,
               in.crns.size(), usage.size());
  st.last = epoch;
  ++st.computed;
  st.busy = false;
  maybe_compute(self); // another epoch may be due
}

void compute(reward_epochs_pointer self, uint64_t epoch) {
  auto& st = self->state;
  st.busy = true;
  auto fail = [=](const char* what) {
    return [=](caf::error& err) {
      spdlog::warn("reward_epochs: epoch {}: {}: {}", epoch, what, describe(err));
      self->state.busy = false;
      self->state.retry_at = wall_now(self->state.cfg) + 10;
    };
  };
  auto with_peers = [=](std::vector<node_score> scores, std::vector<node_view> crns) {
    if (!self->state.cfg.peer) {
      finish(self, epoch, scores, crns, {});
      return;
    }
    self->request(self->state.cfg.peer, ask_timeout, atom::list_v)
      .then([=](const std::vector<node_view>& peers) { finish(self, epoch, scores, crns, peers); },
            fail("listing peer CCNs"));
  };
  auto with_crns = [=](std::vector<node_score> scores) {
    if (!self->state.cfg.registry) {
      with_peers(scores, {});
      return;
    }
    self->request(self->state.cfg.registry, ask_timeout, atom::list_v)
      .then([=](const std::vector<node_view>& crns) { with_peers(scores, crns); },
            fail("listing CRNs"));
  };
  if (!st.cfg.prober) {
    with_crns({});
    return;
  }
  self->request(st.cfg.prober, ask_timeout, atom::list_v)
    .then([=](const std::vector<node_score>& scores) { with_crns(scores); }, fail("scoring CRNs"));
}

} // namespace

reward_epochs_actor::behavior_type
reward_epochs(reward_epochs_actor::stateful_pointer<reward_epochs_state> self,
              reward_epochs_config cfg) {
  auto& st = self->state;
  st.cfg = std::move(cfg);
  if (!st.cfg.env || st.cfg.epoch_seconds.count() <= 0) {
    self->quit(make_error(ec::invalid, "reward_epochs: no LMDB environment or no epoch length"));
    return reward_epochs_actor::behavior_type::make_empty_behavior();
  }
  auto now = epoch_now(st.cfg);
  auto stored = stored_epochs(*st.cfg.env);
  // Epochs that ended while the CCN was down are computed now, at most 100 of them.
  st.last = stored.empty() ? now - 1 : std::max(stored.back(), now > 101 ? now - 101 : 0);
  self->send(self, atom::tick_v);
  return {
    [=](atom::tick) {
      self->delayed_send(self, self->state.cfg.check, atom::tick_v);
      maybe_compute(self);
    },
    [=](atom::rewards, uint64_t epoch) -> caf::result<std::string> {
      auto& st = self->state;
      if (epoch == 0) {
        auto all = stored_epochs(*st.cfg.env);
        if (all.empty())
          return make_error(ec::not_found, "no reward epoch has been computed yet");
        epoch = all.back();
      }
      auto r = load_epoch(*st.cfg.env, epoch);
      if (!r)
        return make_error(ec::not_found, "no reward epoch " + std::to_string(epoch));
      return encode_epoch(*r);
    },
  };
}

} // namespace alephd
