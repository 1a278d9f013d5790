#pragma once

// The guest protocol: frames spoken between the CRN and the guest agent
// (`alephd-guest`) over a stream socket (a unix socket in a sandbox, virtio in a
// microVM). A frame is a 4-byte big-endian length followed by that many bytes
// of msgpack: a map with a string "type" key, an unsigned "v" key (the protocol
// version) and the message's fields under their names. Unknown keys are
// ignored so that a newer peer may add optional fields; anything else that is
// wrong is an error, and the reader then drops the peer.

#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

namespace alephd::guest {

/// Version carried in every frame's "v" key.
inline constexpr uint32_t protocol_version = 1;

/// Size of the big-endian length prefix.
inline constexpr std::size_t length_prefix_size = 4;

/// Largest msgpack payload (excluding the prefix) a decoder accepts by default.
inline constexpr std::size_t max_frame_size = std::size_t{16} * 1024 * 1024;

/// Guest → host: the agent is up and speaks this protocol. Host → guest (as
/// a probe, fields ignored): say `ready` again — a restarted CRN taking over a
/// running guest asks it this way.
struct ready {
  std::string version;
  /// The agent already runs a configured program: it reconnected to a CRN
  /// that restarted, and must not be configured again. Optional on the wire.
  bool configured = false;
  /// What this agent can do beyond protocol version 1, e.g. "code_file" (see configure).
  /// Optional on the wire: an older agent sends none, and gets the code in the frame.
  std::vector<std::string> features;
  bool operator==(const ready&) const = default;
};

/// A volume the program sees at `mount`, backed by `path` on the guest side.
struct volume {
  std::string mount;
  std::string path;
  bool read_only = true;
  bool operator==(const volume&) const = default;
};

/// Host → guest: what to run and how. Sent once, after `ready`.
struct configure {
  std::string code;                 ///< bytes of the program (msgpack bin)
  std::string encoding = "plain";   ///< "plain" | "zip"
  std::string entrypoint;           ///< file name of the program under code/
  std::string interface = "binary"; ///< "binary": HTTP on 127.0.0.1:app_port
  std::map<std::string, std::string> variables; ///< the program's environment
  std::vector<volume> volumes;
  std::vector<std::string> authorized_keys;
  uint16_t app_port = 8080;
  /// With `code` empty and encoding "plain": the program is this file in the host's directory
  /// that the guest sees read-only (a sandbox's /run/alephd); a plain name, no '/'. The agent
  /// copies it in, so that the bytes do not cross the socket and are not decoded. Only sent to
  /// an agent whose `ready` lists the feature "code_file".
  std::string code_file;
  bool operator==(const configure&) const = default;
};

/// Guest → host: answer to `configure`; `error` says why when !success.
struct configure_result {
  bool success = false;
  std::string error;
  bool operator==(const configure_result&) const = default;
};

using header_list = std::vector<std::pair<std::string, std::string>>;

/// Host → guest: one HTTP request for the program; `id` is echoed back.
struct http_request {
  uint64_t id = 0;
  std::string method;
  std::string path;
  std::string query_string; ///< without the '?'
  header_list headers;
  std::string body; ///< bytes (msgpack bin)
  bool operator==(const http_request&) const = default;
};

/// Guest → host: the program's answer to the `http_request` with this `id`.
/// `error` is non-empty when the agent made the status itself (502, 503, ...).
struct http_response {
  uint64_t id = 0;
  uint16_t status = 0;
  header_list headers;
  std::string body; ///< bytes (msgpack bin)
  std::string error;
  bool operator==(const http_response&) const = default;
};

/// Host → guest: a message that triggers the program (message-triggered programs).
struct event {
  std::string body; ///< bytes (msgpack bin)
  bool operator==(const event&) const = default;
};

/// Guest → host: one line of the program's output; stream is "stdout",
/// "stderr", or "system" for what the agent itself reports.
struct log {
  std::string stream;
  std::string line;
  bool operator==(const log&) const = default;
};

/// Host → guest: stop the program and exit.
struct halt {
  bool operator==(const halt&) const = default;
};

/// Guest → host: the program has stopped (128 + signal if killed by one).
struct halted {
  int exit_code = 0;
  bool operator==(const halted&) const = default;
};

/// Every message of the protocol.
using frame = std::variant<ready, configure, configure_result, http_request,
                           http_response, event, log, halt, halted>;

/// The "type" string of a frame ("ready", "configure", ...).
std::string_view type_name(const frame& f);

/// Encodes `f` with its length prefix. Throws std::length_error if the payload
/// would exceed `max_frame_size` (the peer would reject it).
std::string encode(const frame& f);

/// Decodes one msgpack payload (without the prefix). On failure returns
/// nullopt and sets `error`.
std::optional<frame> decode_payload(std::string_view payload,
                                    std::string& error);

/// Streaming decoder: feed it bytes as they arrive, split anywhere, then call
/// next() until it returns nullopt. A nullopt with an empty `error` means
/// "need more bytes"; with a non-empty `error` the stream is broken and the
/// decoder stays failed (the caller drops the peer). A length prefix above the
/// limit fails at once, before anything is buffered or allocated for it.
class decoder {
public:
  explicit decoder(std::size_t max_payload = max_frame_size);

  void feed(const char* data, std::size_t size);
  std::optional<frame> next(std::string& error);

  bool failed() const {
    return !error_.empty();
  }
  /// Bytes received but not decoded yet.
  std::size_t buffered() const {
    return buf_.size() - pos_;
  }

private:
  std::size_t max_payload_;
  std::string buf_;
  std::size_t pos_ = 0;
  std::string error_;
};

} // namespace alephd::guest
