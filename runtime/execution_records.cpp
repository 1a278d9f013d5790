#include "runtime/execution_records.hpp"

#include <utility>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "runtime/lmdb.hpp"

namespace alephd {

using nlohmann::json;

std::shared_ptr<execution_records> execution_records::open(const std::string& data_dir,
                                                           std::string& err) {
  std::shared_ptr<execution_records> r{new execution_records()};
  r->env_ = lmdb::env::open(data_dir + "/lmdb", err, uint64_t{64} << 20);
  if (!r->env_)
    return nullptr;
  MDB_dbi db = 0;
  if (!r->env_->open_db("executions", db, err))
    return nullptr;
  r->db_ = db;
  return r;
}

execution_records::~execution_records() = default;

std::string execution_records::encode(const execution_record& r) {
  json j{
    {"item_hash", r.alloc.item_hash},
    {"kind", r.alloc.kind},
    {"epoch", r.alloc.epoch},
    {"vcpus", r.alloc.vcpus},
    {"memory_mib", r.alloc.memory_mib},
    {"disk_mib", r.alloc.disk_mib},
    {"message_json", r.alloc.message_json},
    {"owner", r.alloc.owner},
    {"persistent", r.persistent},
    {"executor", r.executor},
    {"sock_dir", r.executor == "microvm" ? r.sock_dir : r.handle.scratch_dir},
    {"run_dir", r.run_dir},
    {"network", r.network},
    {"pid", r.handle.pid},
    {"pid_start", r.handle.pid_start},
    {"ns_init", r.handle.ns_init},
    {"ns_init_start", r.handle.ns_init_start},
    {"cgroup_name", r.handle.cgroup_name},
    {"started_at", r.started_at},
    {"request_timeout_ms", r.request_timeout_ms},
    {"files", r.files},
  };
  return j.dump();
}

std::optional<execution_record> execution_records::decode(const std::string& text) {
  auto j = json::parse(text, nullptr, false);
  if (!j.is_object())
    return std::nullopt;
  try {
    execution_record r;
    r.alloc.item_hash = j.at("item_hash").get<std::string>();
    r.alloc.kind = j.at("kind").get<std::string>();
    r.alloc.epoch = j.at("epoch").get<uint64_t>();
    r.alloc.vcpus = j.at("vcpus").get<uint32_t>();
    r.alloc.memory_mib = j.at("memory_mib").get<uint64_t>();
    r.alloc.disk_mib = j.at("disk_mib").get<uint64_t>();
    r.alloc.message_json = j.at("message_json").get<std::string>();
    r.alloc.owner = j.value("owner", std::string{}); // absent in records of older versions
    r.persistent = j.at("persistent").get<bool>();
    r.executor = j.value("executor", std::string{"sandbox"});
    r.sock_dir = j.value("sock_dir", std::string{});
    r.run_dir = j.at("run_dir").get<std::string>();
    r.network = j.at("network").get<bool>();
    r.handle.pid = j.at("pid").get<int>();
    r.handle.pid_start = j.at("pid_start").get<std::string>();
    r.handle.ns_init = j.at("ns_init").get<int>();
    r.handle.ns_init_start = j.at("ns_init_start").get<std::string>();
    r.handle.cgroup_name = j.at("cgroup_name").get<std::string>();
    if (r.executor != "microvm") // a sandbox's scratch dir (none in records of older versions)
      r.handle.scratch_dir = std::exchange(r.sock_dir, std::string{});
    r.started_at = j.at("started_at").get<double>();
    r.request_timeout_ms = j.value("request_timeout_ms", int64_t{1000});
    r.files = j.value("files", std::vector<std::string>{});
    if (r.alloc.item_hash.empty())
      return std::nullopt;
    return r;
  } catch (const json::exception&) {
    return std::nullopt;
  }
}

bool execution_record::alive() const {
  return executor == "microvm" ? microvm::alive(vm_handle()) : sandbox::alive(handle);
}

void execution_record::kill() const {
  if (executor == "microvm")
    microvm::kill(vm_handle());
  else
    sandbox::kill(handle);
}

bool execution_records::put(const execution_record& r, std::string& err) {
  auto rc = lmdb::put_committed(*env_, db_, r.alloc.item_hash, encode(r));
  if (rc != 0) {
    err = "cannot write the execution record: " + lmdb::error_text(rc);
    return false;
  }
  return true;
}

void execution_records::erase(const std::string& item_hash) {
  lmdb::txn t{*env_, true};
  if (t.status() != 0)
    return;
  t.del(db_, item_hash);
  t.commit();
}

std::optional<execution_record> execution_records::get(const std::string& item_hash) const {
  lmdb::txn t{*env_, false};
  if (t.status() != 0)
    return std::nullopt;
  auto v = t.get(db_, item_hash);
  if (!v)
    return std::nullopt;
  return decode(std::string{*v});
}

std::vector<execution_record> execution_records::all() const {
  std::vector<execution_record> out;
  lmdb::txn t{*env_, false};
  if (t.status() != 0)
    return out;
  t.for_each(db_, false, [&](std::string_view key, std::string_view value) {
    if (auto r = decode(std::string{value}))
      out.push_back(std::move(*r));
    else
      spdlog::warn("execution records: skipping the unreadable record of {}", std::string{key});
    return true;
  });
  return out;
}

} // namespace alephd
