#include "runtime/node.hpp"
#include "runtime/crypto.hpp"

#include <atomic>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <sstream>
#include <thread>

#include <caf/all.hpp>
#include <caf/io/middleman.hpp>
#include <caf/openssl/manager.hpp>
#include <caf/openssl/publish.hpp>
#include <spdlog/spdlog.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "actors/ccn_link.hpp"
#include "actors/ccn_node.hpp"
#include "actors/ccn_peer.hpp"
#include "actors/content_store.hpp"
#include "actors/crn_registry.hpp"
#include "actors/job_broker.hpp"
#include "actors/message_store.hpp"
#include "actors/replicator.hpp"
#include "actors/scheduler.hpp"
#include "actors/trigger_router.hpp"
#include "actors/usage_book.hpp"
#include "actors/prober.hpp"
#include "actors/reward_epochs.hpp"
#include "actors/reward_ledger.hpp"
#include "actors/vm_supervisor.hpp"
#include "runtime/blob_store.hpp"
#include "runtime/cgroup.hpp"
#include "runtime/execution_records.hpp"
#include "runtime/execution_table.hpp"
#include "runtime/ledger.hpp"
#include "runtime/message_wal.hpp"
#include "runtime/sandbox.hpp"
#include "runtime/sandbox_pool.hpp"
#include "runtime/gateway.hpp"
#include "runtime/wall_clock.hpp"
#include "runtime/http_server.hpp"
#include "runtime/lmdb.hpp"
#include "runtime/routes.hpp"
#include "runtime/sysinfo.hpp"

