// CCN: the actor published on the node port; CRNs and peer CCNs start here.
#pragma once

#include <memory>
#include <mutex>
#include <set>
#include <string>

#include <caf/io/middleman.hpp>
#include <caf/openssl/manager.hpp>

#include "actors/interfaces.hpp"
#include "runtime/endpoint.hpp"

namespace alephd {

/// The CCN's HTTP base URL, known once its server listens (set from the starting thread).
class http_locator {
public:
  void set(std::string url) {
    std::lock_guard lock{m_};
    url_ = std::move(url);
  }
  std::string get() const {
    std::lock_guard lock{m_};
    return url_;
  }

private:
  mutable std::mutex m_;
  std::string url_;
};

ccn_node_actor::behavior_type ccn_node(ccn_node_actor::pointer self, std::string ccn_id,
                                       crn_registry_actor registry, ccn_peer_actor peer,
                                       message_store_actor messages, content_store_actor files,
                                       scheduler_actor scheduler,
                                       std::shared_ptr<const http_locator> http,
                                       usage_book_actor usage);

/// Connects through the middleman to the ccn_node published at `endpoint` ("host:port") and
/// calls `on_ok(ccn_node_actor)` or `on_error(caf::error&)`.
template <class Self, class OnOk, class OnError>
void connect_ccn_node(Self* self, const std::string& endpoint, caf::timespan timeout, OnOk on_ok,
                      OnError on_error) {
  std::string host;
  uint16_t port = 0;
  if (!split_endpoint(endpoint, host, port)) {
    auto err = make_error(ec::invalid, "malformed CCN endpoint " + endpoint);
    on_error(err);
    return;
  }
  // Over TLS when this process has the OpenSSL manager (--tls-cert/--tls-key/--tls-ca).
  auto& sys = self->home_system();
  auto mm = sys.has_openssl_manager() ? sys.openssl_manager().actor_handle()
                                      : sys.middleman().actor_handle();
  self->request(mm, timeout, caf::connect_atom::value, host, port)
    .then(
      [=](const caf::node_id&, caf::strong_actor_ptr& ptr, const std::set<std::string>&) {
        if (!ptr) {
          auto err = make_error(ec::unavailable, "nothing published at " + endpoint);
          on_error(err);
          return;
        }
        on_ok(caf::actor_cast<ccn_node_actor>(ptr));
      },
      [=](caf::error& err) { on_error(err); });
}

} // namespace alephd
