#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <string>

namespace alephd::sim {

/// The outcome of one HTTP exchange.
struct http_result {
  /// The status code, 0 when no response was read.
  int status = 0;
  std::string body;
  /// Response header fields with lower-cased names (repeats joined by ", ").
  std::map<std::string, std::string> headers;
  /// Non-empty on a transport failure (connect, write, read or timeout).
  std::string error;
};

/// Sends one request on a fresh connection (with "Connection: close" unless
/// `headers` says otherwise) and reads the response, all within `timeout`.
/// A "transfer-encoding" entry in `headers` makes the body go out chunked.
http_result http_request(const std::string& host, uint16_t port, const std::string& method,
                         const std::string& target, const std::string& body = {},
                         const std::map<std::string, std::string>& headers = {},
                         std::chrono::milliseconds timeout = std::chrono::seconds(10));

/// Sends raw bytes (possibly malformed), optionally half-closes, and returns
/// whatever the server answered before closing or the timeout.
std::string raw_exchange(const std::string& host, uint16_t port, const std::string& bytes,
                         std::chrono::milliseconds timeout = std::chrono::seconds(5),
                         bool shutdown_write = true);

/// A keep-alive connection for benchmarks: many requests over one socket.
/// Connects lazily and reconnects after the server closed the connection.
class http_connection {
public:
  http_connection(std::string host, uint16_t port,
                  std::chrono::milliseconds timeout = std::chrono::seconds(10));
  ~http_connection();
  http_connection(http_connection&&) noexcept;
  http_connection& operator=(http_connection&&) noexcept;
  http_connection(const http_connection&) = delete;
  http_connection& operator=(const http_connection&) = delete;

  /// Sends one request and reads its response, within the timeout.
  http_result request(const std::string& method, const std::string& target,
                      const std::string& body = {},
                      const std::map<std::string, std::string>& headers = {});

  /// Whether the socket is open (after a keep-alive response).
  bool connected() const;

  /// How many times a socket was opened, to tell reuse from reconnects.
  unsigned connects() const;

  /// Closes the socket; the next request reconnects.
  void close();

private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

} // namespace alephd::sim
