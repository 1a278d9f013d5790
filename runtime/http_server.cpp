#include "runtime/http_server.hpp"

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/websocket.hpp>
#include <nlohmann/json.hpp>

#include <fcntl.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <unistd.h>

#include "runtime/blob_store.hpp"

#include <algorithm>
#include <atomic>
#include <cctype>
#include <deque>
#include <exception>
#include <filesystem>
#include <mutex>
#include <optional>
#include <string_view>
#include <thread>
#include <unordered_map>

namespace alephd::http {

namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using tcp = asio::ip::tcp;
using error_code = boost::system::error_code;
using clock_type = std::chrono::steady_clock;

// A peer that keeps sending after we decided to close gets this long and
// this many bytes to read our answer before the socket is closed outright.
constexpr auto linger_time = std::chrono::milliseconds{1000};
constexpr std::size_t linger_bytes = 1 << 20;

constexpr std::string_view continue_line = "HTTP/1.1 100 Continue\r\n\r\n";

std::string_view sv(beast::string_view s) {
  return {s.data(), s.size()};
}

int hex_value(char c) {
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  if (c >= 'A' && c <= 'F')
    return c - 'A' + 10;
  return -1;
}

bool percent_decode(std::string_view in, bool plus_is_space, std::string& out) {
  out.clear();
  out.reserve(in.size());
  for (std::size_t i = 0; i < in.size(); ++i) {
    char c = in[i];
    if (c == '%') {
      if (i + 2 >= in.size())
        return false;
      int hi = hex_value(in[i + 1]);
      int lo = hex_value(in[i + 2]);
      if (hi < 0 || lo < 0)
        return false;
      out.push_back(static_cast<char>(hi * 16 + lo));
      i += 2;
    } else if (c == '+' && plus_is_space) {
      out.push_back(' ');
    } else {
      out.push_back(c);
    }
  }
  return true;
}

std::string to_lower(std::string_view s) {
  std::string out{s};
  for (auto& c : out)
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size()
         && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
              return std::tolower(static_cast<unsigned char>(x))
                     == std::tolower(static_cast<unsigned char>(y));
            });
}

// Fills path and query from the target; returns an error text or "".
std::string parse_target(std::string_view target, request& req) {
  std::string origin;
  if (auto scheme = target.find("://");
      scheme != std::string_view::npos
      && (iequals(target.substr(0, scheme), "http")
          || iequals(target.substr(0, scheme), "https"))) {
    auto rest = target.substr(scheme + 3);
    auto cut = rest.find_first_of("/?");
    if (cut == std::string_view::npos)
      origin = "/";
    else if (rest[cut] == '?')
      origin = "/" + std::string{rest.substr(cut)};
    else
      origin = std::string{rest.substr(cut)};
  } else {
    origin = std::string{target};
  }
  if (auto hash = origin.find('#'); hash != std::string::npos)
    origin.resize(hash);
  if (origin.empty() || origin.front() != '/')
    return "invalid request target";
  std::string_view view = origin;
  auto qmark = view.find('?');
  auto raw_path = view.substr(0, qmark);
  if (!percent_decode(raw_path, false, req.path))
    return "invalid percent-encoding in path";
  if (req.path.find('\0') != std::string::npos)
    return "invalid NUL byte in path";
  if (qmark == std::string_view::npos)
    return {};
  auto raw_query = view.substr(qmark + 1);
  std::string key;
  std::string value;
  while (!raw_query.empty()) {
    auto amp = raw_query.find('&');
    auto pair = raw_query.substr(0, amp);
    raw_query = amp == std::string_view::npos ? std::string_view{}
                                              : raw_query.substr(amp + 1);
    if (pair.empty())
      continue;
    auto eq = pair.find('=');
    auto raw_key = pair.substr(0, eq);
    auto raw_value = eq == std::string_view::npos ? std::string_view{}
                                                  : pair.substr(eq + 1);
    if (!percent_decode(raw_key, true, key)
        || !percent_decode(raw_value, true, value))
      return "invalid percent-encoding in query";
    req.query[key] = value;
  }
  return {};
}

bool is_token_char(char c) {
  auto u = static_cast<unsigned char>(c);
  if (std::isalnum(u))
    return true;
  return std::string_view{"!#$%&'*+-.^_`|~"}.find(c) != std::string_view::npos;
}

bool valid_field(std::string_view name, std::string_view value) {
  if (name.empty() || !std::all_of(name.begin(), name.end(), is_token_char))
    return false;
  return value.find_first_of(std::string_view{"\r\n\0", 3})
         == std::string_view::npos;
}

// Fields that frame the message; a handler setting them would corrupt the
// connection, so they are ours alone.
bool reserved_field(std::string_view name) {
  return iequals(name, "content-length") || iequals(name, "transfer-encoding")
         || iequals(name, "connection");
}

class connection;
class ws_session;

// State shared by the server, its connections and outstanding responders, so
// that the io_context outlives every socket that still refers to it.
struct core {
  core(server_options o, handler h)
    : ioc(static_cast<int>(std::clamp(o.threads, 1u, 256u))),
      opts(std::move(o)),
      on_request(std::move(h)),
      acceptor(asio::make_strand(ioc)),
      accept_retry(acceptor.get_executor()) {
    if (!valid_field("server", opts.server_name))
      opts.server_name = "alephd";
  }

