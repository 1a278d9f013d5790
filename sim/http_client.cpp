#include "sim/http_client.hpp"

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <algorithm>
#include <cctype>
#include <limits>
#include <string_view>

namespace alephd::sim {

namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using tcp = asio::ip::tcp;
using error_code = boost::system::error_code;

std::string lower(std::string_view s) {
  std::string out{s};
  for (auto& c : out)
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

// Runs one asynchronous operation to completion on a private io_context; the
// stream's expiry bounds how long that takes.
template <class Start>
error_code run_step(asio::io_context& ioc, Start&& start) {
  error_code result = asio::error::timed_out;
  start([&result](error_code ec, auto&&...) { result = ec; });
  ioc.restart();
  ioc.run();
  return result;
}

error_code connect(asio::io_context& ioc, beast::tcp_stream& stream, const std::string& host,
                   uint16_t port) {
  error_code ec;
  auto addr = asio::ip::make_address(host, ec);
  if (!ec) {
    tcp::endpoint ep{addr, port};
    return run_step(ioc, [&](auto handler) { stream.async_connect(ep, std::move(handler)); });
  }
  tcp::resolver resolver{ioc};
  auto results = resolver.resolve(host, std::to_string(port), ec);
  if (ec)
    return ec;
  return run_step(ioc, [&](auto handler) { stream.async_connect(results, std::move(handler)); });
}

} // namespace

struct http_connection::impl {
  impl(std::string h, uint16_t p, std::chrono::milliseconds t)
    : host(std::move(h)), port(p), timeout(t) {
  }

  void close() {
    error_code ec;
    stream.socket().shutdown(tcp::socket::shutdown_both, ec);
    stream.close();
    buffer.consume(buffer.size());
    connected = false;
  }

  std::string host;
  uint16_t port;
  std::chrono::milliseconds timeout;
  asio::io_context ioc;
  beast::tcp_stream stream{ioc};
  beast::flat_buffer buffer;
  bool connected = false;
  unsigned connects = 0;
};

http_connection::http_connection(std::string host, uint16_t port,
                                 std::chrono::milliseconds timeout)
  : impl_(std::make_unique<impl>(std::move(host), port, timeout)) {
}

http_connection::~http_connection() = default;
http_connection::http_connection(http_connection&&) noexcept = default;
http_connection& http_connection::operator=(http_connection&&) noexcept = default;

bool http_connection::connected() const {
  return impl_->connected;
}

unsigned http_connection::connects() const {
  return impl_->connects;
}

void http_connection::close() {
  impl_->close();
}

http_result http_connection::request(const std::string& method, const std::string& target,
                                     const std::string& body,
                                     const std::map<std::string, std::string>& headers) {
  auto& s = *impl_;
  http_result result;
  s.stream.expires_after(s.timeout);
  if (!s.connected) {
    s.close();
    if (auto ec = connect(s.ioc, s.stream, s.host, s.port)) {
      result.error = "connect: " + ec.message();
      s.close();
      return result;
    }
    s.connected = true;
    ++s.connects;
    s.stream.expires_after(s.timeout);
  }
  bhttp::request<bhttp::string_body> req;
  req.version(11);
  auto verb = bhttp::string_to_verb(method);
  if (verb == bhttp::verb::unknown)
    req.method_string(method);
  else
    req.method(verb);
  req.target(target);
  req.set(bhttp::field::host, s.host + ":" + std::to_string(s.port));
  req.set(bhttp::field::user_agent, "alephd-test");
  bool chunked = false;
  for (const auto& [name, value] : headers) {
    if (lower(name) == "transfer-encoding")
      chunked = true;
    else
      req.set(name, value);
  }
  req.body() = body;
  if (chunked)
    req.chunked(true);
  else if (!body.empty() || verb == bhttp::verb::post || verb == bhttp::verb::put)
    req.prepare_payload();
  // A server may refuse the request (413) and close before the body is fully
  // sent, so a failed write still gets a chance to read the answer.
  auto write_ec = run_step(s.ioc, [&](auto handler) {
    bhttp::async_write(s.stream, req, std::move(handler));
  });
  bhttp::response_parser<bhttp::string_body> parser;
  parser.body_limit(std::numeric_limits<std::uint64_t>::max());
  parser.header_limit(1 << 20);
  if (verb == bhttp::verb::head)
    parser.skip(true);
  auto read_ec = run_step(s.ioc, [&](auto handler) {
    bhttp::async_read(s.stream, s.buffer, parser, std::move(handler));
  });
  if (read_ec) {
    result.error = (write_ec ? "write: " + write_ec.message() + ", " : std::string{})
                   + "read: " + read_ec.message();
    s.close();
    return result;
  }
  auto& res = parser.get();
  result.status = static_cast<int>(res.result_int());
  result.body = std::move(res.body());
  for (const auto& field : res) {
    auto name_sv = field.name_string();
    auto value_sv = field.value();
    auto name = lower(std::string_view{name_sv.data(), name_sv.size()});
    std::string value{value_sv.data(), value_sv.size()};
    auto [it, inserted] = result.headers.emplace(std::move(name), value);
    if (!inserted)
      it->second += ", " + value;
  }
  if (write_ec || !res.keep_alive())
    s.close();
  return result;
}

http_result http_request(const std::string& host, uint16_t port, const std::string& method,
                         const std::string& target, const std::string& body,
                         const std::map<std::string, std::string>& headers,
                         std::chrono::milliseconds timeout) {
  auto all = headers;
  bool has_connection = std::any_of(all.begin(), all.end(), [](const auto& kv) {
    return lower(kv.first) == "connection";
  });
  if (!has_connection)
    all["Connection"] = "close";
  http_connection conn{host, port, timeout};
  return conn.request(method, target, body, all);
}

std::string raw_exchange(const std::string& host, uint16_t port, const std::string& bytes,
                         std::chrono::milliseconds timeout, bool shutdown_write) {
  asio::io_context ioc;
  beast::tcp_stream stream{ioc};
  stream.expires_after(timeout);
  if (connect(ioc, stream, host, port))
    return {};
  if (!bytes.empty()) {
    // Errors are ignored: the server may answer and close before reading all.
    run_step(ioc, [&](auto handler) {
      asio::async_write(stream, asio::buffer(bytes), std::move(handler));
    });
  }
  if (shutdown_write) {
    error_code ec;
    stream.socket().shutdown(tcp::socket::shutdown_send, ec);
  }
  std::string out;
  char chunk[4096];
  std::size_t n = 0;
  for (;;) {
    auto ec = run_step(ioc, [&](auto handler) {
      stream.async_read_some(asio::buffer(chunk), [&n, handler = std::move(handler)](
                                                    error_code e, std::size_t got) mutable {
        n = got;
        handler(e);
      });
    });
    out.append(chunk, n);
    if (ec)
      break;
  }
  return out;
}

} // namespace alephd::sim
