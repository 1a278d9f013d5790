#include "actors/trigger_router.hpp"

#include <algorithm>
#include <optional>
#include <utility>
#include <vector>

#include <caf/all.hpp>
#include <msgpack.hpp>
#include <spdlog/spdlog.h>

#include "messages/aleph_message.hpp"

namespace alephd {

namespace {

using nlohmann::ordered_json;
using trigger_router_pointer = trigger_router_actor::stateful_pointer<trigger_router_state>;

constexpr uint32_t record_version = 1;

bool satisfies(const ordered_json& value, const ordered_json& want) {
  if (want.is_object())
    return value.is_object() && trigger_matches(value, want);
  if (want.is_array()) {
    if (value == want)
      return true;
    return std::any_of(want.begin(), want.end(),
                       [&](const ordered_json& alt) { return satisfies(value, alt); });
  }
  return value == want;
}

// ---- persistence: a versioned msgpack map per program -------------------------------------

std::string encode(const trigger_subscription& s) {
  msgpack::sbuffer buf;
  msgpack::packer<msgpack::sbuffer> pk{buf};
  pk.pack_map(5);
  pk.pack("v"), pk.pack(record_version);
  pk.pack("program"), pk.pack(s.program);
  pk.pack("sender"), pk.pack(s.sender);
  pk.pack("address"), pk.pack(s.address);
  pk.pack("filters"), pk.pack(s.filters.dump());
  return {buf.data(), buf.size()};
}

std::optional<trigger_subscription> decode(std::string_view bytes) {
  try {
    auto oh = msgpack::unpack(bytes.data(), bytes.size());
    const auto& o = oh.get();
    if (o.type != msgpack::type::MAP)
      return std::nullopt;
    std::map<std::string, msgpack::object> m;
    for (uint32_t i = 0; i < o.via.map.size; ++i) {
      const auto& kv = o.via.map.ptr[i];
      if (kv.key.type != msgpack::type::STR)
        return std::nullopt;
      m.emplace(kv.key.as<std::string>(), kv.val);
    }
    auto v = m.find("v");
    if (v == m.end() || v->second.type != msgpack::type::POSITIVE_INTEGER
        || v->second.as<uint32_t>() > record_version)
      return std::nullopt;
    trigger_subscription s;
    std::string filters;
    auto take = [&](const char* key, std::string& out) {
      if (auto i = m.find(key); i != m.end())
        out = i->second.as<std::string>();
    };
    take("program", s.program);
    take("sender", s.sender);
    take("address", s.address);
    take("filters", filters);
    s.filters = ordered_json::parse(filters, nullptr, false);
    if (s.program.empty() || !s.filters.is_array() || s.filters.empty())
      return std::nullopt;
    return s;
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

void persist(trigger_router_pointer self, const trigger_subscription& s) {
  auto& st = self->state;
  if (!st.cfg.env)
    return;
  int rc = lmdb::put_committed(*st.cfg.env, st.db, s.program, encode(s));
  if (rc != 0)
    spdlog::error("trigger_router: cannot persist the subscription of {}: {}", s.program,
                  lmdb::error_text(rc));
}

void unpersist(trigger_router_pointer self, const std::string& program) {
  auto& st = self->state;
  if (!st.cfg.env)
    return;
  lmdb::txn t{*st.cfg.env, true};
  int rc = t.status();
  if (rc == 0) {
    rc = t.del(st.db, program);
    if (rc == MDB_NOTFOUND)
      rc = 0;
  }
  if (rc == 0)
    rc = t.commit();
  if (rc != 0)
    spdlog::error("trigger_router: cannot delete the subscription of {}: {}", program,
                  lmdb::error_text(rc));
}

void restore(trigger_router_pointer self) {
  auto& st = self->state;
  std::string err;
  if (!st.cfg.env->open_db("triggers", st.db, err)) {
    spdlog::error("trigger_router: {}; subscriptions will not survive a restart", err);
    st.cfg.env.reset();
    return;
  }
  lmdb::txn t{*st.cfg.env, false};
  t.for_each(st.db, false, [&](std::string_view key, std::string_view v) {
    auto s = decode(v);
    if (!s) {
      spdlog::warn("trigger_router: skipping an unreadable subscription record ({})", key);
      return true;
    }
    st.subscriptions.emplace(s->program, std::move(*s));
    return true;
  });
  if (!st.subscriptions.empty())
    spdlog::info("trigger_router: restored {} subscribed programs", st.subscriptions.size());
}

void recount(trigger_router_state& st) {
  st.pending_bytes = 0;
  for (const auto& d : st.pending)
    st.pending_bytes += d.event->json.size();
}

// ---- subscriptions -----------------------------------------------------------------------

void subscribe(trigger_router_pointer self, const stored_message& msg) {
  auto& st = self->state;
  if (st.subscriptions.count(msg.item_hash) > 0)
    return;
  auto parsed = aleph::parse_message(std::string_view{msg.json});
  if (!parsed.ok())
    return;
  const auto* program = std::get_if<aleph::program_content>(&parsed.msg->content);
  if (program == nullptr || !program->on.message.is_array())
    return;
  trigger_subscription s;
  for (const auto& f : program->on.message)
    if (f.is_object())
      s.filters.push_back(f);
  if (s.filters.empty())
    return;
  s.program = msg.item_hash;
  s.sender = parsed.msg->sender;
  s.address = program->address;
  persist(self, s);
  spdlog::info("trigger_router: program {} subscribed ({} filters)", s.program, s.filters.size());
  st.subscriptions.emplace(s.program, std::move(s));
}

void forget(trigger_router_pointer self, const stored_message& msg) {
  auto& st = self->state;
  auto parsed = aleph::parse_message(std::string_view{msg.json});
  if (!parsed.ok())
    return;
  const auto* content = std::get_if<aleph::forget_content>(&parsed.msg->content);
  if (content == nullptr)
    return;
  auto by = [&](const std::string& who) {
    return !who.empty() && (who == parsed.msg->sender || who == content->address);
  };
  for (const auto& hash : content->hashes) {
    auto i = st.subscriptions.find(hash);
    if (i == st.subscriptions.end())
      continue;
    if (!by(i->second.sender) && !by(i->second.address)) {
      spdlog::warn("trigger_router: FORGET {} by {} names program {} of {}; ignored",
                   msg.item_hash, parsed.msg->sender, hash, i->second.address);
      continue;
    }
    unpersist(self, hash);
    st.subscriptions.erase(i);
    auto before = st.pending.size();
    st.pending.erase(std::remove_if(st.pending.begin(), st.pending.end(),
                                    [&](const trigger_dispatch& d) { return d.program == hash; }),
                     st.pending.end());
    recount(st);
    spdlog::info("trigger_router: program {} unsubscribed by FORGET {} ({} queued runs dropped)",
                 hash, msg.item_hash, before - st.pending.size());
  }
}

// The message as the filters see it: top-level fields plus the signed content object.
std::optional<ordered_json> match_document(const stored_message& msg) {
  auto doc = ordered_json::parse(msg.json, nullptr, false);
  if (doc.is_discarded() || !doc.is_object())
    return std::nullopt;
  if (auto i = doc.find("item_content"); i != doc.end() && i->is_string()) {
    auto content = ordered_json::parse(i->get_ref<const std::string&>(), nullptr, false);
    if (!content.is_discarded() && content.is_object())
      doc["content"] = std::move(content);
  }
  return doc;
}

// ---- dispatch ----------------------------------------------------------------------------

void drop(trigger_router_pointer self, const trigger_dispatch& d, const std::string& why) {
  ++self->state.dropped;
  spdlog::warn("trigger_router: dropping the run of program {} for message {}: {}", d.program,
               d.event->item_hash, why);
}

void enqueue(trigger_router_pointer self, trigger_dispatch d) {
  auto& st = self->state;
  auto bytes = d.event->json.size();
  while (!st.pending.empty()
         && (st.pending.size() >= st.cfg.max_pending
             || st.pending_bytes + bytes > st.cfg.max_pending_bytes)) {
    drop(self, st.pending.front(),
         "the queue is full (" + std::to_string(st.pending.size()) + " runs, "
           + std::to_string(st.pending_bytes) + " bytes)");
    st.pending_bytes -= st.pending.front().event->json.size();
    st.pending.pop_front();
  }
  st.pending_bytes += bytes;
  st.pending.push_back(std::move(d));
}

// Re-arms the tick for the earliest back-off still running; runs that only wait for a linked
// CRN need no tick (a CRN linking drains the queue).
void arm_tick(trigger_router_pointer self) {
  auto& st = self->state;
  if (st.tick_armed)
    return;
  auto now = self->clock().now();
  std::optional<caf::actor_clock::time_point> earliest;
  for (const auto& d : st.pending)
    if (d.not_before > now && (!earliest || d.not_before < *earliest))
      earliest = d.not_before;
  if (!earliest)
    return;
  st.tick_armed = true;
  self->delayed_send(self, *earliest - now, atom::tick_v);
}

bool any_linked(const trigger_router_state& st) {
  return std::any_of(st.crns.begin(), st.crns.end(),
                     [](const auto& kv) { return kv.second.state == link_state::linked; });
}

// The next linked CRN after the cursor (round-robin in id order), preferring CRNs that have
// not failed this run yet; nullptr when none is linked.
const std::pair<const std::string, trigger_crn>* pick(const trigger_router_state& st,
                                                      const trigger_dispatch& d) {
  std::vector<const std::pair<const std::string, trigger_crn>*> order;
  auto start = st.crns.upper_bound(st.cursor);
  for (auto i = start; i != st.crns.end(); ++i)
    order.push_back(&*i);
  for (auto i = st.crns.begin(); i != start; ++i)
    order.push_back(&*i);
  const std::pair<const std::string, trigger_crn>* fallback = nullptr;
  for (auto* c : order) {
    if (c->second.state != link_state::linked || !c->second.link)
      continue;
    if (d.tried.count(c->first) == 0)
      return c;
    if (fallback == nullptr)
      fallback = c;
  }
  return fallback;
}

void failed(trigger_router_pointer self, trigger_dispatch d, const std::string& crn_id, const std::string& why) {
  auto& st = self->state;
  if (st.subscriptions.count(d.program) == 0)
    return; // forgotten meanwhile
  if (d.attempts >= st.cfg.max_attempts) {
    drop(self, d, "attempt " + std::to_string(d.attempts) + " on CRN " + crn_id + " failed: " + why
                    + "; giving up");
    return;
  }
  spdlog::info("trigger_router: run {} of program {} for message {} failed on CRN {}: {}; "
               "retrying",
               d.attempts, d.program, d.event->item_hash, crn_id, why);
  d.tried.insert(crn_id);
  d.not_before = self->clock().now() + st.cfg.retry;
  enqueue(self, std::move(d));
  arm_tick(self);
}

void send_run(trigger_router_pointer self, trigger_dispatch d) {
  auto& st = self->state;
  if (st.subscriptions.count(d.program) == 0)
    return;
  const auto* crn = pick(st, d);
  if (crn == nullptr) {
    enqueue(self, std::move(d));
    return;
  }
  auto crn_id = crn->first;
  st.cursor = crn_id;
  ++d.attempts;
  ++st.in_flight;
  spdlog::debug("trigger_router: running program {} for message {} on CRN {} (attempt {})",
                d.program, d.event->item_hash, crn_id, d.attempts);
  auto shared = std::make_shared<trigger_dispatch>(std::move(d));
  self->request(crn->second.link, st.cfg.run_timeout, atom::run_v, shared->program,
                *shared->event)
    .then(
      [=](uint16_t status) {
        --self->state.in_flight;
        if (status >= 200 && status < 300) {
          ++self->state.succeeded;
          return;
        }
        failed(self, std::move(*shared), crn_id, "HTTP status " + std::to_string(status));
      },
      [=](caf::error& err) {
        --self->state.in_flight;
        failed(self, std::move(*shared), crn_id, describe(err));
      });
}

// Sends every queued run whose back-off is over, oldest first, if a CRN is linked.
void drain(trigger_router_pointer self) {
  auto& st = self->state;
  if (st.pending.empty() || !any_linked(st))
    return;
  auto now = self->clock().now();
  std::deque<trigger_dispatch> waiting;
  std::vector<trigger_dispatch> ready;
  for (auto& d : st.pending)
    if (d.not_before <= now)
      ready.push_back(std::move(d));
    else
      waiting.push_back(std::move(d));
  st.pending = std::move(waiting);
  recount(st);
  for (auto& d : ready)
    send_run(self, std::move(d));
}

void trigger(trigger_router_pointer self, const stored_message& msg) {
  auto& st = self->state;
  if (st.subscriptions.empty() || msg.origin != st.cfg.ccn_id)
    return;
  auto doc = match_document(msg);
  if (!doc)
    return;
  std::shared_ptr<const stored_message> event;
  for (const auto& [hash, s] : st.subscriptions) {
    if (hash == msg.item_hash)
      continue; // a program never triggers itself
    bool hit = std::any_of(s.filters.begin(), s.filters.end(),
                           [&](const ordered_json& f) { return trigger_matches(*doc, f); });
    if (!hit)
      continue;
    trigger_dispatch d;
    d.program = hash;
    if (!event)
      event = std::make_shared<const stored_message>(msg);
    d.event = event;
    send_run(self, std::move(d));
  }
}

caf::error check(const trigger_router_config& cfg) {
  if (cfg.ccn_id.empty())
    return make_error(ec::invalid, "trigger_router: ccn_id is required");
  if (cfg.max_attempts == 0)
    return make_error(ec::invalid, "trigger_router: max_attempts must be at least 1");
  if (cfg.max_pending == 0 || cfg.max_pending_bytes == 0)
    return make_error(ec::invalid, "trigger_router: max_pending and max_pending_bytes must be "
                                   "at least 1");
  if (cfg.retry.count() <= 0 || cfg.run_timeout.count() <= 0)
    return make_error(ec::invalid, "trigger_router: retry and run_timeout must be positive");
  return {};
}

} // namespace

bool trigger_matches(const ordered_json& message, const ordered_json& filter) {
  if (!message.is_object() || !filter.is_object())
    return false;
  for (const auto& [key, want] : filter.items()) {
    auto i = message.find(key);
    if (i == message.end() || !satisfies(*i, want))
      return false;
  }
  return true;
}

trigger_router_actor::behavior_type
trigger_router(trigger_router_actor::stateful_pointer<trigger_router_state> self,
               trigger_router_config cfg) {
  if (auto err = check(cfg)) {
    spdlog::error("{}", describe(err));
    self->quit(std::move(err));
    return trigger_router_actor::behavior_type::make_empty_behavior();
  }
  self->state.cfg = std::move(cfg);
  if (self->state.cfg.env)
    restore(self);
  return {
    [=](atom::published, const stored_message& msg) {
      if (msg.type == "PROGRAM")
        subscribe(self, msg);
      else if (msg.type == "FORGET")
        forget(self, msg);
      trigger(self, msg);
    },
    [=](atom::node, const crn_info& info, link_state state, const ccn_link_actor& link) {
      auto& c = self->state.crns[info.id];
      c.state = state;
      c.link = link;
      if (state == link_state::linked)
        drain(self);
    },
    [=](atom::list) {
      std::vector<std::string> out;
      out.reserve(self->state.subscriptions.size());
      for (const auto& [hash, s] : self->state.subscriptions)
        out.push_back(hash);
      return out;
    },
    [=](atom::tick) {
      self->state.tick_armed = false;
      drain(self);
      arm_tick(self);
    },
  };
}

} // namespace alephd
