// The CRN's reward ledger on disk: an append-only, hash-chained list of
// metering samples (`usage_entry`) in its own LMDB environment
// (<data-dir>/ledger). Entry n is stored under its big-endian sequence number
// as canonical JSON; its `hash` covers every other field, `prev` included, so
// changing, dropping or reordering an entry breaks the chain at that entry.
// The sequence number the CCN acknowledged is kept beside the chain.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "messages/types.hpp"

namespace alephd {

namespace lmdb {
class env;
}

/// `prev` of the first entry.
extern const std::string ledger_genesis;

/// The entry as JSON with sorted keys and without `hash`: what is hashed.
std::string ledger_canonical(const usage_entry& e);
/// Hex sha256 of ledger_canonical(e).
std::string ledger_hash(const usage_entry& e);
/// Makes `e` entry `seq` of a chain whose last hash is `prev` (sets seq, prev and hash), and
/// moves `prev` on to `e.hash`.
void ledger_chain(usage_entry& e, uint64_t seq, std::string& prev);

/// JSON with `hash`, as stored; and back (nullopt when not a well-formed entry).
std::string ledger_encode(const usage_entry& e);
std::optional<usage_entry> ledger_decode(std::string_view text);

/// Why an entry from another node cannot be kept (empty when it can): ids of 1–128 printable
/// ASCII characters, a known product, hex hashes, a sane seq.
std::string ledger_entry_problem(const usage_entry& e);

/// Why `next` cannot follow `prev` (nullptr for the first entry) in a chain;
/// empty when it can: consecutive seq, `prev` link and its own hash.
std::string ledger_link_error(const usage_entry* prev, const usage_entry& next);

/// The key of CRN `node`'s entry `seq` in a CCN's usage book (database "usage").
std::string usage_key(const std::string& node, uint64_t seq);

/// What `verify` found.
struct ledger_check {
  uint64_t entries = 0;
  uint64_t first_bad = 0; ///< seq (or position) of the first bad entry; 0 when all are good
  std::string reason;
  bool ok() const { return first_bad == 0; }
};

class ledger_store {
public:
  /// Opens or creates <dir>; nullptr and a one-line `err` on failure, also when
  /// `strict` and the last entry cannot be read (the chain could not be
  /// continued). `alephd ledger verify` opens with `strict` off.
  static std::unique_ptr<ledger_store> open(const std::string& dir, std::string& err,
                                            bool strict = true);
  ~ledger_store();

  /// Numbers, chains and writes `entries` in one transaction (one fsync for
  /// all: group commit); fills their seq, prev and hash. False and `err` when
  /// nothing was written.
  bool append(std::vector<usage_entry>& entries, std::string& err);

  uint64_t last_seq() const { return last_seq_; }
  const std::string& last_hash() const { return last_hash_; }

  /// Up to `max` entries after `after`, in order.
  std::vector<usage_entry> read(uint64_t after, std::size_t max) const;

  /// The highest seq the CCN acknowledged (0 for none).
  uint64_t acked() const;
  /// Records an acknowledgement; a lower or unknown seq is ignored.
  bool set_acked(uint64_t seq, std::string& err);

  /// Walks the whole chain from seq 1 and names the first bad entry.
  ledger_check verify() const;

private:
  ledger_store() = default;
  std::unique_ptr<lmdb::env> env_;
  unsigned entries_ = 0;
  unsigned meta_ = 0;
  uint64_t last_seq_ = 0;
  std::string last_hash_;
};

} // namespace alephd
