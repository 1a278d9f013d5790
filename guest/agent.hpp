#pragma once

// Testable parts of the guest agent (`alephd-guest`): building the HTTP/1.1
// request sent to the program and parsing its answer. Header-only so that a
// test can include it without linking the agent's main().

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace alephd::guest::agent {

/// Largest response (head + body) accepted from the program.
inline constexpr std::size_t max_response_size = std::size_t{16} * 1024 * 1024;

/// Largest response head (status line + headers).
inline constexpr std::size_t max_head_size = 64 * 1024;

inline char lower(char c) {
  return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
}

inline bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size())
    return false;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (lower(a[i]) != lower(b[i]))
      return false;
  return true;
}

inline std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t'))
    s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t'))
    s.remove_suffix(1);
  return s;
}

/// True for headers that describe one hop and are not forwarded.
inline bool hop_by_hop(std::string_view name) {
  for (auto h : {"connection", "keep-alive", "transfer-encoding", "te",
                 "upgrade", "proxy-connection", "content-length", "trailer"})
    if (iequals(name, h))
      return true;
  return false;
}

/// A token (method, header name) has no separators or control characters.
inline bool is_token(std::string_view s) {
  if (s.empty())
    return false;
  for (unsigned char c : s)
    if (c <= 32 || c >= 127 || std::string_view{"()<>@,;:\\\"/[]?={}"}.find(
                                 static_cast<char>(c))
                                 != std::string_view::npos)
      return false;
  return true;
}

/// No CR, LF or NUL: safe inside a request line or a header value.
inline bool is_line_safe(std::string_view s) {
  return s.find_first_of(std::string_view{"\r\n\0", 3}) == std::string_view::npos;
}

/// Builds the request forwarded to the program, or nullopt if a field would
/// break the framing (CR/LF injection, bad method or header name).
inline std::optional<std::string>
build_request(std::string_view method, std::string_view path,
              std::string_view query,
              const std::vector<std::pair<std::string, std::string>>& headers,
              std::string_view body, uint16_t port) {
  if (!is_token(method) || !is_line_safe(path) || !is_line_safe(query)
      || path.find(' ') != std::string_view::npos
      || query.find(' ') != std::string_view::npos)
    return std::nullopt;
  std::string out;
  out.reserve(256 + body.size());
  out.append(method).append(" ");
  if (path.empty() || path.front() != '/')
    out.push_back('/');
  out.append(path);
  if (!query.empty())
    out.append("?").append(query);
  out.append(" HTTP/1.1\r\n");
  bool has_host = false;
  for (const auto& [name, value] : headers) {
    if (!is_token(name) || !is_line_safe(value))
      return std::nullopt;
    // Not `Expect` either: the body goes out with the head, without waiting for 100 Continue.
    if (hop_by_hop(name) || iequals(name, "expect"))
      continue;
    if (iequals(name, "host"))
      has_host = true;
    out.append(name).append(": ").append(value).append("\r\n");
  }
  if (!has_host)
    out.append("Host: 127.0.0.1:").append(std::to_string(port)).append("\r\n");
  // HTTP/1.1 keeps the connection open unless a side says otherwise: the agent reuses it for the
  // next request when the answer allows (response_parser::keep_alive()).
  out.append("Content-Length: ").append(std::to_string(body.size())).append("\r\n\r\n");
  out.append(body);
  return out;
}

/// Incremental parser of one HTTP/1.x response: framed by Content-Length or
/// chunked coding (the connection may then carry the next request), or ended
/// by the program closing the connection.
class response_parser {
public:
  enum class state { head, length_body, chunk_size, chunk_data, chunk_crlf,
                     trailers, close_body, done, error };

  /// `head_only`: the request was HEAD, so no body follows.
  explicit response_parser(bool head_only = false,
                           std::size_t max_size = max_response_size)
    : head_only_(head_only), max_size_(max_size) {
  }

  /// Feeds bytes; returns the state after consuming them.
  state feed(std::string_view data) {
    if (state_ == state::done && !data.empty())
      stray_ = true; // bytes after the answer: the connection is out of step
    if (state_ == state::done || state_ == state::error)
      return state_;
    total_ += data.size();
    if (total_ > max_size_ + max_head_size)
      return fail("response too large");
    buf_.append(data);
    run();
    return state_;
  }

  /// The peer closed the connection.
  state eof() {
    if (state_ == state::close_body)
      state_ = state::done;
    else if (state_ != state::done && state_ != state::error)
      fail("connection closed before the response was complete");
    return state_;
  }

