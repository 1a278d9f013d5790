#include "messages/codec.hpp"

#include <map>

#include <msgpack.hpp>

namespace alephd::codec {

namespace {

constexpr uint32_t current_version = 1;

// Reads the map entries of a record into name -> object; false if not a map.
bool fields(const msgpack::object& o, std::map<std::string, msgpack::object>& out) {
  if (o.type != msgpack::type::MAP)
    return false;
  for (uint32_t i = 0; i < o.via.map.size; ++i) {
    const auto& kv = o.via.map.ptr[i];
    if (kv.key.type != msgpack::type::STR)
      return false;
    out.emplace(kv.key.as<std::string>(), kv.val);
  }
  auto v = out.find("v");
  return v != out.end() && v->second.type == msgpack::type::POSITIVE_INTEGER
         && v->second.as<uint32_t>() <= current_version;
}

template <class T>
void take(std::map<std::string, msgpack::object>& m, const char* key, T& out) {
  if (auto i = m.find(key); i != m.end())
    out = i->second.as<T>();
}

template <class Fn>
bool unpack_record(std::string_view bytes, Fn fn) {
  try {
    auto oh = msgpack::unpack(bytes.data(), bytes.size());
    std::map<std::string, msgpack::object> m;
    if (!fields(oh.get(), m))
      return false;
    fn(m);
    return true;
  } catch (const std::exception&) {
    return false;
  }
}

} // namespace

std::string encode(const stored_message& x) {
  msgpack::sbuffer buf;
  msgpack::packer<msgpack::sbuffer> pk{buf};
  pk.pack_map(9);
  pk.pack("v"), pk.pack(current_version);
  pk.pack("item_hash"), pk.pack(x.item_hash);
  pk.pack("type"), pk.pack(x.type);
  pk.pack("sender"), pk.pack(x.sender);
  pk.pack("channel"), pk.pack(x.channel);
  pk.pack("time"), pk.pack(x.time);
  pk.pack("received"), pk.pack(x.received);
  pk.pack("origin"), pk.pack(x.origin);
  pk.pack("json"), pk.pack(x.json);
  return {buf.data(), buf.size()};
}

std::string encode(const file_info& x) {
  msgpack::sbuffer buf;
  msgpack::packer<msgpack::sbuffer> pk{buf};
  pk.pack_map(4);
  pk.pack("v"), pk.pack(current_version);
  pk.pack("hash"), pk.pack(x.hash);
  pk.pack("size"), pk.pack(x.size);
  pk.pack("created"), pk.pack(x.created);
  return {buf.data(), buf.size()};
}

std::string encode(const crn_info& info, link_state state, double registered, uint64_t wait_order,
                   uint64_t session) {
  msgpack::sbuffer buf;
  msgpack::packer<msgpack::sbuffer> pk{buf};
  pk.pack_map(15);
  pk.pack("v"), pk.pack(current_version);
  pk.pack("id"), pk.pack(info.id);
  pk.pack("name"), pk.pack(info.name);
  pk.pack("address"), pk.pack(info.address);
  pk.pack("vcpus"), pk.pack(info.vcpus);
  pk.pack("memory_mib"), pk.pack(info.memory_mib);
  pk.pack("disk_mib"), pk.pack(info.disk_mib);
  pk.pack("software_version"), pk.pack(info.software_version);
  pk.pack("info_version"), pk.pack(info.version);
  pk.pack("state"), pk.pack(static_cast<uint8_t>(state));
  pk.pack("registered"), pk.pack(registered);
  pk.pack("wait_order"), pk.pack(wait_order);
  pk.pack("asn"), pk.pack(info.asn);
  pk.pack("public_key"), pk.pack(info.public_key);
  pk.pack("session"), pk.pack(session);
  return {buf.data(), buf.size()};
}

bool decode(std::string_view bytes, crn_info& info, link_state& state, double& registered,
            uint64_t& wait_order, uint64_t* session) {
  uint64_t sess = 0;
  uint8_t s = 0;
  bool ok = unpack_record(bytes, [&](auto& m) {
    take(m, "id", info.id);
    take(m, "name", info.name);
    take(m, "address", info.address);
    take(m, "vcpus", info.vcpus);
    take(m, "memory_mib", info.memory_mib);
    take(m, "disk_mib", info.disk_mib);
    take(m, "software_version", info.software_version);
    take(m, "info_version", info.version);
    take(m, "state", s);
    take(m, "registered", registered);
    take(m, "wait_order", wait_order);
    take(m, "asn", info.asn); // absent from older records
    take(m, "public_key", info.public_key);
    take(m, "session", sess);
  });
  if (session != nullptr)
    *session = sess;
  if (!ok || s > static_cast<uint8_t>(link_state::down))
    return false;
  state = static_cast<link_state>(s);
  return true;
}

std::string encode(const allocation& a, const std::string& crn_id, const std::string& state) {
  msgpack::sbuffer buf;
  msgpack::packer<msgpack::sbuffer> pk{buf};
  pk.pack_map(12);
  pk.pack("v"), pk.pack(current_version);
  pk.pack("item_hash"), pk.pack(a.item_hash);
  pk.pack("kind"), pk.pack(a.kind);
  pk.pack("epoch"), pk.pack(a.epoch);
  pk.pack("vcpus"), pk.pack(a.vcpus);
  pk.pack("memory_mib"), pk.pack(a.memory_mib);
  pk.pack("disk_mib"), pk.pack(a.disk_mib);
  pk.pack("message_json"), pk.pack(a.message_json);
  pk.pack("alloc_version"), pk.pack(a.version);
  pk.pack("crn_id"), pk.pack(crn_id);
  pk.pack("state"), pk.pack(state);
  pk.pack("owner"), pk.pack(a.owner);
  return {buf.data(), buf.size()};
}

bool decode(std::string_view bytes, allocation& a, std::string& crn_id, std::string& state) {
  return unpack_record(bytes, [&](auto& m) {
    take(m, "item_hash", a.item_hash);
    take(m, "kind", a.kind);
    take(m, "epoch", a.epoch);
    take(m, "vcpus", a.vcpus);
    take(m, "memory_mib", a.memory_mib);
    take(m, "disk_mib", a.disk_mib);
    take(m, "message_json", a.message_json);
    take(m, "alloc_version", a.version);
    take(m, "crn_id", crn_id);
    take(m, "state", state);
    take(m, "owner", a.owner); // absent from older records
  });
}

bool decode(std::string_view bytes, stored_message& x) {
  return unpack_record(bytes, [&](auto& m) {
    take(m, "item_hash", x.item_hash);
    take(m, "type", x.type);
    take(m, "sender", x.sender);
    take(m, "channel", x.channel);
    take(m, "time", x.time);
    take(m, "received", x.received);
    take(m, "origin", x.origin);
    take(m, "json", x.json);
  });
}

bool decode(std::string_view bytes, file_info& x) {
  return unpack_record(bytes, [&](auto& m) {
    take(m, "hash", x.hash);
    take(m, "size", x.size);
    take(m, "created", x.created);
  });
}

} // namespace alephd::codec