namespace alephd {

namespace {

std::string random_hex(size_t bytes) {
  std::random_device rd;
  static constexpr char digits[] = "0123456789abcdef";
  std::string s;
  for (size_t i = 0; i < bytes; ++i) {
    auto b = rd() & 0xff;
    s += digits[b >> 4];
    s += digits[b & 0xf];
  }
  return s;
}

// Writes a small file durably and atomically, created with `mode` from the start (a secret is
// never readable by others, not even briefly).
bool write_file(const std::string& path, const std::string& content, mode_t mode) {
  auto tmp = path + ".tmp";
  ::unlink(tmp.c_str()); // a leftover from a crash may be read-only
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
  if (fd < 0)
    return false;
  bool ok = ::write(fd, content.data(), content.size()) == static_cast<ssize_t>(content.size())
            && ::fsync(fd) == 0;
  ::close(fd);
  if (!ok || std::rename(tmp.c_str(), path.c_str()) != 0) {
    ::unlink(tmp.c_str());
    return false;
  }
  auto dir = std::filesystem::path{path}.parent_path();
  if (int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC); dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
  return true;
}

// alephd-guest next to the running alephd binary.
std::string default_guest_binary() {
  std::error_code ec;
  auto self = std::filesystem::read_symlink("/proc/self/exe", ec);
  return (ec ? std::filesystem::path{"."} : self.parent_path()).string() + "/alephd-guest";
}

std::string default_data_dir(const settings& s, const char* role) {
  return s.data_dir.empty() ? std::string{"./.alephd-"} + role : s.data_dir;
}

// Until `ready` is set, the node's context is still being filled in: answer 503.
http::handler gated(std::shared_ptr<std::atomic<bool>> ready, http::handler h) {
  return [ready, h](http::request&& req, http::responder respond) {
    if (!ready->load(std::memory_order_acquire))
      return respond(http::json_error(503, "the node is starting"));
    h(std::move(req), std::move(respond));
  };
}

std::unique_ptr<http::server> start_http(const settings& s, uint16_t port, http::handler h,
                                         std::string& err, std::string spool_dir = {},
                                         std::chrono::milliseconds answer_timeout = {}) {
  http::server_options o;
  o.answer_timeout = answer_timeout;
  o.spool_dir = std::move(spool_dir); // large uploads go to disk, next to the blobs
  o.host = s.http_host;
  o.port = port;
  o.threads = s.http_threads;
  o.max_connections_per_client = s.max_connections_per_client;
  o.rate_per_client = s.rate_limit;
  o.rate_burst = s.rate_burst;
  o.limit_loopback = s.limit_loopback;
  // Room for multipart framing around the largest file.
  o.max_body_bytes = std::max(s.max_file_size, s.max_message_size) + (1 << 20);
  o.server_name = std::string{"alephd/"} + ALEPHD_VERSION;
  auto srv = std::make_unique<http::server>(o, std::move(h));
  err = srv->start();
  return err.empty() ? std::move(srv) : nullptr;
}

} // namespace

namespace {

// Monitors a node's actors: one that ends for any reason but a shutdown breaks the node.
caf::behavior watchdog(caf::event_based_actor* self, std::string node, std::vector<caf::actor> watched,
                       fatal_handler on_fatal) {
  for (auto& a : watched)
    self->monitor(a);
  self->set_down_handler([=](caf::down_msg& dm) {
    if (dm.reason == caf::exit_reason::user_shutdown || dm.reason == caf::exit_reason::normal)
      return;
    auto what = node + ": an actor failed (" + describe(dm.reason) + ")";
    spdlog::critical("{}; stopping the node", what);
    if (on_fatal)
      on_fatal(what);
  });
  return {[](caf::unit_t) {}};
}

} // namespace

caf::actor spawn_watchdog(caf::actor_system& sys, std::string node, std::vector<caf::actor> watched,
                          fatal_handler on_fatal) {
  return sys.spawn(watchdog, std::move(node), std::move(watched), std::move(on_fatal));
}

std::string load_node_identity(const std::string& dir, std::string& public_key,
                               std::string& secret_key, std::string& err) {
  auto key = crypto::load_or_create_node_key(dir, err);
  if (!key)
    return {};
  public_key = key->public_key;
  secret_key = key->secret_key;
  return crypto::node_id_of(key->public_key);
}

// ---- CCN ---------------------------------------------------------------------------------------

ccn_node_runtime::ccn_node_runtime(fatal_handler on_fatal) : on_fatal_(std::move(on_fatal)) {
}

ccn_node_runtime::~ccn_node_runtime() {
  stop();
}

uint16_t ccn_node_runtime::http_port() const {
  return http_ ? http_->port() : 0;
}

std::string ccn_node_runtime::start(caf::actor_system& sys, const settings& s, bool publish,
                                    std::vector<ccn_node_actor> direct_peers) {
  sys_ = &sys;
  auto dir = default_data_dir(s, "ccn");
  std::string err;
  id_ = load_node_identity(dir, public_key_, secret_key_, err);
  if (!err.empty())
    return err;
  env_ = lmdb::env::open(dir + "/lmdb", err);
  if (!env_)
    return err;
  // A log left by an earlier run is indexed even when this run does not use one.
  const bool use_wal = s.group_commit && s.message_wal;
  std::shared_ptr<message_wal> wal;
  if (use_wal || std::filesystem::exists(dir + "/wal")) {
    wal = message_wal::open(dir + "/wal", err);
    if (!wal)
      return err;
    if (err = message_store_recover(*env_, *wal); !err.empty())
      return err;
    if (!use_wal && !wal->recovered().empty())
      return "the write-ahead log in " + dir + "/wal holds messages that LMDB (full) cannot take: "
             "free space, or start with --ccn.group-commit=true --ccn.wal=true to serve them from "
             "memory meanwhile";
  }
  if (use_wal)
    messages_ = sys.spawn(message_store_wal, env_, std::move(wal), index_mode::thread);
  else
    messages_ = sys.spawn(message_store, env_, s.group_commit);
  content_store_config cc;
  cc.root = dir + "/blobs";
  cc.blobs = std::make_shared<blob_store>(cc.root);
  cc.env = env_;
  cc.shards = s.cache_shards;
  cc.max_file_bytes = s.max_file_size;
  cc.keep_stored = true; // the origin store: never evicted
  cc.fetch_missing = true; // a lost copy comes back from a CRN's replica
  cc.scrub_bytes = s.scrub_interval.count() > 0 ? s.scrub_bytes : 0;
  cc.scrub_interval = s.scrub_interval;
  files_ = sys.spawn(content_store, cc);
  crn_registry_config rc;
  rc.ccn_id = id_;
  rc.max_linked = s.max_linked_crns;
  rc.heartbeat = s.heartbeat_interval;
  rc.failure_timeout = s.failure_timeout;
  // Long enough for a CRN at the back-off cap (30 s) to find us again.
  const auto restart_grace = s.failure_timeout + std::chrono::seconds(30);
  rc.reserve_grace = restart_grace;
  rc.env = env_;
  registry_ = sys.spawn(crn_registry, rc);
  scheduler_config sc;
  sc.ccn_id = id_;
  sc.env = env_;
  sc.orphan_grace = restart_grace;
  scheduler_ = sys.spawn(scheduler, sc);
  caf::anon_send(messages_, atom::subscribe_v, caf::actor_cast<message_listener_actor>(scheduler_));
  caf::anon_send(registry_, atom::subscribe_v, caf::actor_cast<node_listener_actor>(scheduler_));
  trigger_router_config tc;
  tc.ccn_id = id_;
  tc.env = env_;
  triggers_ = sys.spawn(trigger_router, tc);
  caf::anon_send(messages_, atom::subscribe_v, caf::actor_cast<message_listener_actor>(triggers_));
  caf::anon_send(registry_, atom::subscribe_v, caf::actor_cast<node_listener_actor>(triggers_));
  replicator_config rpc;
  rpc.ccn_id = id_;
  rpc.env = env_;
  rpc.default_replicas = s.replicas;
  replicator_ = sys.spawn(replicator, rpc, files_);
  caf::anon_send(messages_, atom::subscribe_v, caf::actor_cast<message_listener_actor>(replicator_));
  caf::anon_send(registry_, atom::subscribe_v, caf::actor_cast<node_listener_actor>(replicator_));
  caf::anon_send(files_, atom::connect_v, caf::actor_cast<file_source_actor>(replicator_));
  auto locator = std::make_shared<http_locator>();
  ccn_peer_config pc;
  pc.ccn_id = id_;
  pc.endpoints = s.peers;
  pc.direct = std::move(direct_peers);
  pc.http = locator;
  pc.verify_signatures = s.verify_signatures.value_or(true);
  peer_ = sys.spawn(ccn_peer, pc, messages_, files_);
  usage_ = sys.spawn(usage_book, env_);
  prober_config prc;
  prc.env = env_;
  prc.interval = s.probe_interval;
  prc.window = std::chrono::duration_cast<std::chrono::seconds>(s.score_window);
  prc.diagnostic_ref = s.diagnostic_ref;
  {
    std::stringstream in{s.accepted_versions};
    for (std::string v; std::getline(in, v, ',');)
      if (!v.empty())
        prc.accepted_versions.push_back(v);
    if (prc.accepted_versions.empty())
      prc.accepted_versions.push_back(ALEPHD_VERSION);
  }
  prober_ = sys.spawn(prober, prc);
  caf::anon_send(registry_, atom::subscribe_v, caf::actor_cast<node_listener_actor>(prober_));
  reward_epochs_config rec;
  rec.ccn_id = id_;
  rec.ccn_name = s.name.empty() ? "ccn-" + id_.substr(0, 8) : s.name;
  rec.env = env_;
  rec.epoch_seconds = std::chrono::seconds(s.epoch_seconds);
  rec.params.max_paid = s.max_paid;
  rec.params.cu_hour_price = {{"program", s.price_program},
                              {"persistent_program", s.price_persistent_program},
                              {"instance", s.price_instance}};
  rec.params.storage_gib_hour_price = s.price_storage_gib_hour;
  {
    std::string serr;
    parse_stakes(s.stakes, rec.stakes, serr); // checked with the other settings
  }
  rec.registry = registry_;
  rec.prober = prober_;
  rec.peer = peer_;
  epochs_ = sys.spawn(reward_epochs, rec);
  node_ = sys.spawn(ccn_node, id_, registry_, peer_, messages_, files_, scheduler_,
                    std::shared_ptr<const http_locator>{locator}, usage_);
  watchdog_ = spawn_watchdog(sys, "ccn " + id_,
                             {caf::actor_cast<caf::actor>(messages_), caf::actor_cast<caf::actor>(files_),
                              caf::actor_cast<caf::actor>(registry_), caf::actor_cast<caf::actor>(scheduler_),
                              caf::actor_cast<caf::actor>(triggers_),
                              caf::actor_cast<caf::actor>(replicator_),
                              caf::actor_cast<caf::actor>(peer_), caf::actor_cast<caf::actor>(node_),
                              caf::actor_cast<caf::actor>(usage_), caf::actor_cast<caf::actor>(prober_),
                              caf::actor_cast<caf::actor>(epochs_)},
                             on_fatal_);
  std::string node_endpoint = "in-process";
  if (publish) {
    auto port = s.node_port < 0 ? 4025 : s.node_port;
    auto p = sys.has_openssl_manager()
               ? caf::openssl::publish(node_, static_cast<uint16_t>(port), s.node_host.c_str(), true)
               : sys.middleman().publish(node_, static_cast<uint16_t>(port), s.node_host.c_str(), true);
    if (!p) {
      stop();
      return "cannot listen on node port " + s.node_host + ":" + std::to_string(port) + ": "
             + sys.render(p.error());
    }
    node_port_ = *p;
    node_endpoint = s.node_host + ":" + std::to_string(node_port_);
  }
  auto ctx = std::make_shared<ccn_context>();
  ctx->sys = &sys;
  ctx->messages = messages_;
  ctx->files = files_;
  ctx->registry = registry_;
  ctx->scheduler = scheduler_;
  ctx->peer = peer_;
  ctx->usage = usage_;
  ctx->prober = prober_;
  ctx->epochs = epochs_;
  ctx->id = id_;
  ctx->name = s.name.empty() ? "ccn-" + id_.substr(0, 8) : s.name;
  ctx->node_endpoint = node_endpoint;
  ctx->max_file_bytes = s.max_file_size;
  ctx->max_message_bytes = s.max_message_size;
  ctx->verify_signatures = s.verify_signatures.value_or(true);
  ctx->started = unix_seconds();
  auto port = s.http_port < 0 ? 4024 : s.http_port;
  auto ready = std::make_shared<std::atomic<bool>>(false);
  // Every CCN handler asks its actors with a 30 s timeout; this is the net under them all (an
  // append is answered by the message store itself, with no ask).
  http_ = start_http(s, static_cast<uint16_t>(port), gated(ready, ccn_routes(ctx)), err,
                     cc.root + "/tmp", std::chrono::seconds(35));
  if (!http_) {
    stop();
    return err;
  }
  ctx->http_endpoint = "http://" + s.http_host + ":" + std::to_string(http_->port());
  locator->set(ctx->http_endpoint);
  ready->store(true, std::memory_order_release);
  spdlog::info("ccn {}: http {}:{}, node {}, data {}", id_, s.http_host, http_->port(),
               node_endpoint, dir);
  return {};
}

void ccn_node_runtime::stop() {
  if (sys_ == nullptr)
    return;
  if (watchdog_)
    caf::anon_send_exit(watchdog_, caf::exit_reason::user_shutdown);
  watchdog_ = nullptr;
  if (http_)
    http_->stop();
  if (node_port_ != 0) {
    if (sys_->has_openssl_manager()) // caf/openssl/unpublish.hpp of 0.17.6 does not compile
      caf::anon_send(sys_->openssl_manager().actor_handle(), caf::unpublish_atom::value,
                     node_.address(), node_port_);
    else
      sys_->middleman().unpublish(node_, node_port_);
    node_port_ = 0;
  }
  // Reverse order of dependencies.
  for (auto a : {caf::actor_cast<caf::actor>(node_), caf::actor_cast<caf::actor>(epochs_),
                 caf::actor_cast<caf::actor>(prober_), caf::actor_cast<caf::actor>(usage_),
                 caf::actor_cast<caf::actor>(peer_), caf::actor_cast<caf::actor>(triggers_), caf::actor_cast<caf::actor>(replicator_),
                 caf::actor_cast<caf::actor>(scheduler_), caf::actor_cast<caf::actor>(registry_),
                 caf::actor_cast<caf::actor>(files_), caf::actor_cast<caf::actor>(messages_)})
    if (a)
      caf::anon_send_exit(a, caf::exit_reason::user_shutdown);
  node_ = nullptr;
  usage_ = nullptr;
  prober_ = nullptr;
  epochs_ = nullptr;
  peer_ = nullptr;
  scheduler_ = nullptr;
  triggers_ = nullptr;
  replicator_ = nullptr;
  registry_ = nullptr;
  files_ = nullptr;
  messages_ = nullptr;
  sys_ = nullptr;
}

// ---- CRN ---------------------------------------------------------------------------------------

crn_node_runtime::crn_node_runtime(fatal_handler on_fatal) : on_fatal_(std::move(on_fatal)) {
}

crn_node_runtime::~crn_node_runtime() {
  stop();
}

uint16_t crn_node_runtime::http_port() const {
  return http_ ? http_->port() : 0;
}

std::string crn_node_runtime::start(caf::actor_system& sys, const settings& s,
                                    std::vector<ccn_node_actor> direct) {
  sys_ = &sys;
  auto dir = default_data_dir(s, "crn");
  std::string err;
  id_ = load_node_identity(dir, public_key_, secret_key_, err);
  if (!err.empty())
    return err;
  token_ = random_hex(32);
  if (!write_file(dir + "/login_token", token_ + "\n", 0400))
    return "cannot write " + dir + "/login_token";
  auto usage = read_system_usage(dir);
  crn_info info;
  info.id = id_;
  info.name = s.name.empty() ? "crn-" + id_.substr(0, 8) : s.name;
  info.vcpus = s.vcpus > 0 ? s.vcpus : std::max(1u, usage.cpu_count);
  info.memory_mib = s.memory_mib > 0 ? s.memory_mib : usage.mem_total_kb / 1024;
  info.disk_mib = usage.disk_available_kb / 1024;
  info.software_version = ALEPHD_VERSION;
  info.asn = s.asn;
  info.public_key = public_key_;
  settings_ = s;
  table_ = std::make_shared<execution_table>();
  auto env = std::make_shared<execution_env>();
  env->data_dir = dir;
  env->guest_binary = s.guest_binary.empty() ? default_guest_binary() : s.guest_binary;
  env->bwrap = s.bwrap;
  auto assets = s.microvm_assets.empty()
                  ? std::filesystem::path{default_guest_binary()}.parent_path().string() + "/microvm"
                  : s.microvm_assets;
  env->microvm_kernel = assets + "/kernel";
  env->microvm_initrd = assets + "/initrd";
  // Assets made by builds before 2026-12-07 have other names.
  if (::access(env->microvm_kernel.c_str(), F_OK) != 0 && ::access((assets + "/vmlinuz").c_str(), F_OK) == 0) {
    env->microvm_kernel = assets + "/vmlinuz";
    env->microvm_initrd = assets + "/initramfs.cpio.gz";
  }
  if (::access(env->microvm_kernel.c_str(), R_OK) != 0)
    spdlog::warn("crn {}: no microVM kernel in {}: instances cannot run (make builds it; or set "
                 "execution.microvm-assets)", id_, assets);
  env->reuse_timeout = s.reuse_timeout;
  env->pids_max = s.pids_max;
  env->cgroups = s.cgroups && cgroup::version() != 0 && ::geteuid() == 0;
  env->cgroup_root = cgroup::root_name_for(id_);
  if (env->cgroups)
    cgroup_root_ = env->cgroup_root;
  env->table = table_;
  if (::access(env->guest_binary.c_str(), X_OK) != 0)
    spdlog::warn("crn {}: guest agent {} is missing: programs cannot run (set execution.guest-binary)",
                 id_, env->guest_binary);
  // What the previous CRN process left: sandboxes still running are re-adopted, persistent
  // workloads whose sandbox died start again, everything else is cleaned up.
  env->adopt_window = std::chrono::duration_cast<std::chrono::seconds>(
    s.adopt_window + std::chrono::milliseconds{999});
  std::vector<execution_record> resume;
  std::set<std::string> keep_groups, keep_dirs, keep_scratch;
  {
    std::string rerr;
    env->records = execution_records::open(dir, rerr);
    if (!env->records)
      spdlog::warn("crn {}: {}; executions will not be re-adopted after a restart", id_, rerr);
    for (auto& r : env->records ? env->records->all() : std::vector<execution_record>{}) {
      bool alive = r.alive();
      if (alive && env->adopt_window.count() > 0) {
        keep_groups.insert(r.handle.cgroup_name);
        keep_dirs.insert(r.run_dir);
        if (r.executor == "sandbox" && !r.handle.scratch_dir.empty())
          keep_scratch.insert(r.handle.scratch_dir);
        resume.push_back(r);
        continue;
      }
      if (alive) {
        spdlog::info("crn {}: stopping the {} of {} (re-adoption is off)", id_, r.executor,
                     r.alloc.item_hash);
        r.kill();
      }
      if (r.persistent && env->adopt_window.count() > 0)
        resume.push_back(r); // started afresh; the CCN confirms or moves it
      else
        env->records->erase(r.alloc.item_hash);
    }
  }
  {
    // Sockets left in run dirs nobody re-adopts (an instance's disk overlay stays: the CCN may
    // place the instance here again; `erase` deletes it).
    std::error_code ec;
    for (auto& e : std::filesystem::directory_iterator{dir + "/executions", ec}) {
      auto run = e.path() / "run";
      if (keep_dirs.count(run.string()) > 0)
        continue;
      for (const char* sock : {"guest.sock", "qmp.sock"})
        std::filesystem::remove(run / sock, ec);
    }
    // The same for the scratch dirs of sandboxes (on a tmpfs: sandbox_options::scratch_on_tmpfs),
    // and for those of CRNs whose data dir is gone.
    scratch_group_ = env->cgroup_root; // one name per CRN, as its cgroups'
    sandbox::claim_scratch_group(scratch_group_, std::filesystem::absolute(dir, ec).string());
    if (auto n = sandbox::remove_scratch_orphans(scratch_group_, keep_scratch); n > 0)
      spdlog::info("crn {}: removed {} sandbox scratch dirs left by an earlier run", id_, n);
    if (auto n = sandbox::remove_abandoned_scratch_groups(); n > 0)
      spdlog::info("crn {}: removed the sandbox scratch dirs of {} CRNs whose data dir is gone", id_, n);
  }
  if (s.cgroups) {
    // Groups of sandboxes that died with an earlier CRN process (not the re-adopted ones).
    auto keep = [&](const std::string& name) { return keep_groups.count(name) > 0; };
    if (auto n = cgroup::remove_orphans(env->cgroup_root, keep); n > 0)
      spdlog::info("crn {}: removed {} cgroups left by an earlier run", id_, n);
    if (!env->cgroups)
      spdlog::warn("crn {}: {}: executions run without memory, pids and CPU limits", id_,
                   cgroup::version() == 0 ? "no usable cgroup hierarchy" : "not root");
  }
  if (::access(env->bwrap.c_str(), X_OK) != 0)
    spdlog::warn("crn {}: {} is missing: programs cannot run (install bubblewrap)", id_, env->bwrap);
  if (s.prealloc > 0 && ::access(env->bwrap.c_str(), X_OK) == 0
      && ::access(env->guest_binary.c_str(), X_OK) == 0) {
    sandbox_options base;
    base.bwrap = env->bwrap;
    base.guest_binary = env->guest_binary;
    if (env->cgroups) {
      // Until taken: the smallest program's limits; taking sets the execution's own.
      base.limits = cgroup_limits{128ull << 20, env->pids_max, 1.0};
      base.cgroup_root = env->cgroup_root;
    }
    base.scratch_group = scratch_group_;
    std::error_code ec;
    std::filesystem::remove_all(dir + "/pool", ec); // run dirs of an earlier run
    env->pool = std::make_shared<sandbox_pool>(base, s.prealloc, dir + "/pool");
  }
  // The file cache: bounded, its bound reserved out of the disk offered for volumes.
  {
    std::error_code ec;
    // Files of the first cache layout (flat, with .verified stamps) are not indexed: remove them.
    for (auto& e : std::filesystem::directory_iterator{dir + "/cache", ec})
      if (e.is_regular_file(ec))
        std::filesystem::remove(e.path(), ec);
  }
  std::string cerr;
  auto cache_env = lmdb::env::open(dir + "/cache-index", cerr, uint64_t{1} << 30);
  if (!cache_env)
    return cerr;
  content_store_config cc;
  cc.root = dir + "/cache";
  cc.blobs = std::make_shared<blob_store>(cc.root);
  cc.env = std::shared_ptr<lmdb::env>{std::move(cache_env)};
  cc.shards = s.cache_shards;
  // Default: 10 GiB, at most a fifth of the file system (several CRNs may share one disk).
  cc.max_bytes = s.cache_max_bytes > 0
                   ? s.cache_max_bytes
                   : std::min<uint64_t>(uint64_t{10} << 30, usage.disk_total_kb * 1024 / 5);
  cc.high_watermark = s.cache_high_watermark / 100.0;
  cc.low_watermark = s.cache_low_watermark / 100.0;
  cc.max_file_bytes = cc.max_bytes; // a larger file could never stay in the cache
  cc.keep_stored = false;
  cc.fetch_missing = true;
  cc.fetch_timeout = env->fetch_timeout;
  cc.scrub_bytes = s.scrub_interval.count() > 0 ? s.scrub_bytes : 0;
  cc.scrub_interval = s.scrub_interval;
  files_ = sys.spawn(content_store, cc);
  env->files = files_;
  cache_usage cache;
  {
    caf::scoped_actor self{sys};
    self->request(files_, std::chrono::seconds(60), atom::usage_v)
      .receive([&](const cache_usage& u) { cache = u; },
               [&](caf::error& e) { cerr = describe(e); });
  }
  if (!cerr.empty()) {
    stop();
    return "cannot open the file cache in " + cc.root + ": " + cerr;
  }
  {
    // The reward ledger: a CRN whose ledger cannot be continued does not start (metering would
    // be lost or the chain broken); `alephd ledger verify` names the damage.
    std::string lerr;
    std::shared_ptr<ledger_store> store = ledger_store::open(dir + "/ledger", lerr);
    if (!store) {
      stop();
      return lerr;
    }
    reward_ledger_config rl;
    rl.node = id_;
    ledger_ = sys.spawn(reward_ledger, std::move(store), rl);
    env->ledger = ledger_;
    env->sample_interval = s.sample_interval;
  }
  auto reserved = (cc.max_bytes > cache.bytes ? cc.max_bytes - cache.bytes : 0) >> 20;
  info.disk_mib = info.disk_mib > reserved ? info.disk_mib - reserved : 0;
  job_broker_config jb;
  jb.crn_id = id_;
  jb.cores = info.vcpus;
  jb.memory_mib = info.memory_mib;
  jb.disk_mib = info.disk_mib;
  jb.env = env;
  for (auto& r : resume)
    jb.resume.push_back({r.alloc, r.persistent});
  broker_ = sys.spawn(job_broker, jb);
  auto port = s.http_port < 0 ? 4020 : s.http_port;
  auto ctx = std::make_shared<crn_context>();
  auto ready = std::make_shared<std::atomic<bool>>(false);
  http_ = start_http(s, static_cast<uint16_t>(port), gated(ready, crn_routes(ctx)), err);
  if (!http_) {
    stop();
    return err;
  }
  auto http_endpoint = "http://" + s.http_host + ":" + std::to_string(http_->port());
  info.address = s.public_address.empty() ? http_endpoint : s.public_address;
  ccn_link_config lc;
  lc.info = info;
  lc.sign = [key = crypto::ed25519_key{public_key_, secret_key_}](std::string_view text) {
    return crypto::ed25519_sign(key, text);
  };
  lc.endpoints = s.ccn;
  lc.direct = std::move(direct);
  lc.heartbeat = s.heartbeat_interval;
  lc.failure_timeout = s.failure_timeout;
  lc.files = files_;
  lc.ledger = ledger_;
  lc.shipped_to_file = dir + "/ledger-shipped-to";
  lc.met_file = dir + "/ccns-met";
  link_ = sys.spawn(ccn_link, lc, broker_);
  caf::anon_send(broker_, atom::connect_v, link_);
  caf::anon_send(files_, atom::connect_v, caf::actor_cast<file_source_actor>(link_));
  watchdog_ = spawn_watchdog(sys, "crn " + id_,
                             {caf::actor_cast<caf::actor>(broker_), caf::actor_cast<caf::actor>(link_),
                              caf::actor_cast<caf::actor>(files_), caf::actor_cast<caf::actor>(ledger_)},
                             on_fatal_);
  ctx->sys = &sys;
  ctx->table = table_;
  ctx->link = link_;
  ctx->broker = broker_;
  ctx->files = files_;
  ctx->ledger = ledger_;
  ctx->id = id_;
  ctx->name = info.name;
  ctx->data_dir = dir;
  ctx->login_token = token_;
  ctx->domain = s.domain;
  if (ctx->domain.empty()) {
    // The host of the public address: "http://crn.example.org:4020/x" -> "crn.example.org".
    auto host = info.address.substr(info.address.find("://") == std::string::npos ? 0 : info.address.find("://") + 3);
    host = host.substr(0, host.find('/'));
    if (!host.empty() && host.front() == '[')
      host = host.substr(1, host.find(']') - 1);
    else
      host = host.substr(0, host.find(':'));
    ctx->domain = host;
  }
  for (auto& e : s.ccn)
    ctx->ccn_endpoints += (ctx->ccn_endpoints.empty() ? "" : ",") + e;
  ctx->http_endpoint = http_endpoint;
  ctx->started = unix_seconds();
  ready->store(true, std::memory_order_release);
  spdlog::info("crn {}: http {}, {} vCPUs, {} MiB, CCNs {}", id_, http_endpoint, info.vcpus,
               info.memory_mib, lc.direct.empty() ? ctx->ccn_endpoints : "in-process");
  return {};
}

void crn_node_runtime::drain() {
  if (sys_ == nullptr || !table_)
    return;
  table_->draining = true;
  auto until = std::chrono::steady_clock::now() + settings_.drain_timeout;
  while (table_->in_flight() > 0 && std::chrono::steady_clock::now() < until)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  if (auto left = table_->in_flight(); left > 0)
    spdlog::warn("crn {}: {} calls still in flight after the drain timeout", id_, left);
  caf::scoped_actor self{*sys_};
  self->request(broker_, std::chrono::seconds(90), atom::drain_v, !settings_.keep_on_shutdown)
    .receive([&](uint32_t n) { spdlog::info("crn {}: drained, {} executions stopped", id_, n); },
             [&](caf::error& err) { spdlog::warn("crn {}: drain: {}", id_, describe(err)); });
}

void crn_node_runtime::stop() {
  if (sys_ == nullptr)
    return;
  if (watchdog_)
    caf::anon_send_exit(watchdog_, caf::exit_reason::user_shutdown);
  watchdog_ = nullptr;
  if (http_)
    http_->stop();
  // The link first: it unlinks from its CCN on exit.
  if (link_)
    caf::anon_send_exit(link_, caf::exit_reason::user_shutdown);
  if (broker_)
    caf::anon_send_exit(broker_, caf::exit_reason::user_shutdown);
  if (files_)
    caf::anon_send_exit(files_, caf::exit_reason::user_shutdown);
  // Last: it writes the samples still waiting when it ends.
  if (ledger_)
    caf::anon_send_exit(ledger_, caf::exit_reason::user_shutdown);
  link_ = nullptr;
  broker_ = nullptr;
  files_ = nullptr;
  ledger_ = nullptr;
  sys_ = nullptr;
}

} // namespace alephd