  state current() const {
    return state_;
  }
  /// The `timeout` of the answer's `Keep-Alive` header, in seconds, if it had one.
  std::optional<unsigned> keep_alive_timeout() const {
    return keep_alive_timeout_;
  }
  /// Bytes fed so far (0: the program sent nothing).
  std::size_t received() const {
    return total_;
  }
  /// Whether the connection may carry another request: the response is complete, HTTP/1.1,
  /// framed (not ended by a close), without `Connection: close`, and nothing followed it.
  bool keep_alive() const {
    return state_ == state::done && http11_ && !close_ && !close_delimited_ && !stray_
           && pos_ == buf_.size();
  }
  const std::string& error() const {
    return error_;
  }
  int status() const {
    return status_;
  }
  /// Headers minus the hop-by-hop ones (Content-Length included).
  const std::vector<std::pair<std::string, std::string>>& headers() const {
    return headers_;
  }
  std::string& body() {
    return body_;
  }

private:
  state fail(std::string why) {
    error_ = std::move(why);
    state_ = state::error;
    return state_;
  }

  // Returns the next CRLF-terminated line from buf_ (without CRLF), or nullopt.
  std::optional<std::string_view> line(std::size_t limit) {
    auto end = buf_.find("\r\n", pos_);
    if (end == std::string::npos) {
      if (buf_.size() - pos_ > limit)
        fail("line too long");
      return std::nullopt;
    }
    if (end - pos_ > limit) {
      fail("line too long");
      return std::nullopt;
    }
    std::string_view l{buf_.data() + pos_, end - pos_};
    pos_ = end + 2;
    return l;
  }

  void compact() {
    if (pos_ > 0) {
      buf_.erase(0, pos_);
      pos_ = 0;
    }
  }

  bool parse_head() {
    // The whole head must be buffered first.
    auto end = buf_.find("\r\n\r\n", pos_);
    if (end == std::string::npos) {
      if (buf_.size() - pos_ > max_head_size)
        fail("response head too large");
      return false;
    }
    if (end - pos_ > max_head_size) {
      fail("response head too large");
      return false;
    }
    auto status_line = *line(max_head_size);
    // "HTTP/1.x SSS reason"
    if (status_line.size() < 12 || status_line.substr(0, 7) != "HTTP/1."
        || status_line[8] != ' ' || (status_line.size() > 12 && status_line[12] != ' ')) {
      fail("bad status line");
      return false;
    }
    int code = 0;
    for (int i = 9; i < 12; ++i) {
      char c = status_line[static_cast<std::size_t>(i)];
      if (c < '0' || c > '9') {
        fail("bad status code");
        return false;
      }
      code = code * 10 + (c - '0');
    }
    if (code < 100) {
      fail("bad status code");
      return false;
    }
    status_ = code;
    http11_ = status_line[7] == '1';
    headers_.clear();
    bool chunked = false;
    std::optional<std::size_t> length;
    for (;;) {
      auto l = *line(max_head_size);
      if (l.empty())
        break;
      auto colon = l.find(':');
      if (colon == std::string_view::npos || !is_token(l.substr(0, colon))) {
        fail("bad header line");
        return false;
      }
      auto name = l.substr(0, colon);
      auto value = trim(l.substr(colon + 1));
      if (iequals(name, "content-length")) {
        if (value.empty() || value.size() > 10) {
          fail("bad Content-Length");
          return false;
        }
        std::size_t n = 0;
        for (char c : value) {
          if (c < '0' || c > '9') {
            fail("bad Content-Length");
            return false;
          }
          n = n * 10 + static_cast<std::size_t>(c - '0');
        }
        if (length && *length != n) {
          fail("conflicting Content-Length");
          return false;
        }
        length = n;
      } else if (iequals(name, "keep-alive")) {
        // "timeout=5, max=100": how long the program keeps an idle connection open.
        for (std::size_t at = 0; at < value.size();) {
          auto comma = value.find(',', at);
          if (comma == std::string_view::npos)
            comma = value.size();
          auto param = trim(value.substr(at, comma - at));
          auto digits = param.size() > 8 && iequals(param.substr(0, 8), "timeout=")
                          ? param.substr(8) : std::string_view{};
          if (!digits.empty() && digits.size() <= 6
              && std::all_of(digits.begin(), digits.end(), [](char ch) { return ch >= '0' && ch <= '9'; })) {
            unsigned n = 0;
            for (char ch : digits)
              n = n * 10 + static_cast<unsigned>(ch - '0');
            keep_alive_timeout_ = n;
          }
          at = comma + 1;
        }
      } else if (iequals(name, "connection")) {
        // A comma-separated list of tokens; "close" ends the connection after this response.
        for (std::size_t at = 0; at <= value.size();) {
          auto comma = value.find(',', at);
          if (comma == std::string_view::npos)
            comma = value.size();
          if (iequals(trim(value.substr(at, comma - at)), "close"))
            close_ = true;
          at = comma + 1;
        }
      } else if (iequals(name, "transfer-encoding")) {
        auto v = value;
        // Only "chunked" as the last coding is supported.
        if (v.size() >= 7 && iequals(v.substr(v.size() - 7), "chunked"))
          chunked = true;
        else {
          fail("unsupported Transfer-Encoding");
          return false;
        }
      }
      if (!hop_by_hop(name))
        headers_.emplace_back(std::string{name}, std::string{value});
    }
    compact();
    if (chunked && length)
      close_ = true; // both framings (RFC 9112 §6.3): chunked wins, but do not trust the rest
    if (code >= 100 && code < 200) {
      // Interim response (100 Continue, 103 Early Hints): skip it.
      state_ = state::head;
      return true;
    }
    if (head_only_ || code == 204 || code == 304)
      state_ = state::done;
    else if (chunked)
      state_ = state::chunk_size;
    else if (length) {
      if (*length > max_size_) {
        fail("response body too large");
        return false;
      }
      remaining_ = *length;
      body_.reserve(*length);
      state_ = remaining_ == 0 ? state::done : state::length_body;
    } else {
      state_ = state::close_body;
      close_delimited_ = true;
    }
    return true;
  }

