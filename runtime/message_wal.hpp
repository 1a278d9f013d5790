// The CCN's message write-ahead log: two preallocated segment files
// (<data-dir>/wal/segment-0 and -1). A group of appends is one pwrite and one
// fdatasync at the end of the active segment; since the blocks were written
// (with zeros) when the segment was made, that sync carries no metadata and
// costs about a third of an LMDB commit, which needs two. The message_store
// acknowledges a group once it is here, and indexes it into LMDB in the
// background; a segment is reused only after everything in it is in LMDB.
//
// Each segment starts with a 4 KiB header naming its generation (0: empty);
// records follow, each carrying the generation, its sequence number, a
// CRC-32 and its length. Reading stops at the first record that is torn, of
// another generation (what an earlier use of the segment left) or beyond the
// file. Generations only grow, so a record from an earlier use is never read.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace alephd {

/// One logged append: the message's sequence number, item_hash and stored record.
struct wal_entry {
  uint64_t seq = 0;
  std::string hash;
  std::string record;
  bool operator==(const wal_entry&) const = default;
};

class message_wal {
public:
  static constexpr uint64_t default_segment_bytes = uint64_t{8} << 20;
  static constexpr uint64_t header_bytes = 4096;
  static constexpr uint64_t record_overhead = 32;

  /// Opens or creates the log in `dir` (segments of at least `segment_bytes`, made and
  /// zero-filled when missing or shorter) and reads what it holds. nullptr and a one-line
  /// `err` on failure.
  static std::unique_ptr<message_wal> open(const std::string& dir, std::string& err,
                                           uint64_t segment_bytes = default_segment_bytes);
  ~message_wal();
  message_wal(const message_wal&) = delete;
  message_wal& operator=(const message_wal&) = delete;

  /// The records found at open, in sequence order; the caller makes them durable elsewhere,
  /// then calls reset().
  const std::vector<wal_entry>& recovered() const { return recovered_; }
  std::vector<wal_entry> take_recovered();
  /// Empties both segments (durably) and starts a new generation in segment 0.
  bool reset(std::string& err);

  /// Bytes `e` takes in a segment.
  static uint64_t footprint(const wal_entry& e) {
    return record_overhead + e.hash.size() + e.record.size();
  }
  /// Room for records in one segment.
  uint64_t capacity() const { return segment_bytes_ - header_bytes; }
  /// Whether `bytes` more fit at the end of the active segment.
  bool fits(uint64_t bytes) const { return pos_ + bytes <= segment_bytes_; }
  /// The active segment (0 or 1).
  int active() const { return active_; }
  /// Makes the other segment active under a new generation: what it held is dropped, so the
  /// caller must have it durable elsewhere. Takes effect on disk with the next append.
  bool rotate(std::string& err);
  /// Writes `entries` at the end of the active segment and syncs them; false and `err` when
  /// they may not be durable (the log is then unusable: see failed()).
  bool append(const std::vector<wal_entry>& entries, std::string& err);
  /// A write or sync failed: after a failed fdatasync the kernel may have dropped the pages,
  /// so the log is not written again.
  bool failed() const { return failed_; }

  /// For tests: the next write fails with `error` (an errno value), as a failing disk's would.
  void fail_next_write(int error) { injected_error_ = error; }
  /// For tests: the next write takes `ms` milliseconds longer, as a hanging disk's would.
  void stall_next_write(unsigned ms) { injected_stall_ms_ = ms; }

private:
  message_wal() = default;
  bool write_header(int segment, uint64_t generation, std::string& err);

  std::string dir_;
  int injected_error_ = 0;
  unsigned injected_stall_ms_ = 0;
  int fd_[2] = {-1, -1};
  uint64_t segment_bytes_ = 0;
  uint64_t generation_[2] = {0, 0}; ///< generation in each segment's header (0: empty)
  int active_ = 0;
  uint64_t pos_ = header_bytes; ///< end of the active segment's records
  bool failed_ = false;
  std::vector<wal_entry> recovered_;
  std::string buffer_; ///< reused between appends
};

} // namespace alephd
