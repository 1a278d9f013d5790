#include "runtime/guest_protocol.hpp"

#include <msgpack.hpp>

#include <algorithm>
#include <limits>
#include <stdexcept>
#include <type_traits>

namespace alephd::guest {

namespace {

// Limits handed to msgpack so that a hostile payload cannot make the unpacker
// allocate much more than the payload itself: no container may declare more
// elements than the payload has bytes (each element takes at least one), and
// nothing in the schema nests deeper than a few levels.
constexpr std::size_t max_elements = 65536;
constexpr std::size_t max_depth = 8;

using packer = msgpack::packer<msgpack::sbuffer>;

void pack_str(packer& pk, std::string_view s) {
  pk.pack_str(static_cast<uint32_t>(s.size()));
  pk.pack_str_body(s.data(), static_cast<uint32_t>(s.size()));
}

void pack_bin(packer& pk, std::string_view s) {
  pk.pack_bin(static_cast<uint32_t>(s.size()));
  pk.pack_bin_body(s.data(), static_cast<uint32_t>(s.size()));
}

void pack_headers(packer& pk, const header_list& hs) {
  pk.pack_array(static_cast<uint32_t>(hs.size()));
  for (const auto& [name, value] : hs) {
    pk.pack_array(2);
    pack_str(pk, name);
    pack_str(pk, value);
  }
}

// Writes the common head of a frame: the map header, "type" and "v".
void pack_head(packer& pk, std::string_view type, uint32_t fields) {
  pk.pack_map(fields + 2);
  pack_str(pk, "type");
  pack_str(pk, type);
  pack_str(pk, "v");
  pk.pack_uint32(protocol_version);
}

void pack_fields(packer& pk, const ready& m) {
  pack_head(pk, "ready", 3);
  pack_str(pk, "version");
  pack_str(pk, m.version);
  pack_str(pk, "configured");
  pk.pack(m.configured);
  pack_str(pk, "features");
  pk.pack_array(static_cast<uint32_t>(m.features.size()));
  for (const auto& f : m.features)
    pack_str(pk, f);
}

void pack_fields(packer& pk, const configure& m) {
  pack_head(pk, "configure", 9);
  pack_str(pk, "code");
  pack_bin(pk, m.code);
  pack_str(pk, "encoding");
  pack_str(pk, m.encoding);
  pack_str(pk, "entrypoint");
  pack_str(pk, m.entrypoint);
  pack_str(pk, "interface");
  pack_str(pk, m.interface);
  pack_str(pk, "variables");
  pk.pack_map(static_cast<uint32_t>(m.variables.size()));
  for (const auto& [k, v] : m.variables) {
    pack_str(pk, k);
    pack_str(pk, v);
  }
  pack_str(pk, "volumes");
  pk.pack_array(static_cast<uint32_t>(m.volumes.size()));
  for (const auto& vol : m.volumes) {
    pk.pack_map(3);
    pack_str(pk, "mount");
    pack_str(pk, vol.mount);
    pack_str(pk, "path");
    pack_str(pk, vol.path);
    pack_str(pk, "read_only");
    pk.pack(vol.read_only);
  }
  pack_str(pk, "authorized_keys");
  pk.pack_array(static_cast<uint32_t>(m.authorized_keys.size()));
  for (const auto& key : m.authorized_keys)
    pack_str(pk, key);
  pack_str(pk, "app_port");
  pk.pack_uint16(m.app_port);
  pack_str(pk, "code_file");
  pack_str(pk, m.code_file);
}

void pack_fields(packer& pk, const configure_result& m) {
  pack_head(pk, "configure_result", 2);
  pack_str(pk, "success");
  pk.pack(m.success);
  pack_str(pk, "error");
  pack_str(pk, m.error);
}

void pack_fields(packer& pk, const http_request& m) {
  pack_head(pk, "http_request", 6);
  pack_str(pk, "id");
  pk.pack_uint64(m.id);
  pack_str(pk, "method");
  pack_str(pk, m.method);
  pack_str(pk, "path");
  pack_str(pk, m.path);
  pack_str(pk, "query_string");
  pack_str(pk, m.query_string);
  pack_str(pk, "headers");
  pack_headers(pk, m.headers);
  pack_str(pk, "body");
  pack_bin(pk, m.body);
}

void pack_fields(packer& pk, const http_response& m) {
  pack_head(pk, "http_response", 5);
  pack_str(pk, "id");
  pk.pack_uint64(m.id);
  pack_str(pk, "status");
  pk.pack_uint16(m.status);
  pack_str(pk, "headers");
  pack_headers(pk, m.headers);
  pack_str(pk, "body");
  pack_bin(pk, m.body);
  pack_str(pk, "error");
  pack_str(pk, m.error);
}

void pack_fields(packer& pk, const event& m) {
  pack_head(pk, "event", 1);
  pack_str(pk, "body");
  pack_bin(pk, m.body);
}

void pack_fields(packer& pk, const log& m) {
  pack_head(pk, "log", 2);
  pack_str(pk, "stream");
  pack_str(pk, m.stream);
  pack_str(pk, "line");
  pack_str(pk, m.line);
}

void pack_fields(packer& pk, const halt&) {
  pack_head(pk, "halt", 0);
}

void pack_fields(packer& pk, const halted& m) {
  pack_head(pk, "halted", 1);
  pack_str(pk, "exit_code");
  pk.pack_int64(m.exit_code);
}

// --- decoding ---------------------------------------------------------------

// A view of a msgpack map with typed, checked field access. Every getter
// returns false and fills `error` when the field is missing or mistyped.
class fields {
public:
  fields(const msgpack::object_map& m, std::string& error)
    : map_(m), error_(error) {
  }

