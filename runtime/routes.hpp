// The HTTP APIs of a CCN and a CRN: thin handlers that parse, ask an actor and answer JSON.
#pragma once

#include <memory>
#include <string>

#include "actors/interfaces.hpp"
#include "runtime/http_server.hpp"
#include "runtime/owner_auth.hpp"

namespace caf {
class actor_system;
} // namespace caf

namespace alephd {

class execution_table;

struct ccn_context {
  caf::actor_system* sys = nullptr;
  message_store_actor messages;
  content_store_actor files;
  crn_registry_actor registry;
  scheduler_actor scheduler;
  ccn_peer_actor peer;
  usage_book_actor usage; ///< its CRNs' metering entries
  prober_actor prober;
  reward_epochs_actor epochs;
  std::string id;
  std::string name;
  std::string node_endpoint; ///< where CRNs and peers connect
  std::string http_endpoint;
  uint64_t max_file_bytes = 100ull << 20;
  uint64_t max_message_bytes = 1ull << 20;
  bool verify_signatures = true; ///< refuse messages whose wallet signature does not verify
  double started = 0;
};

struct crn_context {
  caf::actor_system* sys = nullptr;
  std::shared_ptr<execution_table> table;
  ccn_link_actor link;
  job_broker_actor broker;
  content_store_actor files; ///< the file cache
  reward_ledger_actor ledger; ///< metering entries
  std::string id;
  std::string name;
  std::string data_dir;
  std::string login_token;
  std::string domain; ///< the name owners sign their operations for (X-SignedOperation)
  std::shared_ptr<owner_auth::replay_guard> replays = std::make_shared<owner_auth::replay_guard>();
  std::string ccn_endpoints; ///< as configured, for /status/config
  std::string http_endpoint;
  double started = 0;
};

http::handler ccn_routes(std::shared_ptr<const ccn_context> ctx);
http::handler crn_routes(std::shared_ptr<const crn_context> ctx);

} // namespace alephd
