#include "runtime/transfer.hpp"

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <array>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <functional>
#include <mutex>
#include <optional>
#include <system_error>
#include <thread>
#include <vector>

#include <fcntl.h>
#include <sys/mman.h>
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
// A download of at least `large_min` bytes (with a Content-Length) goes through receive_large:
// pieces of `large_piece` in `large_slots` buffers, written with O_DIRECT in `direct_align` units.
constexpr uint64_t large_min = 4 << 20;
constexpr std::size_t large_piece = 4 << 20, large_slots = 4, direct_align = 4096;
// At most this many large downloads of a process use their 16 MiB of buffers at once (64 MiB in
// all); more at the same time take the plain path (1 MiB), so that memory stays bounded however
// many files a node fetches.
constexpr int max_large_downloads = 4;
std::atomic<int> large_downloads{0};

// One step of a large download (hashing, writing) run over its pieces in order on a thread of
// its own, while the next piece is read from the socket. A piece's bytes must stay untouched
// until wait_for(its number) returns. The step answers 0 or an errno; after a failure it is not
// run on later pieces (they still count as done) and error() gives the first errno. Pieces
// still queued when the stage is destroyed are dropped (the download failed or was cancelled).
class background_stage {
public:
  using step_fn = std::function<int(const char*, std::size_t, uint64_t)>;