  asio::io_context ioc;
  server_options opts;
  handler on_request;
  tcp::acceptor acceptor;
  asio::steady_timer accept_retry;
  std::atomic<uint16_t> port{0};
  std::atomic<bool> stopping{false};
  std::mutex mutex;
  bool started = false;  // guarded by mutex
  bool stopped = false;  // guarded by mutex
  std::unordered_map<const connection*, std::weak_ptr<connection>>
    connections; // guarded by mutex
  std::unordered_map<const ws_session*, std::weak_ptr<ws_session>>
    websockets; // guarded by mutex

  // Per client address: open connections and a token bucket of requests.
  struct client_state {
    uint32_t connections = 0;
    double tokens = 0;
    std::chrono::steady_clock::time_point refilled;
  };
  std::unordered_map<std::string, client_state> clients; // guarded by mutex

  bool limits(const asio::ip::address& a) const {
    return opts.limit_loopback || !a.is_loopback();
  }

  // The bucket of `c` refilled up to now (call with the mutex held).
  void refill(client_state& c) {
    auto now = std::chrono::steady_clock::now();
    double burst = std::max(1.0, opts.rate_burst);
    c.tokens = std::min(burst, c.tokens + std::chrono::duration<double>(now - c.refilled).count()
                                            * opts.rate_per_client);
    c.refilled = now;
  }

  // Takes one request from the bucket of `client`; false when it is empty.
  bool take_request(const std::string& client) {
    if (client.empty() || opts.rate_per_client <= 0)
      return true;
    std::lock_guard lock{mutex};
    auto i = clients.find(client);
    if (i == clients.end())
      return true;
    refill(i->second);
    if (i->second.tokens < 1)
      return false;
    i->second.tokens -= 1;
    return true;
  }

  // A connection of `client` closed (call with the mutex held). Its entry stays while its
  // bucket is not full again, so that reconnecting does not refill it.
  void release_client(const std::string& client) {
    auto i = clients.find(client);
    if (i == clients.end())
      return;
    if (i->second.connections > 0)
      --i->second.connections;
    if (i->second.connections == 0) {
      refill(i->second);
      if (opts.rate_per_client <= 0 || i->second.tokens >= std::max(1.0, opts.rate_burst))
        clients.erase(i);
    }
  }
  // Keeps the io threads running between start() and stop(): without it the
  // io_context could run out of work while stop() is still posting the
  // closes of idle connections, and those closes would never run.
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work;
};

template <class Body>
struct outgoing {
  explicit outgoing(bhttp::response<Body>&& m) : msg(std::move(m)), sr(msg) {
  }
  bhttp::response<Body> msg;
  bhttp::response_serializer<Body> sr;
};

// A request body kept in memory while small and written to a file in `dir` once it passes
// `threshold` bytes (hashed on the way), so a large upload never sits in memory.
struct spool_body {
  struct value_type {
    std::string mem;
    std::string dir;        ///< empty: never spool
    uint64_t threshold = 0;
    std::string path;       ///< the spool file, once there is one
    int fd = -1;
    uint64_t size = 0;
    std::shared_ptr<sha256_stream> sha;
    std::string sha_hex;

    value_type() = default;
    value_type(value_type&& o) noexcept
      : mem(std::move(o.mem)), dir(std::move(o.dir)), threshold(o.threshold),
        path(std::move(o.path)), fd(std::exchange(o.fd, -1)), size(o.size),
        sha(std::move(o.sha)), sha_hex(std::move(o.sha_hex)) {
      o.path.clear();
    }
    value_type& operator=(value_type&&) = delete;
    ~value_type() {
      if (fd >= 0)
        ::close(fd);
      if (!path.empty())
        ::unlink(path.c_str());
    }

    /// Gives the spool file away (its path); the body no longer deletes it.
    std::string release() {
      if (fd >= 0)
        ::close(std::exchange(fd, -1));
      return std::exchange(path, {});
    }

    bool spill(error_code& ec) {
      static std::atomic<uint64_t> counter{0};
      path = dir + "/upload." + std::to_string(::getpid()) + "." + std::to_string(counter++);
      fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
      if (fd < 0) {
        ec = error_code{errno, boost::system::generic_category()};
        path.clear();
        return false;
      }
      sha = std::make_shared<sha256_stream>();
      return append(mem.data(), mem.size(), ec) && (std::string{}.swap(mem), true);
    }

    bool append(const char* p, std::size_t n, error_code& ec) {
      sha->update(p, n);
      while (n > 0) {
        auto w = ::write(fd, p, n);
        if (w < 0 && errno == EINTR)
          continue;
        if (w < 0) {
          ec = error_code{errno, boost::system::generic_category()};
          return false;
        }
        p += w;
        n -= static_cast<std::size_t>(w);
      }
      return true;
    }
  };

  class reader {
  public:
    template <bool isRequest, class Fields>
    reader(bhttp::header<isRequest, Fields>&, value_type& v) : v_(v) {
    }

    void init(const boost::optional<uint64_t>& length, error_code& ec) {
      ec = {};
      if (!v_.dir.empty() && length && *length > v_.threshold)
        v_.spill(ec);
    }

    template <class Buffers>
    std::size_t put(const Buffers& buffers, error_code& ec) {
      ec = {};
      std::size_t total = 0;
      for (auto b : beast::buffers_range_ref(buffers)) {
        auto* p = static_cast<const char*>(b.data());
        if (v_.fd >= 0) {
          if (!v_.append(p, b.size(), ec))
            return total;
        } else {
          v_.mem.append(p, b.size());
          if (!v_.dir.empty() && v_.mem.size() > v_.threshold && !v_.spill(ec))
            return total;
        }
        total += b.size();
        v_.size += b.size();
      }
      return total;
    }

