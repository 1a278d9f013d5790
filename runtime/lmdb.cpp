#include "runtime/lmdb.hpp"

#include <filesystem>

namespace alephd::lmdb {

namespace {

MDB_val val(std::string_view s) {
  return MDB_val{s.size(), const_cast<char*>(s.data())};
}

std::string_view view(const MDB_val& v) {
  return {static_cast<const char*>(v.mv_data), v.mv_size};
}

} // namespace

std::string error_text(int rc) {
  return mdb_strerror(rc);
}

std::unique_ptr<env> env::open(const std::string& dir, std::string& err, uint64_t map_size,
                               unsigned flags) {
  std::error_code fec;
  std::filesystem::create_directories(dir, fec);
  if (fec) {
    err = "cannot create " + dir + ": " + fec.message();
    return nullptr;
  }
  MDB_env* e = nullptr;
  if (int rc = mdb_env_create(&e); rc != 0) {
    err = "mdb_env_create: " + error_text(rc);
    return nullptr;
  }
  mdb_env_set_mapsize(e, map_size);
  mdb_env_set_maxdbs(e, 64);
  mdb_env_set_maxreaders(e, 256);
  // MDB_NOTLS: read transactions may be used by any thread (actors migrate).
  if (int rc = mdb_env_open(e, dir.c_str(), MDB_NOTLS | flags, 0600); rc != 0) {
    err = "cannot open LMDB in " + dir + ": " + error_text(rc);
    mdb_env_close(e);
    return nullptr;
  }
  return std::unique_ptr<env>(new env(e));
}

env::~env() {
  mdb_env_close(env_);
}

bool env::open_db(const char* name, MDB_dbi& out, std::string& err) {
  txn t{*this, true};
  if (t.status() != 0) {
    err = "mdb_txn_begin: " + error_text(t.status());
    return false;
  }
  if (int rc = mdb_dbi_open(t.get(), name, MDB_CREATE, &out); rc != 0) {
    err = std::string{"cannot open database "} + name + ": " + error_text(rc);
    return false;
  }
  if (int rc = t.commit(); rc != 0) {
    err = "mdb_txn_commit: " + error_text(rc);
    return false;
  }
  return true;
}

txn::txn(env& e, bool write) {
  rc_ = mdb_txn_begin(e.get(), nullptr, write ? 0 : MDB_RDONLY, &txn_);
  if (rc_ != 0)
    txn_ = nullptr;
}

txn::~txn() {
  if (txn_ != nullptr)
    mdb_txn_abort(txn_);
}

std::optional<std::string_view> txn::get(MDB_dbi db, std::string_view key) const {
  if (txn_ == nullptr)
    return std::nullopt;
  auto k = val(key);
  MDB_val v;
  if (mdb_get(txn_, db, &k, &v) != 0)
    return std::nullopt;
  return view(v);
}

int txn::put(MDB_dbi db, std::string_view key, std::string_view value, unsigned flags) {
  if (txn_ == nullptr)
    return rc_ != 0 ? rc_ : EINVAL;
  auto k = val(key);
  auto v = val(value);
  return mdb_put(txn_, db, &k, &v, flags);
}

int txn::del(MDB_dbi db, std::string_view key) {
  if (txn_ == nullptr)
    return rc_ != 0 ? rc_ : EINVAL;
  auto k = val(key);
  return mdb_del(txn_, db, &k, nullptr);
}

int txn::for_each(MDB_dbi db, bool reverse,
                  const std::function<bool(std::string_view, std::string_view)>& fn) const {
  if (txn_ == nullptr)
    return rc_ != 0 ? rc_ : EINVAL;
  MDB_cursor* cur = nullptr;
  if (int rc = mdb_cursor_open(txn_, db, &cur); rc != 0)
    return rc;
  MDB_val k, v;
  int rc = mdb_cursor_get(cur, &k, &v, reverse ? MDB_LAST : MDB_FIRST);
  while (rc == 0) {
    if (!fn(view(k), view(v)))
      break;
    rc = mdb_cursor_get(cur, &k, &v, reverse ? MDB_PREV : MDB_NEXT);
  }
  mdb_cursor_close(cur);
  return rc == MDB_NOTFOUND ? 0 : rc;
}

uint64_t txn::count(MDB_dbi db) const {
  MDB_stat st;
  if (txn_ == nullptr || mdb_stat(txn_, db, &st) != 0)
    return 0;
  return st.ms_entries;
}

int txn::commit() {
  if (txn_ == nullptr)
    return rc_ != 0 ? rc_ : EINVAL;
  int rc = mdb_txn_commit(txn_);
  txn_ = nullptr;
  return rc;
}

int put_committed(env& e, MDB_dbi db, std::string_view key, std::string_view value) {
  txn t{e, true};
  int rc = t.put(db, key, value);
  return rc == 0 ? t.commit() : rc;
}

int del_committed(env& e, MDB_dbi db, std::string_view key) {
  txn t{e, true};
  int rc = t.del(db, key);
  if (rc == MDB_NOTFOUND)
    rc = 0;
  return rc == 0 ? t.commit() : rc;
}

std::string be64(uint64_t x) {
  std::string s(8, '\0');
  for (int i = 7; i >= 0; --i) {
    s[static_cast<size_t>(i)] = static_cast<char>(x & 0xff);
    x >>= 8;
  }
  return s;
}

uint64_t from_be64(std::string_view s) {
  uint64_t x = 0;
  for (size_t i = 0; i < s.size() && i < 8; ++i)
    x = (x << 8) | static_cast<unsigned char>(s[i]);
  return x;
}

} // namespace alephd::lmdb
