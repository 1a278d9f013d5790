#include "sim/in_process.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <map>
#include <memory>
#include <queue>
#include <random>
#include <set>
#include <unordered_map>

#include <caf/all.hpp>
#include <caf/scheduler/test_coordinator.hpp>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>
#include <sys/resource.h>
#include <unistd.h>

#include "actors/ccn_link.hpp"
#include "actors/ccn_node.hpp"
#include "actors/ccn_peer.hpp"
#include "actors/content_store.hpp"
#include "actors/crn_registry.hpp"
#include "actors/job_broker.hpp"
#include "actors/message_store.hpp"
#include "actors/replicator.hpp"
#include "actors/reward_ledger.hpp"
#include "actors/scheduler.hpp"
#include "actors/usage_book.hpp"
#include "actors/vm_supervisor.hpp"
#include "runtime/blob_store.hpp"
#include "runtime/crypto.hpp"
#include "runtime/executor.hpp"
#include "runtime/ledger.hpp"
#include "runtime/lmdb.hpp"
#include "runtime/wall_clock.hpp"
#include "sim/journal.hpp"

namespace alephd::sim {

namespace {

using json = nlohmann::json;
using namespace std::chrono_literals;
using time_point = caf::actor_clock::time_point;

// ---- virtual time -------------------------------------------------------------------------------

caf::scheduler::test_coordinator* virtual_sched = nullptr;
time_point virtual_start;
constexpr double virtual_epoch = 1.8e9; // unix time of the simulation's t = 0

double virtual_wall() {
  return virtual_epoch
         + std::chrono::duration<double>(virtual_sched->clock().current_time - virtual_start).count();
}

std::atomic<bool> in_process_interrupted{false};

extern "C" void on_interrupt_in_process(int) {
  in_process_interrupted = true;
}

// ---- doubles of the outside world ---------------------------------------------------------------

// Runs a program without running anything: up from start() until stop(), answers every request.
// It never blocks, so supervisors make its calls inline on the deterministic scheduler.
class sim_executor final : public executor {
public:
  std::string start(const guest::configure&) override {
    up_ = true;
    return {};
  }
  void request_async(guest::http_request req, std::chrono::milliseconds, reply_handler done) override {
    guest::http_response r;
    r.id = req.id;
    r.status = up_ ? 200 : 502;
    r.body = up_ ? "ok" : "program gone";
    done(std::move(r));
  }
  int stop(std::chrono::milliseconds) override {
    up_ = false;
    return 0;
  }
  bool running() const override { return up_; }
  int pid() const override { return 0; }
  executor_usage usage() const override { return {}; }
  std::vector<timed_log> logs() const override { return {}; }
  void on_exit(exit_handler h) override { exit_ = std::move(h); }
  void on_log(log_handler) override {}

private:
  bool up_ = false;
  exit_handler exit_;
};

// A CCN's stable address: CRNs and peer CCNs hold this handle, which passes everything to the
// CCN's current ccn_node (a restarted CCN has new actors) and answers ec::unavailable while the
// CCN is down, as a refused connection would.
caf::behavior ccn_front(caf::event_based_actor* self, std::shared_ptr<caf::actor> target) {
  self->set_default_handler(
    [target](caf::scheduled_actor* s, caf::message_view& x) -> caf::result<caf::message> {
      if (!*target)
        return make_error(ec::unavailable, "the CCN is down");
      return static_cast<caf::event_based_actor*>(s)->delegate(*target, x.move_content_to_message());
    });
  return {[](caf::unit_t) {}};
}

// ---- the cluster --------------------------------------------------------------------------------

enum class state { up, down, paused };

const char* to_string(state s) {
  return s == state::up ? "up" : s == state::down ? "down" : "paused";
}

struct ccn_slot {
  std::string name;
  std::string id;
  std::filesystem::path dir;
  std::shared_ptr<lmdb::env> env; ///< outlives the actors: the CCN's disk
  MDB_dbi ballast = 0;            ///< what fills the disk during a disk-full fault
  bool full = false;
  std::shared_ptr<std::pair<int, int>> refused; ///< posts refused, of probes, while full
  std::shared_ptr<blob_store> blobs;
  std::shared_ptr<caf::actor> target = std::make_shared<caf::actor>();
  caf::actor front;
  message_store_actor messages;
  content_store_actor files;
  crn_registry_actor registry;
  scheduler_actor scheduler;
  replicator_actor replicator;
  ccn_peer_actor peer;
  usage_book_actor usage;
  ccn_node_actor node;
  state st = state::down;
  std::vector<caf::actor> actors() const {
    return {caf::actor_cast<caf::actor>(node),       caf::actor_cast<caf::actor>(usage),
            caf::actor_cast<caf::actor>(peer),       caf::actor_cast<caf::actor>(replicator),
            caf::actor_cast<caf::actor>(scheduler),  caf::actor_cast<caf::actor>(registry),
            caf::actor_cast<caf::actor>(files),      caf::actor_cast<caf::actor>(messages)};
  }
};

struct crn_slot {
  std::string name;
  std::string id;
  std::size_t group = 0; ///< the CCN it links to first
  std::filesystem::path dir;
  crypto::ed25519_key key;
  std::shared_ptr<lmdb::env> cache_env;
  std::shared_ptr<blob_store> blobs;
  std::shared_ptr<ledger_store> ledger_db;
  content_store_actor files;
  reward_ledger_actor ledger;
  job_broker_actor broker;
  ccn_link_actor link;
  state st = state::down;
};

/// A stateful actor's state, read between two jobs of the single-threaded scheduler.
template <class State, class Handle>
State* state_of(const Handle& h) {
  if (!h)
    return nullptr;
  auto* ptr = caf::actor_cast<caf::abstract_actor*>(h);
  auto* a = dynamic_cast<caf::stateful_actor<State, typename Handle::base>*>(ptr);
  // An actor that ended has destroyed its state (jobs run one at a time: no actor is mid-way).
  if (a == nullptr || a->getf(caf::abstract_actor::is_terminated_flag | caf::abstract_actor::is_cleaned_up_flag))
    return nullptr;
  return &a->state;
}

class world {
public:
  explicit world(config c) : cfg_(std::move(c)) {}
  int run();
  /// What the run ended with (after run()).
  run_outcome outcome(int code) const { return run_outcome{code, events_, violations_, faults_started_, report_}; }

private:
  struct sys_config : caf::actor_system_config {
    sys_config() {
      alephd::add_message_types(*this);
      set("scheduler.policy", caf::atom("testing"));
      set("logger.verbosity", caf::atom("quiet"));
    }
  };

  config cfg_;
  std::filesystem::path dir_;
  bool made_dir_ = false;
  std::unique_ptr<sys_config> sys_cfg_;
  std::unique_ptr<caf::actor_system> sys_;
  caf::scheduler::test_coordinator* sched_ = nullptr;
  std::vector<ccn_slot> ccns_;
  std::vector<crn_slot> crns_;
  std::vector<std::string> names_;
  /// Actors of paused nodes and cut links, with how many faults hold each (faults overlap).
  std::unordered_map<caf::actor_id, int> held_;
  std::shared_ptr<message_verdicts> verdicts_ = std::make_shared<message_verdicts>();
  uint64_t jobs_ = 0;
  std::string sender_, secret_;
  std::string store_hash_;
  std::vector<std::string> persistent_, on_demand_;
  std::set<std::string> acked_; ///< every message a CCN acknowledged
  std::vector<std::pair<std::string, std::string>> files_; ///< files stored with a STORE: hash, bytes
  std::map<std::string, uint64_t> outcomes_;
  std::vector<event> events_;
  std::vector<violation> violations_;
  json checks_ = json::object(); ///< per invariant: checked, failed, last
  std::map<std::string, uint32_t> max_linked_seen_;
  std::map<std::string, std::set<std::string>> placements_;
  std::vector<json> placement_log_;
  std::vector<json> reschedule_log_;
  std::vector<pending_reschedule> reschedules_;
  std::size_t faults_applied_ = 0;
  std::vector<std::size_t> faults_started_;
  json report_;
  std::size_t recovered_in_place_ = 0; ///< programs whose paused or cut-off CRN came back first
  std::mt19937_64 rng_;
  bool failed_ = false;
  static constexpr uint64_t max_burst = 100'000'000;
  static constexpr uint64_t ccn_map_size = uint64_t{1} << 30;
  bool livelocked() const { return checks_.contains("no-livelock"); }

