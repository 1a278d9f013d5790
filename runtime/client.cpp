#include "runtime/client.hpp"

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <iterator>
#include <limits>
#include <optional>
#include <set>
#include <string_view>
#include <thread>
#include <utility>

#include <signal.h>

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core/buffers_to_string.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/websocket.hpp>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include "runtime/crypto.hpp"
#include "runtime/owner_auth.hpp"
#include "runtime/transfer.hpp"
#include "runtime/wall_clock.hpp"

namespace alephd {

namespace {

bool is_digits(std::string_view s) {
  return !s.empty()
         && std::all_of(s.begin(), s.end(), [](unsigned char c) { return std::isdigit(c) != 0; });
}

std::string lower(std::string_view s) {
  std::string out{s};
  for (auto& c : out)
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

} // namespace

namespace client {

std::string crn_url::to_string() const {
  auto h = host.find(':') != std::string::npos ? "[" + host + "]" : host;
  return "http://" + h + ":" + std::to_string(port) + prefix;
}

std::string parse_crn_url(const std::string& text, crn_url& out) {
  if (text.empty())
    return "the CRN URL is empty (expected http://host[:port][/prefix])";
  if (text.size() > 2048)
    return "the CRN URL is too long";
  for (unsigned char c : text)
    if (c <= 0x20 || c >= 0x7f)
      return "the CRN URL must not contain spaces, control or non-ASCII characters";
  std::string_view rest{text};
  if (auto p = rest.find("://"); p != std::string_view::npos) {
    auto scheme = lower(rest.substr(0, p));
    if (scheme == "https")
      return "https is not supported yet; use an SSH tunnel or a reverse proxy";
    if (scheme != "http")
      return "unsupported URL scheme '" + scheme.substr(0, 20) + "' (expected http://host[:port])";
    rest.remove_prefix(p + 3);
  }
  auto slash = rest.find_first_of("/?#");
  auto authority = rest.substr(0, slash);
  auto path = slash == std::string_view::npos ? std::string_view{} : rest.substr(slash);
  if (authority.find('@') != std::string_view::npos)
    return "the CRN URL must not contain user information";
  if (!path.empty() && path[0] != '/')
    return "the CRN URL must not contain a query or fragment";
  if (path.find_first_of("?#") != std::string_view::npos)
    return "the CRN URL must not contain a query or fragment";
  crn_url r;
  std::string_view port_text;
  if (!authority.empty() && authority[0] == '[') {
    auto close = authority.find(']');
    if (close == std::string_view::npos)
      return "the CRN URL has an unterminated IPv6 address";
    r.host = std::string{authority.substr(1, close - 1)};
    auto after = authority.substr(close + 1);
    if (!after.empty()) {
      if (after[0] != ':')
        return "the CRN URL has junk after the IPv6 address";
      port_text = after.substr(1);
      if (port_text.empty())
        return "the CRN URL has an empty port";
    }
    if (r.host.empty()
        || r.host.find_first_not_of("0123456789abcdefABCDEF:.") != std::string::npos)
      return "the CRN URL has a malformed IPv6 address";
  } else {
    auto colon = authority.find(':');
    r.host = std::string{authority.substr(0, colon)};
    if (colon != std::string_view::npos) {
      port_text = authority.substr(colon + 1);
      if (port_text.empty())
        return "the CRN URL has an empty port";
    }
    for (unsigned char c : r.host)
      if (!std::isalnum(c) && c != '-' && c != '.' && c != '_')
        return "the CRN URL has a malformed host name";
  }
  if (r.host.empty())
    return "the CRN URL has no host (expected http://host[:port])";
  if (!port_text.empty()) {
    if (!is_digits(port_text) || port_text.size() > 5)
      return "the CRN URL has a malformed port '" + std::string{port_text.substr(0, 20)} + "'";
    auto port = std::stoul(std::string{port_text});
    if (port == 0 || port > 65535)
      return "the CRN URL's port must be between 1 and 65535";
    r.port = static_cast<uint16_t>(port);
  }
  std::string prefix{path};
  while (!prefix.empty() && prefix.back() == '/')
    prefix.pop_back();
  r.prefix = std::move(prefix);
  out = std::move(r);
  return {};
}

std::string parse_client_duration(const std::string& text, std::chrono::milliseconds& out) {
  auto digits_end = text.find_first_not_of("0123456789");
  auto number = text.substr(0, digits_end);
  auto unit = digits_end == std::string::npos ? std::string{} : text.substr(digits_end);
  auto bad = "malformed duration '" + text.substr(0, 40) + "' (expected e.g. 500ms, 30s or 2m)";
  if (number.empty() || number.size() > 9)
    return bad;
  long long n = std::stoll(number);
  long long ms = 0;
  if (unit == "ms")
    ms = n;
  else if (unit == "s")
    ms = n * 1000;
  else if (unit == "m")
    ms = n * 60'000;
  else if (unit == "h")
    ms = n * 3'600'000;
  else if (unit.empty())
    return "duration '" + text.substr(0, 40) + "' needs a unit (e.g. 500ms, 30s or 2m)";
  else
    return bad;
  if (ms <= 0)
    return "duration '" + text.substr(0, 40) + "' must be more than zero";
  if (ms > 24LL * 3'600'000)
    return "duration '" + text.substr(0, 40) + "' is longer than 24h";
  out = std::chrono::milliseconds{ms};
  return {};
}

std::size_t log_overlap(const std::vector<log_entry>& prev, const std::vector<log_entry>& next) {
  if (prev.empty() || next.empty())
    return 0;
  // Knuth-Morris-Pratt: `next` is the pattern, `prev` the text; the state after the last entry
  // of `prev` is the longest prefix of `next` that ends `prev`. Linear in both sizes.
  std::vector<std::size_t> fail(next.size(), 0);
  for (std::size_t i = 1, k = 0; i < next.size(); ++i) {
    while (k > 0 && !(next[i] == next[k]))
      k = fail[k - 1];
    if (next[i] == next[k])
      ++k;
    fail[i] = k;
  }
  std::size_t k = 0;
  for (const auto& e : prev) {
    while (k > 0 && (k == next.size() || !(next[k] == e)))
      k = fail[k - 1];
    if (k < next.size() && next[k] == e)
      ++k;
  }
  return k;
}

} // namespace client

namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using tcp = asio::ip::tcp;
using error_code = boost::system::error_code;
using steady = std::chrono::steady_clock;
using json = nlohmann::json;
using namespace std::chrono_literals;

constexpr const char* default_crn = "http://127.0.0.1:4020";
constexpr const char* default_data_dir = "./.alephd-crn";
constexpr std::size_t max_answer = 64u << 20;    // an API answer (ls, logs) held in memory
constexpr std::size_t max_error_body = 64u << 10; // enough of an error body for its message

// A failure that ends the verb: code 1 (the node) or 2 (usage), and the line for err.
struct failure {
  int code;
  std::string message;
};

[[noreturn]] void usage_error(std::string message) {
  throw failure{2, std::move(message)};
}

[[noreturn]] void node_error(std::string message) {
  throw failure{1, std::move(message)};
}

// ---- text helpers -------------------------------------------------------------------------

// Makes text from the network safe for one line on a terminal: control characters (escape
// sequences included) become spaces, and the result is cut at `limit` bytes.
std::string one_line(std::string_view s, std::size_t limit = 300) {
  std::string out;
  out.reserve(std::min(s.size(), limit));
  for (unsigned char c : s) {
    if (out.size() >= limit) {
      // do not cut inside a UTF-8 sequence
      while (!out.empty() && (static_cast<unsigned char>(out.back()) & 0xC0) == 0x80)
        out.pop_back();
      if (!out.empty() && (static_cast<unsigned char>(out.back()) & 0x80))
        out.pop_back();
      out += "…";
      return out;
    }
    out += (c < 0x20 || c == 0x7f) ? ' ' : static_cast<char>(c);
  }
  return out;
}

// Like one_line but keeps tabs and shows other control characters as \xNN, for log messages.
std::string printable(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (unsigned char c : s) {
    if ((c < 0x20 && c != '\t') || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out;
}

// Display width of UTF-8 text in columns (one per code point; good enough for the table).
std::size_t columns(std::string_view s) {
  return static_cast<std::size_t>(std::count_if(
    s.begin(), s.end(), [](char c) { return (static_cast<unsigned char>(c) & 0xC0) != 0x80; }));
}

std::string format_duration(std::chrono::milliseconds d) {
  auto ms = d.count();
  if (ms % 60'000 == 0)
    return std::to_string(ms / 60'000) + "m";
  if (ms % 1000 == 0)
    return std::to_string(ms / 1000) + "s";
  return std::to_string(ms) + "ms";
}

bool is_item_hash(std::string_view s) {
  return s.size() == 64 && std::all_of(s.begin(), s.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
         });
}

bool is_token_char(unsigned char c) {
  return std::isalnum(c) || std::strchr("!#$%&'*+-.^_`|~", c) != nullptr;
}

std::string trim(std::string_view s) {
  auto b = s.find_first_not_of(" \t\r\n");
  if (b == std::string_view::npos)
    return {};
  auto e = s.find_last_not_of(" \t\r\n");
  return std::string{s.substr(b, e - b + 1)};
}

std::string env(const char* name) {
  const char* v = std::getenv(name);
  return v ? std::string{v} : std::string{};
}

// Reads a whole file in binary; fails with a usage error naming `what`.
std::string read_file(const std::string& path, const std::string& what) {
  if (path == "-") {
    std::string data{std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>()};
    return data;
  }
  std::ifstream in{path, std::ios::binary};
  if (!in) {
    auto why = std::strerror(errno);
    usage_error("cannot read " + what + " '" + one_line(path, 200) + "': " + why);
  }
  std::string data{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  if (in.bad())
    usage_error("cannot read " + what + " '" + one_line(path, 200) + "'");
  return data;
}

// ---- SIGINT while following logs ---------------------------------------------------------

std::atomic<bool> interrupted{false};
static_assert(std::atomic<bool>::is_always_lock_free, "used from a signal handler");

extern "C" void on_sigint(int) {
  interrupted.store(true);
}

// Catches SIGINT for its lifetime and restores the previous disposition afterwards.
class sigint_catcher {
public:
  sigint_catcher() {
    interrupted.store(false);
    struct sigaction sa {};
    sa.sa_handler = on_sigint;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0;
    installed_ = sigaction(SIGINT, &sa, &old_) == 0;
  }
  ~sigint_catcher() {
    if (installed_)
      sigaction(SIGINT, &old_, nullptr);
    interrupted.store(false);
  }
  sigint_catcher(const sigint_catcher&) = delete;
  sigint_catcher& operator=(const sigint_catcher&) = delete;

private:
  struct sigaction old_ {};
  bool installed_ = false;
};

// ---- one HTTP exchange --------------------------------------------------------------------

enum class outcome { ok, failed, timed_out, interrupted };

struct http_head {
  unsigned status = 0;
  unsigned version = 11;
  std::string reason;
  std::vector<std::pair<std::string, std::string>> fields;
};

struct http_call {
  std::string method = "GET";
  std::string target = "/";
  std::vector<std::pair<std::string, std::string>> headers; // sent after the defaults
  std::string body;
  bool has_body = false;
  std::chrono::milliseconds timeout{30'000};
  bool interruptible = false; // ends early on SIGINT (logs --follow)
  // With the head read: return true to pass the body to `sink` as it arrives, false to collect
  // it into the result (up to `collect_limit` bytes).
  std::function<bool(const http_head&)> on_head;
  std::function<void(const char*, std::size_t)> sink;
  std::size_t collect_limit = max_answer;
};

struct http_result {
  outcome result = outcome::failed;
  std::string error; // for failed and timed_out: one line, without "alephd: "
  http_head head;
  std::string body;       // when collected
  bool truncated = false; // the collected body hit collect_limit
};

// Runs one asynchronous operation on `ioc` to completion, the deadline, or SIGINT; on the
// latter two `cancel` aborts it. The loop wakes at least every 50 ms to look at the clock.
template <class Start, class Cancel>
outcome run_op(asio::io_context& ioc, steady::time_point deadline, bool interruptible,
               error_code& ec, Start&& start, Cancel&& cancel) {
  bool done = false;
  start([&done, &ec](error_code e, auto&&...) {
    ec = e;
    done = true;
  });
  ioc.restart();
  while (!done) {
    auto now = steady::now();
    auto why = outcome::ok;
    if (now >= deadline)
      why = outcome::timed_out;
    else if (interruptible && interrupted.load())
      why = outcome::interrupted;
    if (why != outcome::ok) {
      cancel();
      ioc.restart();
      ioc.run();
      return why;
    }
    auto slice = std::min<steady::duration>(deadline - now, 50ms);
    if (ioc.run_one_for(slice) == 0 && ioc.stopped() && !done) {
      ec = asio::error::operation_aborted;
      return outcome::failed;
    }
  }
  return outcome::ok;
}

std::string host_header(const client::crn_url& url) {
  auto h = url.host.find(':') != std::string::npos ? "[" + url.host + "]" : url.host;
  return url.port == 80 ? h : h + ":" + std::to_string(url.port);
}

// Resolves the CRN's host (IP literals need no resolver) and connects `sock` to the first
// address that answers. On outcome::ok, `error` is empty or the one-line failure.
outcome connect_crn(asio::io_context& ioc, tcp::socket& sock, const client::crn_url& url,
                    steady::time_point deadline, bool interruptible, std::string& error) {
  error_code ec;
  std::vector<tcp::endpoint> endpoints;
  if (auto addr = asio::ip::make_address(url.host, ec); !ec) {
    endpoints.emplace_back(addr, url.port);
  } else {
    tcp::resolver resolver{ioc};
    tcp::resolver::results_type results;
    auto o = run_op(
      ioc, deadline, interruptible, ec,
      [&](auto handler) {
        resolver.async_resolve(url.host, std::to_string(url.port),
                               [&results, handler](error_code e, tcp::resolver::results_type rs) {
                                 results = std::move(rs);
                                 handler(e);
                               });
      },
      [&resolver] { resolver.cancel(); });
    if (o != outcome::ok)
      return o;
    if (ec) {
      error = "cannot resolve the CRN host '" + one_line(url.host, 100) + "': "
              + one_line(ec.message(), 200);
      return outcome::ok;
    }
    for (const auto& e : results)
      endpoints.push_back(e.endpoint());
  }
  auto o = run_op(
    ioc, deadline, interruptible, ec,
    [&](auto handler) { asio::async_connect(sock, endpoints, std::move(handler)); },
    [&sock] {
      error_code ignored;
      sock.close(ignored);
    });
  if (o == outcome::ok && ec)
    error = "cannot reach the CRN at " + url.to_string() + ": " + one_line(ec.message(), 200);
  return o;
}

http_result exchange(const client::crn_url& url, const http_call& call) {
  http_result r;
  auto deadline = steady::now() + call.timeout;
  auto where = url.to_string();
  auto timed_out = [&] {
    r.result = outcome::timed_out;
    r.error = "no answer from the CRN at " + where + " within " + format_duration(call.timeout);
    return r;
  };
  auto failed = [&](const std::string& what, const error_code& ec) {
    r.result = outcome::failed;
    r.error = what + ": " + one_line(ec.message(), 200);
    return r;
  };
  auto end = [&](outcome o) {
    if (o == outcome::timed_out)
      return timed_out();
    r.result = o;
    return r;
  };

  asio::io_context ioc{1};
  tcp::socket sock{ioc};
  auto close = [&sock] {
    error_code ignored;
    sock.close(ignored);
  };
  error_code ec;
  std::string error;
  auto o = connect_crn(ioc, sock, url, deadline, call.interruptible, error);
  if (o != outcome::ok)
    return end(o);
  if (!error.empty()) {
    r.result = outcome::failed;
    r.error = error;
    return r;
  }

  bhttp::request<bhttp::string_body> req;
  req.method_string(call.method);
  req.target(call.target);
  req.version(11);
  req.set(bhttp::field::host, host_header(url));
  req.set(bhttp::field::user_agent, "alephd-client");
  req.set(bhttp::field::accept, "*/*");
  req.set(bhttp::field::connection, "close");
  std::set<std::string> replaced;
  for (const auto& [name, value] : call.headers) {
    // A header given by the user replaces a default of the same name; repeats are all sent.
    if (replaced.insert(lower(name)).second)
      req.erase(name);
    req.insert(name, value);
  }
  req.body() = call.body;
  if (call.has_body || !call.body.empty())
    req.content_length(call.body.size());
  o = run_op(
    ioc, deadline, call.interruptible, ec,
    [&](auto handler) { bhttp::async_write(sock, req, std::move(handler)); }, close);
  if (o != outcome::ok)
    return end(o);
  if (ec)
    return failed("cannot send the request to the CRN at " + where, ec);

  beast::flat_buffer buffer;
  bhttp::response_parser<bhttp::buffer_body> parser;
  parser.header_limit(64 * 1024);
  // Not boost::none: Boost 1.74 compares the Content-Length against the empty optional and
  // fails every response with "body limit exceeded".
  parser.body_limit(std::numeric_limits<std::uint64_t>::max());
  if (lower(call.method) == "head")
    parser.skip(true);
  o = run_op(
    ioc, deadline, call.interruptible, ec,
    [&](auto handler) { bhttp::async_read_header(sock, buffer, parser, std::move(handler)); },
    close);
  if (o != outcome::ok)
    return end(o);
  if (ec == bhttp::error::end_of_stream || ec == asio::error::eof
      || ec == asio::error::connection_reset)
    return failed("the CRN at " + where + " closed the connection without an answer", ec);
  if (ec)
    return failed("no valid HTTP answer from the CRN at " + where, ec);

  auto& msg = parser.get();
  r.head.status = msg.result_int();
  r.head.version = msg.version();
  r.head.reason = std::string{msg.reason()};
  for (const auto& f : msg)
    r.head.fields.emplace_back(std::string{f.name_string()}, std::string{f.value()});
  bool stream = call.on_head ? call.on_head(r.head) : false;

  char chunk[64 * 1024];
  while (!parser.is_done()) {
    msg.body().data = chunk;
    msg.body().size = sizeof chunk;
    o = run_op(
      ioc, deadline, call.interruptible, ec,
      [&](auto handler) { bhttp::async_read(sock, buffer, parser, std::move(handler)); }, close);
    if (o != outcome::ok)
      return end(o);
    if (ec == bhttp::error::need_buffer)
      ec = {};
    if (ec)
      return failed("the answer from the CRN at " + where + " broke off", ec);
    auto n = sizeof chunk - msg.body().size;
    if (stream) {
      if (call.sink)
        call.sink(chunk, n);
    } else {
      auto room = call.collect_limit - r.body.size();
      r.body.append(chunk, std::min(n, room));
      if (n > room) {
        r.truncated = true;
        break;
      }
    }
  }
  close();
  r.result = outcome::ok;
  return r;
}

// The message of an error answer: "error" of a JSON object, else the body's first line, else
// the reason phrase.
std::string error_text(const http_result& r) {
  auto body = std::string_view{r.body};
  auto doc = json::parse(body.begin(), body.end(), nullptr, false);
  if (!doc.is_discarded() && doc.is_object() && doc.contains("error")) {
    const auto& e = doc["error"];
    return one_line(e.is_string() ? e.get<std::string>() : e.dump());
  }
  auto first = body.substr(0, body.find('\n'));
  auto line = trim(first);
  if (!line.empty())
    return one_line(line);
  return one_line(r.head.reason);
}

std::string http_error_line(const http_result& r) {
  auto text = error_text(r);
  auto line = "HTTP " + std::to_string(r.head.status);
  return text.empty() ? line : line + ": " + text;
}

bool ok_status(const http_result& r) {
  return r.head.status >= 200 && r.head.status < 300;
}

// ---- options ------------------------------------------------------------------------------

struct options {
  std::vector<std::string> positional;
  std::optional<std::string> crn;
  std::optional<std::string> ccn;
  std::optional<bool> progress;
  std::optional<std::string> token;
  std::optional<std::string> token_file;
  std::optional<std::string> key; ///< a wallet key file: act as the workload's owner
  std::optional<std::string> data_dir;
  std::optional<std::string> method;
  std::optional<std::string> data;
  std::optional<std::string> data_file;
  std::vector<std::pair<std::string, std::string>> headers;
  std::optional<std::chrono::milliseconds> timeout;
  std::chrono::milliseconds interval{1000};
  bool include = false;
  bool json_out = false;
  bool follow = false;
  bool help = false;
};

// The long name of every option, whether it takes a value, and the verbs that accept it.
struct option_spec {
  const char* name;
  char short_name;
  bool takes_value;
  std::set<std::string> verbs;
};

const std::vector<option_spec>& option_specs() {
  static const std::set<std::string> crn_verbs{"call", "ls", "logs", "stop", "reboot", "erase"};
  static const std::set<std::string> all{"call", "ls", "logs", "stop", "reboot", "erase", "upload"};
  static const std::set<std::string> control{"logs", "stop", "reboot", "erase"};
  static const std::vector<option_spec> specs{
    {"crn", 0, true, crn_verbs},
    {"ccn", 0, true, {"upload"}},
    {"progress", 0, false, {"upload"}},
    {"no-progress", 0, false, {"upload"}},
    {"timeout", 0, true, all},
    {"help", 'h', false, all},
    {"request", 'X', true, {"call"}},
    {"data", 'd', true, {"call"}},
    {"data-file", 0, true, {"call"}},
    {"header", 'H', true, {"call"}},
    {"include", 'i', false, {"call"}},
    {"json", 0, false, {"ls"}},
    {"token", 0, true, control},
    {"token-file", 0, true, control},
    {"key", 0, true, control},
    {"data-dir", 0, true, control},
    {"follow", 'f', false, {"logs"}},
    {"interval", 0, true, {"logs"}},
  };
  return specs;
}

void apply(options& o, const std::string& name, const std::string& value) {
  auto duration = [&](std::chrono::milliseconds& out) {
    if (auto e = client::parse_client_duration(value, out); !e.empty())
      usage_error("--" + name + ": " + e);
  };
  if (name == "crn")
    o.crn = value;
  else if (name == "ccn")
    o.ccn = value;
  else if (name == "progress")
    o.progress = true;
  else if (name == "no-progress")
    o.progress = false;
  else if (name == "timeout") {
    std::chrono::milliseconds d{};
    duration(d);
    o.timeout = d;
  } else if (name == "help")
    o.help = true;
  else if (name == "request") {
    if (value.empty() || value.size() > 32
        || !std::all_of(value.begin(), value.end(),
                        [](char c) { return is_token_char(static_cast<unsigned char>(c)); }))
      usage_error("-X: malformed HTTP method '" + one_line(value, 40) + "'");
    o.method = value;
  } else if (name == "data")
    o.data = value;
  else if (name == "data-file")
    o.data_file = value;
  else if (name == "header") {
    auto colon = value.find(':');
    auto header_name = value.substr(0, colon);
    if (colon == std::string::npos || header_name.empty()
        || !std::all_of(header_name.begin(), header_name.end(),
                        [](char c) { return is_token_char(static_cast<unsigned char>(c)); }))
      usage_error("-H: expected 'Name: value', got '" + one_line(value, 60) + "'");
    auto header_value = trim(std::string_view{value}.substr(colon + 1));
    for (unsigned char c : header_value)
      if ((c < 0x20 && c != '\t') || c == 0x7f)
        usage_error("-H: the value of " + header_name + " contains a control character");
    static const std::set<std::string> framing{"content-length", "transfer-encoding",
                                               "connection"};
    if (framing.count(lower(header_name)))
      usage_error("-H: " + header_name + " is set by alephd");
    o.headers.emplace_back(header_name, header_value);
  } else if (name == "include")
    o.include = true;
  else if (name == "json")
    o.json_out = true;
  else if (name == "token")
    o.token = value;
  else if (name == "token-file")
    o.token_file = value;
  else if (name == "key")
    o.key = value;
  else if (name == "data-dir")
    o.data_dir = value;
  else if (name == "follow")
    o.follow = true;
  else if (name == "interval") {
    duration(o.interval);
    if (o.interval < 100ms)
      usage_error("--interval must be at least 100ms");
  }
}

options parse_options(const std::string& verb, const std::vector<std::string>& args) {
  options o;
  auto find = [&](std::string_view name, char short_name) -> const option_spec* {
    for (const auto& s : option_specs())
      if ((!name.empty() && name == s.name) || (short_name != 0 && short_name == s.short_name))
        return s.verbs.count(verb) ? &s : nullptr;
    return nullptr;
  };
  for (std::size_t i = 0; i < args.size(); ++i) {
    const auto& a = args[i];
    if (a == "--") {
      o.positional.insert(o.positional.end(), args.begin() + static_cast<long>(i) + 1, args.end());
      break;
    }
    if (a.size() < 2 || a[0] != '-') {
      o.positional.push_back(a);
      continue;
    }
    const option_spec* spec = nullptr;
    std::optional<std::string> value;
    if (a[1] == '-') {
      auto eq = a.find('=');
      auto name = a.substr(2, eq == std::string::npos ? std::string::npos : eq - 2);
      if (eq != std::string::npos)
        value = a.substr(eq + 1);
      spec = find(name, 0);
    } else {
      spec = find({}, a[1]);
      if (spec && a.size() > 2) {
        if (!spec->takes_value)
          spec = nullptr; // no bundling of flags
        else
          value = a.substr(2);
      }
    }
    if (!spec)
      usage_error("unknown option '" + one_line(a.substr(0, a.find('=')), 60) + "' for alephd "
                  + verb + " (see alephd " + verb + " --help)");
    if (!spec->takes_value && value)
      usage_error("option --" + std::string{spec->name} + " takes no value");
    if (spec->takes_value && !value) {
      if (i + 1 >= args.size())
        usage_error("option --" + std::string{spec->name} + " needs a value");
      value = args[++i];
    }
    apply(o, spec->name, value.value_or(""));
  }
  return o;
}

client::crn_url resolve_crn(const options& o) {
  auto text = o.crn ? *o.crn : env("ALEPHD_CRN");
  if (text.empty())
    text = default_crn;
  client::crn_url url;
  if (auto e = client::parse_crn_url(text, url); !e.empty())
    usage_error(e);
  return url;
}

// The node's login token: --token, --token-file, $ALEPHD_TOKEN, <data-dir>/login_token.
std::string resolve_token(const options& o) {
  if (o.token && o.token_file)
    usage_error("give either --token or --token-file, not both");
  std::string token;
  std::string from;
  if (o.token) {
    token = trim(*o.token);
    from = "--token";
  } else if (o.token_file) {
    token = trim(read_file(*o.token_file, "the token file"));
    from = "the token file";
  } else if (auto e = env("ALEPHD_TOKEN"); !e.empty()) {
    token = trim(e);
    from = "ALEPHD_TOKEN";
  } else {
    auto dir = o.data_dir ? *o.data_dir : std::string{default_data_dir};
    auto path = dir + "/login_token";
    std::ifstream in{path, std::ios::binary};
    if (!in) {
      auto why = errno == ENOENT ? std::string{} : std::string{" ("} + std::strerror(errno) + ")";
      usage_error("no login token: pass --token T, --token-file FILE, ALEPHD_TOKEN, or "
                  "--data-dir DIR of the CRN (cannot read "
                  + one_line(path, 200) + why + ")");
    }
    token = trim(std::string{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()});
    from = path;
  }
  if (token.empty())
    usage_error("the login token from " + one_line(from, 200) + " is empty");
  for (unsigned char c : token)
    if (c < 0x21 || c == 0x7f)
      usage_error("the login token from " + one_line(from, 200)
                  + " contains spaces or control characters");
  return token;
}

// How a control request proves it may act: with --key, as the workload's owner (a fresh P-256
// key signed by the wallet in the key file, and the operation signed by it, aleph-vm's
// X-SignedPubKey / X-SignedOperation); else with the node's login token.
std::vector<std::pair<std::string, std::string>> control_auth(const options& o,
                                                              const client::crn_url& url,
                                                              const std::string& method,
                                                              const std::string& path) {
  if (!o.key)
    return {{"X-Auth-Token", resolve_token(o)}};
  if (o.token || o.token_file)
    usage_error("give either --key or a login token, not both");
  auto text = trim(read_file(*o.key, "the key file"));
  auto secret = crypto::from_hex(text);
  if (!secret || secret->size() != 32 || !crypto::eth_address(*secret))
    usage_error("the key file " + one_line(*o.key, 200)
                + " must hold a wallet's secret key: 64 hex digits (0x optional)");
  auto eph = owner_auth::p256_generate();
  if (!eph)
    node_error("cannot make an ephemeral P-256 key");
  auto now = unix_seconds();
  return {{"X-SignedPubKey", owner_auth::signed_pubkey_eth(*secret, *eph, url.host, now + 600)},
          {"X-SignedOperation", owner_auth::signed_operation(*eph, method, path, url.host, now)}};
}

std::string ref_argument(const options& o, const std::string& verb, std::size_t max_positional) {
  if (o.positional.empty())
    usage_error("missing REF (usage: alephd " + verb + " REF …; see alephd " + verb
                + " --help)");
  if (o.positional.size() > max_positional)
    usage_error("unexpected argument '" + one_line(o.positional[max_positional], 60) + "'");
  const auto& ref = o.positional[0];
  if (!is_item_hash(ref))
    usage_error("REF must be a 64-digit hex item hash");
  return ref;
}

void no_positional(const options& o) {
  if (!o.positional.empty())
    usage_error("unexpected argument '" + one_line(o.positional[0], 60) + "'");
}

// An exchange whose answer is a JSON document; transport errors and non-2xx answers fail.
json fetch_json(const client::crn_url& url, http_call call) {
  call.headers.insert(call.headers.begin(), {"Accept", "application/json"});
  auto r = exchange(url, call);
  if (r.result != outcome::ok)
    node_error(r.error);
  if (!ok_status(r))
    node_error(http_error_line(r));
  if (r.truncated)
    node_error("the answer from the CRN is larger than " + std::to_string(max_answer >> 20)
               + " MiB");
  auto doc = json::parse(r.body, nullptr, false);
  if (doc.is_discarded())
    node_error("the CRN's answer is not JSON: " + one_line(r.body, 80));
  return doc;
}

// ---- verbs --------------------------------------------------------------------------------

int verb_call(const options& o, std::ostream& out) {
  auto ref = ref_argument(o, "call", 2);
  std::string path = o.positional.size() > 1 ? o.positional[1] : "/";
  for (unsigned char c : path)
    if (c <= 0x20 || c >= 0x7f)
      usage_error("PATH must not contain spaces, control or non-ASCII characters "
                  "(percent-encode them)");
  if (path.empty() || (path[0] != '/' && path[0] != '?'))
    path = "/" + path;
  if (o.data && o.data_file)
    usage_error("give either -d or --data-file, not both");
  auto url = resolve_crn(o);
  http_call call;
  if (o.data) {
    call.body = *o.data;
    call.has_body = true;
  } else if (o.data_file) {
    call.body = read_file(*o.data_file, "the data file");
    call.has_body = true;
  }
  call.method = o.method ? *o.method : (call.has_body ? "POST" : "GET");
  call.target = url.prefix + "/vm/" + ref + path;
  call.headers = o.headers;
  call.timeout = o.timeout.value_or(30s);
  call.collect_limit = max_error_body;
  call.on_head = [&](const http_head& h) {
    if (o.include) {
      out << "HTTP/" << h.version / 10 << '.' << h.version % 10 << ' ' << h.status;
      if (!h.reason.empty())
        out << ' ' << h.reason;
      out << '\n';
      for (const auto& [name, value] : h.fields)
        out << name << ": " << value << '\n';
      out << '\n';
    }
    return h.status >= 200 && h.status < 300;
  };
  call.sink = [&out](const char* data, std::size_t n) {
    out.write(data, static_cast<std::streamsize>(n));
  };
  auto r = exchange(url, call);
  out.flush();
  if (r.result != outcome::ok)
    node_error(r.error);
  if (!ok_status(r))
    node_error(http_error_line(r));
  if (!out)
    node_error("cannot write the answer to the output");
  return 0;
}

std::string field_text(const json& obj, const char* key) {
  if (!obj.is_object() || !obj.contains(key))
    return "-";
  const auto& v = obj[key];
  if (v.is_null())
    return "-";
  auto s = v.is_string() ? v.get<std::string>() : v.dump();
  s = one_line(s, 200);
  return s.empty() ? "-" : s;
}

int verb_ls(const options& o, std::ostream& out) {
  no_positional(o);
  auto url = resolve_crn(o);
  http_call call;
  call.target = url.prefix + "/v2/about/executions/list";
  call.timeout = o.timeout.value_or(30s);
  auto doc = fetch_json(url, call);
  if (o.json_out) {
    out << doc.dump(2) << '\n';
    return 0;
  }
  if (!doc.is_object())
    node_error("the CRN's execution list is not a JSON object");
  std::vector<std::vector<std::string>> rows;
  rows.push_back({"ITEM_HASH", "TYPE", "PHASE", "VCPUS", "MEMORY", "STARTED", "DETAIL"});
  for (const auto& [hash, e] : doc.items()) {
    auto h = one_line(hash, 64);
    if (h.size() > 16)
      h = h.substr(0, 16) + "…";
    const json empty = json::object();
    const auto& res = e.is_object() && e.contains("resources") ? e["resources"] : empty;
    const auto& status = e.is_object() && e.contains("status") ? e["status"] : empty;
    auto memory = field_text(res, "memory");
    if (memory != "-")
      memory += "MiB";
    rows.push_back({h, field_text(e, "vm_type"), field_text(e, "phase"), field_text(res, "vcpus"),
                    memory, field_text(status, "started_at"), field_text(e, "detail")});
  }
  std::vector<std::size_t> width(rows[0].size(), 0);
  for (const auto& row : rows)
    for (std::size_t i = 0; i < row.size(); ++i)
      width[i] = std::max(width[i], columns(row[i]));
  for (const auto& row : rows) {
    std::string line;
    for (std::size_t i = 0; i < row.size(); ++i) {
      line += row[i];
      if (i + 1 < row.size())
        line.append(width[i] - columns(row[i]) + 2, ' ');
    }
    out << line << '\n';
  }
  return 0;
}

std::vector<client::log_entry> parse_logs(const json& doc) {
  if (!doc.is_array())
    node_error("the CRN's log answer is not a JSON array");
  std::vector<client::log_entry> entries;
  entries.reserve(doc.size());
  for (const auto& e : doc) {
    client::log_entry l;
    auto text = [&](const char* key) {
      if (!e.is_object() || !e.contains(key) || e[key].is_null())
        return std::string{"-"};
      return e[key].is_string() ? e[key].get<std::string>() : e[key].dump();
    };
    l.time = text("time");
    l.type = text("type");
    l.message = text("message");
    entries.push_back(std::move(l));
  }
  return entries;
}

void print_logs(std::ostream& out, const std::vector<client::log_entry>& entries,
                std::size_t from) {
  for (auto i = from; i < entries.size(); ++i) {
    auto message = std::string_view{entries[i].message};
    if (!message.empty() && message.back() == '\n')
      message.remove_suffix(1);
    if (!message.empty() && message.back() == '\r')
      message.remove_suffix(1);
    out << one_line(entries[i].time, 64) << ' ' << one_line(entries[i].type, 32) << ' '
        << printable(message) << '\n';
  }
  out.flush();
}

// Waits `d`, waking every 50 ms to notice SIGINT; false when interrupted.
bool pause(std::chrono::milliseconds d) {
  auto until = steady::now() + d;
  while (steady::now() < until) {
    if (interrupted.load())
      return false;
    std::this_thread::sleep_for(std::min<steady::duration>(until - steady::now(), 50ms));
  }
  return !interrupted.load();
}

enum class stream_result { done, unsupported };

// Follows /control/machine/{ref}/stream_logs (a websocket) until the CRN closes it (the
// execution ended) or SIGINT; `unsupported` when the CRN has no such route, and the caller
// polls /logs instead.
stream_result follow_stream(const options& o, const client::crn_url& url,
                            const std::string& ref, std::ostream& out, std::ostream& err) {
  auto auth = control_auth(o, url, "GET", url.prefix + "/control/machine/" + ref + "/stream_logs");
  namespace bws = boost::beast::websocket;
  asio::io_context ioc{1};
  tcp::socket sock{ioc};
  auto close = [&sock] {
    error_code ignored;
    sock.close(ignored);
  };
  auto timeout = o.timeout.value_or(30s);
  auto deadline = steady::now() + timeout;
  auto where = url.to_string();
  auto check = [&](outcome oc) {
    if (oc == outcome::timed_out)
      node_error("no answer from the CRN at " + where + " within " + format_duration(timeout));
    return oc == outcome::interrupted;
  };
  std::string error;
  if (check(connect_crn(ioc, sock, url, deadline, true, error)))
    return stream_result::done;
  if (!error.empty())
    node_error(error);
  bws::stream<tcp::socket&> ws{sock};
  ws.set_option(bws::stream_base::decorator([&auth](bws::request_type& req) {
    req.set(bhttp::field::user_agent, "alephd-client");
    for (auto& [name, value] : auth)
      req.set(name, value);
  }));
  ws.read_message_max(1u << 20);
  bws::response_type res;
  error_code ec;
  auto target = url.prefix + "/control/machine/" + ref + "/stream_logs";
  if (check(run_op(
        ioc, deadline, true, ec,
        [&](auto handler) { ws.async_handshake(res, host_header(url), target, std::move(handler)); },
        close)))
    return stream_result::done;
  if (ec == bws::error::upgrade_declined) {
    http_result r;
    r.head.status = res.result_int();
    r.head.reason = std::string{res.reason()};
    r.body = res.body();
    auto text = error_text(r);
    if (r.head.status == 426 || r.head.status == 405
        || (r.head.status == 404 && text.rfind("no route", 0) == 0))
      return stream_result::unsupported;
    node_error(http_error_line(r));
  }
  if (ec)
    node_error("cannot open the log stream of the CRN at " + where + ": " + one_line(ec.message()));
  beast::flat_buffer buf;
  for (;;) {
    auto forever = steady::now() + std::chrono::hours{24 * 365};
    if (check(run_op(
          ioc, forever, true, ec, [&](auto handler) { ws.async_read(buf, std::move(handler)); },
          close)))
      return stream_result::done;
    if (ec == bws::error::closed) {
      err << "alephd: stopped following: the execution ended\n";
      return stream_result::done;
    }
    if (ec)
      node_error("the log stream from the CRN at " + where + " broke off: "
                 + one_line(ec.message()));
    auto doc = json::parse(beast::buffers_to_string(buf.data()), nullptr, false);
    buf.consume(buf.size());
    if (doc.is_discarded())
      continue; // not a log line: nothing to print
    auto line = json::array();
    line.push_back(std::move(doc));
    print_logs(out, parse_logs(line), 0);
  }
}

int verb_logs(const options& o, std::ostream& out, std::ostream& err) {
  auto ref = ref_argument(o, "logs", 1);
  auto url = resolve_crn(o);
  http_call call;
  call.target = url.prefix + "/control/machine/" + ref + "/logs";
  call.headers = control_auth(o, url, "GET", call.target);
  call.timeout = o.timeout.value_or(30s);
  if (!o.follow) {
    print_logs(out, parse_logs(fetch_json(url, call)), 0);
    return 0;
  }
  sigint_catcher catcher;
  if (follow_stream(o, url, ref, out, err) == stream_result::done)
    return 0;
  call.headers.emplace_back("Accept", "application/json");
  // Following a CRN without stream_logs: one request per interval; a 404 (the execution is
  // gone) or SIGINT ends it, a passing failure (unreachable, 5xx) is reported once and retried.
  call.interruptible = true;
  std::vector<client::log_entry> seen;
  std::string last_problem;
  for (bool first = true;; first = false) {
    if (!first && !pause(o.interval))
      return 0;
    if (!first && o.key) { // a signed operation is good once
      call.headers = control_auth(o, url, "GET", call.target);
      call.headers.emplace_back("Accept", "application/json");
    }
    auto r = exchange(url, call);
    if (r.result == outcome::interrupted)
      return 0;
    std::string problem;
    if (r.result != outcome::ok) {
      if (first)
        node_error(r.error);
      problem = r.error;
    } else if (r.head.status == 404) {
      if (first)
        node_error(http_error_line(r));
      err << "alephd: stopped following: " << http_error_line(r) << '\n';
      return 0;
    } else if (!ok_status(r)) {
      bool passing = r.head.status >= 500 || r.head.status == 408 || r.head.status == 429;
      if (first || !passing)
        node_error(http_error_line(r));
      problem = http_error_line(r);
    } else if (r.truncated) {
      node_error("the answer from the CRN is larger than " + std::to_string(max_answer >> 20)
                 + " MiB");
    }
    if (!problem.empty()) {
      if (problem != last_problem)
        err << "alephd: " << problem << " (retrying every " << format_duration(o.interval)
            << ")\n";
      last_problem = problem;
      continue;
    }
    last_problem.clear();
    auto doc = json::parse(r.body, nullptr, false);
    if (doc.is_discarded())
      node_error("the CRN's answer is not JSON: " + one_line(r.body, 80));
    auto entries = parse_logs(doc);
    print_logs(out, entries, client::log_overlap(seen, entries));
    seen = std::move(entries);
  }
}

int verb_control(const std::string& action, const options& o, std::ostream& out) {
  auto ref = ref_argument(o, action, 1);
  auto url = resolve_crn(o);
  http_call call;
  call.method = "POST";
  call.target = url.prefix + "/control/machine/" + ref + "/" + action;
  call.headers = control_auth(o, url, call.method, call.target);
  call.has_body = true;
  // The CRN itself waits up to 70 s for an execution to stop.
  call.timeout = o.timeout.value_or(90s);
  auto doc = fetch_json(url, call);
  if (!doc.is_object() || !doc.contains("phase") || !doc["phase"].is_string())
    node_error("the CRN's answer has no phase: " + one_line(doc.dump(), 120));
  out << one_line(doc["phase"].get<std::string>()) << '\n';
  return 0;
}

// "  45% [#########           ] 450.0 of 1000.0 MiB, 120.3 MiB/s"
std::string progress_line(uint64_t done, uint64_t total, double seconds) {
  constexpr int width = 30;
  auto pct = total > 0 ? static_cast<int>(done * 100 / total) : 100;
  auto filled = total > 0 ? static_cast<int>(done * width / total) : width;
  char buf[160];
  std::snprintf(buf, sizeof buf, "%4d%% [%s%s] %.1f of %.1f MiB, %.1f MiB/s", pct,
                std::string(static_cast<size_t>(filled), '#').c_str(),
                std::string(static_cast<size_t>(width - filled), ' ').c_str(),
                static_cast<double>(done) / (1 << 20), static_cast<double>(total) / (1 << 20),
                seconds > 0 ? static_cast<double>(done) / (1 << 20) / seconds : 0.0);
  return buf;
}

int verb_upload(const options& o, std::ostream& out, std::ostream& err) {
  if (o.positional.size() != 1)
    usage_error("upload takes one FILE (see alephd upload --help)");
  const auto& path = o.positional[0];
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec) || ::access(path.c_str(), R_OK) != 0)
    usage_error("cannot read '" + one_line(path, 200) + "': not a readable regular file");
  auto text = o.ccn ? *o.ccn : env("ALEPHD_CCN");
  if (text.empty())
    text = "http://127.0.0.1:4024";
  client::crn_url url;
  if (auto e = client::parse_crn_url(text, url); !e.empty())
    usage_error("--ccn: " + e);
  auto host = url.host.find(':') != std::string::npos ? "[" + url.host + "]" : url.host;
  auto base = "http://" + host + ":" + std::to_string(url.port);
  bool show = o.progress.value_or(::isatty(STDERR_FILENO) == 1);
  transfer::options t;
  t.idle_timeout = o.timeout.value_or(30s);
  auto start = std::chrono::steady_clock::now();
  auto last = start - 1s;
  if (show)
    t.progress = [&](uint64_t done, uint64_t total) {
      auto now = std::chrono::steady_clock::now();
      if (now - last < 200ms && done < total)
        return;
      last = now;
      err << '\r' << progress_line(done, total, std::chrono::duration<double>(now - start).count())
          << std::flush;
    };
  auto r = transfer::upload(base, url.prefix + "/api/v0/storage/add_file", path, t);
  if (show)
    err << '\n';
  if (r.status == 0)
    throw failure{1, "cannot upload to " + base + ": " + r.error};
  auto doc = json::parse(r.body, nullptr, false);
  if (r.status / 100 != 2) {
    auto why = doc.is_object() && doc.contains("error") && doc["error"].is_string()
                 ? doc["error"].get<std::string>()
                 : one_line(r.body, 200);
    throw failure{1, "the CCN answered " + std::to_string(r.status) + ": " + one_line(why, 300)};
  }
  if (!doc.is_object() || !doc.contains("hash") || !doc["hash"].is_string())
    throw failure{1, "the CCN's answer has no hash: " + one_line(r.body, 200)};
  out << doc["hash"].get<std::string>() << '\n';
  return 0;
}

int dispatch(const std::string& verb, const std::vector<std::string>& args, std::ostream& out,
             std::ostream& err) {
  auto o = parse_options(verb, args);
  if (o.help) {
    out << client_help();
    return 0;
  }
  if (verb == "call")
    return verb_call(o, out);
  if (verb == "ls")
    return verb_ls(o, out);
  if (verb == "logs")
    return verb_logs(o, out, err);
  if (verb == "upload")
    return verb_upload(o, out, err);
  return verb_control(verb, o, out);
}

} // namespace

bool is_client_verb(const std::string& verb) {
  return verb == "call" || verb == "ls" || verb == "logs" || verb == "stop" || verb == "reboot"
         || verb == "erase" || verb == "upload";
}

std::string client_help() {
  return R"(Client commands (talk HTTP to a CRN, or to a CCN for upload):
  alephd call REF [PATH] [-X METHOD] [-d DATA | --data-file FILE] [-H 'Name: value']... [-i]
                                     call a program: METHOD CRN/vm/REF/PATH (PATH default /, may
                                     carry a query); prints the answer's body (-i: status and
                                     headers first); -d or --data-file (- = stdin) makes it a POST
  alephd ls [--json]                 the CRN's executions (--json: the raw list, pretty)
  alephd logs REF [--follow] [--interval 1s]
                                     an execution's logs as "<time> <type> <message>"; --follow
                                     streams new lines (the CRN's stream_logs websocket) until
                                     Ctrl-C or the execution ends; a CRN without stream_logs is
                                     polled every --interval
  alephd stop|reboot|erase REF       act on an execution; prints its resulting phase
  alephd upload FILE [--ccn URL] [--progress|--no-progress]
                                     store a file on a CCN (streamed, any size up to the CCN's
                                     ccn.max-file-size); prints its sha256; a progress bar on
                                     stderr when it is a terminal (or with --progress)
Common options:
  --crn URL          the CRN, http://host[:port][/prefix] (default $ALEPHD_CRN, else
                     http://127.0.0.1:4020); https is not supported yet
  --timeout D        for each request, e.g. 500ms, 30s, 2m (default 30s; stop, reboot and
                     erase 90s)
  --token T | --token-file FILE
                     the CRN's login token for logs, stop, reboot and erase (default
                     $ALEPHD_TOKEN, else <data-dir>/login_token)
  --key FILE         act as the workload's owner instead: FILE holds the owner's wallet
                     secret key (64 hex digits); each request carries X-SignedPubKey and
                     X-SignedOperation signed with it, as aleph's console does
  --data-dir DIR     the CRN's data directory (default ./.alephd-crn)
  --ccn URL          upload: the CCN, http://host[:port] (default $ALEPHD_CCN, else
                     http://127.0.0.1:4024)
REF is a program's or instance's 64-digit hex item hash. Exit codes: 0 ok, 1 the CRN answered
an error or could not be reached, 2 bad usage.
)";
}

int run_client(const std::string& verb, const std::vector<std::string>& args, std::ostream& out,
               std::ostream& err) {
  try {
    if (!is_client_verb(verb)) {
      err << "alephd: unknown client command '" << one_line(verb, 60) << "'\n";
      return 2;
    }
    return dispatch(verb, args, out, err);
  } catch (const failure& f) {
    out.flush();
    err << "alephd: " << f.message << '\n';
    return f.code;
  } catch (const std::exception& e) {
    err << "alephd: " << one_line(e.what()) << '\n';
    return 1;
  } catch (...) {
    err << "alephd: unexpected error\n";
    return 1;
  }
}

} // namespace alephd
