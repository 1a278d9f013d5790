#include "runtime/transfer.hpp"

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <array>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <optional>
#include <system_error>
#include <thread>
#include <vector>

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "runtime/blob_store.hpp"

namespace alephd::transfer {

namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using tcp = asio::ip::tcp;
using error_code = boost::system::error_code;

constexpr std::size_t chunk = 1 << 20;
constexpr uint64_t progress_step = 64 << 10;
// Hashes the pieces of a download in order on a thread of its own, while the next piece is
// read and written: the sha256 (~1.2 GB/s here) no longer adds to the socket and the disk.
// A piece's bytes must stay untouched until wait_for(its number) returns.
class background_hash {
public:
  explicit background_hash(sha256_stream& sha) : sha_{sha}, thread_{[this] { run(); }} {}
  /// Hashes what was submitted, then ends the thread.
  ~background_hash() {
    {
      std::lock_guard lock{mu_};
      stopping_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  background_hash(const background_hash&) = delete;
  background_hash& operator=(const background_hash&) = delete;

  /// Queues [p, p + n); returns the piece's number (from 1).
  uint64_t submit(const char* p, std::size_t n) {
    std::lock_guard lock{mu_};
    queue_.emplace_back(p, n);
    cv_.notify_all();
    return ++submitted_;
  }
  /// Blocks until piece `number` (and all before it) is hashed; 0 returns at once.
  void wait_for(uint64_t number) {
    std::unique_lock lock{mu_};
    cv_.wait(lock, [&] { return hashed_ >= number; });
  }

private:
  void run() {
    std::unique_lock lock{mu_};
    for (;;) {
      cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (queue_.empty())
        return;
      auto [p, n] = queue_.front();
      lock.unlock();
      sha_.update(p, n);
      lock.lock();
      queue_.pop_front();
      ++hashed_;
      cv_.notify_all();
    }
  }

  sha256_stream& sha_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::pair<const char*, std::size_t>> queue_;
  uint64_t submitted_ = 0, hashed_ = 0;
  bool stopping_ = false;
  std::thread thread_;
};

// A download's bytes go to the disk while it runs, this much at a time (see write_behind).
constexpr uint64_t writeback_step = 8 << 20;

// Starts the disk writing each `writeback_step` of the file as soon as it is there, and waits
// for the step before it: the final fsync then finds little left to write, and the dirty pages
// of one download stay bounded. Only a hint: the fsync at the end is what makes it durable.
struct write_behind {
  int fd;
  uint64_t started = 0; // bytes handed to the disk so far

  void wrote(uint64_t size) {
    while (size - started >= writeback_step) {
      ::sync_file_range(fd, static_cast<off_t>(started), writeback_step, SYNC_FILE_RANGE_WRITE);
      if (started >= writeback_step)
        ::sync_file_range(fd, static_cast<off_t>(started - writeback_step), writeback_step,
                          SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE
                            | SYNC_FILE_RANGE_WAIT_AFTER);
      started += writeback_step;
    }
  }
};

// Runs one asynchronous operation to completion on `ioc` (each op carries its own deadline
// through the stream's expiry).
template <class Start>
error_code run(asio::io_context& ioc, Start&& start) {
  error_code out = asio::error::would_block;
  start([&](error_code ec, auto&&...) { out = ec; });
  ioc.restart();
  ioc.run();
  return out;
}

bool cancelled(const options& o) {
  return o.cancel != nullptr && o.cancel->load(std::memory_order_relaxed);
}

std::string describe(const error_code& ec) {
  if (ec == beast::error::timeout)
    return "timed out";
  return ec.message();
}

// Connects `stream` to host:port; empty or the error.
std::string connect(asio::io_context& ioc, beast::tcp_stream& stream, const std::string& host,
                    uint16_t port, const options& o) {
  tcp::resolver resolver{ioc};
  error_code ec;
  auto endpoints = resolver.resolve(host, std::to_string(port), ec);
  if (ec)
    return "cannot resolve " + host + ": " + ec.message();
  stream.expires_after(o.idle_timeout);
  ec = run(ioc, [&](auto h) { stream.async_connect(endpoints, h); });
  if (ec)
    return "cannot connect to " + host + ":" + std::to_string(port) + ": " + describe(ec);
  return {};
}

} // namespace

bool parse_base_url(const std::string& url, std::string& host, uint16_t& port) {
  constexpr std::string_view scheme = "http://";
  if (url.compare(0, scheme.size(), scheme) != 0)
    return false;
  auto rest = url.substr(scheme.size());
  while (!rest.empty() && rest.back() == '/')
    rest.pop_back();
  if (rest.empty() || rest.find('/') != std::string::npos)
    return false;
  port = 80;
  auto colon = rest.rfind(':');
  if (colon != std::string::npos && rest.find(']', colon) == std::string::npos) {
    auto digits = rest.substr(colon + 1);
    if (digits.empty() || digits.size() > 5 || digits.find_first_not_of("0123456789") != std::string::npos)
      return false;
    auto v = std::stoul(digits);
    if (v == 0 || v > 65535)
      return false;
    port = static_cast<uint16_t>(v);
    rest.resize(colon);
  }
  if (rest.size() > 2 && rest.front() == '[' && rest.back() == ']')
    rest = rest.substr(1, rest.size() - 2);
  host = rest;
  return !host.empty();
}

result download(const std::string& base_url, const std::string& target, const std::string& dest,
                uint64_t max_bytes, const options& o) {
  result r;
  std::string host;
  uint16_t port = 0;
  if (!parse_base_url(base_url, host, port)) {
    r.error = "not an http://host:port URL: " + base_url;
    return r;
  }
  asio::io_context ioc;
  beast::tcp_stream stream{ioc};
  if (r.error = connect(ioc, stream, host, port, o); !r.error.empty())
    return r;
  bhttp::request<bhttp::empty_body> req{bhttp::verb::get, target, 11};
  req.set(bhttp::field::host, host);
  req.set(bhttp::field::user_agent, "alephd");
  for (auto& [k, v] : o.headers)
    req.set(k, v);
  stream.expires_after(o.idle_timeout);
  if (auto ec = run(ioc, [&](auto h) { bhttp::async_write(stream, req, h); })) {
    r.error = "cannot send the request: " + describe(ec);
    return r;
  }
  beast::flat_buffer buf;
  bhttp::response_parser<bhttp::buffer_body> parser;
  parser.body_limit(max_bytes);
  stream.expires_after(o.idle_timeout);
  if (auto ec = run(ioc, [&](auto h) { bhttp::async_read_header(stream, buf, parser, h); })) {
    r.error = "no answer: " + describe(ec);
    return r;
  }
  r.status = parser.get().result_int();
  uint64_t total = parser.content_length() ? *parser.content_length() : 0;
  if (r.status / 100 != 2) {
    // A short error body (JSON {"error": ...}) is worth reading; a long one is not.
    std::string body;
    std::vector<char> tmp(16 << 10);
    while (!parser.is_done() && body.size() < tmp.size()) {
      parser.get().body().data = tmp.data();
      parser.get().body().size = tmp.size();
      stream.expires_after(o.idle_timeout);
      auto ec = run(ioc, [&](auto h) { bhttp::async_read(stream, buf, parser, h); });
      body.append(tmp.data(), tmp.size() - parser.get().body().size);
      if (ec && ec != bhttp::error::need_buffer)
        break;
    }
    r.body = body;
    r.error = "HTTP " + std::to_string(r.status);
    return r;
  }
  if (total > max_bytes) {
    r.error = "the file is larger than the limit of " + std::to_string(max_bytes) + " bytes";
    return r;
  }
  int fd = ::open(dest.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) {
    r.error = "cannot create " + dest + ": " + std::strerror(errno);
    r.no_space = errno == ENOSPC;
    return r;
  }
  auto fail = [&](std::string why) {
    ::close(fd);
    ::unlink(dest.c_str());
    r.error = std::move(why);
    return r;
  };
  std::vector<char> data(chunk);
  sha256_stream sha;
  uint64_t reported = 0;
  write_behind behind{fd};
  // Appends received bytes to the file (and the hash unless `hashed_later`); false (with
  // r.error set) on failure.
  auto take = [&](const char* p, std::size_t n, bool hashed_later = false) {
    if (!hashed_later)
      sha.update(p, n);
    for (auto left = n; left > 0;) {
      auto w = ::write(fd, p, left);
      if (w < 0 && errno == EINTR)
        continue;
      if (w < 0) {
        r.no_space = errno == ENOSPC || errno == EDQUOT;
        r.error = std::string{"cannot write "} + dest + ": " + std::strerror(errno);
        return false;
      }
      p += w;
      left -= static_cast<std::size_t>(w);
    }
    r.size += n;
    behind.wrote(r.size);
    if (o.progress && r.size - reported >= progress_step) {
      reported = r.size;
      o.progress(r.size, total);
    }
    return true;
  };
  if (parser.content_length() && !parser.chunked()) {
    // The common case (a file with a Content-Length): plain blocking reads of large pieces
    // straight from the socket, each bounded by the idle timeout.
    uint64_t left = *parser.content_length();
    auto pending = buf.data();
    auto first = std::min<uint64_t>(left, pending.size());
    if (first > 0 && !take(static_cast<const char*>(pending.data()), first))
      return fail(r.error);
    left -= first;
    auto& sock = stream.socket();
    error_code ec;
    sock.native_non_blocking(false, ec);
    timeval tv{};
    tv.tv_sec = static_cast<time_t>(o.idle_timeout.count() / 1000);
    tv.tv_usec = static_cast<suseconds_t>((o.idle_timeout.count() % 1000) * 1000);
    ::setsockopt(sock.native_handle(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    // A large file is hashed on another thread, piece by piece, in buffers taken in turn.
    std::array<std::vector<char>, 4> bufs;
    std::array<uint64_t, 4> pieces{}; // the piece each buffer holds, 0: none
    std::optional<background_hash> hasher;
    if (left >= 4 * chunk) {
      try {
        hasher.emplace(sha);
        for (auto& b : bufs)
          b.resize(chunk);
      } catch (const std::system_error&) {
        // No thread to be had: hashed here as it comes, in `data`.
      }
    }
    for (std::size_t turn = 0; left > 0; ++turn) {
      if (cancelled(o))
        return fail("cancelled");
      auto slot = turn % bufs.size();
      if (hasher)
        hasher->wait_for(pieces[slot]);
      auto& into = hasher ? bufs[slot] : data;
      auto n = ::read(sock.native_handle(), into.data(), std::min<uint64_t>(left, into.size()));
      if (n < 0 && errno == EINTR)
        continue;
      if (n <= 0)
        return fail("download interrupted after " + std::to_string(r.size) + " bytes: "
                    + (n == 0 ? std::string{"the connection closed"}
                              : errno == EAGAIN ? std::string{"timed out"} : std::strerror(errno)));
      if (!take(into.data(), static_cast<std::size_t>(n), hasher.has_value()))
        return fail(r.error);
      if (hasher)
        pieces[slot] = hasher->submit(into.data(), static_cast<std::size_t>(n));
      left -= static_cast<uint64_t>(n);
    }
    hasher.reset(); // every piece hashed: the hash is complete
  } else {
    while (!parser.is_done()) {
      if (cancelled(o))
        return fail("cancelled");
      parser.get().body().data = data.data();
      parser.get().body().size = data.size();
      stream.expires_after(o.idle_timeout);
      auto ec = run(ioc, [&](auto h) { bhttp::async_read(stream, buf, parser, h); });
      if (ec == bhttp::error::need_buffer)
        ec = {};
      if (ec == bhttp::error::body_limit)
        return fail("the file is larger than the limit of " + std::to_string(max_bytes) + " bytes");
      if (ec)
        return fail("download interrupted after " + std::to_string(r.size) + " bytes: " + describe(ec));
      if (!take(data.data(), data.size() - parser.get().body().size))
        return fail(r.error);
    }
  }
  if (::fsync(fd) != 0) {
    r.no_space = errno == ENOSPC || errno == EDQUOT;
    return fail(std::string{"cannot fsync "} + dest + ": " + std::strerror(errno));
  }
  ::close(fd);
  if (o.progress)
    o.progress(r.size, total);
  r.sha256 = sha.hex();
  error_code ignored;
  stream.socket().shutdown(tcp::socket::shutdown_both, ignored);
  return r;
}

probe_result probe(const std::string& base_url, const std::string& target,
                   std::chrono::milliseconds timeout) {
  probe_result r;
  std::string host;
  uint16_t port = 0;
  if (!parse_base_url(base_url, host, port)) {
    r.error = "not an http://host:port URL: " + base_url;
    return r;
  }
  auto start = std::chrono::steady_clock::now();
  asio::io_context ioc;
  beast::tcp_stream stream{ioc};
  options o;
  o.idle_timeout = timeout;
  if (r.error = connect(ioc, stream, host, port, o); !r.error.empty())
    return r;
  bhttp::request<bhttp::empty_body> req{bhttp::verb::get, target, 11};
  req.set(bhttp::field::host, host);
  req.set(bhttp::field::user_agent, "alephd-prober");
  stream.expires_at(start + timeout);
  if (auto e = run(ioc, [&](auto h) { bhttp::async_write(stream, req, h); })) {
    r.error = "cannot send: " + describe(e);
    return r;
  }
  beast::flat_buffer buf;
  bhttp::response_parser<bhttp::string_body> parser;
  parser.body_limit(64 << 10);
  if (auto e = run(ioc, [&](auto h) { bhttp::async_read(stream, buf, parser, h); })) {
    r.error = "no answer: " + describe(e);
    return r;
  }
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  r.status = parser.get().result_int();
  r.server = std::string{parser.get()[bhttp::field::server]};
  return r;
}

result upload(const std::string& base_url, const std::string& target, const std::string& path,
              const options& o) {
  result r;
  std::string host;
  uint16_t port = 0;
  if (!parse_base_url(base_url, host, port)) {
    r.error = "not an http://host:port URL: " + base_url;
    return r;
  }
  bhttp::request<bhttp::file_body> req{bhttp::verb::post, target, 11};
  error_code ec;
  req.body().open(path.c_str(), beast::file_mode::scan, ec);
  if (ec) {
    r.error = "cannot open " + path + ": " + ec.message();
    return r;
  }
  req.set(bhttp::field::host, host);
  req.set(bhttp::field::user_agent, "alephd");
  req.set(bhttp::field::content_type, "application/octet-stream");
  for (auto& [k, v] : o.headers)
    req.set(k, v);
  req.prepare_payload();
  const uint64_t total = req.body().size();
  asio::io_context ioc;
  beast::tcp_stream stream{ioc};
  if (r.error = connect(ioc, stream, host, port, o); !r.error.empty())
    return r;
  bhttp::request_serializer<bhttp::file_body> sr{req};
  uint64_t sent = 0, reported = 0;
  beast::flat_buffer buf;
  bhttp::response_parser<bhttp::string_body> parser;
  parser.body_limit(1 << 20);
  bool answered_early = false;
  while (!sr.is_done()) {
    if (cancelled(o)) {
      r.error = "cancelled";
      return r;
    }
    stream.expires_after(o.idle_timeout);
    std::size_t n = 0;
    error_code wec = asio::error::would_block;
    bhttp::async_write_some(stream, sr, [&](error_code e, std::size_t k) {
      wec = e;
      n = k;
    });
    ioc.restart();
    ioc.run();
    if (wec) {
      // The server may have answered early (413, 507) and closed: read what it said.
      answered_early = true;
      break;
    }
    sent += n;
    if (o.progress && (sent - reported >= progress_step || sr.is_done())) {
      reported = sent;
      o.progress(std::min(sent, total), total);
    }
  }
  stream.expires_after(o.idle_timeout + std::chrono::seconds(60)); // the node verifies and stores
  if (auto e = run(ioc, [&](auto h) { bhttp::async_read(stream, buf, parser, h); })) {
    r.error = answered_early ? "the connection broke while sending after " + std::to_string(sent) + " bytes"
                             : "no answer: " + describe(e);
    return r;
  }
  r.status = parser.get().result_int();
  r.body = parser.get().body();
  r.size = sent;
  if (r.status / 100 != 2)
    r.error = "HTTP " + std::to_string(r.status);
  return r;
}

} // namespace alephd::transfer
