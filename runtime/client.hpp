// The client verbs of the `alephd` binary: call, ls, logs, stop, reboot, erase. Each one talks
// HTTP/1.1 to a CRN (Boost.Beast, one connection per request, bounded by a timeout).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <iosfwd>
#include <string>
#include <vector>

namespace alephd {

/// Runs `alephd <verb> args...` for the client verbs call, ls, logs, stop (also reboot, erase).
/// Prints to `out`/`err`; returns the process exit code (0 ok, 1 the node answered an error or
/// could not be reached, 2 bad usage — one line on err naming the problem). Never throws.
/// `logs --follow` catches SIGINT while it runs (and restores the previous handler), so the
/// caller must not have SIGINT blocked in the calling thread.
int run_client(const std::string& verb, const std::vector<std::string>& args, std::ostream& out,
               std::ostream& err);

/// True for the verbs run_client handles.
bool is_client_verb(const std::string& verb);

/// Usage text for --help.
std::string client_help();

namespace client {

/// Where a CRN listens: `http://host[:port][/prefix]`.
struct crn_url {
  std::string host;   ///< a name, an IPv4 address, or an IPv6 address without brackets
  uint16_t port = 80;
  std::string prefix; ///< path prefix without a trailing slash, empty or starting with '/'

  /// The URL as given back in messages, e.g. "http://127.0.0.1:4020".
  std::string to_string() const;
};

/// Parses a CRN URL (http only; a missing scheme means http). Returns a one-line error message
/// without the "alephd: " prefix, empty on success.
std::string parse_crn_url(const std::string& text, crn_url& out);

/// Parses a client duration: "500ms", "30s", "2m", "1h" (a unit is required, at most 24 h,
/// more than zero). Returns a one-line error message, empty on success.
std::string parse_client_duration(const std::string& text, std::chrono::milliseconds& out);

/// One entry of /control/machine/{ref}/logs.
struct log_entry {
  std::string time;
  std::string type;
  std::string message;

  bool operator==(const log_entry&) const = default;
};

/// How many leading entries of `next` were already seen: the longest prefix of `next` that is a
/// suffix of `prev` (the CRN keeps a bounded buffer, so old entries fall off its front).
/// `logs --follow` prints next[log_overlap(prev, next)..].
std::size_t log_overlap(const std::vector<log_entry>& prev, const std::vector<log_entry>& next);

} // namespace client

} // namespace alephd