    void finish(error_code& ec) {
      ec = {};
      if (v_.fd >= 0) {
        if (::fsync(v_.fd) != 0)
          ec = error_code{errno, boost::system::generic_category()};
        ::close(std::exchange(v_.fd, -1));
        v_.sha_hex = v_.sha->hex();
      }
    }

  private:
    value_type& v_;
  };
};

// One byte range of a `Range` header against a file of `size` bytes: nullopt when the header
// is not a single well-formed bytes range (then the whole file is sent, as RFC 9110 allows);
// first > last when it cannot be satisfied (416).
std::optional<std::pair<uint64_t, uint64_t>> parse_range(std::string_view h, uint64_t size) {
  constexpr std::string_view unit = "bytes=";
  if (h.substr(0, unit.size()) != unit)
    return std::nullopt;
  h.remove_prefix(unit.size());
  if (h.find(',') != std::string_view::npos)
    return std::nullopt; // several ranges: served whole
  auto dash = h.find('-');
  if (dash == std::string_view::npos)
    return std::nullopt;
  auto number = [](std::string_view t, uint64_t& out) {
    if (t.empty() || t.size() > 19 || t.find_first_not_of("0123456789") != std::string_view::npos)
      return false;
    out = std::stoull(std::string{t});
    return true;
  };
  auto first_text = h.substr(0, dash), last_text = h.substr(dash + 1);
  uint64_t first = 0, last = 0;
  if (first_text.empty()) { // the last N bytes
    uint64_t n = 0;
    if (!number(last_text, n))
      return std::nullopt;
    if (n == 0 || size == 0)
      return std::make_pair(uint64_t{1}, uint64_t{0});
    return std::make_pair(size - std::min(n, size), size - 1);
  }
  if (!number(first_text, first))
    return std::nullopt;
  if (last_text.empty())
    last = size == 0 ? 0 : size - 1;
  else if (!number(last_text, last) || last < first)
    return std::nullopt;
  if (first >= size)
    return std::make_pair(uint64_t{1}, uint64_t{0});
  return std::make_pair(first, std::min(last, size - 1));
}

// A connection after a websocket upgrade. Every member but the public
// websocket interface runs on the socket's strand.
class ws_session : public websocket, public std::enable_shared_from_this<ws_session> {
public:
  static constexpr std::size_t max_queued = 4u << 20;
  static constexpr std::size_t max_message = 64u << 10;

  ws_session(std::shared_ptr<core> c, beast::tcp_stream&& s)
    : core_(std::move(c)), ws_(std::move(s)) {
  }

  ~ws_session() override {
    std::lock_guard lock{core_->mutex};
    core_->websockets.erase(this);
  }

  asio::any_io_executor executor() {
    return ws_.get_executor();
  }

  void run(std::shared_ptr<bhttp::request<bhttp::empty_body>> req,
           std::function<void(std::shared_ptr<websocket>)> open) {
    ws_.next_layer().expires_never(); // the websocket's own timeouts from here on
    beast::websocket::stream_base::timeout t{};
    t.handshake_timeout = std::chrono::seconds{30};
    t.idle_timeout = std::chrono::seconds{60};
    t.keep_alive_pings = true;
    ws_.set_option(t);
    ws_.read_message_max(max_message);
    ws_.set_option(beast::websocket::stream_base::decorator(
      [name = core_->opts.server_name](beast::websocket::response_type& r) {
        r.set(bhttp::field::server, name);
      }));
    ws_.async_accept(*req, [self = shared_from_this(), req, open](error_code ec) {
      if (ec || self->core_->stopping.load()) {
        self->abort();
        return;
      }
      self->accepted_ = true;
      try {
        open(self);
      } catch (...) {
        self->abort();
        return;
      }
      self->read();
      if (!self->writing_)
        self->write_next();
    });
  }

  bool send_text(std::string text) override {
    if (closed_.load())
      return false;
    asio::post(executor(), [self = shared_from_this(), t = std::move(text)]() mutable {
      self->enqueue(std::move(t));
    });
    return true;
  }

  void close() override {
    asio::post(executor(), [self = shared_from_this()] {
      self->close_wanted_ = true;
      if (self->accepted_ && !self->writing_)
        self->write_next();
    });
  }

  void on_message(std::function<void(std::string)> h) override {
    std::lock_guard lock{mu_};
    on_message_ = std::move(h);
  }

  void on_close(std::function<void()> h) override {
    std::lock_guard lock{mu_};
    on_close_ = std::move(h);
  }

  // Ends it at once (server stop, errors, a client that does not read).
  void abort() {
    error_code ec;
    ws_.next_layer().socket().shutdown(tcp::socket::shutdown_both, ec);
    ws_.next_layer().close();
    finish();
  }

private:
  void enqueue(std::string t) {
    if (closed_.load())
      return;
    if (queued_ + t.size() > max_queued) {
      abort();
      return;
    }
    queued_ += t.size();
    out_.push_back(std::move(t));
    if (accepted_ && !writing_)
      write_next();
  }

  void write_next() {
    if (closed_.load())
      return;
    if (out_.empty()) {
      writing_ = false;
      if (close_wanted_ && !close_sent_) {
        close_sent_ = true;
        writing_ = true; // a close counts as the one write in flight
        ws_.async_close(beast::websocket::close_code::normal,
                        [self = shared_from_this()](error_code ec) {
                          if (ec)
                            self->abort();
                          // else the read loop ends on the client's close reply
                        });
      }
      return;
    }
    writing_ = true;
    ws_.text(true);
    ws_.async_write(asio::buffer(out_.front()),
                    [self = shared_from_this()](error_code ec, std::size_t) {
                      self->queued_ -= self->out_.front().size();
                      self->out_.pop_front();
                      if (ec) {
                        self->abort();
                        return;
                      }
                      self->write_next();
                    });
  }

