// Content-addressed blob files: <root>/ab/cdef… named by sha256. Every blob is first written to
// <root>/tmp, hashed while it is written, fsynced, and only then renamed to its hash name, so a
// crash never leaves a partial file under a hash name. Everything streams: no call holds a
// whole file in memory.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

namespace alephd {

/// Is `s` 64 lowercase hex digits?
bool is_sha256_hex(std::string_view s);

/// sha256 over data given in pieces.
class sha256_stream {
public:
  sha256_stream();
  ~sha256_stream();
  sha256_stream(const sha256_stream&) = delete;
  sha256_stream& operator=(const sha256_stream&) = delete;
  void update(const void* data, std::size_t n);
  /// The digest as 64 lowercase hex digits; the stream starts over afterwards.
  std::string hex();

private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

/// The outcome of a blob operation: empty `text` on success, else a one-line error. `no_space`
/// tells a full disk (or quota) apart from other failures.
struct blob_error {
  std::string text;
  bool no_space = false;

  explicit operator bool() const { return !text.empty(); }
};

/// Size and modification time of a file as "size mtime-ns inode"; empty when it is missing.
/// A blob whose stamp is unchanged since it was verified was not written since.
std::string file_stamp(const std::string& path);

class blob_store {
public:
  /// Creates <root> and <root>/tmp and removes temp files an earlier process left behind.
  explicit blob_store(std::string root);

  const std::string& root() const { return root_; }

  /// Where the blob for `hash` lives (whether or not it exists).
  std::string path_of(std::string_view hash) const;

  /// A fresh temp file name under <root>/tmp (not created).
  std::string temp_path(std::string_view tag = "part") const;

  /// Writes `data` durably. Sets `hash`; when `expected` is not empty the data must hash to it.
  blob_error write(std::string_view data, std::string& hash, std::string_view expected = {});

  /// Copies `length` bytes at `offset` of `src` into a temp file while hashing them, then stores
  /// it like `adopt`. Sets `hash`; `expected`, when given, must match.
  blob_error copy_in(const std::string& src, uint64_t offset, uint64_t length, std::string& hash,
                     std::string_view expected = {});

  /// Copies `length` bytes at `offset` of `src` into a new temp file (set in `temp`) and hashes
  /// them (set in `hash`); the caller adopts or deletes the temp file.
  blob_error hash_copy(const std::string& src, uint64_t offset, uint64_t length, std::string& temp,
                       std::string& hash);

  /// Moves a complete temp file (on the same file system) whose sha256 is `hash` into place:
  /// fsync, rename, fsync of the directory. The temp file is gone afterwards either way.
  blob_error adopt(const std::string& temp, const std::string& hash);

  bool exists(std::string_view hash) const;

  /// Hashes the blob's bytes again; true when they still match its name.
  bool verify(std::string_view hash) const;

  /// Deletes a blob (missing is fine).
  void remove(std::string_view hash) const;

  /// Reads a whole blob (small files only: the peer protocol); false when missing or unreadable.
  bool read(std::string_view hash, std::string& out) const;

private:
  std::string root_;
};

} // namespace alephd
