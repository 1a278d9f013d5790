#include "runtime/ledger.hpp"

#include <cmath>
#include <limits>

#include <nlohmann/json.hpp>

#include "messages/aleph_message.hpp"
#include "runtime/lmdb.hpp"

namespace alephd {

using nlohmann::json;

const std::string ledger_genesis(64, '0');

namespace {

json to_json_without_hash(const usage_entry& e) {
  // nlohmann's object keeps keys sorted: the text is canonical for given values,
  // and doubles print in their shortest round-trip form.
  return json{
    {"version", e.version},   {"seq", e.seq},
    {"prev", e.prev},         {"node", e.node},
    {"time", e.time},         {"wall_s", e.wall_s},
    {"item_hash", e.item_hash}, {"product", e.product},
    {"vcpus", e.vcpus},       {"memory_mib", e.memory_mib},
    {"cpu_ns", e.cpu_ns},     {"mem_peak", e.mem_peak},
    {"mem_avg", e.mem_avg},   {"requests", e.requests},
    {"bytes_in", e.bytes_in}, {"bytes_out", e.bytes_out},
    {"storage_bytes", e.storage_bytes},
  };
}

/// An unsigned JSON integer that fits in T; throws json::exception otherwise
/// (nlohmann would quietly wrap -3 into a huge count).
template <class T>
T unsigned_field(const json& j, const char* key) {
  auto& v = j.at(key);
  if (!v.is_number_unsigned() || v.get<uint64_t>() > std::numeric_limits<T>::max())
    throw json::type_error::create(302, std::string{key} + " must be an unsigned integer", &v);
  return static_cast<T>(v.get<uint64_t>());
}

} // namespace

std::string ledger_canonical(const usage_entry& e) {
  return to_json_without_hash(e).dump();
}

std::string ledger_hash(const usage_entry& e) {
  return aleph::sha256_hex(ledger_canonical(e));
}

void ledger_chain(usage_entry& e, uint64_t seq, std::string& prev) {
  e.seq = seq;
  e.prev = prev;
  e.hash = ledger_hash(e);
  prev = e.hash;
}

std::string ledger_encode(const usage_entry& e) {
  auto j = to_json_without_hash(e);
  j["hash"] = e.hash;
  return j.dump();
}

std::optional<usage_entry> ledger_decode(std::string_view text) {
  auto j = json::parse(text, nullptr, false);
  if (!j.is_object())
    return std::nullopt;
  try {
    usage_entry e;
    e.version = unsigned_field<uint8_t>(j, "version");
    e.seq = unsigned_field<uint64_t>(j, "seq");
    e.prev = j.at("prev").get<std::string>();
    e.hash = j.at("hash").get<std::string>();
    e.node = j.at("node").get<std::string>();
    e.time = j.at("time").get<double>();
    e.wall_s = j.at("wall_s").get<double>();
    e.item_hash = j.at("item_hash").get<std::string>();
    e.product = j.at("product").get<std::string>();
    e.vcpus = unsigned_field<uint32_t>(j, "vcpus");
    e.memory_mib = unsigned_field<uint64_t>(j, "memory_mib");
    e.cpu_ns = unsigned_field<uint64_t>(j, "cpu_ns");
    e.mem_peak = unsigned_field<uint64_t>(j, "mem_peak");
    e.mem_avg = unsigned_field<uint64_t>(j, "mem_avg");
    e.requests = unsigned_field<uint64_t>(j, "requests");
    e.bytes_in = unsigned_field<uint64_t>(j, "bytes_in");
    e.bytes_out = unsigned_field<uint64_t>(j, "bytes_out");
    e.storage_bytes = unsigned_field<uint64_t>(j, "storage_bytes");
    if (j.size() != 18)
      return std::nullopt; // an unknown field would not be covered by the hash
    return e;
  } catch (const json::exception&) {
    return std::nullopt;
  }
}

std::string ledger_entry_problem(const usage_entry& e) {
  auto printable = [](const std::string& s) {
    if (s.empty() || s.size() > 128)
      return false;
    for (unsigned char c : s)
      if (c < 0x21 || c > 0x7e)
        return false;
    return true;
  };
  auto hex64 = [](const std::string& s) {
    return s.size() == 64 && s.find_first_not_of("0123456789abcdef") == std::string::npos;
  };
  if (e.version != 1)
    return "unknown entry version " + std::to_string(e.version);
  if (e.seq == 0 || e.seq > (uint64_t{1} << 53))
    return "sequence number out of range";
  if (!printable(e.node) || !printable(e.item_hash))
    return "node and item_hash must be 1 to 128 printable ASCII characters";
  if (e.product != "program" && e.product != "persistent_program" && e.product != "instance")
    return "unknown product";
  if (!hex64(e.prev) || !hex64(e.hash))
    return "prev and hash must be sha256 hex";
  if (!(e.wall_s >= 0 && e.wall_s <= 366.0 * 86400) || !std::isfinite(e.time))
    return "wall_s or time out of range";
  return {};
}

std::string usage_key(const std::string& node, uint64_t seq) {
  return node + '\0' + lmdb::be64(seq);
}

std::string ledger_link_error(const usage_entry* prev, const usage_entry& next) {
  uint64_t want_seq = prev ? prev->seq + 1 : 1;
  if (next.seq != want_seq)
    return "sequence number " + std::to_string(next.seq) + " where " + std::to_string(want_seq) +
           " was expected";
  const std::string& want_prev = prev ? prev->hash : ledger_genesis;
  if (next.prev != want_prev)
    return "prev does not match the hash of entry " + std::to_string(want_seq - 1);
  if (next.hash != ledger_hash(next))
    return "content does not match its hash";
  return {};
}

std::unique_ptr<ledger_store> ledger_store::open(const std::string& dir, std::string& err,
                                                 bool strict) {
  std::unique_ptr<ledger_store> l{new ledger_store()};
  l->env_ = lmdb::env::open(dir, err, uint64_t{32} << 30);
  if (!l->env_)
    return nullptr;
  MDB_dbi entries = 0, meta = 0;
  if (!l->env_->open_db("entries", entries, err) || !l->env_->open_db("meta", meta, err))
    return nullptr;
  l->entries_ = entries;
  l->meta_ = meta;
  l->last_hash_ = ledger_genesis;
  lmdb::txn t{*l->env_, false};
  if (t.status() != 0) {
    err = "ledger " + dir + ": " + lmdb::error_text(t.status());
    return nullptr;
  }
  std::string bad;
  t.for_each(entries, true, [&](std::string_view key, std::string_view value) {
    auto e = ledger_decode(value);
    if (!e || key.size() != 8 || e->seq != lmdb::from_be64(key)) {
      bad = "ledger " + dir + ": the last entry cannot be read; run `alephd ledger verify`";
      return false;
    }
    l->last_seq_ = e->seq;
    l->last_hash_ = e->hash;
    return false;
  });
  if (!bad.empty() && strict) {
    err = bad;
    return nullptr;
  }
  return l;
}

ledger_store::~ledger_store() = default;

bool ledger_store::append(std::vector<usage_entry>& entries, std::string& err) {
  if (entries.empty())
    return true;
  lmdb::txn t{*env_, true};
  if (t.status() != 0) {
    err = lmdb::error_text(t.status());
    return false;
  }
  uint64_t seq = last_seq_;
  std::string prev = last_hash_;
  for (auto& e : entries) {
    ledger_chain(e, ++seq, prev);
    if (int rc = t.put(entries_, lmdb::be64(e.seq), ledger_encode(e), MDB_NOOVERWRITE); rc != 0) {
      err = "ledger entry " + std::to_string(e.seq) + ": " + lmdb::error_text(rc);
      return false;
    }
  }
  if (int rc = t.commit(); rc != 0) {
    err = "ledger commit: " + lmdb::error_text(rc);
    return false;
  }
  last_seq_ = seq;
  last_hash_ = prev;
  return true;
}

std::vector<usage_entry> ledger_store::read(uint64_t after, std::size_t max) const {
  std::vector<usage_entry> out;
  lmdb::txn t{*env_, false};
  if (t.status() != 0 || max == 0)
    return out;
  MDB_cursor* cur = nullptr;
  if (mdb_cursor_open(t.get(), entries_, &cur) != 0)
    return out;
  auto key = lmdb::be64(after + 1);
  MDB_val k{key.size(), key.data()}, v{};
  for (int rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE); rc == 0 && out.size() < max;
       rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
    auto e = ledger_decode({static_cast<const char*>(v.mv_data), v.mv_size});
    if (!e)
      break; // never ship past a damaged entry; `verify` names it
    out.push_back(std::move(*e));
  }
  mdb_cursor_close(cur);
  return out;
}