  void read() {
    ws_.async_read(rbuf_, [self = shared_from_this()](error_code ec, std::size_t) {
      if (ec) {
        self->abort();
        return;
      }
      auto msg = beast::buffers_to_string(self->rbuf_.data());
      self->rbuf_.consume(self->rbuf_.size());
      std::function<void(std::string)> h;
      {
        std::lock_guard lock{self->mu_};
        h = self->on_message_;
      }
      if (h) {
        try {
          h(std::move(msg));
        } catch (...) {
          self->abort();
          return;
        }
      }
      self->read();
    });
  }

  void finish() {
    if (closed_.exchange(true))
      return;
    std::function<void()> h;
    {
      // Dropping the handlers breaks cycles through whatever they hold.
      std::lock_guard lock{mu_};
      h = std::move(on_close_);
      on_close_ = nullptr;
      on_message_ = nullptr;
    }
    if (h) {
      try {
        h();
      } catch (...) {
        // Nobody is left to tell.
      }
    }
  }

  std::shared_ptr<core> core_;
  beast::websocket::stream<beast::tcp_stream> ws_;
  beast::flat_buffer rbuf_;
  std::deque<std::string> out_;
  std::size_t queued_ = 0;
  bool accepted_ = false;
  bool writing_ = false;
  bool close_wanted_ = false;
  bool close_sent_ = false;
  std::atomic<bool> closed_{false};
  std::mutex mu_;
  std::function<void(std::string)> on_message_;
  std::function<void()> on_close_;
};

class connection : public std::enable_shared_from_this<connection> {
public:
  connection(std::shared_ptr<core> c, tcp::socket&& socket, std::string remote,
             std::string client = {})
    : core_(std::move(c)), stream_(std::move(socket)), remote_(std::move(remote)),
      client_(std::move(client)) {
  }

  ~connection() {
    std::lock_guard lock{core_->mutex};
    core_->connections.erase(this);
    if (!client_.empty())
      core_->release_client(client_);
  }

  connection(const connection&) = delete;
  connection& operator=(const connection&) = delete;

  asio::any_io_executor executor() {
    return stream_.get_executor();
  }

  void start() {
    asio::post(executor(), [self = shared_from_this()] { self->read_header(); });
  }

  /// Hands a response to the connection's strand unless the server stopped.
  static void submit(const std::shared_ptr<connection>& self, response r) {
    std::lock_guard lock{self->core_->mutex};
    if (self->core_->stopped)
      return;
    asio::post(self->executor(), [self, r = std::move(r)]() mutable {
      self->deliver(std::move(r));
    });
  }

  void close_now() {
    if (closed_)
      return;
    closed_ = true;
    waiting_ = false;
    error_code ec;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ec);
    stream_.close();
  }

