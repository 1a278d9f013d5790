#include "runtime/multipart.hpp"

#include <memory>

#include <fcntl.h>
#include <unistd.h>

namespace alephd::multipart {

namespace {

constexpr uint64_t window = 1 << 20;
constexpr uint64_t max_headers = 16 << 10;
constexpr uint64_t npos = UINT64_MAX;

// The first occurrence of `needle` at or after `from`, reading the body in windows.
uint64_t find(const reader& read, uint64_t size, const std::string& needle, uint64_t from,
              uint64_t limit = npos) {
  auto end = limit == npos ? size : std::min(size, limit);
  while (from < end) {
    auto chunk = read(from, std::min<uint64_t>(window + needle.size(), end - from));
    if (chunk.empty())
      return npos;
    if (auto i = chunk.find(needle); i != std::string::npos)
      return from + i;
    if (chunk.size() < needle.size() || from + chunk.size() >= end)
      return npos;
    from += chunk.size() - needle.size() + 1;
  }
  return npos;
}

} // namespace

std::string boundary_of(const std::string& content_type) {
  auto b = content_type.find("boundary=");
  if (b == std::string::npos)
    return {};
  auto boundary = content_type.substr(b + 9);
  if (auto semi = boundary.find(';'); semi != std::string::npos)
    boundary.resize(semi);
  if (boundary.size() >= 2 && boundary.front() == '"' && boundary.back() == '"')
    boundary = boundary.substr(1, boundary.size() - 2);
  if (boundary.empty() || boundary.size() > 200)
    return {};
  return boundary;
}

std::optional<part> find_file(const reader& read, uint64_t size, const std::string& boundary) {
  if (boundary.empty())
    return std::nullopt;
  auto delim = "--" + boundary;
  std::optional<part> first;
  auto pos = find(read, size, delim, 0, max_headers); // a short preamble at most
  while (pos != npos) {
    pos += delim.size();
    if (read(pos, 2) == "--")
      break; // the closing delimiter
    auto head = read(pos, max_headers);
    auto headers_end = head.find("\r\n\r\n");
    if (headers_end == std::string::npos)
      return std::nullopt;
    auto headers = head.substr(0, headers_end);
    auto data_start = pos + headers_end + 4;
    auto next = find(read, size, "\r\n" + delim, data_start);
    if (next == npos)
      return std::nullopt;
    part p{data_start, next - data_start};
    if (headers.find("name=\"file\"") != std::string::npos)
      return p;
    if (!first)
      first = p;
    pos = next + 2;
  }
  return first;
}

reader file_reader(const std::string& path) {
  auto fd = std::shared_ptr<int>(new int(::open(path.c_str(), O_RDONLY | O_CLOEXEC)), [](int* p) {
    if (*p >= 0)
      ::close(*p);
    delete p;
  });
  return [fd](uint64_t offset, uint64_t n) {
    std::string out;
    if (*fd < 0)
      return out;
    out.resize(n);
    uint64_t got = 0;
    while (got < n) {
      auto r = ::pread(*fd, out.data() + got, n - got, static_cast<off_t>(offset + got));
      if (r <= 0)
        break;
      got += static_cast<uint64_t>(r);
    }
    out.resize(got);
    return out;
  };
}

} // namespace alephd::multipart
