#include "actors/job_broker.hpp"

#include <algorithm>

#include <caf/all.hpp>
#include <spdlog/spdlog.h>

#include "actors/vm_supervisor.hpp"
#include "messages/aleph_message.hpp"
#include "runtime/execution_table.hpp"

namespace alephd {

namespace {

using job_broker_pointer = job_broker_actor::stateful_pointer<job_broker_state>;
using promise = caf::typed_response_promise<execution_info>;

std::shared_ptr<const execution_env> env_of(const job_broker_config& cfg) {
  return cfg.env ? cfg.env : std::make_shared<const execution_env>();
}

void keep_finished(job_broker_pointer self, finished_execution f) {
  auto& fin = self->state.finished;
  // One entry per workload: the latest run.
  for (auto i = fin.begin(); i != fin.end(); ++i)
    if (i->info.item_hash == f.info.item_hash) {
      fin.erase(i);
      break;
    }
  fin.push_back(std::move(f));
  while (fin.size() > self->state.cfg.max_finished)
    fin.pop_front();
}

const finished_execution* finished_of(job_broker_pointer self, const std::string& hash) {
  for (auto& f : self->state.finished)
    if (f.info.item_hash == hash)
      return &f;
  return nullptr;
}

vm_supervisor_actor start_supervisor(job_broker_pointer self, const allocation& a, bool persistent) {
  auto& st = self->state;
  auto sup = self->spawn<caf::monitored>(vm_supervisor, a, persistent, env_of(st.cfg), st.link,
                                         caf::actor_cast<job_broker_actor>(self));
  st.executions.insert_or_assign(a.item_hash, execution_entry{a, sup, false, persistent});
  return sup;
}

// Answers `waiters` once `sup` runs (or cannot).
void when_running(job_broker_pointer self, const vm_supervisor_actor& sup, std::vector<promise> waiters) {
  for (auto& w : waiters)
    self->request(sup, caf::infinite, atom::run_v)
      .then([w](const execution_info& info) mutable { w.deliver(info); },
            [w](caf::error& err) mutable { w.deliver(std::move(err)); });
}

void fail_pending(job_broker_pointer self, const std::string& hash, const caf::error& err) {
  auto i = self->state.pending.find(hash);
  if (i == self->state.pending.end())
    return;
  auto waiters = std::move(i->second.waiters);
  self->state.pending.erase(i);
  for (auto& w : waiters)
    w.deliver(err);
}

// The program message arrived for an on-demand start: admit it and start a supervisor.
void start_on_demand(job_broker_pointer self, const std::string& hash, const stored_message& m) {
  auto& st = self->state;
  auto parsed = aleph::parse_message(m.json);
  if (!parsed.msg) {
    fail_pending(self, hash, make_error(ec::invalid, "the message is invalid: " + (parsed.error.field + ": " + parsed.error.reason)));
    return;
  }
  auto w = aleph::workload_of(*parsed.msg);
  if (!w || w->type != aleph::message_type::program) {
    fail_pending(self, hash, make_error(ec::invalid, hash + " is not a PROGRAM message"));
    return;
  }
  if (st.draining) {
    fail_pending(self, hash, make_error(ec::unavailable, "Server is draining"));
    return;
  }
  if (auto i = st.executions.find(hash); i != st.executions.end() && !i->second.stopped) {
    // Allocated meanwhile: join it.
    auto waiters = std::move(st.pending[hash].waiters);
    st.pending.erase(hash);
    when_running(self, i->second.supervisor, std::move(waiters));
    return;
  }
  allocation a;
  a.item_hash = hash;
  a.kind = "program";
  a.vcpus = w->vcpus;
  a.memory_mib = w->memory_mib;
  a.disk_mib = w->disk_mib;
  a.message_json = m.json;
  if (auto why = admission_refusal(st.cfg, st.executions, a); !why.empty()) {
    spdlog::warn("job_broker: refused on-demand {}: {}", hash, why);
    fail_pending(self, hash, make_error(ec::no_capacity, why));
    return;
  }
  auto sup = start_supervisor(self, a, false);
  auto waiters = std::move(st.pending[hash].waiters);
  st.pending.erase(hash);
  when_running(self, sup, std::move(waiters));
}

// Asks `sup` to stop (or erase), then marks the entry.
caf::result<execution_info> stop_entry(job_broker_pointer self, const std::string& hash, bool erase) {
  auto& ex = self->state.executions;
  auto i = ex.find(hash);
  if (i == ex.end()) {
    if (auto f = finished_of(self, hash))
      return f->info;
    return make_error(ec::not_found, "no execution " + hash);
  }
  auto rp = self->make_response_promise<execution_info>();
  auto sup = i->second.supervisor;
  i->second.stopped = true; // holds no capacity from now on
  auto req = erase ? self->request(sup, std::chrono::seconds(60), atom::erase_v)
                   : self->request(sup, std::chrono::seconds(60), atom::stop_v);
  req.then([=](const execution_info& info) mutable { rp.deliver(info); },
           [=](caf::error& err) mutable {
             if (auto f = finished_of(self, hash))
               rp.deliver(f->info); // it ended on its own just before
             else
               rp.deliver(std::move(err));
           });
  return rp;
}

} // namespace

std::string admission_refusal(const job_broker_config& cfg,
                              const std::map<std::string, execution_entry>& running,
                              const allocation& a) {
  uint64_t vcpus = a.vcpus, program_mem = 0, instance_mem = 0, disk = a.disk_mib;
  for (auto& [hash, e] : running) {
    if (e.stopped || hash == a.item_hash)
      continue;
    vcpus += e.alloc.vcpus;
    disk += e.alloc.disk_mib;
    (e.alloc.kind == "instance" ? instance_mem : program_mem) += e.alloc.memory_mib;
  }
  auto reserved = cfg.host_reserved_mib + cfg.program_reserved_mib;
  uint64_t instance_bucket = cfg.memory_mib > reserved ? cfg.memory_mib - reserved : 0;
  uint64_t program_bucket = std::min(cfg.program_reserved_mib, cfg.memory_mib);
  if (a.kind == "instance" && instance_mem + a.memory_mib > instance_bucket)
    return "Insufficient capacity: instance memory " + std::to_string(instance_mem + a.memory_mib)
           + " MiB > " + std::to_string(instance_bucket) + " MiB";
  if (a.kind != "instance" && program_mem + a.memory_mib > program_bucket)
    return "Insufficient capacity: program memory " + std::to_string(program_mem + a.memory_mib)
           + " MiB > " + std::to_string(program_bucket) + " MiB";
  auto vcpu_cap = static_cast<uint64_t>(cfg.cores * cfg.vcpu_overcommit);
  if (vcpus > vcpu_cap)
    return "Insufficient capacity: " + std::to_string(vcpus) + " vCPUs > "
           + std::to_string(vcpu_cap);
  if (disk > cfg.disk_mib)
    return "Insufficient capacity: disk " + std::to_string(disk) + " MiB > "
           + std::to_string(cfg.disk_mib) + " MiB";
  return {};
}

job_broker_actor::behavior_type
job_broker(job_broker_actor::stateful_pointer<job_broker_state> self, job_broker_config cfg) {
  self->state.cfg = std::move(cfg);

  // When the broker goes, its supervisors go too (and stop their executors).
  self->set_exit_handler([=](caf::exit_msg& em) {
    for (auto& [hash, e] : self->state.executions)
      self->send_exit(e.supervisor, em.reason);
    self->quit(em.reason);
  });
  self->set_down_handler([=](caf::down_msg& dm) {
    auto& ex = self->state.executions;
    for (auto i = ex.begin(); i != ex.end(); ++i)
      if (i->second.supervisor.address() == dm.source) {
        if (dm.reason != caf::exit_reason::normal) {
          spdlog::warn("job_broker: supervisor of {} ended: {}", i->first, describe(dm.reason));
          execution_info info;
          info.item_hash = i->first;
          info.kind = i->second.alloc.kind;
          info.epoch = i->second.alloc.epoch;
          info.owner = aleph::owner_of(i->second.alloc.message_json);
          info.phase = "failed";
          info.detail = "supervisor ended: " + describe(dm.reason);
          keep_finished(self, finished_execution{info, {}});
        }
        ex.erase(i);
        return;
      }
  });
  return {
    [=](atom::allocate, const allocation& a) -> caf::result<allocation_ack> {
      auto& st = self->state;
      allocation_ack ack{a.item_hash, a.epoch, st.cfg.crn_id, true, {}};
      auto i = st.executions.find(a.item_hash);
      if (i != st.executions.end() && a.epoch < i->second.alloc.epoch) {
        ack.accepted = false;
        ack.reason = "stale allocation epoch";
        return ack;
      }
      if (i != st.executions.end() && !i->second.stopped) {
        // Already here and alive: a newer epoch just updates it (an on-demand execution becomes
        // persistent).
        i->second.alloc.epoch = a.epoch;
        i->second.alloc.owner = a.owner;
        i->second.persistent = true;
        i->second.unconfirmed = false;
        caf::anon_send(i->second.supervisor, atom::allocate_v, a);
        return ack;
      }
      if (st.draining) {
        ack.accepted = false;
        ack.reason = "Server is draining";
        return ack;
      }
      if (auto why = admission_refusal(st.cfg, st.executions, a); !why.empty()) {
        spdlog::warn("job_broker: refused {}: {}", a.item_hash, why);
        ack.accepted = false;
        ack.reason = why;
        return ack;
      }
      if (i != st.executions.end()) {
        // A stopping execution allocated again: a fresh supervisor takes its place.
        self->demonitor(i->second.supervisor.address());
        caf::anon_send_exit(i->second.supervisor, caf::exit_reason::user_shutdown);
        st.executions.erase(i);
      }
      start_supervisor(self, a, true);
      return ack;
    },
    [=](atom::run, const std::string& hash) -> caf::result<execution_info> {
      auto& st = self->state;
      if (st.draining)
        return make_error(ec::unavailable, "Server is draining");
      if (auto i = st.executions.find(hash); i != st.executions.end() && !i->second.stopped) {
        // A supervisor that quits (an idle stop) just before our call reaches it: the call
        // starts the program again instead of failing.
        auto rp = self->make_response_promise<execution_info>();
        auto sup = i->second.supervisor;
        self->request(sup, caf::infinite, atom::run_v)
          .then([=](const execution_info& info) mutable { rp.deliver(info); },
                [=](caf::error& err) mutable {
                  bool gone = err.category() == caf::atom("system")
                              && err.code() == static_cast<uint8_t>(caf::sec::request_receiver_down);
                  if (!gone) {
                    rp.deliver(std::move(err));
                    return;
                  }
                  auto& ex = self->state.executions;
                  if (auto j = ex.find(hash); j != ex.end() && j->second.supervisor == sup)
                    ex.erase(j);
                  self->request(caf::actor_cast<job_broker_actor>(self), caf::infinite,
                                atom::run_v, hash)
                    .then([=](const execution_info& info) mutable { rp.deliver(info); },
                          [=](caf::error& e) mutable { rp.deliver(std::move(e)); });
                });
        return rp;
      }
      auto rp = self->make_response_promise<execution_info>();
      auto [pos, fresh] = st.pending.try_emplace(hash);
      pos->second.waiters.push_back(rp);
      if (!fresh)
        return rp; // a start of the same program is on its way: share it
      if (!st.link) {
        fail_pending(self, hash, make_error(ec::unavailable, "not connected to a CCN"));
        return rp;
      }
      self->request(st.link, env_of(st.cfg)->fetch_timeout, atom::get_v, hash)
        .then([=](const stored_message& m) { start_on_demand(self, hash, m); },
              [=](caf::error& err) {
                if (is(err, ec::not_found))
                  fail_pending(self, hash, make_error(ec::not_found, "no program " + hash));
                else
                  fail_pending(self, hash,
                               make_error(ec::unavailable,
                                          "cannot fetch program " + hash + ": " + describe(err)));
              });
      return rp;
    },
    [=](atom::run, const std::string& hash, const stored_message& event) -> caf::result<uint16_t> {
      // Start (or join) the execution, then pass the event straight to its guest.
      auto rp = self->make_response_promise<uint16_t>();
      auto table = env_of(self->state.cfg)->table;
      self->request(caf::actor_cast<job_broker_actor>(self), caf::infinite, atom::run_v, hash)
        .then(
          [=](const execution_info&) mutable {
            auto live = table ? table->find(hash) : nullptr;
            if (!live) {
              rp.deliver(make_error(ec::workload_failed, "the program stopped before its event"));
              return;
            }
            guest::http_request req;
            req.method = "POST";
            req.path = "/aleph/event";
            req.headers = {{"Content-Type", "application/json"},
                           {"Aleph-Event", "message"},
                           {"Aleph-Message-ItemHash", event.item_hash}};
            req.body = event.json;
            live->in_flight.fetch_add(1);
            // The answer comes on an executor thread: it goes back through our mailbox.
            auto id = ++self->state.next_event;
            self->state.events.emplace(id, rp);
            caf::weak_actor_ptr weak = self->ctrl();
            live->exec->request_async(std::move(req), live->timeout,
                                      [weak, id, live](guest::http_response r) {
                                        live->last_used_ms = live_execution::now_ms();
                                        live->in_flight.fetch_sub(1);
                                        if (auto strong = weak.lock())
                                          caf::anon_send(caf::actor_cast<job_broker_actor>(strong),
                                                         atom::published_v, id, r.status);
                                      });
          },
          [=](caf::error& err) mutable { rp.deliver(std::move(err)); });
      return rp;
    },
    [=](atom::list) -> caf::result<std::vector<execution_info>> {
      auto rp = self->make_response_promise<std::vector<execution_info>>();
      auto out = std::make_shared<std::vector<execution_info>>();
      auto& ex = self->state.executions;
      for (auto& f : self->state.finished)
        if (!ex.count(f.info.item_hash))
          out->push_back(f.info);
      if (ex.empty()) {
        rp.deliver(*out);
        return rp;
      }
      auto left = std::make_shared<size_t>(ex.size());
      for (auto& [hash, e] : ex)
        self->request(e.supervisor, std::chrono::seconds(5), atom::get_v)
          .then(
            [=](const execution_info& info) mutable {
              out->push_back(info);
              if (--*left == 0)
                rp.deliver(*out);
            },
            [=](caf::error&) mutable {
              if (--*left == 0)
                rp.deliver(*out);
            });
      return rp;
    },
    [=](atom::stop, const std::string& hash) { return stop_entry(self, hash, false); },
    [=](atom::erase, const std::string& hash) { return stop_entry(self, hash, true); },
    [=](atom::reboot, const std::string& hash) -> caf::result<execution_info> {
      auto& ex = self->state.executions;
      auto i = ex.find(hash);
      if (i == ex.end() || i->second.stopped)
        return make_error(ec::not_found, "no running execution " + hash);
      return self->delegate(i->second.supervisor, atom::reboot_v);
    },
    [=](atom::logs, const std::string& hash) -> caf::result<std::vector<log_line>> {
      auto& ex = self->state.executions;
      if (auto i = ex.find(hash); i != ex.end()) {
        // The supervisor may be ending right now: then its final logs are in `finished`.
        auto rp = self->make_response_promise<std::vector<log_line>>();
        self->request(i->second.supervisor, std::chrono::seconds(10), atom::logs_v)
          .then([=](std::vector<log_line>& lines) mutable { rp.deliver(std::move(lines)); },
                [=](caf::error& err) mutable {
                  if (auto f = finished_of(self, hash))
                    rp.deliver(f->logs);
                  else
                    rp.deliver(std::move(err));
                });
        return rp;
      }
      if (auto f = finished_of(self, hash))
        return f->logs;
      return make_error(ec::not_found, "no execution " + hash);
    },
    [=](atom::drain, bool stop_persistent) -> caf::result<uint32_t> {
      auto& st = self->state;
      st.draining = true;
      for (auto& [hash, p] : std::map<std::string, pending_run>{st.pending})
        fail_pending(self, hash, make_error(ec::unavailable, "Server is draining"));
      auto rp = self->make_response_promise<uint32_t>();
      std::vector<std::string> victims, keepers;
      for (auto& [hash, e] : st.executions)
        if (!e.stopped)
          (stop_persistent || !e.persistent ? victims : keepers).push_back(hash);
      if (victims.empty() && keepers.empty()) {
        rp.deliver(uint32_t{0});
        return rp;
      }
      auto left = std::make_shared<size_t>(victims.size() + keepers.size());
      auto n = static_cast<uint32_t>(victims.size());
      auto done = [=]() mutable {
        if (--*left == 0)
          rp.deliver(n);
      };
      for (auto& hash : victims) {
        auto& e = st.executions[hash];
        e.stopped = true;
        self->request(e.supervisor, std::chrono::seconds(60), atom::stop_v)
          .then([=](const execution_info&) mutable { done(); },
                [=](caf::error&) mutable { done(); });
      }
      // Persistent workloads stay: sandboxes that can outlive the CRN are let go (the next
      // CRN process re-adopts them); the rest is stopped.
      for (auto& hash : keepers) {
        auto& e = st.executions[hash];
        e.stopped = true;
        self->request(e.supervisor, std::chrono::seconds(60), atom::drain_v)
          .then([=](const execution_info&) mutable { done(); },
                [=](caf::error&) mutable { done(); });
      }
      return rp;
    },
    [=](atom::confirm, const std::string& ccn, const std::vector<placement>& mine) {
      auto& st = self->state;
      std::vector<std::string> stale;
      for (auto& [hash, e] : st.executions) {
        if (e.stopped)
          continue;
        // Its owner's word decides; one without an owner (an older record) is decided by the
        // first CCN this CRN registers with after re-adopting it.
        bool owned = e.alloc.owner.empty() ? e.unconfirmed : e.alloc.owner == ccn;
        if (!owned)
          continue;
        // (An init-capture: clang 14, which builds the sanitizer tree, cannot capture a
        // structured binding.)
        auto p = std::find_if(mine.begin(), mine.end(),
                              [&h = hash](const placement& x) { return x.item_hash == h; });
        if (p != mine.end() && p->epoch >= e.alloc.epoch) {
          e.unconfirmed = false;
          if (p->epoch > e.alloc.epoch) {
            e.alloc.epoch = p->epoch;
            caf::anon_send(e.supervisor, atom::allocate_v, e.alloc);
          }
          spdlog::info("job_broker: the CCN confirms {} here (epoch {})", hash, e.alloc.epoch);
        } else {
          stale.push_back(hash);
        }
      }
      for (auto& hash : stale) {
        spdlog::warn("job_broker: its CCN no longer places {} here (it moved it while this CRN "
                     "was down or away); stopping the copy left here",
                     hash);
        auto& e = st.executions[hash];
        e.stopped = true;
        self->request(e.supervisor, std::chrono::seconds(60), atom::stop_v)
          .then([](const execution_info&) {}, [](caf::error&) {});
      }
    },
    [=](atom::connect, ccn_link_actor& link) {
      auto& st = self->state;
      st.link = std::move(link);
      // What the previous CRN process left (now that supervisors can fetch through the link):
      // re-adopted, or started again if persistent.
      auto resume = std::move(st.cfg.resume);
      st.cfg.resume.clear();
      for (auto& [a, persistent] : resume) {
        spdlog::info("job_broker: resuming {} {} (epoch {}) left by the previous CRN process",
                     persistent ? "persistent" : "on-demand", a.item_hash, a.epoch);
        start_supervisor(self, a, persistent);
        st.executions[a.item_hash].unconfirmed = persistent;
      }
    },
    [=](atom::published, uint64_t id, uint16_t status) {
      auto i = self->state.events.find(id);
      if (i == self->state.events.end())
        return;
      i->second.deliver(status);
      self->state.events.erase(i);
    },
    [=](atom::exited, execution_info& info, std::vector<log_line>& logs) {
      auto& ex = self->state.executions;
      auto i = ex.find(info.item_hash);
      if (i != ex.end() && i->second.supervisor.address() == self->current_sender()) {
        self->demonitor(i->second.supervisor.address());
        ex.erase(i);
      }
      // A persistent workload that failed for good: its CCN must know (it stops placing it).
      if (info.persistent && info.phase == "failed" && self->state.link)
        self->send(self->state.link, atom::exited_v, info);
      keep_finished(self, finished_execution{std::move(info), std::move(logs)});
    },
  };
}

} // namespace alephd