private:
  const server_options& opts() const {
    return core_->opts;
  }

  bool done() const {
    return closed_ || core_->stopping.load(std::memory_order_relaxed);
  }

  // Body and response transfers may idle for read_timeout at most, and after
  // the first read_timeout they must keep up an average of 1 byte per ms.
  void arm_transfer_deadline() {
    auto now = clock_type::now();
    auto idle = now + opts().read_timeout;
    auto budget = transfer_start_ + opts().read_timeout
                  + std::chrono::milliseconds{
                    static_cast<int64_t>(std::min<uint64_t>(transfer_bytes_, INT64_MAX / 2))};
    stream_.expires_at(std::min(idle, budget));
  }

  void begin_transfer() {
    transfer_start_ = clock_type::now();
    transfer_bytes_ = 0;
  }

  void read_header() {
    if (done()) {
      close_now();
      return;
    }
    parser_.emplace();
    parser_->get().body().dir = opts().spool_dir;
    parser_->get().body().threshold = opts().spool_threshold;
    parser_->header_limit(opts().max_header_bytes);
    parser_->body_limit(opts().max_body_bytes);
    // The whole header must arrive within the timeout, which stops clients
    // that trickle header bytes (slowloris).
    stream_.expires_after(opts().read_timeout);
    bhttp::async_read_header(stream_, buffer_, *parser_,
                             [self = shared_from_this()](error_code ec, std::size_t) {
                               self->on_header(ec);
                             });
  }

  void on_header(error_code ec) {
    if (done()) {
      close_now();
      return;
    }
    if (ec) {
      on_read_error(ec);
      return;
    }
    auto& msg = parser_->get();
    auto expect = msg[bhttp::field::expect];
    if (!parser_->is_done() && msg.version() >= 11 && iequals(sv(expect), "100-continue")) {
      stream_.expires_after(opts().read_timeout);
      asio::async_write(stream_, asio::buffer(continue_line.data(), continue_line.size()),
                        [self = shared_from_this()](error_code ec, std::size_t) {
                          if (self->done() || ec) {
                            self->close_now();
                            return;
                          }
                          self->begin_transfer();
                          self->read_body();
                        });
      return;
    }
    begin_transfer();
    read_body();
  }

  void read_body() {
    if (parser_->is_done()) {
      dispatch();
      return;
    }
    arm_transfer_deadline();
    bhttp::async_read_some(stream_, buffer_, *parser_,
                           [self = shared_from_this()](error_code ec, std::size_t n) {
                             self->on_body(ec, n);
                           });
  }

  void on_body(error_code ec, std::size_t n) {
    if (done()) {
      close_now();
      return;
    }
    if (ec) {
      on_read_error(ec);
      return;
    }
    transfer_bytes_ += n;
    read_body();
  }

  void on_read_error(error_code ec) {
    if (ec == bhttp::error::end_of_stream || ec == bhttp::error::partial_message) {
      // The client went away (maybe mid-body): nobody is left to answer.
      close_now();
    } else if (ec == bhttp::error::body_limit) {
      fail(413, "request body too large (limit " + std::to_string(opts().max_body_bytes)
                  + " bytes)");
    } else if (ec == std::errc::no_space_on_device || ec.value() == EDQUOT) {
      fail(507, "insufficient storage: the node's disk is full");
    } else if (ec.category() == boost::system::generic_category()) {
      fail(500, "cannot store the request body: " + ec.message());
    } else if (ec == bhttp::error::header_limit || ec == bhttp::error::buffer_overflow) {
      fail(431, "request header too large (limit " + std::to_string(opts().max_header_bytes)
                  + " bytes)");
    } else if (ec.category() == bhttp::make_error_code(bhttp::error::bad_method).category()) {
      fail(400, "malformed request: " + ec.message());
    } else {
      // Timeouts, resets and aborts leave nobody to answer.
      close_now();
    }
  }

  // Answers a request that cannot be parsed, then closes: the rest of the
  // byte stream cannot be trusted to frame further requests.
  void fail(unsigned status, std::string_view message) {
    keep_alive_ = false;
    head_ = false;
    send(json_error(status, message));
  }

  void dispatch() {
    stream_.expires_never();
    auto& msg = parser_->get();
    keep_alive_ = msg.keep_alive();
    request req;
    req.method = std::string{sv(msg.method_string())};
    req.target = std::string{sv(msg.target())};
    head_ = req.method == "HEAD";
    if (auto err = parse_target(req.target, req); !err.empty()) {
      send(json_error(400, err));
      return;
    }
    if (!core_->take_request(client_)) {
      auto r = json_error(429, "too many requests from " + client_ + "; slow down");
      r.headers.emplace_back("Retry-After", "1");
      send(std::move(r));
      return;
    }
    for (const auto& field : msg) {
      auto name = to_lower(sv(field.name_string()));
      auto value = std::string{sv(field.value())};
      auto [it, inserted] = req.headers.emplace(std::move(name), value);
      if (!inserted)
        it->second += ", " + value;
    }
    auto& body = msg.body();
    req.body = std::move(body.mem);
    req.body_size = body.size;
    req.body_sha256 = body.sha_hex;
    req.body_file = body.release();
    req.remote = remote_;
    range_ = std::string{sv(msg[bhttp::field::range])};
    upgrade_.reset();
    if (beast::websocket::is_upgrade(msg))
      upgrade_ = std::make_shared<bhttp::request<bhttp::empty_body>>(
        bhttp::request_header<>{msg.base()});
    parser_.reset();
    waiting_ = true;
    auto state = std::make_shared<responder_state>(shared_from_this());
    state->spool_file = req.body_file;
    responder respond = [state](response r) { state->answer(std::move(r)); };
    if (auto limit = opts().answer_timeout; limit.count() > 0) {
      answer_timer_.expires_after(limit);
      answer_timer_.async_wait([weak = std::weak_ptr<responder_state>(state), limit](error_code ec) {
        if (ec)
          return; // answered (or the connection is gone)
        if (auto st = weak.lock())
          st->answer(json_error(504, "the node did not answer within "
                                       + (limit.count() % 1000 == 0 ? std::to_string(limit.count() / 1000) + " s"
                                                                   : std::to_string(limit.count()) + " ms")));
      });
    }
    try {
      core_->on_request(std::move(req), respond);
    } catch (...) {
      state->answer(json_error(500, "internal error"));
    }
  }

  // Shared by all copies of one responder: answers at most once, and answers
  // 500 if the last copy is dropped unanswered.
  struct responder_state {
    explicit responder_state(std::shared_ptr<connection> c) : conn(std::move(c)) {
    }
    responder_state(const responder_state&) = delete;
    responder_state& operator=(const responder_state&) = delete;
    ~responder_state() {
      try {
        answer(json_error(500, "internal error"));
      } catch (...) {
        // Nothing sensible is left to do with a failure while unwinding.
      }
      if (!spool_file.empty())
        ::unlink(spool_file.c_str());
    }
    void answer(response r) {
      if (answered.exchange(true))
        return;
      submit(conn, std::move(r));
    }
    std::shared_ptr<connection> conn;
    std::atomic<bool> answered{false};
    std::string spool_file; ///< the request's body file, unless the handler moved it
  };

  void deliver(response r) {
    if (done()) {
      close_now();
      return;
    }
    if (!waiting_)
      return;
    waiting_ = false;
    answer_timer_.cancel();
    if (r.websocket_open) {
      if (!upgrade_) {
        auto err = json_error(426, "this route needs a websocket upgrade");
        err.headers.emplace_back("Upgrade", "websocket");
        send(std::move(err));
        return;
      }
      upgrade_to_websocket(std::move(r.websocket_open));
      return;
    }
    send(std::move(r));
  }

  // Hands the socket to a websocket session; this connection is done.
  void upgrade_to_websocket(std::function<void(std::shared_ptr<websocket>)> open) {
    auto req = std::move(upgrade_);
    std::shared_ptr<ws_session> ws;
    {
      std::lock_guard lock{core_->mutex};
      if (core_->stopped) {
        close_now();
        return;
      }
      ws = std::make_shared<ws_session>(core_, std::move(stream_));
      core_->websockets.emplace(ws.get(), ws);
    }
    closed_ = true; // the stream now belongs to the session
    ws->run(std::move(req), std::move(open));
  }

  template <class Body>
  void fill(bhttp::response<Body>& msg, const response& r) {
    msg.version(11);
    msg.result(r.status);
    msg.set(bhttp::field::server, opts().server_name);
    if (!r.content_type.empty() && valid_field("content-type", r.content_type))
      msg.set(bhttp::field::content_type, r.content_type);
    else
      msg.set(bhttp::field::content_type, "application/octet-stream");
    for (const auto& [name, value] : r.headers) {
      if (!valid_field(name, value) || reserved_field(name))
        continue;
      if (iequals(name, "server") || iequals(name, "content-type"))
        msg.set(name, value);
      else
        msg.insert(name, value);
    }
    msg.keep_alive(keep_alive_);
  }

  void send(response r) {
    try {
      compose(std::move(r));
    } catch (const std::exception&) {
      keep_alive_ = false;
      head_ = false;
      response fallback = json_error(500, "internal error");
      bhttp::response<bhttp::string_body> msg;
      fill(msg, fallback);
      msg.body() = std::move(fallback.body);
      msg.prepare_payload();
      write(std::make_shared<outgoing<bhttp::string_body>>(std::move(msg)));
    }
  }

  void compose(response r) {
    if (r.status < 200 || r.status > 999)
      r = json_error(500, "internal error");
    if (!r.file_path.empty()) {
      std::error_code fs_ec;
      int fd = std::filesystem::is_regular_file(r.file_path, fs_ec)
                 ? ::open(r.file_path.c_str(), O_RDONLY | O_CLOEXEC)
                 : -1;
      struct stat st{};
      if (fd >= 0 && ::fstat(fd, &st) == 0) {
        auto file = std::make_shared<file_send>(fd, 0, static_cast<uint64_t>(st.st_size));
        bhttp::response<bhttp::empty_body> msg;
        if (r.status == 200 && !range_.empty()) {
          auto size = file->left;
          if (auto range = parse_range(range_, size)) {
            if (range->first > range->second) {
              auto refusal = json_error(416, "range not satisfiable (the file has "
                                               + std::to_string(size) + " bytes)");
              refusal.headers.emplace_back("Content-Range", "bytes */" + std::to_string(size));
              send(std::move(refusal));
              return;
            }
            r.status = 206;
            r.headers.emplace_back("Content-Range", "bytes " + std::to_string(range->first) + "-"
                                                      + std::to_string(range->second) + "/"
                                                      + std::to_string(size));
            file->offset = range->first;
            file->left = range->second - range->first + 1;
          }
        }
        if (r.status == 200)
          r.headers.emplace_back("Accept-Ranges", "bytes");
        fill(msg, r);
        msg.content_length(file->left);
        auto out = std::make_shared<outgoing<bhttp::empty_body>>(std::move(msg));
        if (head_)
          write(std::move(out));
        else
          write_file(std::move(out), std::move(file));
        return;
      }
      if (fd >= 0)
        ::close(fd);
      r = json_error(404, "file not found");
    }
    bool no_body = r.status == 204 || r.status == 304;
    if (no_body)
      r.body.clear();
    bhttp::response<bhttp::string_body> msg;
    fill(msg, r);
    msg.body() = std::move(r.body);
    msg.prepare_payload();
    if (r.status == 204)
      msg.erase(bhttp::field::content_length);
    if (head_)
      write_head(std::move(msg));
    else
      write(std::make_shared<outgoing<bhttp::string_body>>(std::move(msg)));
  }

  // An open file (or a range of it) to send after a response header.
  struct file_send {
    file_send(int f, uint64_t off, uint64_t n) : fd(f), offset(off), left(n) {}
    ~file_send() { ::close(fd); }
    file_send(const file_send&) = delete;
    file_send& operator=(const file_send&) = delete;
    int fd;
    uint64_t offset;
    uint64_t left;
  };

  // Sends the header, then the file with sendfile(2): the bytes go from the page cache to the
  // socket without passing through user space.
  void write_file(std::shared_ptr<outgoing<bhttp::empty_body>> out, std::shared_ptr<file_send> file) {
    begin_transfer();
    arm_transfer_deadline();
    auto& msg = out->msg;
    bhttp::async_write(stream_, msg,
                       [self = shared_from_this(), out, file](error_code ec, std::size_t n) {
                         if (self->done() || ec) {
                           self->close_now();
                           return;
                         }
                         self->transfer_bytes_ += n;
                         self->send_file_part(file);
                       });
  }

  void send_file_part(const std::shared_ptr<file_send>& file) {
    auto& sock = stream_.socket();
    error_code ec;
    sock.native_non_blocking(true, ec);
    while (file->left > 0 && !ec) {
      auto off = static_cast<off_t>(file->offset);
      auto n = ::sendfile(sock.native_handle(), file->fd, &off,
                          static_cast<size_t>(std::min<uint64_t>(file->left, 16u << 20)));
      if (n > 0) {
        file->offset += static_cast<uint64_t>(n);
        file->left -= static_cast<uint64_t>(n);
        transfer_bytes_ += static_cast<uint64_t>(n);
        continue;
      }
      if (n < 0 && errno == EINTR)
        continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        // Wait until the peer takes more, within the transfer deadline.
        auto now = clock_type::now();
        auto deadline = std::min(now + opts().read_timeout,
                                 transfer_start_ + opts().read_timeout
                                   + std::chrono::milliseconds{static_cast<int64_t>(
                                     std::min<uint64_t>(transfer_bytes_, INT64_MAX / 2))});
        send_timer_.expires_at(deadline);
        send_timer_.async_wait([self = shared_from_this()](error_code tec) {
          if (!tec)
            self->close_now(); // too slow
        });
        sock.async_wait(tcp::socket::wait_write,
                        [self = shared_from_this(), file](error_code wec) {
                          self->send_timer_.cancel();
                          if (self->done() || wec) {
                            self->close_now();
                            return;
                          }
                          self->send_file_part(file);
                        });
        return;
      }
      close_now(); // the file shrank (n == 0) or the socket failed
      return;
    }
    if (ec) {
      close_now();
      return;
    }
    if (keep_alive_)
      read_header();
    else
      linger();
  }

  // A HEAD answer keeps the header (including Content-Length) of the full
  // answer but sends no body.
  template <class Body>
  void write_head(bhttp::response<Body>&& msg) {
    bhttp::response<bhttp::empty_body> head{std::move(msg.base())};
    write(std::make_shared<outgoing<bhttp::empty_body>>(std::move(head)));
  }

  template <class Body>
  void write(std::shared_ptr<outgoing<Body>> out) {
    begin_transfer();
    write_some(std::move(out));
  }

  template <class Body>
  void write_some(std::shared_ptr<outgoing<Body>> out) {
    arm_transfer_deadline();
    auto& sr = out->sr;
    bhttp::async_write_some(stream_, sr,
                            [self = shared_from_this(), out = std::move(out)](
                              error_code ec, std::size_t n) mutable {
                              self->on_write(std::move(out), ec, n);
                            });
  }

  template <class Body>
  void on_write(std::shared_ptr<outgoing<Body>> out, error_code ec, std::size_t n) {
    if (done() || ec) {
      close_now();
      return;
    }
    transfer_bytes_ += n;
    if (!out->sr.is_done()) {
      write_some(std::move(out));
      return;
    }
    if (keep_alive_)
      read_header();
    else
      linger();
  }

  // Half-closes and reads whatever the peer still sends for a short while,
  // so that closing with unread input (which makes the kernel send a reset)
  // does not destroy the answer before the peer has read it.
  void linger() {
    error_code ec;
    stream_.socket().shutdown(tcp::socket::shutdown_send, ec);
    if (ec) {
      close_now();
      return;
    }
    buffer_.consume(buffer_.size());
    drained_ = 0;
    stream_.expires_after(std::min<std::chrono::milliseconds>(opts().read_timeout, linger_time));
    drain();
  }

  void drain() {
    stream_.async_read_some(buffer_.prepare(4096),
                            [self = shared_from_this()](error_code ec, std::size_t n) {
                              self->drained_ += n;
                              if (ec || self->done() || self->drained_ > linger_bytes) {
                                self->close_now();
                                return;
                              }
                              self->drain();
                            });
  }

  std::shared_ptr<core> core_; // declared first: the stream needs its io_context
  beast::tcp_stream stream_;
  asio::steady_timer send_timer_{stream_.get_executor()};
  asio::steady_timer answer_timer_{stream_.get_executor()}; // options::answer_timeout
  beast::flat_buffer buffer_;
  std::optional<bhttp::request_parser<spool_body>> parser_;
  std::shared_ptr<bhttp::request<bhttp::empty_body>> upgrade_; // the last request's, if any
  std::string range_; // the last request's Range header
  std::string remote_;
  std::string client_; // the address whose per-client limits apply; empty: none
  bool closed_ = false;
  bool waiting_ = false;
  bool keep_alive_ = false;
  bool head_ = false;
  clock_type::time_point transfer_start_{};
  uint64_t transfer_bytes_ = 0;
  std::size_t drained_ = 0;
};