uint64_t ledger_store::acked() const {
  lmdb::txn t{*env_, false};
  if (t.status() != 0)
    return 0;
  auto v = t.get(meta_, "acked");
  return v && v->size() == 8 ? lmdb::from_be64(*v) : 0;
}

bool ledger_store::set_acked(uint64_t seq, std::string& err) {
  if (seq > last_seq_ || seq <= acked())
    return true;
  if (int rc = lmdb::put_committed(*env_, meta_, "acked", lmdb::be64(seq)); rc != 0) {
    err = "ledger ack: " + lmdb::error_text(rc);
    return false;
  }
  return true;
}

ledger_check ledger_store::verify() const {
  ledger_check c;
  lmdb::txn t{*env_, false};
  if (t.status() != 0) {
    c.first_bad = 1;
    c.reason = lmdb::error_text(t.status());
    return c;
  }
  std::optional<usage_entry> prev;
  uint64_t position = 0;
  t.for_each(entries_, false, [&](std::string_view key, std::string_view value) {
    ++position;
    uint64_t key_seq = key.size() == 8 ? lmdb::from_be64(key) : 0;
    auto e = ledger_decode(value);
    if (!e) {
      c.first_bad = key_seq ? key_seq : position;
      c.reason = "not a well-formed entry";
      return false;
    }
    if (e->seq != key_seq) {
      c.first_bad = key_seq ? key_seq : position;
      c.reason = "stored under seq " + std::to_string(key_seq) + " but says " + std::to_string(e->seq);
      return false;
    }
    if (auto why = ledger_link_error(prev ? &*prev : nullptr, *e); !why.empty()) {
      c.first_bad = prev ? prev->seq + 1 : 1;
      c.reason = why;
      return false;
    }
    ++c.entries;
    prev = std::move(e);
    return true;
  });
  if (c.ok()) {
    auto v = t.get(meta_, "acked");
    uint64_t acked = v && v->size() == 8 ? lmdb::from_be64(*v) : 0;
    if (acked > c.entries) {
      c.first_bad = c.entries + 1;
      c.reason = "missing: the CCN acknowledged entries up to " + std::to_string(acked);
    }
  }
  return c;
}

} // namespace alephd
