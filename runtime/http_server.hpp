#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace alephd::http {

/// One parsed HTTP request as handed to a handler.
struct request {
  /// The method as sent by the client ("GET", "POST", ...).
  std::string method;
  /// The raw request target, e.g. "/api/v0/messages?page=2".
  std::string target;
  /// The percent-decoded path without the query string.
  std::string path;
  /// Decoded query parameters; '+' means space; the last duplicate wins.
  std::map<std::string, std::string> query;
  /// Header fields with lower-cased names; repeated fields are joined with ", ".
  std::map<std::string, std::string> headers;
  /// The request body (de-chunked), unless it was spooled to `body_file`.
  std::string body;
  /// When the server spooled the body (see server_options::spool_dir): the file holding it,
  /// fsynced. The handler may rename it away; otherwise the server deletes it once the request
  /// is answered.
  std::string body_file;
  /// sha256 of a spooled body (64 hex digits); empty when the body is in `body`.
  std::string body_sha256;
  /// The body's length in bytes, wherever it is.
  uint64_t body_size = 0;
  /// "address:port" of the client ("[::1]:port" for IPv6).
  std::string remote;
};

/// A websocket the server accepted for a handler (see response::websocket_open).
/// Thread-safe; handlers run on an io thread and must not block.
class websocket {
public:
  virtual ~websocket() = default;
  /// Queues one text message. False once closed; a client that does not read
  /// (more than 4 MiB queued) is disconnected.
  virtual bool send_text(std::string text) = 0;
  /// Sends a normal close after what is queued.
  virtual void close() = 0;
  /// Each text or binary message from the client (at most 64 KiB each).
  virtual void on_message(std::function<void(std::string)> h) = 0;
  /// Called once when the websocket ends, whichever side ended it.
  virtual void on_close(std::function<void()> h) = 0;
};

/// What a handler answers.
struct response {
  /// The status code; anything outside 200..999 becomes a 500.
  unsigned status = 200;
  /// The Content-Type; empty means "application/octet-stream".
  std::string content_type = "application/json";
  /// The body, unless `file_path` is set.
  std::string body;
  /// When non-empty, this file is streamed as the body; a 404 JSON error if
  /// it is not a readable regular file. A 200 file answer honours a single
  /// `Range: bytes=…` of the request (206 with Content-Range, 416 when it
  /// cannot be satisfied; several ranges get the whole file).
  std::string file_path;
  /// Extra header fields; fields containing CR or LF are dropped.
  std::vector<std::pair<std::string, std::string>> headers;
  /// When set, the request is upgraded to a websocket and this is called with
  /// it once the handshake is done (set its handlers there). A request that is
  /// not a websocket upgrade gets 426 instead.
  std::function<void(std::shared_ptr<websocket>)> websocket_open;
};

/// Whether `req` asks for a websocket upgrade.
bool is_websocket_upgrade(const request& req);

/// A response with the given status and JSON body.
response json(unsigned status, std::string body);

/// A response {"error": message} with the given status (invalid UTF-8 in
/// `message` is replaced, never thrown on).
response json_error(unsigned status, std::string_view message);

/// Answers one request. Call it once, from any thread, at any later time;
/// later calls are ignored. It is safe to call after the connection is gone or
/// the server stopped (then it does nothing). Dropping it uncalled answers 500.
using responder = std::function<void(response)>;

/// Handles one request; runs on an io thread, so slow work belongs elsewhere.
/// An exception escaping it answers 500 {"error": "internal error"}.
using handler = std::function<void(request&&, responder)>;

/// Configuration of a `server`.
struct server_options {
  /// The address (or resolvable host name) to listen on.
  std::string host = "127.0.0.1";
  /// The port; 0 lets the OS choose (see `server::port`).
  uint16_t port = 0;
  /// Larger request bodies get 413 and the connection is closed.
  uint64_t max_body_bytes = 100ull << 20;
  /// Larger request headers get 431 and the connection is closed.
  uint32_t max_header_bytes = 16 * 1024;
  /// A request header must arrive within this time; body and response
  /// transfers may idle at most this long and must average 1 KB/s after it.
  std::chrono::milliseconds read_timeout{30000};
  /// A request its handler has not answered within this time gets 504 {"error": …}, and the
  /// handler's answer, if it comes later, is dropped (0: wait as long as the handler takes).
  std::chrono::milliseconds answer_timeout{0};
  /// Number of io threads (0 counts as 1).
  unsigned threads = 1;
  /// The value of the Server header.
  std::string server_name = "alephd";
  /// When set, a request body longer than `spool_threshold` bytes is written to a new file in
  /// this directory as it arrives (request::body_file) instead of memory. A full disk while
  /// writing it answers 507.
  std::string spool_dir;
  uint64_t spool_threshold = 1 << 20;
  /// Connections above this many are closed right after accept.
  uint32_t max_connections = 1024;
  /// Per client address: open connections above this many are closed right after accept
  /// (0 = no limit), and requests beyond `rate_per_client` a second, after a burst of
  /// `rate_burst`, get 429 with Retry-After (0 = no limit).
  uint32_t max_connections_per_client = 0;
  double rate_per_client = 0;
  double rate_burst = 0;
  /// Whether those per-client limits apply to loopback clients too (a local reverse proxy
  /// carries many clients on one address: it should do the limiting then).
  bool limit_loopback = false;
};

/// An HTTP/1.1 server (keep-alive, pipelining, chunked requests) that hands
/// each request to one handler.
class server {
public:
  server(server_options opts, handler h);
  ~server();
  server(const server&) = delete;
  server& operator=(const server&) = delete;

  /// Binds and starts the io threads. Returns an empty string on success,
  /// else a one-line error such as
  /// "cannot listen on 127.0.0.1:4024: Address already in use".
  std::string start();

  /// The bound port (useful with port 0); 0 before a successful start.
  uint16_t port() const;

  /// Closes the acceptor and all connections and joins the io threads.
  /// Idempotent; the server cannot be started again afterwards.
  void stop();

private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

} // namespace alephd::http