std::string format_endpoint(const tcp::endpoint& ep) {
  auto addr = ep.address().to_string();
  if (ep.address().is_v6())
    addr = "[" + addr + "]";
  return addr + ":" + std::to_string(ep.port());
}

void accept_next(const std::shared_ptr<core>& c);

void on_accept(const std::shared_ptr<core>& c, error_code ec, tcp::socket socket) {
  if (c->stopping.load())
    return;
  if (ec) {
    if (ec == asio::error::operation_aborted)
      return;
    // Typically EMFILE: retrying at once would spin on the same error.
    c->accept_retry.expires_after(std::chrono::milliseconds{50});
    c->accept_retry.async_wait([c](error_code wait_ec) {
      if (!wait_ec && !c->stopping.load())
        accept_next(c);
    });
    return;
  }
  error_code ep_ec;
  auto ep = socket.remote_endpoint(ep_ec);
  std::shared_ptr<connection> conn;
  if (!ep_ec) {
    socket.set_option(tcp::no_delay{true}, ep_ec);
    std::lock_guard lock{c->mutex};
    std::string client;
    bool allowed = !c->stopped
                   && c->connections.size() + c->websockets.size() < c->opts.max_connections;
    if (allowed && c->limits(ep.address())
        && (c->opts.max_connections_per_client > 0 || c->opts.rate_per_client > 0)) {
      client = ep.address().to_string();
      if (c->clients.size() >= 65536) // many addresses: forget the idle ones
        std::erase_if(c->clients, [](const auto& kv) { return kv.second.connections == 0; });
      auto [i, fresh] = c->clients.try_emplace(client);
      if (fresh) {
        i->second.tokens = std::max(1.0, c->opts.rate_burst);
        i->second.refilled = std::chrono::steady_clock::now();
      }
      if (c->opts.max_connections_per_client > 0
          && i->second.connections >= c->opts.max_connections_per_client)
        allowed = false;
      else
        ++i->second.connections;
    }
    if (allowed) {
      conn = std::make_shared<connection>(c, std::move(socket), format_endpoint(ep), client);
      c->connections.emplace(conn.get(), conn);
    }
  }
  if (conn) {
    conn->start();
  } else {
    error_code close_ec;
    socket.close(close_ec);
  }
  accept_next(c);
}

