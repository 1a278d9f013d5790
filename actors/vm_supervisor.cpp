#include "actors/vm_supervisor.hpp"

#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iterator>

#include <caf/all.hpp>
#include <spdlog/spdlog.h>

#include "messages/aleph_message.hpp"
#include "runtime/archive.hpp"
#include "runtime/execution_records.hpp"
#include "runtime/microvm.hpp"
#include "runtime/sandbox.hpp"
#include "runtime/sandbox_pool.hpp"
#include "runtime/volume_image.hpp"
#include "runtime/wall_clock.hpp"

namespace alephd {

namespace {

using vm_supervisor_pointer = vm_supervisor_actor::stateful_pointer<vm_supervisor_state>;
using std::chrono::milliseconds;
namespace fs = std::filesystem;

void note(vm_supervisor_pointer self, const std::string& line) {
  self->state.feed->push(timed_log{unix_seconds(), "system", line});
}

std::vector<log_line> kept_logs(const log_feed& feed) {
  std::vector<log_line> out;
  for (auto& l : feed.snapshot())
    out.push_back(log_line{l.time, l.stream, l.line});
  return out;
}

std::string exec_dir(const execution_env& env, const std::string& hash) {
  return env.data_dir + "/executions/" + hash;
}

// ---- files from the cache ----------------------------------------------------------------

std::string read_all(const std::string& path) {
  std::ifstream in{path, std::ios::binary};
  return {std::istreambuf_iterator<char>{in}, {}};
}

// Who holds the pins of this execution's files in the cache.
std::string pin_owner(vm_supervisor_pointer self) {
  return self->state.info.item_hash + "#" + std::to_string(self->id());
}

// A qcow2 image starts with "QFI\xfb".
bool is_qcow2(const std::string& path) {
  std::ifstream in{path, std::ios::binary};
  char magic[4] = {};
  in.read(magic, 4);
  return in.gcount() == 4 && magic[0] == 'Q' && magic[1] == 'F' && magic[2] == 'I'
         && static_cast<unsigned char>(magic[3]) == 0xfb;
}

// ---- the executor's thread -------------------------------------------------------------------

// Blocking executor calls run here, on a thread of their own, one at a time.
caf::behavior exec_host(caf::event_based_actor* self, std::shared_ptr<executor> exec,
                        std::function<std::string()> start) {
  return {
    [=](atom::run) -> std::string { return start(); },
    [=](atom::stop, int64_t grace_ms) -> int32_t {
      auto code = exec->stop(milliseconds{grace_ms});
      // Done for good, whether or not the supervisor is still there to say so.
      self->quit();
      return code;
    },
  };
}

// ---- phases ----------------------------------------------------------------------------------

void set_phase(vm_supervisor_pointer self, const std::string& phase, const std::string& detail) {
  auto& info = self->state.info;
  if (info.phase == phase && info.detail == detail)
    return;
  info.phase = phase;
  info.detail = detail;
  auto now = unix_seconds();
  if (phase == "preparing")
    info.preparing_at = now;
  else if (phase == "running")
    info.started_at = now;
  else if (phase == "stopping")
    info.stopping_at = now;
  else if (phase == "stopped" || phase == "failed")
    info.stopped_at = now;
  spdlog::info("vm_supervisor: {} {} is {}{}{}", info.kind, info.item_hash, phase,
               detail.empty() ? "" : ": ", detail);
}

void answer_waiters(vm_supervisor_pointer self, const caf::error& err) {
  auto waiters = std::move(self->state.waiters);
  self->state.waiters.clear();
  for (auto& w : waiters) {
    if (err)
      w.deliver(err);
    else
      w.deliver(self->state.info);
  }
}

// Metering (reward ledger): a sample covers the time since the last one while the execution
// runs; CPU and counters are differences, memory the average and peak seen on ticks.
// Milliseconds on the actor clock: steady time in a node, virtual time on the deterministic
// scheduler (tests, the in-process simulator).
int64_t clock_ms(vm_supervisor_pointer self) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(self->clock().now().time_since_epoch())
    .count();
}

void meter_start(vm_supervisor_pointer self) {
  auto& st = self->state;
  st.meter = execution_meter{};
  if (!st.env->ledger || !st.exec || !st.live)
    return;
  st.meter.on = true;
  st.meter.since_ms = clock_ms(self);
  st.meter.base = st.exec->usage();
  st.meter.requests = st.live->requests.load();
  st.meter.bytes_in = st.live->bytes_in.load();
  st.meter.bytes_out = st.live->bytes_out.load();
}

void meter_sample(vm_supervisor_pointer self, bool again) {
  auto& st = self->state;
  if (!st.meter.on || !st.exec)
    return;
  auto& m = st.meter;
  auto now = st.exec->usage();
  auto now_ms = clock_ms(self);
  // Each counter is read once: what this sample does not count, the next one does.
  uint64_t requests = st.live ? st.live->requests.load() : m.requests;
  uint64_t bytes_in = st.live ? st.live->bytes_in.load() : m.bytes_in;
  uint64_t bytes_out = st.live ? st.live->bytes_out.load() : m.bytes_out;
  usage_entry e;
  e.time = unix_seconds();
  e.wall_s = static_cast<double>(now_ms - m.since_ms) / 1000.0;
  e.item_hash = st.info.item_hash;
  e.product = st.info.kind == "instance" ? "instance"
              : st.info.persistent       ? "persistent_program"
                                         : "program";
  e.vcpus = st.info.vcpus;
  e.memory_mib = st.info.memory_mib;
  // A counter that went down belongs to a new cgroup or process: all of it is new.
  e.cpu_ns = now.cpu_ns >= m.base.cpu_ns ? now.cpu_ns - m.base.cpu_ns : now.cpu_ns;
  m.mem_sum += now.mem_current;
  ++m.mem_samples;
  e.mem_avg = m.mem_sum / m.mem_samples;
  e.mem_peak = std::max(m.mem_peak, now.mem_current);
  e.requests = requests - m.requests;
  e.bytes_in = bytes_in - m.bytes_in;
  e.bytes_out = bytes_out - m.bytes_out;
  e.storage_bytes = st.pinned_bytes;
  self->send(st.env->ledger, atom::sample_v, std::move(e));
  if (again && st.live) {
    // The next sample starts from what this one read: nothing falls between two samples.
    m = execution_meter{};
    m.on = true;
    m.since_ms = now_ms;
    m.base = now;
    m.requests = requests;
    m.bytes_in = bytes_in;
    m.bytes_out = bytes_out;
  } else {
    m.on = false;
  }
}

// On every tick: memory seen now, and a sample once `sample_interval` has passed.
void meter_observe(vm_supervisor_pointer self) {
  auto& st = self->state;
  if (!st.meter.on || !st.exec || st.info.phase != "running")
    return;
  if (clock_ms(self) - st.meter.since_ms >= st.env->sample_interval.count()) {
    meter_sample(self, true);
    return;
  }
  auto u = st.exec->usage();
  st.meter.mem_sum += u.mem_current;
  ++st.meter.mem_samples;
  st.meter.mem_peak = std::max(st.meter.mem_peak, u.mem_current);
}

// Takes the execution out of the HTTP table and lets its executor go (the host thread stops it;
// `then` runs once it is stopped, with its last output in the feed).
void release_executor(vm_supervisor_pointer self, std::function<void()> then) {
  auto& st = self->state;
  meter_sample(self, false);
  if (st.live && st.env->table)
    st.env->table->remove(st.info.item_hash, st.live.get());
  st.live = nullptr;
  auto host = st.host;
  auto exec = st.exec;
  st.exec = nullptr;
  st.host = nullptr;
  if (!host) {
    then();
    return;
  }
  // Unlinked first: a host that ends (even as unreachable) must not take us along.
  self->unlink_from(host);
  auto grace = st.info.kind == "instance" ? st.env->instance_stop_grace : st.env->stop_grace;
  self->request(host, caf::infinite, atom::stop_v, int64_t{grace.count()})
    .then(
      [=](int32_t) {
        // Stopped: its last output has arrived.
        caf::anon_send_exit(host, caf::exit_reason::user_shutdown);
        then();
      },
      [=](caf::error&) {
        caf::anon_send_exit(host, caf::exit_reason::kill);
        then();
      });
}

// The execution is over for good: tell the broker and quit.
void finish(vm_supervisor_pointer self, const std::string& phase, const std::string& detail) {
  set_phase(self, phase, detail);
  note(self, "execution " + phase + (detail.empty() ? "" : ": " + detail));
  answer_waiters(self, make_error(ec::workload_failed, "execution " + phase + ": " + detail));
  auto& st = self->state;
  for (auto& rp : st.stop_waiters) // stops asked while it was already on its way out
    rp.deliver(st.info);
  st.stop_waiters.clear();
  if (st.broker)
    self->send(st.broker, atom::exited_v, st.info, kept_logs(*st.feed));
  if (st.env->files)
    self->send(st.env->files, atom::unpin_v, pin_owner(self));
  if (st.env->records && !st.detached && st.record_pid != 0) {
    // Nothing is left to re-adopt; a newer execution of the same workload may own the record.
    if (auto rec = st.env->records->get(st.info.item_hash); rec && rec->handle.pid == st.record_pid)
      st.env->records->erase(st.info.item_hash);
  }
  self->quit();
}

void boot(vm_supervisor_pointer self);
void prepare(vm_supervisor_pointer self);

// The next back-off: doubled from restart_initial up to restart_max, with ±50 % jitter.
milliseconds next_backoff(vm_supervisor_pointer self) {
  auto& st = self->state;
  st.backoff = st.backoff.count() == 0 ? st.env->restart_initial
                                       : std::min(st.backoff * 2, st.env->restart_max);
  std::uniform_real_distribution<double> jitter{0.5, 1.5};
  return milliseconds{
    static_cast<int64_t>(static_cast<double>(st.backoff.count()) * jitter(st.rng))};
}

// Fetching what a workload needs failed. The CCN may have it later: a persistent workload tries
// again with back-off (not counted as a crash); an on-demand call fails now.
void fetch_failed(vm_supervisor_pointer self, const std::string& why) {
  auto& st = self->state;
  if (!st.info.persistent) {
    finish(self, "failed", why);
    return;
  }
  auto delay = next_backoff(self);
  set_phase(self, "preparing", "retrying in " + std::to_string(delay.count()) + " ms: " + why);
  note(self, why + "; retrying in " + std::to_string(delay.count()) + " ms");
  st.cfg.reset(); // prepare again from the start
  self->delayed_send(self, delay, atom::started_v, st.run, std::string{"prepare"});
}

// A persistent execution failed: restart after back-off, or give up in a crash loop.
void schedule_restart(vm_supervisor_pointer self, const std::string& why) {
  auto& st = self->state;
  auto now = self->clock().now();
  st.failures.push_back(now);
  while (!st.failures.empty() && now - st.failures.front() > st.env->crash_loop_window)
    st.failures.pop_front();
  if (st.failures.size() >= st.env->crash_loop_failures) {
    finish(self, "failed",
           "crash loop: " + std::to_string(st.failures.size()) + " failures within "
             + std::to_string(st.env->crash_loop_window.count() / 1000) + " s; last: " + why);
    return;
  }
  auto delay = next_backoff(self);
  set_phase(self, "preparing",
            "restart in " + std::to_string(delay.count()) + " ms after: " + why);
  note(self, why + "; restarting in " + std::to_string(delay.count()) + " ms");
  auto run = st.run;
  self->delayed_send(self, delay, atom::started_v, run, std::string{"restart"});
}

// The options of this execution's sandbox in `run_dir` (a cgroup with its limits if `cgroup`).
sandbox_options sandbox_for(vm_supervisor_pointer self, const std::string& run_dir, bool network, bool cgroup) {
  auto& st = self->state;
  sandbox_options o;
  o.bwrap = st.env->bwrap;
  o.guest_binary = st.env->guest_binary;
  o.run_dir = run_dir;
  o.hostname = st.info.item_hash.substr(0, 12);
  o.network = network;
  o.adopt_window = st.env->adopt_window;
  o.scratch_group = st.env->cgroup_root; // one name per CRN
  if (cgroup) {
    o.limits = cgroup_limits{st.info.memory_mib << 20, st.env->pids_max,
                             static_cast<double>(st.info.vcpus)};
    o.cgroup_root = st.env->cgroup_root;
  }
  return o;
}

// Writes the durable record of a running sandbox that can outlive the CRN (see
// execution_records), so that a restarted CRN finds it again.
void save_record(vm_supervisor_pointer self) {
  auto& st = self->state;
  auto sb = std::dynamic_pointer_cast<sandbox>(st.exec);
  auto vm = std::dynamic_pointer_cast<microvm>(st.exec);
  if (!st.env->records || !(sb || vm) || !st.adoptable || st.info.phase != "running")
    return;
  execution_record r;
  r.alloc = st.alloc;
  r.alloc.epoch = st.info.epoch;
  r.persistent = st.info.persistent;
  r.run_dir = exec_dir(*st.env, st.info.item_hash) + "/run";
  r.network = st.internet;
  if (sb) {
    r.handle = sb->handle();
  } else {
    auto h = vm->handle();
    r.executor = "microvm";
    r.handle.pid = h.pid;
    r.handle.pid_start = h.pid_start;
    r.sock_dir = h.sock_dir;
  }
  r.started_at = st.info.started_at;
  r.request_timeout_ms = st.request_timeout.count();
  r.files = st.files;
  st.record_pid = r.handle.pid;
  std::string err;
  if (!st.env->records->put(r, err))
    spdlog::warn("vm_supervisor: {}: {}; a CRN restart will not re-adopt it", st.info.item_hash,
                 err);
}

// Runs `start` (blocking) for `exec` on a thread of its own; publishes the execution once it
// runs, or lets the executor go and calls `on_fail` with the error.
void launch(vm_supervisor_pointer self, uint64_t run, std::shared_ptr<executor> exec,
            std::function<std::string()> start, std::function<void(const std::string&)> on_fail) {
  auto& st = self->state;
  exec->on_log([feed = st.feed](const timed_log& l) { feed->push(l); });
  // The handler holds a weak reference: the executor lives in this actor's state.
  caf::weak_actor_ptr weak = self->ctrl();
  exec->on_exit([weak, run](int code, const std::string& why) {
    if (auto strong = weak.lock())
      caf::anon_send(caf::actor_cast<vm_supervisor_actor>(strong), atom::exited_v, run,
                     int32_t{code}, why);
  });
  st.exec = exec;
  st.host = st.env->threaded_host
              ? self->home_system().spawn<caf::detached>(exec_host, exec, start)
              : self->home_system().spawn(exec_host, exec, start);
  self->link_to(st.host);
  self->request(st.host, caf::infinite, atom::run_v)
    .then(
      [=](std::string& err) {
        auto& st = self->state;
        if (run != st.run || st.info.phase != "booting")
          return;
        if (!err.empty()) {
          release_executor(self, [=] { on_fail(err); });
          return;
        }
        auto live = std::make_shared<live_execution>();
        live->item_hash = st.info.item_hash;
        live->exec = st.exec;
        live->timeout = st.request_timeout;
        live->last_used_ms = live_execution::now_ms();
        st.live = live;
        if (st.env->table)
          st.env->table->put(live);
        set_phase(self, "running", "");
        meter_start(self);
        if (st.adopted_started_at > 0) {
          st.info.started_at = st.adopted_started_at; // it has been running all along
          st.adopted_started_at = 0;
        }
        st.backoff = milliseconds{0};
        save_record(self);
        answer_waiters(self, caf::error{});
      },
      [=](caf::error& err) {
        if (run == self->state.run)
          finish(self, "failed", "executor thread failed: " + describe(err));
      });
}

// Takes over the sandbox that the previous CRN process left running (its record says where),
// instead of starting the program again.
void adopt(vm_supervisor_pointer self, const execution_record& rec) {
  auto& st = self->state;
  auto run = ++st.run;
  auto what = rec.executor == "microvm" ? std::string{"microVM"} : std::string{"sandbox"};
  set_phase(self, "booting", "re-adopting its " + what + " after a CRN restart");
  note(self, "re-adopting the " + what + " the previous CRN process left running (pid "
               + std::to_string(rec.handle.pid) + ")");
  st.request_timeout = milliseconds{std::max<int64_t>(rec.request_timeout_ms, 1)};
  st.internet = rec.network;
  st.adopted_started_at = rec.started_at;
  st.adoptable = true;
  st.record_pid = rec.handle.pid; // its record is ours now
  // Its files stay pinned in the cache while it runs (they are there: it started with them).
  st.files = rec.files;
  if (st.env->files)
    for (auto& hash : rec.files)
      self->request(st.env->files, st.env->download_timeout, atom::fetch_v, hash, pin_owner(self),
                    caf::actor{})
        .then([=](const file_info& f) { self->state.pinned_bytes += f.size; },
              [=](caf::error& err) {
                spdlog::warn("vm_supervisor: {}: cannot pin {} again: {}",
                             self->state.info.item_hash, hash, describe(err));
              });
  std::shared_ptr<executor> exec;
  std::function<std::string()> start;
  auto timeout = st.env->adopt_timeout;
  if (rec.executor == "microvm") {
    microvm_options o;
    o.run_dir = rec.run_dir;
    o.hostname = "vm-" + st.info.item_hash.substr(0, 12);
    o.adopt_window = st.env->adopt_window;
    auto vm = std::make_shared<microvm>(std::move(o));
    auto handle = rec.vm_handle();
    start = [vm, handle, timeout] { return vm->adopt(handle, timeout); };
    exec = vm;
  } else {
    auto o = sandbox_for(self, rec.run_dir, rec.network, !rec.handle.cgroup_name.empty());
    auto sb = std::make_shared<sandbox>(std::move(o));
    auto handle = rec.handle;
    start = [sb, handle, timeout] { return sb->adopt(handle, timeout); };
    exec = sb;
  }
  launch(self, run, exec, std::move(start),
         [=](const std::string& err) {
           self->state.adopted_started_at = 0;
           if (self->state.info.persistent) {
             note(self, "cannot re-adopt it (" + err + "); starting it afresh");
             prepare(self);
           } else {
             finish(self, "stopped", "not re-adopted after a CRN restart: " + err);
           }
         });
}

void boot(vm_supervisor_pointer self) {
  auto& st = self->state;
  auto run = ++st.run;
  st.adoptable = false;
  set_phase(self, "booting", "starting the sandbox");
  executor_request req;
  req.item_hash = st.info.item_hash;
  req.run_dir = exec_dir(*st.env, st.info.item_hash) + "/run";
  req.memory_mib = st.info.memory_mib;
  req.vcpus = st.info.vcpus;
  req.internet = st.internet;
  req.kind = st.info.kind;
  req.rootfs = st.rootfs;
  req.overlay_mib = st.overlay_mib;
  std::shared_ptr<executor> exec;
  std::function<std::string()> start;
  auto limits = cgroup_limits{st.info.memory_mib << 20, st.env->pids_max,
                              static_cast<double>(st.info.vcpus)};
  if (st.env->make_executor) {
    exec = st.env->make_executor(req);
  } else if (st.info.kind != "instance" && st.env->pool && !st.internet && st.code_dir.empty()
             && st.mount_args.empty()) {
    // A pre-started sandbox: only the program is left to send and start.
    if (auto sb = st.env->pool->take()) {
      std::string err;
      if (!st.env->cgroups || sb->set_limits(limits, err)) {
        auto cfg = *st.cfg;
        start = [sb, cfg] { return sb->configure(cfg, std::chrono::seconds(10)); };
        exec = sb;
      } else {
        spdlog::warn("vm_supervisor: cannot limit a pre-started sandbox: {}", err);
      }
    }
  }
  if (exec) {
    // made above
  } else if (st.info.kind == "instance") {
    microvm_options o;
    o.kernel = st.env->microvm_kernel;
    o.initrd = st.env->microvm_initrd;
    o.run_dir = req.run_dir;
    o.hostname = "vm-" + st.info.item_hash.substr(0, 12);
    o.memory_mib = static_cast<unsigned>(st.info.memory_mib);
    o.vcpus = st.info.vcpus;
    o.network = st.internet;
    o.rootfs = st.rootfs;
    o.rootfs_format = is_qcow2(st.rootfs) ? "qcow2" : "raw";
    o.rootfs_overlay = true;
    if (st.overlay_mib > 0)
      o.overlay_size = std::to_string(st.overlay_mib) + "M";
    o.ready_timeout = std::chrono::seconds(60); // TCG boots take seconds
    o.adopt_window = st.env->adopt_window;
    o.halt_grace = st.env->instance_halt_grace;
    st.adoptable = o.adopt_window.count() > 0;
    exec = std::make_shared<microvm>(std::move(o));
  } else {
    auto o = sandbox_for(self, req.run_dir, st.internet, st.env->cgroups);
    if (!st.code_dir.empty())
      o.extra_args = {"--ro-bind", st.code_dir, "/opt/code"};
    o.extra_args.insert(o.extra_args.end(), st.mount_args.begin(), st.mount_args.end());
    if (st.env->cgroups) // unique even when a new supervisor starts while the old one stops
      o.cgroup_name = st.info.item_hash.substr(0, 16) + "-" + std::to_string(self->id()) + "-"
                      + std::to_string(run);
    st.adoptable = o.adopt_window.count() > 0;
    exec = std::make_shared<sandbox>(std::move(o));
  }
  if (!start)
    start = [exec, cfg = *st.cfg] { return exec->start(cfg); };
  launch(self, run, exec, std::move(start), [=](const std::string& err) {
    if (self->state.info.persistent)
      schedule_restart(self, "start failed: " + err);
    else
      finish(self, "failed", "start failed: " + err);
  });
}

// Makes sure the file named by `ref` (a STORE message's item_hash, or a bare file hash) is in
// the cache (verified, downloaded when missing, pinned while this execution lives), then calls
// `on_ok` with it; finishes the execution on failure.
void resolve_file(vm_supervisor_pointer self, const std::string& what, const std::string& ref, bool latest,
                  std::function<void(const file_info&)> on_ok,
                  std::function<void(const std::string&)> on_missing = {}) {
  if (!self->state.link) {
    finish(self, "failed", "no CCN link to fetch the " + what + " from");
    return;
  }
  auto fetch_file = [=](const std::string& file_hash) {
    auto& st = self->state;
    if (!st.env->files) {
      finish(self, "failed", "this CRN has no file cache");
      return;
    }
    st.downloading = what + " " + file_hash;
    self->request(st.env->files, st.env->download_timeout, atom::fetch_v, file_hash,
                  pin_owner(self), caf::actor_cast<caf::actor>(self))
      .then(
        [=](file_info& f) {
          auto& st = self->state;
          st.downloading.clear();
          if (std::find(st.files.begin(), st.files.end(), f.hash) == st.files.end()) {
            st.files.push_back(f.hash);
            st.pinned_bytes += f.size;
          }
          on_ok(f);
        },
        [=](caf::error& err) {
          self->state.downloading.clear();
          if (on_missing && (is(err, ec::not_found) || is(err, ec::invalid)))
            on_missing(what + " " + file_hash + " is not on the CCN");
          else
            fetch_failed(self, "cannot fetch " + what + " " + file_hash + ": " + describe(err));
        });
  };
  self->request(self->state.link, self->state.env->fetch_timeout, atom::get_v, ref, latest)
    .then(
      [=](stored_message& store) {
        auto m = aleph::parse_message(store.json);
        auto* sc = m.msg ? std::get_if<aleph::store_content>(&m.msg->content) : nullptr;
        if (sc == nullptr) {
          finish(self, "failed", what + " ref " + ref + " is not a STORE message");
          return;
        }
        if (store.item_hash != ref)
          note(self, what + " " + ref + " is amended: using STORE " + store.item_hash);
        fetch_file(sc->item_hash);
      },
      [=](caf::error& err) {
        if (is(err, ec::not_found))
          fetch_file(ref);
        else
          fetch_failed(self, "cannot fetch " + what + " ref " + ref + ": " + describe(err));
      });
}

void prepare_instance(vm_supervisor_pointer self, const aleph::instance_content& ic) {
  auto& st = self->state;
  st.internet = ic.environment.internet;
  auto keys = ic.authorized_keys;
  auto variables = ic.variables;
  auto size_mib = ic.rootfs.size_mib;
  auto seconds = ic.resources.seconds;
  resolve_file(self, "rootfs", ic.rootfs.parent.ref, ic.rootfs.parent.use_latest,
               [=](const file_info& file) {
    auto& file_hash = file.hash;
    auto& st = self->state;
    guest::configure cfg;
    cfg.code = instance_program;
    cfg.encoding = "plain";
    cfg.entrypoint = "instance";
    cfg.interface = "binary";
    cfg.variables = variables;
    cfg.authorized_keys = keys;
    cfg.app_port = 8080;
    st.cfg = std::move(cfg);
    st.request_timeout = std::chrono::seconds{std::max<uint64_t>(seconds, 30)};
    st.rootfs = file.path;
    st.overlay_mib = size_mib;
    note(self, "rootfs " + file_hash + " ready");
    boot(self);
  });
}

// Unpacks a cached zip (bounded: size, file count, ratio, paths) into the execution's code
// dir, once per code hash; "" or why not.
std::string unpack_zip(vm_supervisor_pointer self, const file_info& file, const std::string& prefix,
                       std::string& dir_out) {
  auto& file_hash = file.hash;
  auto& st = self->state;
  auto base = exec_dir(*st.env, st.info.item_hash);
  auto final_dir = base + "/" + prefix + "-" + file_hash.substr(0, 16);
  std::error_code ec;
  if (fs::is_directory(final_dir, ec)) {
    dir_out = final_dir;
    return {};
  }
  auto tmp = base + "/.code-" + std::to_string(::getpid()) + "-" + std::to_string(st.run);
  fs::remove_all(tmp, ec);
  fs::create_directories(tmp, ec);
  if (ec)
    return "cannot create " + tmp + ": " + ec.message();
  extract_limits limits;
  limits.max_total_bytes = std::max<uint64_t>(st.info.disk_mib, 1024) << 20;
  auto err = extract_zip_file(file.path, tmp, limits);
  if (!err.empty()) {
    fs::remove_all(tmp, ec);
    return "cannot unpack the " + prefix + ": " + err;
  }
  fs::rename(tmp, final_dir, ec);
  if (ec) {
    fs::remove_all(tmp, ec);
    return "cannot move the unpacked " + prefix + ": " + ec.message();
  }
  dir_out = final_dir;
  return {};
}

bool is_zip(const std::string& path) {
  std::ifstream in{path, std::ios::binary};
  char magic[4] = {};
  in.read(magic, 4);
  return in.gcount() == 4 && magic[0] == 'P' && magic[1] == 'K' && magic[2] == 3 && magic[3] == 4;
}

// A volume's mount point: absolute, normalized, and not over what the sandbox itself needs.
std::string check_mount(const std::string& mount) {
  if (mount.empty() || mount[0] != '/' || mount.size() > 255)
    return "volume mount '" + mount.substr(0, 80) + "' must be an absolute path";
  fs::path p{mount};
  for (auto& part : p)
    if (part == ".." || part == ".")
      return "volume mount '" + mount + "' must not contain '.' or '..'";
  auto norm = p.lexically_normal().string();
  while (norm.size() > 1 && norm.back() == '/')
    norm.pop_back();
  for (const char* reserved : {"/usr", "/proc", "/dev", "/opt/alephd", "/run/alephd", "/opt/code",
                               "/lib", "/lib64", "/bin", "/sbin"})
    if (norm == reserved || norm.rfind(std::string{reserved} + "/", 0) == 0)
      return "volume mount '" + mount + "' is reserved";
  if (norm == "/" || norm == "/tmp")
    return "volume mount '" + mount + "' is reserved";
  return {};
}

// Persistent host volumes live here, outside the execution's own dir, until erased.
std::string volumes_dir(const execution_env& env, const std::string& hash) {
  return env.data_dir + "/volumes/" + hash;
}

// One volume to set up before boot.
struct volume_plan {
  enum class kind { immutable, ephemeral, persistent, runtime } what;
  std::string ref;   ///< immutable: the STORE (or file) hash
  std::string mount;
  std::string name;  ///< persistent
  uint64_t size_mib = 0;
  bool use_latest = false; ///< immutable: follow the newest amend of the STORE
};

// Sets up volumes[i..] in order (fetching immutable ones), adding bwrap mount arguments, then
// calls `done`.
void prepare_volumes(vm_supervisor_pointer self, std::shared_ptr<std::vector<volume_plan>> plan, size_t i,
                     std::function<void()> done) {
  auto& st = self->state;
  if (i == plan->size()) {
    done();
    return;
  }
  auto& v = (*plan)[i];
  auto next = [=] { prepare_volumes(self, plan, i + 1, done); };
  switch (v.what) {
    case volume_plan::kind::runtime:
      // The sandbox runs on the host's /usr; a runtime the CCN holds is mounted read-only at
      // /opt/runtime as well, and one it does not hold is noted and left out.
      resolve_file(
        self, "runtime", v.ref, v.use_latest,
        [=](const file_info& file) {
          auto& st = self->state;
          st.mount_args.insert(st.mount_args.end(), {"--ro-bind", file.path, v.mount});
          note(self, "runtime " + file.hash + " mounted read-only at " + v.mount);
          next();
        },
        [=](const std::string& why) {
          note(self, why + ": the host's /usr is the runtime");
          next();
        });
      return;
    case volume_plan::kind::ephemeral:
      st.mount_args.insert(st.mount_args.end(),
                           {"--perms", "1777", "--size", std::to_string(v.size_mib << 20),
                            "--tmpfs", v.mount});
      next();
      return;
    case volume_plan::kind::persistent: {
      auto base = volumes_dir(*st.env, st.info.item_hash);
      auto dir = base + "/" + v.name;
      // Images apart from the volumes (a volume name never starts with '.').
      auto image = base + "/.images/" + v.name + ".ext4";
      std::error_code ec;
      bool plain_data = fs::is_directory(dir, ec) && !fs::is_empty(dir, ec) && !fs::exists(image, ec)
                        && !is_mount_point(dir);
      fs::create_directories(dir, ec);
      if (!ec)
        fs::create_directories(base + "/.images", ec);
      if (ec) {
        finish(self, "failed", "cannot create volume " + v.name + ": " + ec.message());
        return;
      }
      // Its size is enforced by an ext4 image of size_mib mounted there (root and loop devices
      // needed); a directory that already holds data from before is used as it is.
      std::string why;
      if (plain_data)
        why = "it holds data from before size limits";
      else if (::geteuid() != 0)
        why = "the CRN does not run as root";
      else
        why = mount_volume_image(image, dir, v.size_mib);
      if (!why.empty()) {
        spdlog::warn("vm_supervisor: {}: volume {} is not limited to {} MiB: {}",
                     st.info.item_hash, v.name, v.size_mib, why);
        note(self, "volume " + v.name + ": size not enforced (" + why + ")");
      }
      // The program runs as the sandbox user: its volume is its own.
      if (::geteuid() == 0 && ::chown(dir.c_str(), sandbox_user, sandbox_user) != 0)
        note(self, "volume " + v.name + ": cannot hand it to the sandbox user: " + std::strerror(errno));
      st.mount_args.insert(st.mount_args.end(), {"--bind", dir, v.mount});
      next();
      return;
    }
    case volume_plan::kind::immutable: {
      auto mount = v.mount;
      resolve_file(self, "volume", v.ref, v.use_latest, [=](const file_info& file) {
        auto& st = self->state;
        auto& file_hash = file.hash;
        auto path = file.path;
        if (is_zip(path)) {
          std::string dir;
          if (auto err = unpack_zip(self, file, "volume", dir); !err.empty()) {
            finish(self, "failed", err);
            return;
          }
          path = dir;
        }
        st.mount_args.insert(st.mount_args.end(), {"--ro-bind", path, mount});
        note(self, "volume " + file_hash + " mounted read-only at " + mount);
        next();
      });
      return;
    }
  }
}

// The volumes of a program as a plan, or why they cannot be set up.
std::string plan_volumes(const aleph::program_content& p, std::vector<volume_plan>& out) {
  size_t n = 0;
  auto add = [&](volume_plan v) -> std::string {
    if (auto err = check_mount(v.mount); !err.empty())
      return err;
    for (auto& other : out)
      if (other.mount == v.mount)
        return "two volumes are mounted at " + v.mount;
    out.push_back(std::move(v));
    return {};
  };
  if (p.runtime && !p.runtime->ref.empty())
    out.push_back({volume_plan::kind::runtime, p.runtime->ref, "/opt/runtime", {}, 0,
                   p.runtime->use_latest});
  if (p.data) {
    volume_plan v{volume_plan::kind::immutable, p.data->ref, p.data->mount, {}, 0,
                  p.data->use_latest};
    if (auto err = add(v); !err.empty())
      return err;
  }
  for (auto& mv : p.volumes) {
    ++n;
    std::string err;
    if (auto* im = std::get_if<aleph::immutable_volume>(&mv)) {
      if (!im->mount)
        continue; // not mounted: nothing to do in a sandbox
      err = add({volume_plan::kind::immutable, im->ref, *im->mount, {}, 0, im->use_latest});
    } else if (auto* eph = std::get_if<aleph::ephemeral_volume>(&mv)) {
      if (!eph->mount)
        continue;
      err = add({volume_plan::kind::ephemeral, {}, *eph->mount, {}, eph->size_mib});
    } else if (auto* per = std::get_if<aleph::persistent_volume>(&mv)) {
      if (!per->mount)
        continue; // a raw drive: a sandbox has no block devices
      auto name = per->name.value_or("volume-" + std::to_string(n));
      for (char c : name)
        if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_' && c != '.')
          return "volume name '" + name.substr(0, 64) + "' may only hold letters, digits, - _ .";
      if (name.empty() || name[0] == '.')
        return "volume name '" + name + "' is not allowed";
      err = add({volume_plan::kind::persistent, {}, *per->mount, name, per->size_mib});
    }
    if (!err.empty())
      return err;
  }
  return {};
}

void prepare_program(vm_supervisor_pointer self, const std::string& json, const aleph::program_content& p) {
  self->state.internet = p.environment.internet;
  bool zip = p.code.encoding == "zip";
  auto program = p;
  resolve_file(self, "code", p.code.ref, p.code.use_latest, [=](const file_info& file) {
    auto& st = self->state;
    auto& file_hash = file.hash;
    if (zip) {
      if (auto err = unpack_zip(self, file, "code", st.code_dir); !err.empty()) {
        finish(self, "failed", err);
        return;
      }
    }
    auto bytes = zip ? std::string{} : read_all(file.path);
    if (!zip && bytes.size() != file.size) {
      finish(self, "failed", "code " + file_hash + " vanished from the cache");
      return;
    }
    guest::configure cfg;
    milliseconds timeout{1000};
    if (auto err = program_configure(json, std::move(bytes), cfg, timeout); !err.empty()) {
      finish(self, "failed", err);
      return;
    }
    st.cfg = std::move(cfg);
    st.request_timeout = timeout;
    note(self, "code " + file_hash + " ready");
    auto plan = std::make_shared<std::vector<volume_plan>>();
    if (auto err = plan_volumes(program, *plan); !err.empty()) {
      finish(self, "failed", err);
      return;
    }
    st.mount_args.clear();
    prepare_volumes(self, plan, 0, [=] { boot(self); });
  });
}

// Fetches what the execution needs (message, code or rootfs) through the CCN link, then boots.
void prepare(vm_supervisor_pointer self) {
  auto& st = self->state;
  set_phase(self, "preparing", "fetching the " + st.info.kind);
  auto with_message = [=](const std::string& json) {
    auto parsed = aleph::parse_message(json);
    if (!parsed.msg) {
      finish(self, "failed", "invalid message: " + (parsed.error.field + ": " + parsed.error.reason));
      return;
    }
    self->state.info.owner = aleph::owner_of(json);
    if (auto* program = std::get_if<aleph::program_content>(&parsed.msg->content))
      prepare_program(self, json, *program);
    else if (auto* instance = std::get_if<aleph::instance_content>(&parsed.msg->content))
      prepare_instance(self, *instance);
    else
      finish(self, "failed", "neither a PROGRAM nor an INSTANCE message");
  };
  if (!st.alloc.message_json.empty()) {
    with_message(st.alloc.message_json);
    return;
  }
  if (!st.link) {
    finish(self, "failed", "no CCN link to fetch the " + st.info.kind + " from");
    return;
  }
  self->request(st.link, st.env->fetch_timeout, atom::get_v, st.info.item_hash)
    .then([=](stored_message& m) { with_message(m.json); },
          [=](caf::error& err) {
            fetch_failed(self, "cannot fetch the message: " + describe(err));
          });
}

void stop_now(vm_supervisor_pointer self, const std::string& why, bool erase,
              caf::typed_response_promise<execution_info> rp, bool requested = true) {
  auto& st = self->state;
  if (st.info.phase == "stopping") {
    // Already on its way out (a stop, or a reboot that must now not start it again): answer
    // with the final state when it is there.
    st.stop_waiters.push_back(rp);
    st.stop_after = true;
    return;
  }
  set_phase(self, "stopping", why);
  auto hash = st.info.item_hash;
  release_executor(self, [=]() mutable {
    auto& st = self->state;
    if (!requested && !st.stop_after && !st.waiters.empty()) {
      // Calls arrived while it went idle: they get a fresh start, not an error.
      rp.deliver(st.info);
      boot(self);
      return;
    }
    if (erase) {
      std::error_code ec;
      fs::remove_all(exec_dir(*self->state.env, hash), ec);
      auto volumes = volumes_dir(*self->state.env, hash);
      for (auto& e : fs::directory_iterator{volumes, ec})
        if (auto err = unmount_volume(e.path().string()); !err.empty())
          spdlog::warn("vm_supervisor: {}", err);
      fs::remove_all(volumes, ec);
      note(self, "execution data erased");
    }
    set_phase(self, "stopped", why);
    rp.deliver(self->state.info);
    finish(self, "stopped", why);
  });
}

} // namespace