  // -- time --
  double now() const { return virtual_wall() - virtual_epoch; }
  time_point at(double t) const {
    return virtual_start + std::chrono::duration_cast<caf::timespan>(std::chrono::duration<double>(t));
  }
  void step(std::function<bool()> until, double deadline);
  void run_jobs();
  template <class T, class Handle, class... Ts>
  std::optional<T> ask(const Handle& dst, Ts... xs);

  // -- records --
  void record(std::string kind, std::string what, std::string node, std::string detail = {}) {
    events_.push_back(event{now(), std::move(kind), std::move(what), std::move(node), std::move(detail)});
  }
  void checked(const std::string& name, bool ok, const std::string& detail = {}) {
    count_check(checks_, name, ok, detail);
  }
  void violate(const std::string& invariant, const std::string& detail, std::set<std::string> nodes) {
    violations_.push_back(violation{invariant, now(), detail, std::move(nodes)});
    if (invariant == "no-livelock")
      checks_[invariant] = json{{"checked", 1}, {"failed", 1}, {"last", detail}};
    record("violation", invariant, "", detail);
    failed_ = true;
    std::cout << "  " << std::fixed << std::setprecision(2) << now() << "s  VIOLATION " << invariant << ": " << detail
              << std::endl;
  }

  // -- nodes --
  std::string prepare();
  void start_ccn(std::size_t i);
  void start_crn(std::size_t i);
  void stop_ccn(std::size_t i, bool crash);
  void stop_crn(std::size_t i, bool crash);
  void hold(const std::vector<caf::actor>& xs, bool on);
  std::string fill_disk(ccn_slot& n);
  std::string free_disk(ccn_slot& n);
  void probe_full_disk(std::size_t i, std::shared_ptr<std::pair<int, int>> refused);
  std::vector<caf::actor> crn_actors(const crn_slot& n) const;
  std::string node_state(std::size_t index) const;

