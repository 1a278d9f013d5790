// The bridge from HTTP handlers (io threads) to actors: each request spawns a
// short-lived actor that asks the target actor and answers through the
// responder when the reply (or an error) arrives. No business logic here.
#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <tuple>

#include <caf/actor_system.hpp>
#include <caf/detail/type_traits.hpp>
#include <caf/event_based_actor.hpp>
#include <nlohmann/json.hpp>

#include "messages/types.hpp"
#include "runtime/http_server.hpp"

namespace alephd::gateway {

/// The HTTP status and JSON body for an actor error.
http::response error_response(const caf::error& err);

/// A JSON response from a nlohmann document.
http::response json(unsigned status, const nlohmann::json& body);

/// Reads the unsigned decimal query parameter `key` into `out`, capped at `max`; false when it
/// is present but not a number (`out` is left alone when it is absent).
bool query_number(const http::request& req, const char* key, uint64_t& out, uint64_t max);

/// The page of metering entries `GET /about/executions/records` and `GET /api/v0/usage/{node}`
/// answer: `after` and `limit` (1–1000, default 100) from the query, or a 400.
struct page_request {
  uint64_t after = 0;
  uint32_t limit = 100;
};
std::optional<page_request> page_of(const http::request& req, const http::responder& respond);

/// {"records": [...], "next": last seq} for a page of ledger entries.
http::response usage_page(const std::vector<usage_entry>& entries);

/// A stored file as the answer (octet-stream, ranges honoured): GET /api/v0/storage/raw.
http::response file_response(const file_info& f);

namespace detail {

// `on_ok` with the same parameter types (CAF reads a handler's types from its signature), but
// first removing the monitor on `dst`: a monitor outlives the actor that set it, and holds its
// memory until `dst` ends.
template <class OnOk, class... Args>
auto demonitor_then(caf::event_based_actor* self, caf::actor_addr dst, OnOk on_ok,
                    caf::detail::type_list<Args...>) {
  return [self, dst, on_ok](Args... xs) mutable {
    self->demonitor(dst);
    on_ok(std::forward<Args>(xs)...);
  };
}

} // namespace detail

/// Asks `dst` with `xs...` and calls `on_ok` (a lambda with the reply's types) with the reply;
/// an error or a timeout answers through `respond` as error_response(), and so does `dst`
/// ending before it replied (503 at once, so that a shutdown never waits for the timeout).
/// The arguments are moved into the request, never copied (uploads can be large).
template <class Handle, class OnOk, class... Ts>
void ask(caf::actor_system& sys, const Handle& dst, std::chrono::milliseconds timeout,
         const http::responder& respond, OnOk on_ok, Ts&&... xs) {
  auto args = std::make_shared<std::tuple<std::decay_t<Ts>...>>(std::forward<Ts>(xs)...);
  sys.spawn([=](caf::event_based_actor* self) {
    auto addr = dst.address();
    self->monitor(dst);
    self->set_down_handler([=](caf::down_msg&) {
      respond(http::json_error(503, "the node is shutting down"));
      self->quit();
    });
    using arg_types = typename caf::detail::get_callable_trait<OnOk>::arg_types;
    std::apply(
      [&](auto&... ys) {
        self->request(dst, timeout, std::move(ys)...)
          .then(detail::demonitor_then(self, addr, on_ok, arg_types{}),
                [self, addr, respond](caf::error& err) {
                  self->demonitor(addr);
                  respond(error_response(err));
                });
      },
      *args);
  });
}

/// ISO-8601 UTC with microseconds for a unix time.
std::string iso_time(double unix_seconds);

} // namespace alephd::gateway
