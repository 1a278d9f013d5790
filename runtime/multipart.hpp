// Finds the uploaded file in a multipart/form-data body without holding the body in memory:
// the body is read in pieces through a callback (a string, or a spooled file).
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>

namespace alephd::multipart {

/// The boundary named by a Content-Type such as `multipart/form-data; boundary=xyz`; empty when
/// there is none or it is malformed (longer than 200 characters).
std::string boundary_of(const std::string& content_type);

/// Reads up to `n` bytes at `offset` of the body (fewer only at its end).
using reader = std::function<std::string(uint64_t offset, uint64_t n)>;

struct part {
  uint64_t offset = 0;
  uint64_t length = 0;
};

/// The part named "file", else the first part, of a body of `size` bytes; nullopt when the
/// body is not well-formed multipart with this boundary.
std::optional<part> find_file(const reader& read, uint64_t size, const std::string& boundary);

/// A reader over a file; reads that fail return fewer bytes.
reader file_reader(const std::string& path);

} // namespace alephd::multipart
