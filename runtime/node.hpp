// Composition: which actors a CCN or CRN process hosts, their wiring, their
// HTTP server, and ordered shutdown. `ccn`, `crn`, `dev` and the tests all
// build nodes from these two classes.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "actors/interfaces.hpp"
#include "runtime/config.hpp"

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

/// Reads `dir/node-id`, creating it with a fresh random id on first start.
std::string load_or_create_node_id(const std::string& dir, std::string& err);

class ccn_node_runtime {
public:
  ccn_node_runtime();
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
  std::shared_ptr<lmdb::env> env_;
  message_store_actor messages_;
  content_store_actor files_;
  crn_registry_actor registry_;
  scheduler_actor scheduler_;
  ccn_peer_actor peer_;
  ccn_node_actor node_;
  uint16_t node_port_ = 0;
  std::unique_ptr<http::server> http_;
};

class crn_node_runtime {
public:
  crn_node_runtime();
  ~crn_node_runtime();
  /// Starts the CRN actors and HTTP. With `direct` the CRN links to in-process CCNs,
  /// else to `s.ccn` over the network.
  std::string start(caf::actor_system& sys, const settings& s,
                    std::vector<ccn_node_actor> direct = {});
  void stop();
  const std::string& id() const { return id_; }
  uint16_t http_port() const;
  const std::string& login_token() const { return token_; }

private:
  caf::actor_system* sys_ = nullptr;
  std::string id_;
  std::string token_;
  job_broker_actor broker_;
  ccn_link_actor link_;
  std::unique_ptr<http::server> http_;
};

} // namespace alephd