std::string program_configure(const std::string& message_json, std::string code,
                              guest::configure& out, std::chrono::milliseconds& timeout) {
  auto parsed = aleph::parse_message(message_json);
  if (!parsed.msg)
    return "invalid message: " + (parsed.error.field + ": " + parsed.error.reason);
  auto* p = std::get_if<aleph::program_content>(&parsed.msg->content);
  if (p == nullptr)
    return "not a PROGRAM message";
  auto interface = p->code.interface.value_or("asgi");
  if (interface != "binary")
    return "interface '" + interface
           + "' is not supported by this CRN (it runs 'binary' programs: an HTTP server on port "
             "8080)";
  if (p->code.encoding != "plain" && p->code.encoding != "zip")
    return "code encoding '" + p->code.encoding + "' is not supported (use 'plain' or 'zip')";
  if (p->code.entrypoint.empty())
    return "code.entrypoint is empty";
  out = guest::configure{};
  // A zip is unpacked by the CRN and mounted read-only at /opt/code in the sandbox.
  bool zip = p->code.encoding == "zip";
  out.code = zip ? std::string{} : std::move(code);
  out.encoding = zip ? "mounted" : "plain";
  out.entrypoint = p->code.entrypoint;
  out.interface = interface;
  out.variables = p->variables;
  out.authorized_keys = p->authorized_keys;
  out.app_port = 8080;
  timeout = std::chrono::seconds{std::max<uint64_t>(1, p->resources.seconds)};
  return {};
}