  void run() {
    for (;;) {
      switch (state_) {
        case state::head:
          if (!parse_head())
            return;
          break;
        case state::length_body: {
          auto n = std::min(remaining_, buf_.size() - pos_);
          body_.append(buf_, pos_, n);
          pos_ += n;
          remaining_ -= n;
          compact();
          if (remaining_ == 0)
            state_ = state::done;
          return;
        }
        case state::chunk_size: {
          auto l = line(1024);
          if (!l)
            return;
          auto hex = l->substr(0, l->find(';'));
          hex = trim(hex);
          if (hex.empty() || hex.size() > 8) {
            fail("bad chunk size");
            return;
          }
          std::size_t n = 0;
          for (char c : hex) {
            int d = (c >= '0' && c <= '9')   ? c - '0'
                    : (c >= 'a' && c <= 'f') ? c - 'a' + 10
                    : (c >= 'A' && c <= 'F') ? c - 'A' + 10
                                             : -1;
            if (d < 0) {
              fail("bad chunk size");
              return;
            }
            n = n * 16 + static_cast<std::size_t>(d);
          }
          if (body_.size() + n > max_size_) {
            fail("response body too large");
            return;
          }
          remaining_ = n;
          state_ = n == 0 ? state::trailers : state::chunk_data;
          break;
        }
        case state::chunk_data: {
          auto n = std::min(remaining_, buf_.size() - pos_);
          body_.append(buf_, pos_, n);
          pos_ += n;
          remaining_ -= n;
          if (remaining_ > 0) {
            compact();
            return;
          }
          state_ = state::chunk_crlf;
          break;
        }
        case state::chunk_crlf: {
          if (buf_.size() - pos_ < 2)
            return;
          if (buf_.compare(pos_, 2, "\r\n") != 0) {
            fail("missing CRLF after chunk");
            return;
          }
          pos_ += 2;
          compact();
          state_ = state::chunk_size;
          break;
        }
        case state::trailers: {
          auto l = line(max_head_size);
          if (!l)
            return;
          if (l->empty()) {
            state_ = state::done;
            return;
          }
          break; // trailers are dropped
        }
        case state::close_body:
          body_.append(buf_, pos_, std::string::npos);
          buf_.clear();
          pos_ = 0;
          if (body_.size() > max_size_)
            fail("response body too large");
          return;
        case state::done:
        case state::error:
          return;
      }
    }
  }

  bool head_only_;
  std::size_t max_size_;
  std::size_t total_ = 0;
  state state_ = state::head;
  std::string error_;
  std::string buf_;
  std::size_t pos_ = 0;
  std::size_t remaining_ = 0;
  int status_ = 0;
  bool http11_ = false;          // HTTP/1.1 (1.0 closes unless it asks otherwise: not reused)
  bool close_ = false;           // Connection: close
  bool close_delimited_ = false; // the body ends when the program closes
  bool stray_ = false;           // bytes came after the answer
  std::optional<unsigned> keep_alive_timeout_;
  std::vector<std::pair<std::string, std::string>> headers_;
  std::string body_;
};

} // namespace alephd::guest::agent