void accept_next(const std::shared_ptr<core>& c) {
  c->acceptor.async_accept(asio::make_strand(c->ioc),
                           [c](error_code ec, tcp::socket socket) {
                             on_accept(c, ec, std::move(socket));
                           });
}

void run_io(const std::shared_ptr<core>& c) {
  for (;;) {
    try {
      c->ioc.run();
      return;
    } catch (...) {
      // One failed completion handler must not take the io thread down.
    }
  }
}

} // namespace

response json(unsigned status, std::string body) {
  response r;
  r.status = status;
  r.body = std::move(body);
  return r;
}

bool is_websocket_upgrade(const request& req) {
  auto header = [&](const char* name) {
    auto i = req.headers.find(name);
    return i == req.headers.end() ? std::string{} : to_lower(i->second);
  };
  return req.method == "GET" && header("upgrade").find("websocket") != std::string::npos
         && header("connection").find("upgrade") != std::string::npos;
}

response json_error(unsigned status, std::string_view message) {
  nlohmann::json j = {{"error", std::string{message}}};
  return json(status, j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
}

struct server::impl {
  std::shared_ptr<core> c;
  std::vector<std::thread> threads;
};

server::server(server_options opts, handler h) : impl_(std::make_unique<impl>()) {
  impl_->c = std::make_shared<core>(std::move(opts), std::move(h));
}

server::~server() {
  stop();
}

std::string server::start() {
  auto& c = impl_->c;
  {
    std::lock_guard lock{c->mutex};
    if (c->stopped)
      return "server already stopped";
    if (c->started)
      return "server already started";
  }
  const auto& opts = c->opts;
  auto where = "cannot listen on " + opts.host + ":" + std::to_string(opts.port) + ": ";
  error_code ec;
  tcp::endpoint ep;
  auto addr = asio::ip::make_address(opts.host, ec);
  if (!ec) {
    ep = tcp::endpoint{addr, opts.port};
  } else {
    tcp::resolver resolver{c->ioc};
    auto results = resolver.resolve(opts.host, std::to_string(opts.port),
                                    tcp::resolver::passive, ec);
    if (ec || results.empty())
      return where + (ec ? ec.message() : std::string{"host not found"});
    ep = results.begin()->endpoint();
  }
  auto& acc = c->acceptor;
  acc.open(ep.protocol(), ec);
  if (!ec)
    acc.set_option(tcp::acceptor::reuse_address(true), ec);
  if (!ec)
    acc.bind(ep, ec);
  if (!ec)
    acc.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) {
    error_code ignored;
    acc.close(ignored);
    return where + ec.message();
  }
  c->port = acc.local_endpoint(ec).port();
  {
    std::lock_guard lock{c->mutex};
    c->started = true;
  }
  c->work.emplace(c->ioc.get_executor());
  asio::post(acc.get_executor(), [c] { accept_next(c); });
  auto n = std::max(1u, opts.threads);
  for (unsigned i = 0; i < n; ++i)
    impl_->threads.emplace_back([c] { run_io(c); });
  return {};
}