vm_supervisor_actor::behavior_type
vm_supervisor(vm_supervisor_actor::stateful_pointer<vm_supervisor_state> self, allocation a,
              bool persistent, std::shared_ptr<const execution_env> env, ccn_link_actor link,
              job_broker_actor broker) {
  auto& st = self->state;
  st.alloc = a;
  st.env = std::move(env);
  st.link = std::move(link);
  st.broker = std::move(broker);
  st.rng.seed(std::hash<std::string>{}(a.item_hash) ^ a.epoch);
  auto& info = st.info;
  info.item_hash = a.item_hash;
  info.kind = a.kind;
  info.epoch = a.epoch;
  info.persistent = persistent;
  info.vcpus = a.vcpus;
  info.memory_mib = a.memory_mib;
  info.disk_mib = a.disk_mib;
  info.defined_at = unix_seconds();
  if (!a.message_json.empty())
    info.owner = aleph::owner_of(a.message_json);
  if (st.env->table)
    st.env->table->put_feed(a.item_hash, st.feed);
  std::optional<execution_record> rec;
  if (st.env->records && st.env->adopt_window.count() > 0)
    rec = st.env->records->get(a.item_hash);
  if (rec)
    st.record_pid = rec->handle.pid; // ours now: removed when this execution ends for good
  if (rec && rec->alive())
    adopt(self, *rec);
  else
    prepare(self);
  self->delayed_send(self, st.env->tick, atom::tick_v);
  return {
    [=](atom::get) { return self->state.info; },
    [=](atom::allocate, const allocation& next) -> caf::result<execution_info> {
      auto& info = self->state.info;
      if (next.epoch < info.epoch)
        return make_error(ec::wrong_phase, "allocation epoch " + std::to_string(next.epoch)
                                             + " is older than " + std::to_string(info.epoch));
      info.epoch = next.epoch;
      info.persistent = true;
      self->state.alloc.owner = next.owner; // the CCN that now decides over it
      save_record(self);
      return info;
    },
    [=](atom::run) -> caf::result<execution_info> {
      auto& st = self->state;
      // A guest that just died is still "running" until its exit report arrives; the call
      // waits for the restart (or the end) instead of reaching a dead guest.
      if (st.info.phase == "running" && st.exec && st.exec->running())
        return st.info;
      auto rp = self->make_response_promise<execution_info>();
      st.waiters.push_back(rp);
      return rp;
    },
    [=](atom::stop) -> caf::result<execution_info> {
      auto rp = self->make_response_promise<execution_info>();
      stop_now(self, "stopped on request", false, rp);
      return rp;
    },
    [=](atom::erase) -> caf::result<execution_info> {
      auto rp = self->make_response_promise<execution_info>();
      stop_now(self, "erased on request", true, rp);
      return rp;
    },
    [=](atom::reboot) -> caf::result<execution_info> {
      auto& st = self->state;
      if (!st.exec || (st.info.phase != "running" && st.info.phase != "booting"))
        return make_error(ec::wrong_phase,
                          "execution " + st.info.item_hash + " is " + st.info.phase);
      auto rp = self->make_response_promise<execution_info>();
      st.waiters.push_back(rp);
      note(self, "reboot requested");
      set_phase(self, "stopping", "rebooting");
      ++st.run; // the old executor's callbacks are stale from now on
      release_executor(self, [=] {
        if (self->state.stop_after) // stopped meanwhile: do not start it again
          finish(self, "stopped", "stopped on request");
        else if (self->state.cfg)
          boot(self);
        else
          prepare(self); // re-adopted: what it runs is fetched again
      });
      return rp;
    },
    [=](atom::logs) { return kept_logs(*self->state.feed); },
    [=](atom::drain) -> caf::result<execution_info> {
      auto& st = self->state;
      auto sb = std::dynamic_pointer_cast<sandbox>(st.exec);
      auto vm = std::dynamic_pointer_cast<microvm>(st.exec);
      if (st.info.phase != "running" || !(sb || vm) || !st.adoptable || !st.env->records) {
        auto rp = self->make_response_promise<execution_info>();
        stop_now(self, "the CRN is stopping", false, rp);
        return rp;
      }
      // Left running: the next CRN process re-adopts it from its record.
      meter_sample(self, false);
      save_record(self);
      st.detached = true;
      if (st.live && st.env->table)
        st.env->table->remove(st.info.item_hash, st.live.get());
      st.live = nullptr;
      if (sb)
        sb->detach();
      else
        vm->detach();
      self->unlink_from(st.host);
      caf::anon_send_exit(st.host, caf::exit_reason::user_shutdown);
      st.host = nullptr;
      st.exec = nullptr;
      note(self, "left running for the next CRN process to re-adopt");
      finish(self, "stopped", "left running for the next CRN process");
      return st.info;
    },
    [=](atom::started, uint64_t run, const std::string&) {
      // A restart after back-off (unless something else happened meanwhile).
      auto& st = self->state;
      if (run != st.run || st.info.phase != "preparing")
        return;
      if (st.cfg)
        boot(self);
      else
        prepare(self);
    },
    [=](atom::exited, uint64_t run, int32_t code, const std::string& why) {
      auto& st = self->state;
      if (run != st.run || st.info.phase != "running")
        return;
      spdlog::warn("vm_supervisor: {} ended: {} (code {})", st.info.item_hash, why, code);
      note(self, why);
      set_phase(self, "stopping", why);
      release_executor(self, [=] {
        auto& st = self->state;
        if (st.stop_after)
          finish(self, "stopped", "stopped on request");
        else if (st.info.persistent)
          schedule_restart(self, why);
        else if (!st.waiters.empty() && st.cfg)
          boot(self); // calls are waiting for it: start it again at once
        else if (!st.waiters.empty())
          prepare(self);
        else
          finish(self, "stopped", why);
      });
    },
    [=](atom::progress, const std::string&, uint64_t done, uint64_t total) {
      auto& st = self->state;
      if (st.info.phase != "preparing" || st.downloading.empty())
        return;
      auto text = "downloading " + st.downloading + ": " + std::to_string(done >> 20) + " MiB";
      if (total > 0)
        text += " of " + std::to_string(total >> 20) + " MiB (" + std::to_string(done * 100 / total) + "%)";
      set_phase(self, "preparing", text);
    },
    [=](atom::tick) {
      auto& st = self->state;
      self->delayed_send(self, st.env->tick, atom::tick_v);
      meter_observe(self);
      if (st.info.persistent || st.info.phase != "running" || !st.live)
        return;
      auto idle = live_execution::now_ms() - st.live->last_used_ms.load();
      if (st.live->in_flight.load() == 0 && idle >= st.env->reuse_timeout.count()) {
        auto rp = self->make_response_promise<execution_info>();
        stop_now(self,
                 "idle for " + std::to_string(idle / 1000) + " s (reuse-timeout "
                   + std::to_string(st.env->reuse_timeout.count() / 1000) + " s)",
                 false, rp, false);
      }
    },
  };
}

} // namespace alephd