  // -- workload and checks --
  json signed_message(const std::string& type, const json& content);
  stored_message to_stored(const json& m, const ccn_slot& at) const;
  bool publish_programs();
  ccn_slot* any_up_ccn();
  void post_message();
  void upload_file();
  void call_program();
  std::map<std::string, std::set<std::string>> running_programs(bool available_only) const;
  std::string crn_of_program(std::size_t k) const;
  std::string copies_of(const std::string& program) const;
  void monitor();
  void one_fault(std::size_t number, const planned_fault& f, std::function<void(double, std::function<void()>)> later);
  bool converged(std::string& why) const;
  void final_checks();
  json report(double real_s);
  std::string digest() const;
};

// ---- the scheduler loop --------------------------------------------------------------------------

void world::run_jobs() {
  auto runnable = [this](caf::resumable* r) {
    if (held_.empty())
      return true;
    auto* a = dynamic_cast<caf::abstract_actor*>(r);
    return a == nullptr || held_.count(a->id()) == 0;
  };
  // As test_coordinator::run_jobs_filtered, and bounded: actors that keep each other busy without
  // ever letting time pass are a livelock, reported as a violation.
  auto& q = sched_->jobs;
  uint64_t burst = 0;
  while (!q.empty() && !in_process_interrupted) {
    auto i = std::find_if(q.begin(), q.end(), runnable);
    if (i == q.end())
      return;
    if (i != q.begin())
      std::rotate(q.begin(), i, i + 1);
    sched_->run_once();
    ++jobs_;
    if (++burst > max_burst && !failed_) {
      violate("no-livelock", "actors ran " + std::to_string(burst) + " jobs without letting virtual time pass", {});
      return;
    }
  }
}

// Runs jobs and fires timers in time order until `until` holds or virtual time reaches
// `deadline` (then the clock stands at the deadline).
void world::step(std::function<bool()> until, double deadline) {
  while (!in_process_interrupted && !(failed_ && livelocked())) {
    run_jobs();
    if (until && until())
      return;
    auto& sch = sched_->clock().schedule();
    auto limit = at(deadline);
    if (sch.empty() || sch.begin()->first > limit) {
      if (sched_->clock().current_time < limit)
        sched_->clock().current_time = limit;
      run_jobs();
      return;
    }
    sched_->trigger_timeout();
  }
}

template <class T, class Handle, class... Ts>
std::optional<T> world::ask(const Handle& dst, Ts... xs) {
  auto out = std::make_shared<std::optional<T>>();
  auto done = std::make_shared<bool>(false);
  sys_->spawn([=](caf::event_based_actor* self) {
    self->request(dst, 30s, xs...)
      .then([=](T& x) { *out = std::move(x), *done = true; }, [=](caf::error&) { *done = true; });
  });
  step([&] { return *done; }, now() + 31);
  return *out;
}

// ---- nodes ----------------------------------------------------------------------------------------

std::string world::prepare() {
  names_ = node_names(cfg_);
  // A key pair from the seed for every node and for the wallet that signs the workload.
  auto seeded = [&](const std::string& what) {
    return crypto::sha256("alephd-sim " + std::to_string(cfg_.seed) + " " + what);
  };
  // One process holds every store: a crash of a node never loses what the OS has, so the
  // stores write through the map and skip fsync (an OS crash is not simulated).
  const unsigned store_flags = MDB_WRITEMAP | MDB_NOSYNC;
  secret_ = seeded("wallet");
  sender_ = crypto::eth_address(secret_).value_or("");
  for (std::size_t i = 0; i < names_.size(); ++i) {
    auto key = crypto::ed25519_from_seed(seeded(names_[i]));
    if (!key)
      return "cannot make the node keys";
    auto path = dir_ / names_[i];
    std::error_code ec;
    std::filesystem::create_directories(path, ec);
    if (ec)
      return "cannot make " + path.string() + ": " + ec.message();
    std::string err;
    if (i < cfg_.ccns) {
      ccn_slot n;
      n.name = names_[i];
      n.id = crypto::node_id_of(key->public_key);
      n.dir = path;
      n.env = lmdb::env::open((path / "lmdb").string(), err, ccn_map_size, store_flags);
      if (!n.env || !n.env->open_db("sim-ballast", n.ballast, err))
        return err;
      n.blobs = std::make_shared<blob_store>((path / "blobs").string());
      n.front = sys_->spawn(ccn_front, n.target);
      ccns_.push_back(std::move(n));
    } else {
      crn_slot n;
      n.name = names_[i];
      n.id = crypto::node_id_of(key->public_key);
      n.key = *key;
      n.dir = path;
      auto k = i - cfg_.ccns;
      n.group = k < cfg_.ccns * cfg_.crns_per_ccn ? k / cfg_.crns_per_ccn : (k - cfg_.ccns * cfg_.crns_per_ccn) % cfg_.ccns;
      n.cache_env = lmdb::env::open((path / "cache-index").string(), err, uint64_t{1} << 28, store_flags);
      if (!n.cache_env)
        return err;
      n.blobs = std::make_shared<blob_store>((path / "cache").string());
      n.ledger_db = ledger_store::open((path / "ledger").string(), err);
      if (!n.ledger_db)
        return err;
      crns_.push_back(std::move(n));
    }
  }
  return {};
}

void world::start_ccn(std::size_t i) {
  auto& n = ccns_[i];
  auto& sys = *sys_;
  n.messages = sys.spawn(message_store, n.env, true);
  content_store_config cc;
  cc.root = (n.dir / "blobs").string();
  cc.blobs = n.blobs;
  cc.env = n.env;
  cc.shards = 1;
  cc.keep_stored = true;
  cc.scrub_bytes = 0;
  n.files = sys.spawn(content_store, cc);
  crn_registry_config rc;
  rc.ccn_id = n.id;
  rc.max_linked = cfg_.max_linked;
  rc.heartbeat = cfg_.heartbeat;
  rc.failure_timeout = cfg_.failure_timeout;
  rc.reserve_grace = cfg_.failure_timeout + 30s;
  rc.env = n.env;
  n.registry = sys.spawn(crn_registry, rc);
  scheduler_config sc;
  sc.ccn_id = n.id;
  sc.env = n.env;
  sc.orphan_grace = cfg_.failure_timeout + 30s;
  n.scheduler = sys.spawn(scheduler, sc);
  caf::anon_send(n.messages, atom::subscribe_v, caf::actor_cast<message_listener_actor>(n.scheduler));
  caf::anon_send(n.registry, atom::subscribe_v, caf::actor_cast<node_listener_actor>(n.scheduler));
  // Copies of stored files on CRNs; the source of a file this CCN lost.
  replicator_config rpc;
  rpc.ccn_id = n.id;
  rpc.env = n.env;
  rpc.default_replicas = cfg_.replicas;
  n.replicator = sys.spawn(replicator, rpc, n.files);
  caf::anon_send(n.messages, atom::subscribe_v, caf::actor_cast<message_listener_actor>(n.replicator));
  caf::anon_send(n.registry, atom::subscribe_v, caf::actor_cast<node_listener_actor>(n.replicator));
  caf::anon_send(n.files, atom::connect_v, caf::actor_cast<file_source_actor>(n.replicator));
  ccn_peer_config pc;
  pc.ccn_id = n.id;
  for (std::size_t k = 0; k < ccns_.size(); ++k)
    if (k != i)
      pc.direct.push_back(caf::actor_cast<ccn_node_actor>(ccns_[k].front));
  pc.http = std::make_shared<http_locator>(); // no HTTP: files travel over the node link
  pc.inline_bytes = uint64_t{1} << 30;
  pc.verify_signatures = true;
  pc.verdicts = verdicts_; // a message replicated to every CCN is parsed and verified once
  n.peer = sys.spawn(ccn_peer, pc, n.messages, n.files);
  n.usage = sys.spawn(usage_book, n.env);
  n.node = sys.spawn(ccn_node, n.id, n.registry, n.peer, n.messages, n.files, n.scheduler,
                     std::shared_ptr<const http_locator>{std::make_shared<http_locator>()}, n.usage);
  *n.target = caf::actor_cast<caf::actor>(n.node);
  n.st = state::up;
}

void world::start_crn(std::size_t i) {
  auto& n = crns_[i];
  auto& sys = *sys_;
  content_store_config cc;
  cc.root = (n.dir / "cache").string();
  cc.blobs = n.blobs;
  cc.env = n.cache_env;
  cc.shards = 1;
  cc.max_bytes = uint64_t{1} << 30;
  cc.max_file_bytes = cc.max_bytes;
  cc.keep_stored = false;
  cc.fetch_missing = true;
  cc.scrub_bytes = 0;
  n.files = sys.spawn(content_store, cc);
  reward_ledger_config rl;
  rl.node = n.id;
  n.ledger = sys.spawn(reward_ledger, n.ledger_db, rl);
  auto env = std::make_shared<execution_env>();
  env->data_dir = n.dir.string();
  env->files = n.files;
  env->ledger = n.ledger;
  env->sample_interval = cfg_.sample_interval;
  env->cgroups = false;
  env->threaded_host = false;
  env->tick = 5s; // idle and memory checks: thousands of supervisors tick
  env->make_executor = [](const executor_request&) { return std::make_shared<sim_executor>(); };
  job_broker_config jb;
  jb.crn_id = n.id;
  jb.cores = 64;
  jb.memory_mib = 1 << 20;
  jb.disk_mib = 1 << 20;
  jb.program_reserved_mib = 1 << 19;
  jb.env = env;
  n.broker = sys.spawn(job_broker, jb);
  ccn_link_config lc;
  lc.info.id = n.id;
  lc.info.name = n.name;
  lc.info.address = "in-process:" + n.name;
  lc.info.vcpus = 64;
  lc.info.memory_mib = 1 << 20;
  lc.info.disk_mib = 1 << 20;
  lc.info.software_version = ALEPHD_VERSION;
  lc.info.public_key = n.key.public_key;
  lc.sign = [key = n.key](std::string_view text) { return crypto::ed25519_sign(key, text); };
  // Its own CCN first, then the others in turn from there (fail-over spreads over the CCNs).
  for (std::size_t k = 0; k < ccns_.size(); ++k)
    lc.direct.push_back(caf::actor_cast<ccn_node_actor>(ccns_[(n.group + k) % ccns_.size()].front));
  lc.heartbeat = cfg_.heartbeat;
  lc.failure_timeout = cfg_.failure_timeout;
  lc.files = n.files;
  lc.ledger = n.ledger;
  lc.shipped_to_file = (n.dir / "ledger-shipped-to").string();
  lc.met_file = (n.dir / "ccns-met").string();
  n.link = sys.spawn(ccn_link, lc, n.broker);
  caf::anon_send(n.broker, atom::connect_v, n.link);
  caf::anon_send(n.files, atom::connect_v, caf::actor_cast<file_source_actor>(n.link));
  n.st = state::up;
}

std::vector<caf::actor> world::crn_actors(const crn_slot& n) const {
  std::vector<caf::actor> out{caf::actor_cast<caf::actor>(n.link), caf::actor_cast<caf::actor>(n.broker),
                              caf::actor_cast<caf::actor>(n.files), caf::actor_cast<caf::actor>(n.ledger)};
  if (auto* b = state_of<job_broker_state>(n.broker))
    for (auto& [hash, e] : b->executions)
      out.push_back(caf::actor_cast<caf::actor>(e.supervisor));
  return out;
}

// A crash ends every actor of the node at once (a killed process: nothing is written, nobody is
// told); a clean stop is the process's SIGTERM (the link unlinks, the ledger writes what waits).
// A job broker takes its supervisors along (its exit handler), which a kill would skip.
void world::stop_ccn(std::size_t i, bool crash) {
  auto& n = ccns_[i];
  for (auto& a : n.actors())
    if (a)
      held_.erase(a.id());
  *n.target = nullptr;
  for (auto& a : n.actors())
    if (a)
      caf::anon_send_exit(a, crash ? caf::exit_reason::kill : caf::exit_reason::user_shutdown);
  n.messages = nullptr;
  n.files = nullptr;
  n.registry = nullptr;
  n.scheduler = nullptr;
  n.replicator = nullptr;
  n.peer = nullptr;
  n.usage = nullptr;
  n.node = nullptr;
  n.st = state::down;
}

void world::stop_crn(std::size_t i, bool crash) {
  auto& n = crns_[i];
  for (auto& a : crn_actors(n))
    if (a)
      held_.erase(a.id());
  auto reason = crash ? caf::exit_reason::kill : caf::exit_reason::user_shutdown;
  caf::anon_send_exit(n.link, reason);
  caf::anon_send_exit(n.broker, crash ? caf::exit_reason::unknown : reason);
  caf::anon_send_exit(n.files, reason);
  caf::anon_send_exit(n.ledger, reason);
  n.link = nullptr;
  n.broker = nullptr;
  n.files = nullptr;
  n.ledger = nullptr;
  n.st = state::down;
}

void world::hold(const std::vector<caf::actor>& xs, bool on) {
  for (auto& a : xs)
    if (a) {
      if (on) {
        ++held_[a.id()];
      } else if (auto i = held_.find(a.id()); i != held_.end() && --i->second <= 0) {
        held_.erase(i);
      }
    }
}

// A CCN's disk fills up: its LMDB map shrinks to the pages in use (LMDB keeps at least those)
// and a ballast takes every free page, so no write of the CCN gets a page until free_disk().
// Between two jobs of the single-threaded scheduler, no transaction is open.
std::string world::fill_disk(ccn_slot& n) {
  if (int rc = mdb_env_set_mapsize(n.env->get(), 1); rc != 0)
    return "cannot shrink its store: " + lmdb::error_text(rc);
  n.full = true;
  // Big values in big batches first, then smaller and smaller ones one at a time, until not even
  // a byte fits (the room left in pages the last commits freed).
  uint64_t key = 0;
  std::size_t batch = 64, value = 1500;
  for (int round = 0; round < 100000; ++round) {
    const std::string bytes(value, 'b');
    lmdb::txn t{*n.env, true};
    int rc = t.status();
    for (std::size_t k = 0; rc == 0 && k < batch; ++k)
      rc = t.put(n.ballast, lmdb::be64(key + k), bytes);
    if (rc == 0)
      rc = t.commit();
    if (rc == 0) {
      key += batch;
    } else if (rc != MDB_MAP_FULL) {
      return "filling its store: " + lmdb::error_text(rc);
    } else if (batch > 1) {
      batch = 1;
    } else if (value > 1) {
      value = value > 100 ? 100 : 1;
    } else {
      return {};
    }
  }
  return "its store did not fill up";
}

// Room again: the map back to its size, the ballast gone. "" or what went wrong.
std::string world::free_disk(ccn_slot& n) {
  if (!n.full)
    return {};
  n.full = false;
  if (int rc = mdb_env_set_mapsize(n.env->get(), ccn_map_size); rc != 0)
    return "cannot grow its store again: " + lmdb::error_text(rc);
  lmdb::txn t{*n.env, true};
  int rc = t.status();
  if (rc == 0)
    rc = mdb_drop(t.get(), n.ballast, 0);
  if (rc == 0)
    rc = t.commit();
  return rc == 0 ? std::string{} : "cannot drop the ballast: " + lmdb::error_text(rc);
}

// CCN i's disk is full: a message posted to it must be stored or
// refused with no_space (HTTP 507), never another error or no answer; and it must go on
// answering (what it places, from its scheduler).
void world::probe_full_disk(std::size_t i, std::shared_ptr<std::pair<int, int>> refused) {
  auto& n = ccns_[i];
  if (!n.full || n.st != state::up)
    return;
  auto m = signed_message("POST", json{{"address", sender_}, {"time", virtual_wall()}, {"type", "sim-probe"},
                                        {"content", {{"at", now()}}}});
  auto hash = m["item_hash"].get<std::string>();
  auto name = n.name;
  ++refused->second;
  sys_->spawn([=, this, store = n.messages, sm = to_stored(m, n)](caf::event_based_actor* self) {
    self->request(store, 5s, atom::append_v, sm)
      .then(
        [=, this](const append_result&) {
          acked_.insert(hash);
          checked("full-disk-answers-507", true);
        },
        [=, this](caf::error& err) {
          bool ok = err.category() == caf::atom("alephd") && static_cast<ec>(err.code()) == ec::no_space;
          refused->first += ok ? 1 : 0;
          checked("full-disk-answers-507", ok, ok ? "" : name + ": " + alephd::describe(err));
          if (!ok)
            violate("full-disk-answers-507", name + " answered a message posted with its disk full with '" +
                                                 alephd::describe(err) + "', not no_space (507)", {name});
        });
  });
  sys_->spawn([=, this, node = n.node](caf::event_based_actor* self) {
    self->request(node, 2s, atom::list_v, std::string{})
      .then([=, this](const std::vector<placement>&) { checked("serves-with-a-full-disk", true); },
            [=, this](caf::error& err) {
              checked("serves-with-a-full-disk", false, name + ": " + alephd::describe(err));
              violate("serves-with-a-full-disk", name + " did not answer with its disk full: " + alephd::describe(err),
                      {name});
            });
  });
}

std::string world::node_state(std::size_t index) const {
  return index < ccns_.size() ? to_string(ccns_[index].st) : to_string(crns_[index - ccns_.size()].st);
}

// ---- workload -------------------------------------------------------------------------------------

json world::signed_message(const std::string& type, const json& content) {
  return sim::signed_message(sender_, secret_, type, content);
}

// As the HTTP intake stores a message it accepted.
stored_message world::to_stored(const json& m, const ccn_slot& at) const {
  stored_message sm;
  sm.item_hash = m["item_hash"].get<std::string>();
  sm.type = m["type"].get<std::string>();
  sm.sender = m["sender"].get<std::string>();
  sm.time = m["time"].get<double>();
  sm.received = virtual_wall();
  sm.origin = at.id;
  sm.json = m.dump();
  return sm;
}

bool world::publish_programs() {
  // The code: a file in every CCN's store and a STORE message (as an operator seeding a network).
  std::string code = "#!/bin/sh\necho simulated\n";
  json store_content{{"address", sender_}, {"time", 1700000000.0}, {"item_type", "storage"},
                     {"item_hash", crypto::to_hex(crypto::sha256(code))}};
  auto store = signed_message("STORE", store_content);
  for (auto& c : ccns_) {
    auto f = ask<file_info>(c.files, atom::put_v, code);
    auto a = ask<append_result>(c.messages, atom::append_v, to_stored(store, c));
    if (!f || !a) {
      std::cerr << "alephd: sim: storing the program code at " << c.name << " failed\n";
      return false;
    }
  }
  store_hash_ = store["item_hash"].get<std::string>();
  acked_.insert(store_hash_);
  // The programs, posted to the CCNs in turn (each places the persistent ones it accepted), by
  // many clients at once: 250 every 100 ms.
  auto pending = std::make_shared<std::size_t>(0);
  auto failures = std::make_shared<std::vector<std::string>>();
  for (uint32_t i = 0; i < cfg_.persistent + cfg_.on_demand; ++i) {
    bool persistent = i < cfg_.persistent;
    auto name = (persistent ? "persistent-" : "on-demand-") + std::to_string(persistent ? i : i - cfg_.persistent);
    json content{{"type", "vm-function"}, {"address", sender_}, {"time", 1700000000.0 + i}, {"allow_amend", false},
                 {"code", {{"encoding", "plain"}, {"entrypoint", "app"}, {"ref", store_hash_}, {"interface", "binary"},
                           {"use_latest", false}}},
                 {"variables", {{"SIM_NAME", name}}},
                 {"on", {{"http", true}, {"persistent", persistent}}},
                 {"environment", {{"reproducible", false}, {"internet", false}, {"aleph_api", false},
                                  {"shared_cache", false}}},
                 {"resources", {{"vcpus", 1}, {"memory", 64}, {"seconds", 10}}},
                 {"volumes", json::array()}};
    auto m = signed_message("PROGRAM", content);
    auto& to = ccns_[persistent ? i % cfg_.ccns : 0];
    auto hash = m["item_hash"].get<std::string>();
    (persistent ? persistent_ : on_demand_).push_back(hash);
    ++*pending;
    auto acked = &acked_;
    sys_->spawn([=, store = to.messages, sm = to_stored(m, to)](caf::event_based_actor* self) {
      self->request(store, 60s, atom::append_v, sm)
        .then(
          [=](const append_result&) {
            acked->insert(hash);
            --*pending;
          },
          [=](caf::error& err) {
            failures->push_back(name + ": " + alephd::describe(err));
            --*pending;
          });
    });
    if ((i + 1) % 250 == 0)
      step({}, now() + 0.1);
  }
  step([&] { return *pending == 0; }, now() + 120);
  if (*pending != 0 || !failures->empty()) {
    std::cerr << "alephd: sim: PROGRAM " << (failures->empty() ? "appends timed out" : failures->front()) << '\n';
    return false;
  }
  record("start", "programs", "", std::to_string(persistent_.size()) + " persistent, " + std::to_string(on_demand_.size())
                                    + " on demand");
  return true;
}

// A live CCN drawn by the workload's generator (one draw); null when none is up.
ccn_slot* world::any_up_ccn() {
  std::vector<std::size_t> up;
  for (std::size_t i = 0; i < ccns_.size(); ++i)
    if (ccns_[i].st == state::up)
      up.push_back(i);
  return up.empty() ? nullptr : &ccns_[up[rng_() % up.size()]];
}

void world::post_message() {
  auto* ccn = any_up_ccn();
  if (!ccn)
    return;
  auto& to = *ccn;
  auto m = signed_message("POST", json{{"address", sender_}, {"time", virtual_wall()}, {"type", "sim"},
                                        {"content", {{"n", rng_() % 1000000}}}});
  auto hash = m["item_hash"].get<std::string>();
  auto acked = &acked_;
  auto outcomes = &outcomes_;
  sys_->spawn([=, store = to.messages, sm = to_stored(m, to)](caf::event_based_actor* self) {
    self->request(store, 10s, atom::append_v, sm)
      .then(
        [=](const append_result&) {
          acked->insert(hash);
          ++(*outcomes)["message acked"];
        },
        [=](caf::error&) { ++(*outcomes)["message refused"]; });
  });
}

// A file stored on a live CCN, then a STORE naming it: acknowledged once both are, then it must
// be on every CCN and on `cluster.replicas` CRNs.
void world::upload_file() {
  auto* ccn = any_up_ccn();
  if (!ccn)
    return;
  auto& to = *ccn;
  std::mt19937_64 bytes_rng{rng_()};
  std::string bytes(cfg_.upload_bytes, '\0');
  for (auto& ch : bytes)
    ch = static_cast<char>(bytes_rng() & 0xff);
  sys_->spawn([=, this, files = to.files, store = to.messages](caf::event_based_actor* self) {
    self->request(files, 10s, atom::put_v, bytes)
      .then(
        [=, this](const file_info& f) {
          auto m = signed_message("STORE", json{{"address", sender_}, {"time", virtual_wall()}, {"item_type", "storage"},
                                                {"item_hash", f.hash}});
          self->request(store, 10s, atom::append_v, to_stored(m, *ccn))
            .then(
              [=, this](const append_result&) {
                acked_.insert(m["item_hash"].get<std::string>());
                files_.emplace_back(f.hash, bytes);
                ++outcomes_["file acked"];
              },
              [=, this](caf::error&) { ++outcomes_["file's STORE refused"]; });
        },
        [=, this](caf::error&) { ++outcomes_["file refused"]; });
  });
}

void world::call_program() {
  if (on_demand_.empty())
    return;
  std::vector<std::size_t> up;
  for (std::size_t i = 0; i < crns_.size(); ++i)
    if (crns_[i].st == state::up)
      up.push_back(i);
  if (up.empty())
    return;
  auto broker = crns_[up[rng_() % up.size()]].broker;
  auto program = on_demand_[rng_() % on_demand_.size()];
  auto outcomes = &outcomes_;
  sys_->spawn([=](caf::event_based_actor* self) {
    self->request(broker, 15s, atom::run_v, program)
      .then([=](const execution_info&) { ++(*outcomes)["call ok"]; },
            [=](caf::error& err) { ++(*outcomes)["call failed: " + alephd::describe(err).substr(0, 60)]; });
  });
}

// ---- checks ---------------------------------------------------------------------------------------

// Persistent programs and the CRNs running them. `available_only`: only CRNs that are up and
// reachable count (a paused or cut-off CRN's copy is not serving anyone).
std::map<std::string, std::set<std::string>> world::running_programs(bool available_only) const {
  std::map<std::string, std::set<std::string>> out;
  for (auto& n : crns_) {
    if (n.st == state::down || (available_only && (n.st != state::up || held_.count(n.link.id()) > 0)))
      continue;
    auto* b = state_of<job_broker_state>(n.broker);
    if (b == nullptr)
      continue;
    for (auto& [hash, e] : b->executions) {
      if (e.stopped || !e.persistent)
        continue;
      auto* s = state_of<vm_supervisor_state>(e.supervisor);
      if (s != nullptr && s->info.phase == "running")
        out[hash].insert(n.name);
    }
  }
  return out;
}

std::string world::crn_of_program(std::size_t k) const {
  if (k >= persistent_.size())
    return {};
  auto running = running_programs(true);
  auto i = running.find(persistent_[k]);
  return i == running.end() || i->second.empty() ? std::string{} : *i->second.begin();
}

// Where a program runs and who placed it, for a violation's detail: each copy's CRN, epoch, owner
// and the CCN its CRN is linked to, and each CCN's placement of it.
std::string world::copies_of(const std::string& program) const {
  auto name_of = [&](const std::string& id) {
    for (auto& c : ccns_)
      if (c.id == id)
        return c.name;
    return id.empty() ? std::string{"none"} : id.substr(0, 8);
  };
  std::string out;
  for (auto& n : crns_) {
    auto* b = state_of<job_broker_state>(n.broker);
    auto* l = state_of<ccn_link_state>(n.link);
    if (b == nullptr)
      continue;
    auto i = b->executions.find(program);
    if (i == b->executions.end() || i->second.stopped)
      continue;
    out += "; on " + n.name + " epoch " + std::to_string(i->second.alloc.epoch) + " placed by "
           + name_of(i->second.alloc.owner) + ", linked to " + (l ? name_of(l->info.ccn_id) : "?");
  }
  for (auto& c : ccns_)
    if (auto* s = state_of<scheduler_state>(c.scheduler)) {
      auto i = s->workloads.find(program);
      if (i != s->workloads.end()) {
        std::string crn = "none";
        for (auto& n : crns_)
          if (n.id == i->second.crn_id)
            crn = n.name;
        out += "; " + c.name + " places it on " + crn + " epoch " + std::to_string(i->second.alloc.epoch) + " ("
               + i->second.state + ")";
      }
    }
  return out;
}

void world::monitor() {
  // At most max-linked-crns linked at every CCN.
  for (auto& c : ccns_) {
    auto* r = state_of<crn_registry_state>(c.registry);
    if (r == nullptr)
      continue;
    uint32_t linked = 0;
    std::set<std::string> who{c.name};
    for (auto& [id, e] : r->crns)
      if (e.state == link_state::linked) {
        ++linked;
        who.insert(e.info.name);
      }
    max_linked_seen_[c.name] = std::max(max_linked_seen_[c.name], linked);
    checked("max-linked-crns", linked <= cfg_.max_linked);
    if (linked > cfg_.max_linked)
      violate("max-linked-crns", c.name + " has " + std::to_string(linked) + " CRNs linked, more than "
                                   + std::to_string(cfg_.max_linked), who);
  }
  auto running = running_programs(true);
  auto t = now();
  // Placements over time (the first 100 programs: the report plots one row each).
  for (std::size_t k = 0; k < persistent_.size() && k < 100; ++k) {
    auto& p = persistent_[k];
    auto& on = running[p];
    if (on != placements_[p]) {
      placements_[p] = on;
      placement_log_.push_back(json{{"t", std::round(t * 1000) / 1000}, {"program", p},
                                    {"crns", std::vector<std::string>(on.begin(), on.end())}});
    }
  }
  for (auto it = reschedules_.begin(); it != reschedules_.end();) {
    auto on = running[it->program];
    bool back_home = on.erase(it->crn) > 0;
    if (on.empty() && back_home) {
      // Its CRN came back before the CCN placed it elsewhere (a pause or a partition shorter
      // than the failure timeout): nothing was placed again.
      ++recovered_in_place_;
      it = reschedules_.erase(it);
    } else if (!on.empty()) {
      reschedule_log_.push_back(json{{"program", it->program}, {"from", it->crn},
                                     {"to", std::vector<std::string>(on.begin(), on.end())}, {"died", it->died},
                                     {"latency_s", t - it->died}, {"cause", it->cause}});
      checked("reschedule-deadline", true);
      it = reschedules_.erase(it);
    } else if (t - it->died > std::chrono::duration<double>(cfg_.reschedule_deadline).count()) {
      checked("reschedule-deadline", false);
      violate("reschedule-deadline", "persistent program " + it->program.substr(0, 12) + " of " + it->crn
                                       + " is not running anywhere " + std::to_string(cfg_.reschedule_deadline.count())
                                       + "ms after its CRN " + (it->cause == "kill" ? "died" : "was cut off"),
              {it->crn});
      it = reschedules_.erase(it);
    } else {
      ++it;
    }
  }
}

void world::one_fault(std::size_t number, const planned_fault& f,
                      std::function<void(double, std::function<void()>)> later) {
  auto secs = [](ms d) { return std::chrono::duration<double>(d).count(); };
  auto tag = "#" + std::to_string(number);
  faults_started_.push_back(number);
  auto target = f.target;
  if (f.kind == "host-kill" || f.kind == "host-pause") {
    auto name = crn_of_program(f.target);
    if (name.empty()) {
      record("fault", f.kind, "", tag + " persistent program " + std::to_string(f.target) + " runs nowhere reachable: skipped");
      return;
    }
    target = static_cast<std::size_t>(std::find(names_.begin(), names_.end(), name) - names_.begin());
  }
  auto& name = names_.at(target);
  bool is_ccn = target < ccns_.size();
  if (node_state(target) != "up") {
    record("fault", f.kind, name, tag + " node is " + node_state(target) + ": skipped");
    return;
  }
  ++faults_applied_;
  auto kind = f.kind == "host-kill" ? std::string{"crn-kill"} : f.kind == "host-pause" ? std::string{"crn-pause"} : f.kind;
  std::cout << "  " << std::fixed << std::setprecision(2) << now() << "s  fault #" << number << " " << f.kind << " "
            << name << std::endl;
  // The persistent programs of a CRN that dies or is cut off must run elsewhere in time.
  auto watch = [&](const std::string& cause) {
    for (auto& [p, on] : running_programs(true))
      if (on.count(name) > 0 && on.size() == 1)
        reschedules_.push_back(pending_reschedule{p, name, now(), cause});
  };
  if (kind == "crn-kill" || kind == "ccn-kill" || kind == "flap") {
    record("fault", kind, name, tag);
    if (is_ccn) {
      stop_ccn(target, true);
    } else {
      watch("kill");
      stop_crn(target - ccns_.size(), true);
    }
    auto down = kind == "flap" ? std::min(cfg_.down_time, ms{300}) : cfg_.down_time;
    later(secs(down), [this, target, is_ccn, name] {
      if (is_ccn)
        start_ccn(target);
      else
        start_crn(target - ccns_.size());
      record("heal", "restart", name);
    });
  } else if (kind == "crn-pause" || kind == "ccn-pause") {
    record("fault", kind, name, tag);
    std::vector<caf::actor> xs;
    if (is_ccn) {
      xs = ccns_[target].actors();
      ccns_[target].st = state::paused;
    } else {
      watch("pause");
      xs = crn_actors(crns_[target - ccns_.size()]);
      crns_[target - ccns_.size()].st = state::paused;
    }
    hold(xs, true);
    later(secs(cfg_.pause_time), [this, target, is_ccn, name, xs] {
      hold(xs, false);
      if (is_ccn && ccns_[target].st == state::paused)
        ccns_[target].st = state::up;
      if (!is_ccn && crns_[target - ccns_.size()].st == state::paused)
        crns_[target - ccns_.size()].st = state::up;
      record("heal", "continue", name);
    });
  } else if (kind == "partition") {
    // A CRN cut off from its CCN (its link holds), or a CCN from its peers (its ccn_peer holds).
    std::vector<caf::actor> xs;
    if (is_ccn) {
      xs = {caf::actor_cast<caf::actor>(ccns_[target].peer)};
      record("fault", kind, name, tag + " from its peer CCNs");
    } else {
      watch("partition");
      xs = {caf::actor_cast<caf::actor>(crns_[target - ccns_.size()].link)};
      record("fault", kind, name, tag + " from its CCN");
    }
    hold(xs, true);
    later(secs(cfg_.partition_time), [this, name, xs] {
      hold(xs, false);
      record("heal", "partition", name);
    });
  } else if (kind == "disk-full" && is_ccn && ccns_[target].full) {
    record("fault", kind, name, tag + " its disk is full already: skipped");
    --faults_applied_;
  } else if (kind == "disk-full" && is_ccn) {
    auto& n = ccns_[target];
    auto err = fill_disk(n);
    record("fault", kind, name, tag + (err.empty() ? "" : " " + err));
    // Probes every half second while it lasts: refused (of probes) in the heal's detail.
    auto refused = std::make_shared<std::pair<int, int>>(0, 0);
    n.refused = refused;
    auto until = now() + secs(cfg_.partition_time);
    auto probe = std::make_shared<std::function<void()>>();
    std::weak_ptr<std::function<void()>> again = probe; // the heal below keeps it alive
    *probe = [this, target, refused, until, again, later] {
      if (now() + 0.5 < until) {
        probe_full_disk(target, refused);
        if (auto p = again.lock())
          later(0.5, *p);
      }
    };
    later(0.25, *probe);
    later(secs(cfg_.partition_time), [this, target, name, refused, probe] {
      auto err = free_disk(ccns_[target]);
      if (!err.empty())
        violate("simulator", name + ": " + err, {name});
      record("heal", "disk-full", name,
             std::to_string(refused->first) + " of " + std::to_string(refused->second) + " posts refused with no_space");
    });
  } else if (kind == "restart") {
    record("fault", kind, name, tag);
    if (!is_ccn)
      watch("restart");
    if (is_ccn)
      stop_ccn(target, false);
    else
      stop_crn(target - ccns_.size(), false);
    later(0.2, [this, target, is_ccn, name] {
      if (is_ccn)
        start_ccn(target);
      else
        start_crn(target - ccns_.size());
      record("heal", "started", name);
    });
  } else {
    record("fault", kind, name, tag + " not simulated in-process: skipped");
    --faults_applied_;
  }
}

// Everything settled: every node up and registered, each persistent program running exactly once.
bool world::converged(std::string& why) const {
  std::map<std::string, int> registered;
  for (auto& c : ccns_)
    if (auto* r = state_of<crn_registry_state>(c.registry))
      for (auto& [id, e] : r->crns)
        if (e.state == link_state::linked || e.state == link_state::waiting)
          ++registered[id];
  for (auto& n : crns_)
    if (registered[n.id] == 0) {
      why = n.name + " is not registered at any CCN";
      return false;
    }
  auto running = running_programs(false);
  for (auto& p : persistent_)
    if (running[p].size() != 1) {
      why = "persistent program " + p.substr(0, 12) + " runs on " + std::to_string(running[p].size()) + " CRNs"
            + copies_of(p);
      return false;
    }
  return true;
}

void world::final_checks() {
  double until = now() + std::chrono::duration<double>(cfg_.converge_timeout).count();
  auto poll = std::chrono::duration<double>(cfg_.poll).count();
  std::string why;
  // A monitor round and a look at convergence every poll interval.
  while (!in_process_interrupted) {
    step({}, std::min(now() + poll, until));
    monitor();
    if (converged(why) || now() >= until)
      break;
  }
  bool ok = converged(why);
  checked("cluster-converges", ok, ok ? "after " + std::to_string(now()) + " s" : why);
  if (!ok)
    violate("cluster-converges", "not converged " + std::to_string(cfg_.converge_timeout.count()) + "ms after the faults: " + why, {});
  // Exactly one copy of every persistent program.
  auto running = running_programs(false);
  for (auto& p : persistent_) {
    auto& on = running[p];
    checked("persistent-exactly-once", on.size() == 1);
    if (on.size() != 1) {
      violate("persistent-exactly-once",
              "persistent program " + p.substr(0, 12) + " runs on " + std::to_string(on.size()) + " CRNs" + copies_of(p), on);
      break;
    }
  }
  for (auto& r : reschedules_) {
    checked("reschedule-deadline", false);
    violate("reschedule-deadline", "persistent program " + r.program.substr(0, 12) + " of " + r.crn + " never ran again", {r.crn});
  }
  reschedules_.clear();
  // Every acknowledged message at every CCN (peers replicate; a restarted CCN, or one whose disk
  // was full, catches up): within what is left of converge-timeout.
  struct lack {
    std::size_t missing = 0;
    std::string example;
  };
  auto lacking = [&](ccn_slot& c) {
    lack out;
    auto have = ask<std::vector<std::string>>(c.messages, atom::inventory_v);
    std::set<std::string> held(have ? have->begin() : std::vector<std::string>::const_iterator{},
                               have ? have->end() : std::vector<std::string>::const_iterator{});
    for (auto& h : acked_)
      if (held.count(h) == 0) {
        ++out.missing;
        out.example = h;
      }
    return out;
  };
  // Each CCN looked at again only while it lacks some (nothing is deleted meanwhile).
  std::map<std::size_t, lack> lacks;
  for (std::size_t i = 0; i < ccns_.size(); ++i)
    lacks[i] = lacking(ccns_[i]);
  auto all_held = [&] {
    return std::all_of(lacks.begin(), lacks.end(), [](auto& l) { return l.second.missing == 0; });
  };
  while (!in_process_interrupted && now() < until && !all_held()) {
    step({}, std::min(now() + poll, until));
    for (auto& [i, l] : lacks)
      if (l.missing > 0)
        l = lacking(ccns_[i]);
  }
  for (std::size_t i = 0; i < ccns_.size(); ++i) {
    auto& c = ccns_[i];
    auto& l = lacks[i];
    checked("acked-messages-everywhere", l.missing == 0, c.name);
    if (l.missing > 0)
      violate("acked-messages-everywhere", c.name + " lacks " + std::to_string(l.missing) + " acknowledged messages, e.g. "
                                             + l.example.substr(0, 12), {c.name});
  }
  // Every stored file, byte for byte, at every CCN, and on `cluster.replicas` CRNs (as many as
  // there are): within what is left of converge-timeout.
  if (!files_.empty()) {
    std::vector<std::pair<std::string, std::string>> file_missing; // ccn, hash
    std::map<std::string, uint32_t> holders;
    auto want = std::min<uint32_t>(cfg_.replicas, static_cast<uint32_t>(crns_.size()));
    auto look = [&] {
      file_missing.clear();
      holders.clear();
      for (auto& c : ccns_)
        for (auto& [hash, bytes] : files_) {
          auto got = ask<file_blob>(c.files, atom::read_v, hash);
          if (!got || got->data != bytes)
            file_missing.emplace_back(c.name, hash);
        }
      for (auto& n : crns_)
        for (auto& [hash, bytes] : files_)
          if (ask<file_info>(n.files, atom::get_v, hash))
            ++holders[hash];
      return file_missing.empty()
             && std::all_of(files_.begin(), files_.end(), [&](auto& f) { return holders[f.first] >= want; });
    };
    while (!in_process_interrupted && !look() && now() < until)
      step({}, std::min(now() + poll, until));
    checked("stored-files-everywhere", file_missing.empty(), std::to_string(files_.size()) + " files");
    if (!file_missing.empty())
      violate("stored-files-everywhere", std::to_string(file_missing.size()) + " stored file copies missing or wrong, e.g. "
                                           + file_missing[0].second.substr(0, 12) + " at " + file_missing[0].first,
              {file_missing[0].first});
    bool replicas_ok = std::all_of(files_.begin(), files_.end(), [&](auto& f) { return holders[f.first] >= want; });
    checked("replica-count", replicas_ok, std::to_string(files_.size()) + " files");
    if (!replicas_ok)
      for (auto& [hash, bytes] : files_)
        if (holders[hash] < want) {
          violate("replica-count", "file " + hash.substr(0, 12) + " is on " + std::to_string(holders[hash])
                                     + " CRNs, fewer than " + std::to_string(want), {});
          break;
        }
  }
  // Each CRN ledger entry counted by exactly one CCN, as the CRN wrote it: the entries written by
  // now, once their CRNs have shipped them (metering goes on meanwhile).
  std::vector<uint64_t> heads;
  for (auto& n : crns_)
    heads.push_back(n.ledger_db->last_seq());
  auto shipped = [&] {
    for (std::size_t i = 0; i < crns_.size(); ++i)
      if (crns_[i].ledger_db->acked() < heads[i])
        return false;
    return true;
  };
  step(shipped, now() + std::chrono::duration<double>(cfg_.converge_timeout).count());
  for (std::size_t k = 0; k < crns_.size(); ++k) {
    auto& n = crns_[k];
    auto entries = n.ledger_db->read(0, 1u << 30);
    while (!entries.empty() && entries.back().seq > heads[k])
      entries.pop_back();
    std::map<uint64_t, std::vector<std::pair<std::string, std::string>>> counted;
    for (auto& c : ccns_)
      for (uint64_t after = 0;;) {
        auto got = ask<std::vector<usage_entry>>(c.usage, atom::list_v, n.id, after, uint32_t{5000});
        if (!got || got->empty())
          break;
        for (auto& e : *got)
          if (e.seq <= heads[k])
            counted[e.seq].emplace_back(c.name, e.hash);
        after = got->back().seq;
      }
    std::string problem;
    for (auto& e : entries) {
      auto i = counted.find(e.seq);
      if (i == counted.end())
        problem = "entry " + std::to_string(e.seq) + " of " + n.name + " is counted by no CCN";
      else if (i->second.size() > 1)
        problem = "entry " + std::to_string(e.seq) + " of " + n.name + " is counted by " + std::to_string(i->second.size()) + " CCNs";
      else if (i->second[0].second != e.hash)
        problem = "entry " + std::to_string(e.seq) + " of " + n.name + " at " + i->second[0].first + " is not the one the CRN wrote";
      if (!problem.empty())
        break;
    }
    if (problem.empty() && counted.size() > entries.size())
      problem = n.name + ": CCNs count " + std::to_string(counted.size()) + " entries, it wrote " + std::to_string(entries.size());
    checked("metering-exactly-once", problem.empty(), std::to_string(entries.size()) + " entries of " + n.name);
    if (!problem.empty())
      violate("metering-exactly-once", problem, {n.name});
  }
}

// ---- report ---------------------------------------------------------------------------------------

// A digest of what happened: the events with their virtual times, where every persistent program
// runs at the end, and how many actor jobs ran. Two runs of one seed give the same digest.
std::string world::digest() const {
  std::ostringstream out;
  for (auto& e : events_)
    out << std::fixed << std::setprecision(6) << e.t << ' ' << e.kind << ' ' << e.what << ' ' << e.node << ' '
        << e.detail << '\n';
  for (auto& [p, on] : running_programs(false)) {
    out << p;
    for (auto& c : on)
      out << ' ' << c;
    out << '\n';
  }
  out << jobs_ << ' ' << acked_.size() << '\n';
  for (auto& [k, v] : outcomes_)
    out << k << ' ' << v << '\n';
  return crypto::to_hex(crypto::sha256(out.str())).substr(0, 32);
}

json world::report(double real_s) {
  json nodes = json::array();
  for (std::size_t i = 0; i < names_.size(); ++i) {
    bool ccn = i < ccns_.size();
    nodes.push_back(json{{"name", names_[i]}, {"role", ccn ? "ccn" : "crn"},
                         {"group", ccn ? i : crns_[i - ccns_.size()].group},
                         {"http", "in-process"}, {"id", ccn ? ccns_[i].id : crns_[i - ccns_.size()].id},
                         {"state", node_state(i)}});
  }
  json plan = json::array();
  for (auto& f : plan_faults(cfg_))
    plan.push_back(describe(cfg_, f));
  std::vector<std::string> shown(persistent_.begin(), persistent_.begin() + std::min<std::size_t>(persistent_.size(), 100));
  return json{
    {"mode", "in-process"},
    {"seed", cfg_.seed},
    {"result", violations_.empty() ? "pass" : "fail"},
    {"duration_s", now()},
    {"real_time_s", real_s},
    {"actor_jobs", jobs_},
    {"trace_digest", digest()},
    {"config", config_json(cfg_)},
    {"nodes", nodes},
    {"events", to_json(events_)},
    {"faults", faults_applied_},
    {"workload", {{"messages_acked", acked_.size()}, {"files_acked", files_.size()},
                  {"persistent_programs", shown}, {"persistent_programs_total", persistent_.size()},
                  {"on_demand_programs", on_demand_}, {"outcomes", outcomes_}}},
    {"placements", placement_log_},
    {"reschedules", reschedule_log_},
    {"reschedule_latency_s", latency_summary(reschedule_log_)},
    {"recovered_in_place", recovered_in_place_},
    {"max_linked_seen", max_linked_seen_},
    {"plan", plan},
    {"invariants", checks_},
    {"violations", to_json(violations_)},
  };
}

// ---- the run --------------------------------------------------------------------------------------

int world::run() {
  if (in_process_interrupted)
    return 130; // a Ctrl-C during an earlier run of this process (a minimiser's search)
  auto real_start = std::chrono::steady_clock::now();
  // Many small LMDB environments: on tmpfs when there is one, where writes cost least.
  std::filesystem::path base = ::access("/dev/shm", W_OK) == 0 ? "/dev/shm" : std::filesystem::temp_directory_path();
  if (auto err = make_work_dir(cfg_.dir, base, dir_, made_dir_); !err.empty()) {
    std::cerr << "alephd: sim: " << err << '\n';
    return cfg_.dir.empty() ? 3 : 2;
  }
  // Two LMDB environments per CRN and one per CCN, each with a few descriptors.
  rlimit lim{};
  if (::getrlimit(RLIMIT_NOFILE, &lim) == 0 && lim.rlim_cur < lim.rlim_max) {
    lim.rlim_cur = lim.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &lim);
  }
  interrupt_handler on_signal{on_interrupt_in_process};
  // The nodes log to a file: warnings and errors only (thousands of actors are chatty).
  auto old_level = spdlog::get_level();
  spdlog::set_level(spdlog::level::off);
  rng_.seed(cfg_.seed ^ 0x5eedULL);
  sys_cfg_ = std::make_unique<sys_config>();
  sys_ = std::make_unique<caf::actor_system>(*sys_cfg_);
  sched_ = &dynamic_cast<caf::scheduler::test_coordinator&>(sys_->scheduler());
  virtual_sched = sched_;
  virtual_start = sched_->clock().current_time;
  wall_clock_override = virtual_wall;
  std::cout << "alephd sim --in-process: seed " << cfg_.seed << ", " << cfg_.ccns << " CCNs x " << cfg_.crns_per_ccn
            << " CRNs" << (cfg_.extra_crns ? " + " + std::to_string(cfg_.extra_crns) : "") << ", "
            << cfg_.persistent << " persistent programs, work dir " << dir_.string() << std::endl;
  int code = 0;
  if (auto err = prepare(); !err.empty()) {
    std::cerr << "alephd: sim: " << err << '\n';
    code = 3;
  }
  if (code == 0) {
    for (std::size_t i = 0; i < ccns_.size(); ++i)
      start_ccn(i);
    for (std::size_t i = 0; i < crns_.size(); ++i)
      start_crn(i);
    // Up when every CRN has a place (linked, or waiting beyond the limit).
    std::string why;
    auto registered = [&] {
      std::size_t n = 0;
      for (auto& c : ccns_)
        if (auto* r = state_of<crn_registry_state>(c.registry))
          for (auto& [id, e] : r->crns)
            n += e.state == link_state::linked || e.state == link_state::waiting;
      return n >= crns_.size();
    };
    step(registered, now() + std::chrono::duration<double>(cfg_.converge_timeout).count());
    if (!registered()) {
      std::cerr << "alephd: sim: the cluster did not come up within " << cfg_.converge_timeout.count() << "ms (virtual)\n";
      code = 3;
    } else if (!publish_programs()) {
      code = 3;
    }
  }
  if (code == 0) {
    record("start", "workload", "");
    // Everything that happens at a set virtual time: faults, heals, workload, monitor rounds.
    struct timed {
      double t;
      uint64_t order;
      std::function<void()> run;
      bool operator>(const timed& o) const { return t != o.t ? t > o.t : order > o.order; }
    };
    std::priority_queue<timed, std::vector<timed>, std::greater<>> queue;
    uint64_t order = 0;
    auto later = [&](double dt, std::function<void()> f) { queue.push(timed{now() + dt, order++, std::move(f)}); };
    double start = now();
    double end = start + std::chrono::duration<double>(cfg_.duration).count();
    auto plan = plan_faults(cfg_);
    auto interval = std::chrono::duration<double>(cfg_.fault_interval).count();
    for (std::size_t i = 0; i < plan.size(); ++i)
      if (selected(cfg_, i + 1))
          queue.push(timed{start + interval * static_cast<double>(i + 1), order++,
                         [&, i] { one_fault(i + 1, plan[i], later); }});
    // Poisson arrivals of messages and calls; a monitor round every poll interval.
    std::function<void()> next_message, next_upload, next_call, next_round;
    auto gap = [&](double rate) { return std::exponential_distribution<double>(rate)(rng_); };
    next_message = [&] {
      post_message();
      later(gap(cfg_.messages_per_s), next_message);
    };
    next_upload = [&] {
      upload_file();
      later(gap(cfg_.uploads_per_s), next_upload);
    };
    next_call = [&] {
      call_program();
      later(gap(cfg_.calls_per_s), next_call);
    };
    next_round = [&] {
      monitor();
      later(std::chrono::duration<double>(cfg_.poll).count(), next_round);
    };
    if (cfg_.messages_per_s > 0)
      later(gap(cfg_.messages_per_s), next_message);
    if (cfg_.uploads_per_s > 0)
      later(gap(cfg_.uploads_per_s), next_upload);
    if (cfg_.calls_per_s > 0)
      later(gap(cfg_.calls_per_s), next_call);
    later(0, next_round);
    // A rolling restart goes on until every node has restarted.
    auto last_fault = start + interval * static_cast<double>(plan.size());
    if (cfg_.scenario == "rolling-restart")
      end = std::max(end, last_fault + 1);
    // A progress line every tenth of the run.
    double tenth = std::max(1.0, (end - start) / 10);
    std::function<void()> progress = [&] {
      auto running = running_programs(true);
      std::size_t up = 0;
      for (auto& n : crns_)
        up += n.st == state::up;
      std::cout << "  " << std::fixed << std::setprecision(1) << now() << "s  " << faults_applied_ << " faults, "
                << up << "/" << crns_.size() << " CRNs up, " << running.size() << "/" << persistent_.size()
                << " persistent programs running, " << acked_.size() << " messages acked, " << jobs_ << " actor jobs"
                << std::endl;
      later(tenth, progress);
    };
    later(tenth, progress);
    while (!queue.empty() && queue.top().t <= end && !in_process_interrupted && !failed_) {
      auto next = queue.top();
      queue.pop();
      step({}, next.t);
      next.run();
    }
    if (!in_process_interrupted && !failed_)
      step({}, end);
    // The end of the faults: whatever is still down, paused or cut off comes back now.
    for (std::size_t i = 0; i < ccns_.size(); ++i) {
      if (ccns_[i].full) {
        auto err = free_disk(ccns_[i]);
        if (!err.empty())
          violate("simulator", ccns_[i].name + ": " + err, {ccns_[i].name});
        auto& r = *ccns_[i].refused;
        record("heal", "disk-full", ccns_[i].name,
               std::to_string(r.first) + " of " + std::to_string(r.second) + " posts refused with no_space (end of faults)");
      }
      if (ccns_[i].st != state::up) {
        if (ccns_[i].st == state::down)
          start_ccn(i);
        ccns_[i].st = state::up;
        record("heal", "end of faults", ccns_[i].name);
      }
    }
    for (std::size_t i = 0; i < crns_.size(); ++i)
      if (crns_[i].st != state::up) {
        if (crns_[i].st == state::down)
          start_crn(i);
        crns_[i].st = state::up;
        record("heal", "end of faults", crns_[i].name);
      }
    held_.clear();
    record("start", "converge", "");
    if (!in_process_interrupted && !failed_)
      final_checks();
    code = failed_ ? 1 : 0;
  }
  if (in_process_interrupted) {
    std::cerr << "alephd: sim: interrupted\n";
    code = code == 0 ? 130 : code;
  }
  auto real_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - real_start).count();
  auto r = code == 3 ? json{} : report(real_s);
  // Stop every actor before the system goes.
  for (std::size_t i = 0; i < crns_.size(); ++i)
    if (crns_[i].st != state::down)
      stop_crn(i, false);
  for (std::size_t i = 0; i < ccns_.size(); ++i) {
    if (ccns_[i].st != state::down)
      stop_ccn(i, false);
    caf::anon_send_exit(ccns_[i].front, caf::exit_reason::user_shutdown);
  }
  held_.clear();
  sched_->run();
  wall_clock_override = nullptr;
  if (code != 3) {
    report_ = r; // written by the caller, with the shortest history of a violation
    std::cout << "alephd sim --in-process: " << (code == 0 ? "PASS" : "FAIL") << ": seed " << cfg_.seed << ", "
              << faults_applied_ << " faults, " << persistent_.size() << " persistent programs, " << acked_.size()
              << " messages acknowledged, " << std::fixed << std::setprecision(1) << now() << " s virtual in "
              << real_s << " s, " << jobs_ << " actor jobs, trace " << r["trace_digest"].get<std::string>();
    if (!r["reschedule_latency_s"]["p50"].is_null())
      std::cout << ", reschedule p50 " << std::setprecision(2) << r["reschedule_latency_s"]["p50"].get<double>() << " s";
    std::cout << std::endl;
  }
  ccns_.clear();
  crns_.clear();
  // A request whose answer died with a killed actor waits for its timeout, which only virtual
  // time would bring: do not wait for such actors.
  sys_->await_actors_before_shutdown(false);
  sys_.reset();
  spdlog::set_level(old_level);
  // A made work dir goes even after a failure (a seed replays exactly; --keep keeps it): its
  // stores can take gigabytes of /dev/shm.
  close_work_dir(dir_, made_dir_ && !cfg_.keep, "data");
  return code;
}

} // namespace

int run_in_process(const config& c, run_outcome* out) {
  static const std::set<std::string> supported{"crn-kill", "ccn-kill", "host-kill", "crn-pause", "ccn-pause",
                                               "host-pause", "partition", "restart", "flap", "disk-full"};
  if (c.instances > 0) {
    std::cerr << "alephd: sim: workload.instances: microVMs need real processes (run without --in-process)\n";
    return 2;
  }
  config cfg = c;
  for (auto& k : cfg.kinds) {
    if (k == "slow-link") {
      // In the default mix: planned as with processes (the same schedule for a seed), skipped.
      std::cout << "alephd sim --in-process: slow-link faults are not simulated (messages take no time "
                   "in flight); they are skipped\n";
    } else if (supported.count(k) == 0) {
      std::cerr << "alephd: sim: faults.kinds: " << k << " is not simulated in-process (it needs real processes)\n";
      return 2;
    }
  }
  world w{std::move(cfg)};
  auto code = w.run();
  if (out)
    *out = w.outcome(code);
  return code;
}

} // namespace alephd::sim
