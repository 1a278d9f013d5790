#include "runtime/reward_epoch.hpp"

#include <cmath>
#include <sstream>
#include <tuple>

#include <nlohmann/json.hpp>

#include "runtime/ledger.hpp"
#include "runtime/lmdb.hpp"

namespace alephd {

using nlohmann::json;

bool parse_stakes(const std::string& text, std::vector<stake_entry>& out, std::string& err) {
  out.clear();
  std::stringstream in{text};
  for (std::string item; std::getline(in, item, ',');) {
    if (item.empty())
      continue;
    auto a = item.find(':');
    auto b = a == std::string::npos ? a : item.find(':', a + 1);
    if (b == std::string::npos || a == 0 || b == a + 1 || b + 1 >= item.size()) {
      err = "'" + item.substr(0, 80) + "' is not ccn:address:amount";
      return false;
    }
    stake_entry s{item.substr(0, a), item.substr(a + 1, b - a - 1), 0};
    auto amount = item.substr(b + 1);
    char* end = nullptr;
    s.amount = std::strtod(amount.c_str(), &end);
    if (end == amount.c_str() || *end != '\0' || !std::isfinite(s.amount) || s.amount < 0) {
      err = "'" + item.substr(0, 80) + "': the amount must be a number of ALEPH";
      return false;
    }
    out.push_back(std::move(s));
  }
  return true;
}

namespace {

json params_json(const rewards::params& p) {
  return json{{"ccn_daily", p.ccn_daily},
              {"stakers_daily_base", p.stakers_daily_base},
              {"crn_monthly_base", p.crn_monthly_base},
              {"crn_monthly_variable", p.crn_monthly_variable},
              {"days_per_month", p.days_per_month},
              {"max_paid", p.max_paid},
              {"cu_hour_price", p.cu_hour_price},
              {"storage_gib_hour_price", p.storage_gib_hour_price},
              {"fund", p.fund}};
}

rewards::params params_of(const json& j) {
  rewards::params p;
  p.ccn_daily = j.at("ccn_daily").get<double>();
  p.stakers_daily_base = j.at("stakers_daily_base").get<double>();
  p.crn_monthly_base = j.at("crn_monthly_base").get<double>();
  p.crn_monthly_variable = j.at("crn_monthly_variable").get<double>();
  p.days_per_month = j.at("days_per_month").get<double>();
  p.max_paid = j.at("max_paid").get<std::size_t>();
  p.cu_hour_price = j.at("cu_hour_price").get<std::map<std::string, double>>();
  p.storage_gib_hour_price = j.at("storage_gib_hour_price").get<double>();
  p.fund = j.at("fund").get<std::string>();
  return p;
}

} // namespace

std::string encode_epoch(const epoch_record& r) {
  auto& in = r.input;
  json ccns = json::array();
  for (auto& c : in.ccns)
    ccns.push_back(json{{"id", c.id}, {"active", c.active}, {"score", c.score},
                        {"linked_crns", c.linked_crns}, {"stakes", c.stakes}, {"remote", c.remote}});
  json crns = json::array();
  for (auto& c : in.crns)
    crns.push_back(json{{"id", c.id}, {"score", c.score}, {"decentralization", c.decentralization}});
  json ranges = json::object();
  for (auto& [node, range] : in.ranges)
    ranges[node] = json::array({range.first, range.second});
  json j{{"version", 1},
         {"epoch", in.epoch},
         {"start", in.start},
         {"end", in.end},
         {"ccns", ccns},
         {"crns", crns},
         {"ranges", ranges},
         {"params", params_json(in.params)},
         {"legacy", json::parse(r.legacy)},
         {"usage", json::parse(r.usage)}};
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::optional<epoch_record> decode_epoch(std::string_view text) {
  auto j = json::parse(text, nullptr, false);
  if (!j.is_object())
    return std::nullopt;
  try {
    epoch_record r;
    auto& in = r.input;
    in.epoch = j.at("epoch").get<uint64_t>();
    in.start = j.at("start").get<double>();
    in.end = j.at("end").get<double>();
    for (auto& c : j.at("ccns"))
      in.ccns.push_back(rewards::ccn_input{c.at("id").get<std::string>(), c.at("active").get<bool>(),
                                           c.at("score").get<double>(),
                                           c.at("linked_crns").get<std::vector<std::string>>(),
                                           c.at("stakes").get<std::map<std::string, double>>(),
                                           c.value("remote", false)});
    for (auto& c : j.at("crns"))
      in.crns.push_back(rewards::crn_input{c.at("id").get<std::string>(), c.at("score").get<double>(),
                                           c.at("decentralization").get<double>()});
    for (auto& [node, range] : j.at("ranges").items())
      in.ranges[node] = {range.at(0).get<uint64_t>(), range.at(1).get<uint64_t>()};
    in.params = params_of(j.at("params"));
    r.legacy = j.at("legacy").dump();
    r.usage = j.at("usage").dump();
    return r;
  } catch (const json::exception&) {
    return std::nullopt;
  }
}

double compute_units(uint32_t vcpus, uint64_t memory_mib) {
  double by_memory = std::ceil(static_cast<double>(memory_mib) / 2048.0);
  return std::max({1.0, static_cast<double>(vcpus), by_memory});
}

bool collect_usage(lmdb::env& env, const std::map<std::string, std::pair<uint64_t, uint64_t>>& ranges,
                   std::vector<rewards::usage_input>& out, std::string& err) {
  out.clear();
  MDB_dbi db = 0;
  if (!env.open_db("usage", db, err))
    return false;
  lmdb::txn t{env, false};
  if (t.status() != 0) {
    err = lmdb::error_text(t.status());
    return false;
  }
  MDB_cursor* cur = nullptr;
  if (int rc = mdb_cursor_open(t.get(), db, &cur); rc != 0) {
    err = lmdb::error_text(rc);
    return false;
  }
  std::map<std::tuple<std::string, std::string, std::string>, rewards::usage_input> sums;
  bool ok = true;
  for (auto& [node, range] : ranges) {
    if (range.second <= range.first)
      continue;
    // The entries held in (first, second]: a CRN that failed over between CCNs has gaps here,
    // the entries another CCN received and counts.
    auto prefix = node + '\0';
    auto key = usage_key(node, range.first + 1);
    MDB_val k{key.size(), key.data()}, v{};
    for (int rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE); rc == 0;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
      std::string_view ks{static_cast<const char*>(k.mv_data), k.mv_size};
      if (ks.size() != prefix.size() + 8 || ks.substr(0, prefix.size()) != prefix)
        break;
      auto seq = lmdb::from_be64(ks.substr(prefix.size()));
      if (seq > range.second)
        break;
      auto e = ledger_decode({static_cast<const char*>(v.mv_data), v.mv_size});
      if (!e || e->seq != seq || e->node != node) {
        err = "usage entry " + std::to_string(seq) + " of " + node + " is unreadable";
        ok = false;
        break;
      }
      auto& u = sums[{node, e->item_hash, e->product}];
      u.crn = node;
      u.item_hash = e->item_hash;
      u.product = e->product;
      double hours = std::max(0.0, e->wall_s) / 3600.0;
      u.compute_unit_hours += hours * compute_units(e->vcpus, e->memory_mib);
      u.storage_gib_hours += hours * static_cast<double>(e->storage_bytes) / double(1ull << 30);
    }
    if (!ok)
      break;
  }
  mdb_cursor_close(cur);
  if (!ok)
    return false;
  for (auto& [key, u] : sums)
    out.push_back(u);
  return true;
}

std::map<std::string, std::pair<uint64_t, uint64_t>>
usage_ranges(lmdb::env& env, const std::map<std::string, uint64_t>& after) {
  std::map<std::string, std::pair<uint64_t, uint64_t>> out;
  MDB_dbi heads = 0;
  std::string err;
  if (!env.open_db("usage.heads", heads, err))
    return out;
  lmdb::txn t{env, false};
  if (t.status() != 0)
    return out;
  std::map<std::string, uint64_t> last;
  t.for_each(heads, false, [&](std::string_view key, std::string_view value) {
    auto j = json::parse(value, nullptr, false);
    if (j.is_object() && j.contains("seq") && j["seq"].is_number_unsigned())
      last[std::string{key}] = j["seq"].get<uint64_t>();
    return true;
  });
  for (auto& [node, head] : last) {
    // A CRN without new entries keeps its place (an empty range), so that the next epoch
    // starts where this one stopped.
    auto i = after.find(node);
    uint64_t from = i == after.end() ? 0 : i->second;
    out[node] = {from, std::max(from, head)};
  }
  for (auto& [node, from] : after)
    out.emplace(node, std::make_pair(from, from)); // gone from the book: keeps its place too
  return out;
}

epoch_record compute_epoch(const epoch_input& in, const std::vector<rewards::usage_input>& usage) {
  epoch_record r;
  r.input = in;
  double seconds = in.end - in.start;
  r.legacy = rewards::to_json(rewards::legacy_epoch(in.epoch, seconds, in.ccns, in.crns, in.params));
  r.usage = rewards::to_json(rewards::usage_epoch(in.epoch, seconds, in.ccns, usage, in.params));
  return r;
}

namespace {

bool rewards_db(lmdb::env& env, MDB_dbi& db, std::string& err) {
  return env.open_db("rewards", db, err);
}

} // namespace

std::vector<uint64_t> stored_epochs(lmdb::env& env) {
  std::vector<uint64_t> out;
  MDB_dbi db = 0;
  std::string err;
  if (!rewards_db(env, db, err))
    return out;
  lmdb::txn t{env, false};
  if (t.status() != 0)
    return out;
  t.for_each(db, false, [&](std::string_view key, std::string_view) {
    if (key.size() == 8)
      out.push_back(lmdb::from_be64(key));
    return true;
  });
  return out;
}

std::optional<epoch_record> load_epoch(lmdb::env& env, uint64_t epoch) {
  MDB_dbi db = 0;
  std::string err;
  if (!rewards_db(env, db, err))
    return std::nullopt;
  lmdb::txn t{env, false};
  if (t.status() != 0)
    return std::nullopt;
  auto v = t.get(db, lmdb::be64(epoch));
  return v ? decode_epoch(*v) : std::nullopt;
}

bool store_epoch(lmdb::env& env, const epoch_record& r, std::string& err) {
  MDB_dbi db = 0;
  if (!rewards_db(env, db, err))
    return false;
  if (int rc = lmdb::put_committed(env, db, lmdb::be64(r.input.epoch), encode_epoch(r)); rc != 0) {
    err = lmdb::error_text(rc);
    return false;
  }
  return true;
}

std::string verify_epoch(lmdb::env& env, uint64_t epoch) {
  auto stored = load_epoch(env, epoch);
  if (!stored)
    return "no epoch " + std::to_string(epoch) + " is stored";
  std::vector<rewards::usage_input> usage;
  std::string err;
  if (!collect_usage(env, stored->input.ranges, usage, err))
    return err;
  auto again = compute_epoch(stored->input, usage);
  // The stored JSON went through a parse and dump: compare in that form.
  auto same = [](const std::string& a, const std::string& b) {
    return json::parse(a, nullptr, false) == json::parse(b, nullptr, false);
  };
  if (!same(again.legacy, stored->legacy))
    return "the legacy distribution differs from the stored one";
  if (!same(again.usage, stored->usage))
    return "the usage distribution differs from the stored one";
  return {};
}

} // namespace alephd
