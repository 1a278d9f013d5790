// Thin RAII layer over LMDB: one environment per node data dir, named databases.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include <lmdb.h>

namespace alephd::lmdb {

/// LMDB's message for a return code.
std::string error_text(int rc);

/// One LMDB environment (a directory holding data.mdb and lock.mdb).
class env {
public:
  /// Opens or creates the environment in `dir` (created if missing). On failure returns
  /// nullptr and sets `err` to a one-line reason. `flags` adds LMDB flags (the in-process
  /// simulator's stores on tmpfs use MDB_WRITEMAP | MDB_NOSYNC; nodes use none).
  static std::unique_ptr<env> open(const std::string& dir, std::string& err,
                                   uint64_t map_size = uint64_t{8} << 30, unsigned flags = 0);
  ~env();
  env(const env&) = delete;
  env& operator=(const env&) = delete;

  MDB_env* get() const { return env_; }

  /// Opens (creating) a named database; returns false and sets `err` on failure.
  bool open_db(const char* name, MDB_dbi& out, std::string& err);

private:
  explicit env(MDB_env* e) : env_(e) {}
  MDB_env* env_;
};

/// A transaction; aborted on destruction unless committed.
class txn {
public:
  txn(env& e, bool write);
  ~txn();
  txn(const txn&) = delete;
  txn& operator=(const txn&) = delete;

  /// 0 on success, else the LMDB code from mdb_txn_begin.
  int status() const { return rc_; }
  MDB_txn* get() const { return txn_; }

  /// The value under `key`, valid until the transaction ends.
  std::optional<std::string_view> get(MDB_dbi db, std::string_view key) const;
  int put(MDB_dbi db, std::string_view key, std::string_view value, unsigned flags = 0);
  int del(MDB_dbi db, std::string_view key);
  /// Visits entries in key order (or reverse); `fn` returns false to stop.
  int for_each(MDB_dbi db, bool reverse,
               const std::function<bool(std::string_view, std::string_view)>& fn) const;
  /// Number of entries in `db`.
  uint64_t count(MDB_dbi db) const;
  int commit();

private:
  MDB_txn* txn_ = nullptr;
  int rc_ = 0;
};

/// Writes one key in its own transaction and commits it; 0 or the LMDB error code.
int put_committed(env& e, MDB_dbi db, std::string_view key, std::string_view value);

/// Deletes one key in its own transaction and commits it; a missing key is fine.
int del_committed(env& e, MDB_dbi db, std::string_view key);

/// A big-endian key, so that LMDB's byte order is numeric order.
std::string be64(uint64_t x);
uint64_t from_be64(std::string_view s);

} // namespace alephd::lmdb