  const msgpack::object* find(std::string_view key) const {
    for (uint32_t i = 0; i < map_.size; ++i) {
      const auto& k = map_.ptr[i].key;
      if (k.type == msgpack::type::STR
          && std::string_view{k.via.str.ptr, k.via.str.size} == key)
        return &map_.ptr[i].val;
    }
    return nullptr;
  }

  const msgpack::object* require(std::string_view key) const {
    auto* o = find(key);
    if (o == nullptr)
      error_ = "missing field '" + std::string{key} + "'";
    return o;
  }

  bool wrong(std::string_view key, std::string_view what) const {
    error_ = "field '" + std::string{key} + "' is not " + std::string{what};
    return false;
  }

  // Strings and byte strings are interchangeable on input: both str and bin.
  static bool as_bytes(const msgpack::object& o, std::string& out) {
    if (o.type == msgpack::type::STR) {
      out.assign(o.via.str.ptr, o.via.str.size);
      return true;
    }
    if (o.type == msgpack::type::BIN) {
      out.assign(o.via.bin.ptr, o.via.bin.size);
      return true;
    }
    return false;
  }

  bool get(std::string_view key, std::string& out) const {
    auto* o = require(key);
    if (o == nullptr)
      return false;
    return as_bytes(*o, out) || wrong(key, "a string");
  }

  bool get(std::string_view key, bool& out) const {
    auto* o = require(key);
    if (o == nullptr)
      return false;
    if (o->type != msgpack::type::BOOLEAN)
      return wrong(key, "a boolean");
    out = o->via.boolean;
    return true;
  }

  template <class T>
    requires std::is_integral_v<T>
  bool get(std::string_view key, T& out) const {
    auto* o = require(key);
    if (o == nullptr)
      return false;
    return as_int(*o, out) || wrong(key, "an integer in range");
  }

  template <class T>
  static bool as_int(const msgpack::object& o, T& out) {
    if (o.type == msgpack::type::POSITIVE_INTEGER) {
      if (o.via.u64 > static_cast<uint64_t>(std::numeric_limits<T>::max()))
        return false;
      out = static_cast<T>(o.via.u64);
      return true;
    }
    if (o.type == msgpack::type::NEGATIVE_INTEGER) {
      if constexpr (std::is_signed_v<T>) {
        if (o.via.i64 < static_cast<int64_t>(std::numeric_limits<T>::min()))
          return false;
        out = static_cast<T>(o.via.i64);
        return true;
      }
    }
    return false;
  }

  bool get(std::string_view key, header_list& out) const {
    auto* o = require(key);
    if (o == nullptr)
      return false;
    if (o->type != msgpack::type::ARRAY)
      return wrong(key, "an array of [name, value] pairs");
    out.clear();
    out.reserve(o->via.array.size);
    for (uint32_t i = 0; i < o->via.array.size; ++i) {
      const auto& pair = o->via.array.ptr[i];
      if (pair.type != msgpack::type::ARRAY || pair.via.array.size != 2)
        return wrong(key, "an array of [name, value] pairs");
      std::string name;
      std::string value;
      if (!as_bytes(pair.via.array.ptr[0], name)
          || !as_bytes(pair.via.array.ptr[1], value))
        return wrong(key, "an array of [name, value] string pairs");
      out.emplace_back(std::move(name), std::move(value));
    }
    return true;
  }

  bool get(std::string_view key, std::map<std::string, std::string>& out) const {
    auto* o = require(key);
    if (o == nullptr)
      return false;
    if (o->type != msgpack::type::MAP)
      return wrong(key, "a map of strings");
    out.clear();
    for (uint32_t i = 0; i < o->via.map.size; ++i) {
      std::string k;
      std::string v;
      if (!as_bytes(o->via.map.ptr[i].key, k)
          || !as_bytes(o->via.map.ptr[i].val, v))
        return wrong(key, "a map of strings");
      if (!out.emplace(std::move(k), std::move(v)).second)
        return wrong(key, "a map without duplicate keys");
    }
    return true;
  }

