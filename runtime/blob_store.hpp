// Content-addressed blob files: data-dir/blobs/ab/cdef… named by sha256.
// A blob is written to a temp file, hashed, fsynced and renamed, so a crash
// never leaves a partial file under a hash name.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace alephd {

/// Is `s` 64 lowercase hex digits?
bool is_sha256_hex(std::string_view s);

class blob_store {
public:
  explicit blob_store(std::string root);

  /// Where the blob for `hash` lives (whether or not it exists).
  std::string path_of(std::string_view hash) const;

  /// Writes `data` durably. Sets `hash`; returns an empty string or a one-line error.
  /// When `expected` is not empty the data must hash to it.
  std::string write(std::string_view data, std::string& hash, std::string_view expected = {});

  bool exists(std::string_view hash) const;

  /// Reads a whole blob; false when missing or unreadable.
  bool read(std::string_view hash, std::string& out) const;

private:
  std::string root_;
};

} // namespace alephd
