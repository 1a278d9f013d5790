// Composition: which actors a CCN or CRN process hosts, their wiring, their
// HTTP server, and ordered shutdown. `ccn`, `crn`, `dev` and the tests all
// build nodes from these two classes.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "actors/interfaces.hpp"
#include "runtime/config.hpp"

#include <caf/actor.hpp>

namespace caf {
class actor_system;
} // namespace caf

namespace alephd {

namespace http {
class server;
} // namespace http

namespace lmdb {
class env;
} // namespace lmdb

class execution_table;

/// Called when one of a node's actors ends for any reason but a shutdown; the node is then
/// broken and the process should exit (and be restarted by its supervisor, e.g. systemd).
using fatal_handler = std::function<void(const std::string&)>;

/// Spawns an actor that monitors `watched` and calls `on_fatal` when one of them ends for any
/// reason but a shutdown. Stop it (exit user_shutdown) before stopping the watched actors.
caf::actor spawn_watchdog(caf::actor_system& sys, std::string node, std::vector<caf::actor> watched,
                          fatal_handler on_fatal);

/// The node's ed25519 key from `dir/node.key` (made on first start, mode 0600) and its id, the
/// hex sha256 of the public key; empty id and `err` set when the key cannot be had.
std::string load_node_identity(const std::string& dir, std::string& public_key,
                               std::string& secret_key, std::string& err);

class ccn_node_runtime {
public:
  explicit ccn_node_runtime(fatal_handler on_fatal = {});
  ~ccn_node_runtime();
  /// Starts every CCN actor, publishes the node port (when `publish`), starts HTTP.
  /// Returns an empty string or a one-line error.
  std::string start(caf::actor_system& sys, const settings& s, bool publish,
                    std::vector<ccn_node_actor> direct_peers = {});
  void stop();
  const std::string& id() const { return id_; }
  uint16_t http_port() const;
  uint16_t node_port() const { return node_port_; }
  ccn_node_actor node() const { return node_; }
  message_store_actor messages() const { return messages_; }

private:
  caf::actor_system* sys_ = nullptr;
  std::string id_;
  std::string public_key_;
  std::string secret_key_;
  std::shared_ptr<lmdb::env> env_;
  message_store_actor messages_;
  content_store_actor files_;
  crn_registry_actor registry_;
  scheduler_actor scheduler_;
  trigger_router_actor triggers_;
  replicator_actor replicator_;
  ccn_peer_actor peer_;
  usage_book_actor usage_;
  prober_actor prober_;
  reward_epochs_actor epochs_;
  ccn_node_actor node_;
  uint16_t node_port_ = 0;
  std::unique_ptr<http::server> http_;
  fatal_handler on_fatal_;
  caf::actor watchdog_;
};

class crn_node_runtime {
public:
  explicit crn_node_runtime(fatal_handler on_fatal = {});
  ~crn_node_runtime();
  /// Starts the CRN actors and HTTP. With `direct` the CRN links to in-process CCNs,
  /// else to `s.ccn` over the network.
  std::string start(caf::actor_system& sys, const settings& s,
                    std::vector<ccn_node_actor> direct = {});
  /// SIGTERM: new calls get 503 "Server is draining", calls in flight get `drain_timeout` to
  /// finish, then executions are stopped (persistent ones unless `keep_on_shutdown`).
  /// Blocking; call before stop().
  void drain();
  void stop();
  const std::string& id() const { return id_; }
  uint16_t http_port() const;
  const std::string& login_token() const { return token_; }
  job_broker_actor broker() const { return broker_; }
  /// The CRN's file cache.
  content_store_actor files() const { return files_; }
  /// The parent of its executions' cgroups ("" without cgroups), for the process to remove
  /// once every actor has ended (see cgroup::remove_orphans).
  const std::string& cgroup_root() const { return cgroup_root_; }
  /// The group of its sandboxes' scratch dirs (sandbox_options::scratch_group), for the process
  /// to release once every actor has ended (see sandbox::release_scratch_group).
  const std::string& scratch_group() const { return scratch_group_; }

private:
  caf::actor_system* sys_ = nullptr;
  settings settings_;
  std::string id_;
  std::string public_key_;
  std::string secret_key_;
  std::string token_;
  std::string cgroup_root_;
  std::string scratch_group_;
  std::shared_ptr<execution_table> table_;
  job_broker_actor broker_;
  ccn_link_actor link_;
  content_store_actor files_;
  reward_ledger_actor ledger_;
  std::unique_ptr<http::server> http_;
  fatal_handler on_fatal_;
  caf::actor watchdog_;
};

} // namespace alephd