  explicit background_stage(step_fn step) : step_{std::move(step)}, thread_{[this] { run(); }} {}
  /// Lets a step under way finish, drops the pieces still queued and ends the thread.
  ~background_stage() {
    {
      std::lock_guard lock{mu_};
      stopping_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  background_stage(const background_stage&) = delete;
  background_stage& operator=(const background_stage&) = delete;

  /// Queues [p, p + n), which sits at `offset` in the file; returns the piece's number (from 1).
  uint64_t submit(const char* p, std::size_t n, uint64_t offset) {
    std::lock_guard lock{mu_};
    queue_.push_back({p, n, offset});
    cv_.notify_all();
    return ++submitted_;
  }
  /// Blocks until piece `number` (and all before it) is done; 0 returns at once.
  void wait_for(uint64_t number) {
    std::unique_lock lock{mu_};
    cv_.wait(lock, [&] { return done_ >= number; });
  }
  void wait_all() { wait_for(submitted()); }
  uint64_t submitted() {
    std::lock_guard lock{mu_};
    return submitted_;
  }
  int error() {
    std::lock_guard lock{mu_};
    return error_;
  }

private:
  struct piece {
    const char* p;
    std::size_t n;
    uint64_t offset;
  };

  void run() {
    std::unique_lock lock{mu_};
    for (;;) {
      cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (stopping_)
        return;
      auto next = queue_.front();
      bool failed = error_ != 0;
      lock.unlock();
      int e = failed ? 0 : step_(next.p, next.n, next.offset);
      lock.lock();
      if (e != 0 && error_ == 0)
        error_ = e;
      queue_.pop_front();
      ++done_;
      cv_.notify_all();
    }
  }

  step_fn step_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<piece> queue_;
  uint64_t submitted_ = 0, done_ = 0;
  int error_ = 0;
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

// A large download is read in pieces into page-aligned buffers taken in turn; each piece is
// hashed on one thread and written on another while the next is read. The file is written with
// O_DIRECT where its file system takes it: the bytes go from the buffer to the disk, with no
// copy into the page cache and no dirty pages for the final fsync to wait for (README, Storage
// and Benchmarks, has this machine's figures). Where O_DIRECT is refused, and for the last
// partial block, the writes are buffered and handed to the disk behind (write_behind). The
// caller's fsync makes the file durable either way.
// The buffers of one large download: a mapping of their own (page-aligned, as O_DIRECT wants),
// returned to the system whole when the download ends rather than kept in the heap.
class piece_buffers {
public:
  piece_buffers() {
    void* p = ::mmap(nullptr, large_piece * large_slots, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    base_ = p == MAP_FAILED ? nullptr : static_cast<char*>(p);
  }
  ~piece_buffers() {
    if (base_ != nullptr)
      ::munmap(base_, large_piece * large_slots);
  }
  piece_buffers(const piece_buffers&) = delete;
  piece_buffers& operator=(const piece_buffers&) = delete;
  explicit operator bool() const { return base_ != nullptr; }
  char* operator[](std::size_t slot) const { return base_ + slot * large_piece; }

private:
  char* base_ = nullptr;
};

// The error of a read(2) from the body that gave `n` (0 or less) after `at` bytes.
std::string read_failure(ssize_t n, uint64_t at) {
  return "download interrupted after " + std::to_string(at) + " bytes: "
         + (n == 0 ? std::string{"the connection closed"}
                   : errno == EAGAIN ? std::string{"timed out"} : std::strerror(errno));
}

// Reads `left` bytes of body, the first `pending_n` of which are already at `pending`, into
// `fd` and `sha`; sets r.size. Empty or the error (r.no_space when the disk is full). When it
// cannot have its buffers or threads it returns empty with `not_taken` set, having read
// nothing and left `fd` as it was: the caller then reads the body itself.
std::string receive_large(int sock, const char* pending, std::size_t pending_n, uint64_t left,
                          int fd, const std::string& dest, sha256_stream& sha, result& r,
                          const options& o, uint64_t total, bool& not_taken) {
  if (large_downloads.fetch_add(1) >= max_large_downloads) {
    large_downloads.fetch_sub(1);
    not_taken = true;
    return {};
  }
  struct slot_release {
    ~slot_release() { large_downloads.fetch_sub(1); }
  } release;
  piece_buffers bufs;
  if (!bufs) {
    not_taken = true;
    return {};
  }
  int flags = ::fcntl(fd, F_GETFL);
  bool direct = false;
  write_behind behind{fd};
  // From `off` on, buffered writes (an errno if the file cannot be switched back).
  auto buffered_from = [&](uint64_t off) {
    if (::fcntl(fd, F_SETFL, flags) != 0)
      return errno;
    direct = false;
    behind.started = off - off % writeback_step;
    return 0;
  };
  auto write_all = [&](const char* p, std::size_t n, uint64_t off) {
    while (n > 0) {
      auto w = ::pwrite(fd, p, n, static_cast<off_t>(off));
      if (w < 0 && errno == EINTR)
        continue;
      if (w < 0 && errno == EINVAL && direct) {
        // An alignment this file system wants and the piece does not meet.
        if (int e = buffered_from(off))
          return e;
        continue;
      }
      if (w < 0)
        return errno;
      p += w;
      n -= static_cast<std::size_t>(w);
      off += static_cast<uint64_t>(w);
    }
    return 0;
  };
  // Runs on the writer thread only: once pieces flow, nothing else touches `direct` or `behind`.
  auto write_piece = [&](const char* p, std::size_t n, uint64_t off) {
    if (direct && n % direct_align != 0) { // the last piece: its whole blocks direct, then the rest
      auto whole = n - n % direct_align;
      if (int e = write_all(p, whole, off))
        return e;
      p += whole;
      n -= whole;
      off += whole;
      if (int e = buffered_from(off))
        return e;
    }
    if (int e = write_all(p, n, off))
      return e;
    if (!direct)
      behind.wrote(off + n);
    return 0;
  };
  std::optional<background_stage> hasher, writer;
  try {
    hasher.emplace([&](const char* p, std::size_t n, uint64_t) {
      sha.update(p, n);
      return 0;
    });
    writer.emplace(write_piece);
  } catch (const std::exception&) { // no thread to be had (or no memory for its state)
    not_taken = true;
    return {};
  }
  // Set before the first piece is submitted, which hands it to the writer thread.
  direct = flags >= 0 && ::fcntl(fd, F_SETFL, flags | O_DIRECT) == 0;
  auto write_error = [&](int e) {
    r.no_space = e == ENOSPC || e == EDQUOT;
    return std::string{"cannot write "} + dest + ": " + std::strerror(e);
  };
  // A failed write explains a later failure better than a read or a cancel does.
  auto failure = [&](std::string why) {
    if (int e = writer->error())
      return write_error(e);
    return why;
  };
  std::array<uint64_t, large_slots> hashed{}, written{}; // the piece each buffer holds
  uint64_t offset = 0, reported = 0;
  for (std::size_t turn = 0; left > 0; ++turn) {
    auto slot = turn % large_slots;
    hasher->wait_for(hashed[slot]);
    writer->wait_for(written[slot]);
    if (int e = writer->error())
      return write_error(e);
    char* into = bufs[slot];
    std::size_t want = static_cast<std::size_t>(std::min<uint64_t>(left, large_piece)), have = 0;
    if (pending_n > 0) {
      have = std::min(pending_n, want);
      std::memcpy(into, pending, have);
      pending += have;
      pending_n -= have;
    }
    while (have < want) {
      if (cancelled(o))
        return failure("cancelled");
      auto n = ::read(sock, into + have, want - have);
      if (n < 0 && errno == EINTR)
        continue;
      if (n <= 0)
        return failure(read_failure(n, offset + have));
      have += static_cast<std::size_t>(n);
      if (o.progress && offset + have - reported >= progress_step) {
        reported = offset + have; // received; the last report comes after the fsync
        o.progress(reported, total);
      }
    }
    hashed[slot] = hasher->submit(into, have, offset);
    written[slot] = writer->submit(into, have, offset);
    offset += have;
    left -= have;
  }
  hasher->wait_all();
  writer->wait_all();
  if (int e = writer->error())
    return write_error(e);
  r.size = offset;
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
  // Appends received bytes to the file and the hash; false (with r.error set) on failure.
  auto take = [&](const char* p, std::size_t n) {
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
    auto first = static_cast<std::size_t>(std::min<uint64_t>(left, pending.size()));
    auto& sock = stream.socket();
    error_code ec;
    sock.native_non_blocking(false, ec);
    timeval tv{};
    tv.tv_sec = static_cast<time_t>(o.idle_timeout.count() / 1000);
    tv.tv_usec = static_cast<suseconds_t>((o.idle_timeout.count() % 1000) * 1000);
    ::setsockopt(sock.native_handle(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    bool done = false;
    if (left >= large_min) {
      bool not_taken = false;
      auto e = receive_large(sock.native_handle(), static_cast<const char*>(pending.data()), first,
                             left, fd, dest, sha, r, o, total, not_taken);
      if (!e.empty())
        return fail(e);
      done = !not_taken;
    }
    if (!done) {
      if (first > 0 && !take(static_cast<const char*>(pending.data()), first))
        return fail(r.error);
      left -= first;
    }
    while (!done && left > 0) {
      if (cancelled(o))
        return fail("cancelled");
      auto n = ::read(sock.native_handle(), data.data(), std::min<uint64_t>(left, data.size()));
      if (n < 0 && errno == EINTR)
        continue;
      if (n <= 0)
        return fail(read_failure(n, r.size));
      if (!take(data.data(), static_cast<std::size_t>(n)))
        return fail(r.error);
      left -= static_cast<uint64_t>(n);
    }
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