  bool get(std::string_view key, std::vector<std::string>& out) const {
    auto* o = require(key);
    if (o == nullptr)
      return false;
    if (o->type != msgpack::type::ARRAY)
      return wrong(key, "an array of strings");
    out.clear();
    out.reserve(o->via.array.size);
    for (uint32_t i = 0; i < o->via.array.size; ++i) {
      std::string s;
      if (!as_bytes(o->via.array.ptr[i], s))
        return wrong(key, "an array of strings");
      out.push_back(std::move(s));
    }
    return true;
  }

  bool get(std::string_view key, std::vector<volume>& out) const {
    auto* o = require(key);
    if (o == nullptr)
      return false;
    if (o->type != msgpack::type::ARRAY)
      return wrong(key, "an array of volumes");
    out.clear();
    out.reserve(o->via.array.size);
    for (uint32_t i = 0; i < o->via.array.size; ++i) {
      const auto& item = o->via.array.ptr[i];
      if (item.type != msgpack::type::MAP)
        return wrong(key, "an array of volume maps");
      fields vf{item.via.map, error_};
      volume vol;
      if (!vf.get("mount", vol.mount) || !vf.get("path", vol.path)
          || !vf.get("read_only", vol.read_only)) {
        error_ = std::string{key} + ": " + error_;
        return false;
      }
      out.push_back(std::move(vol));
    }
    return true;
  }

private:
  const msgpack::object_map& map_;
  std::string& error_;
};

bool read_fields(const fields& f, ready& m) {
  m.configured = false;
  m.features.clear();
  return f.get("version", m.version)
         && (f.find("configured") == nullptr || f.get("configured", m.configured))
         && (f.find("features") == nullptr || f.get("features", m.features));
}

bool read_fields(const fields& f, configure& m) {
  return f.get("code", m.code) && f.get("encoding", m.encoding)
         && f.get("entrypoint", m.entrypoint)
         && f.get("interface", m.interface) && f.get("variables", m.variables)
         && f.get("volumes", m.volumes)
         && f.get("authorized_keys", m.authorized_keys)
         && f.get("app_port", m.app_port)
         && (f.find("code_file") == nullptr || f.get("code_file", m.code_file));
}

bool read_fields(const fields& f, configure_result& m) {
  return f.get("success", m.success) && f.get("error", m.error);
}

bool read_fields(const fields& f, http_request& m) {
  return f.get("id", m.id) && f.get("method", m.method)
         && f.get("path", m.path) && f.get("query_string", m.query_string)
         && f.get("headers", m.headers) && f.get("body", m.body);
}

bool read_fields(const fields& f, http_response& m) {
  return f.get("id", m.id) && f.get("status", m.status)
         && f.get("headers", m.headers) && f.get("body", m.body)
         && f.get("error", m.error);
}

bool read_fields(const fields& f, event& m) {
  return f.get("body", m.body);
}

bool read_fields(const fields& f, log& m) {
  return f.get("stream", m.stream) && f.get("line", m.line);
}

bool read_fields(const fields&, halt&) {
  return true;
}

bool read_fields(const fields& f, halted& m) {
  return f.get("exit_code", m.exit_code);
}

template <class T>
std::optional<frame> read_as(const fields& f) {
  T m;
  if (!read_fields(f, m))
    return std::nullopt;
  return frame{std::move(m)};
}

std::optional<frame> decode_object(const msgpack::object& root,
                                   std::string& error) {
  if (root.type != msgpack::type::MAP) {
    error = "frame is not a msgpack map";
    return std::nullopt;
  }
  const auto& m = root.via.map;
  for (uint32_t i = 0; i < m.size; ++i) {
    if (m.ptr[i].key.type != msgpack::type::STR) {
      error = "frame has a non-string key";
      return std::nullopt;
    }
    std::string_view ki{m.ptr[i].key.via.str.ptr, m.ptr[i].key.via.str.size};
    for (uint32_t j = 0; j < i; ++j) {
      std::string_view kj{m.ptr[j].key.via.str.ptr, m.ptr[j].key.via.str.size};
      if (ki == kj) {
        error = "frame has duplicate key '" + std::string{ki} + "'";
        return std::nullopt;
      }
    }
  }
  fields f{m, error};
  std::string type;
  uint32_t version = 0;
  if (!f.get("type", type) || !f.get("v", version))
    return std::nullopt;
  if (version != protocol_version) {
    error = "unsupported protocol version " + std::to_string(version);
    return std::nullopt;
  }
  std::optional<frame> result;
  if (type == "ready")
    result = read_as<ready>(f);
  else if (type == "configure")
    result = read_as<configure>(f);
  else if (type == "configure_result")
    result = read_as<configure_result>(f);
  else if (type == "http_request")
    result = read_as<http_request>(f);
  else if (type == "http_response")
    result = read_as<http_response>(f);
  else if (type == "event")
    result = read_as<event>(f);
  else if (type == "log")
    result = read_as<log>(f);
  else if (type == "halt")
    result = read_as<halt>(f);
  else if (type == "halted")
    result = read_as<halted>(f);
  else {
    error = "unknown frame type '" + type.substr(0, 64) + "'";
    return std::nullopt;
  }
  if (!result)
    error = type + ": " + error;
  return result;
}

} // namespace

std::string_view type_name(const frame& f) {
  static constexpr std::string_view names[] = {
    "ready", "configure", "configure_result", "http_request", "http_response",
    "event", "log",       "halt",             "halted",
  };
  static_assert(std::size(names) == std::variant_size_v<frame>);
  return names[f.index()];
}

std::string encode(const frame& f) {
  msgpack::sbuffer buf;
  packer pk{buf};
  std::visit([&](const auto& m) { pack_fields(pk, m); }, f);
  if (buf.size() > max_frame_size)
    throw std::length_error("guest frame of " + std::to_string(buf.size())
                            + " bytes exceeds the limit");
  auto n = static_cast<uint32_t>(buf.size());
  std::string out;
  out.reserve(length_prefix_size + buf.size());
  out.push_back(static_cast<char>((n >> 24) & 0xFF));
  out.push_back(static_cast<char>((n >> 16) & 0xFF));
  out.push_back(static_cast<char>((n >> 8) & 0xFF));
  out.push_back(static_cast<char>(n & 0xFF));
  out.append(buf.data(), buf.size());
  return out;
}

std::optional<frame> decode_payload(std::string_view payload,
                                    std::string& error) {
  error.clear();
  if (payload.empty()) {
    error = "empty frame";
    return std::nullopt;
  }
  auto elems = std::min(payload.size(), max_elements);
  msgpack::unpack_limit limit{elems,          elems,          payload.size(),
                              payload.size(), payload.size(), max_depth};
  try {
    std::size_t off = 0;
    // The handle owns the zone the object lives in: keep it alive while
    // reading the object.
    msgpack::object_handle oh = msgpack::unpack(payload.data(), payload.size(),
                                                off, nullptr, nullptr, limit);
    if (off != payload.size()) {
      error = "trailing bytes after the msgpack map";
      return std::nullopt;
    }
    return decode_object(oh.get(), error);
  } catch (const msgpack::insufficient_bytes&) {
    error = "truncated msgpack";
  } catch (const msgpack::unpack_error& e) {
    error = std::string{"malformed msgpack: "} + e.what();
  } catch (const std::bad_alloc&) {
    error = "frame too large to decode";
  } catch (const std::exception& e) {
    error = std::string{"malformed msgpack: "} + e.what();
  }
  return std::nullopt;
}

decoder::decoder(std::size_t max_payload) : max_payload_(max_payload) {
}

void decoder::feed(const char* data, std::size_t size) {
  if (failed() || size == 0)
    return;
  // Drop what has been consumed before growing the buffer.
  if (pos_ > 0 && (pos_ == buf_.size() || pos_ >= buf_.size() / 2)) {
    buf_.erase(0, pos_);
    pos_ = 0;
  }
  buf_.append(data, size);
}

std::optional<frame> decoder::next(std::string& error) {
  error.clear();
  if (failed()) {
    error = error_;
    return std::nullopt;
  }
  if (buffered() < length_prefix_size)
    return std::nullopt;
  auto* p = reinterpret_cast<const unsigned char*>(buf_.data() + pos_);
  std::size_t n = (std::size_t{p[0]} << 24) | (std::size_t{p[1]} << 16)
                  | (std::size_t{p[2]} << 8) | std::size_t{p[3]};
  if (n > max_payload_) {
    error_ = "frame length " + std::to_string(n) + " exceeds the limit of "
             + std::to_string(max_payload_);
    error = error_;
    buf_.clear();
    pos_ = 0;
    return std::nullopt;
  }
  if (buffered() < length_prefix_size + n)
    return std::nullopt;
  std::string_view payload{buf_.data() + pos_ + length_prefix_size, n};
  auto result = decode_payload(payload, error);
  pos_ += length_prefix_size + n;
  if (!result) {
    error_ = error;
    buf_.clear();
    pos_ = 0;
    return std::nullopt;
  }
  if (pos_ == buf_.size()) {
    buf_.clear();
    pos_ = 0;
  }
  return result;
}

} // namespace alephd::guest