uint16_t server::port() const {
  return impl_->c->port.load();
}

void server::stop() {
  auto& c = impl_->c;
  std::vector<std::weak_ptr<connection>> conns;
  std::vector<std::weak_ptr<ws_session>> sockets;
  bool first = false;
  bool started = false;
  {
    std::lock_guard lock{c->mutex};
    if (!c->stopped) {
      first = true;
      c->stopped = true;
      c->stopping.store(true);
      for (const auto& [ptr, weak] : c->connections)
        conns.push_back(weak);
      for (const auto& [ptr, weak] : c->websockets)
        sockets.push_back(weak);
    }
    started = c->started;
  }
  // Only the first call posts: handlers posted after the threads are gone
  // would stay queued in the core's own io_context, keeping the core alive.
  if (first && !started) {
    error_code ignored;
    c->acceptor.close(ignored);
  } else if (first) {
    asio::post(c->acceptor.get_executor(), [c] {
      error_code ignored;
      c->acceptor.close(ignored);
      c->accept_retry.cancel();
    });
    for (auto& weak : conns)
      if (auto conn = weak.lock())
        asio::post(conn->executor(), [conn] { conn->close_now(); });
    for (auto& weak : sockets)
      if (auto ws = weak.lock())
        asio::post(ws->executor(), [ws] { ws->abort(); });
    c->work.reset();
  }
  // Once every socket is closed the io_context runs out of work and the
  // threads return on their own, leaving nothing queued.
  auto self = std::this_thread::get_id();
  for (auto& t : impl_->threads) {
    if (t.get_id() == self)
      t.detach(); // stop() called from a handler: that thread ends after it
    else if (t.joinable())
      t.join();
  }
  impl_->threads.clear();
}

} // namespace alephd::http
