#pragma once

#include <charconv>
#include <cstdint>
#include <string>

namespace alephd {

/// Splits "host:port" (port 1–65535); false when malformed.
inline bool split_endpoint(const std::string& s, std::string& host, uint16_t& port) {
  auto colon = s.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == s.size())
    return false;
  unsigned value = 0;
  auto [end, ec] = std::from_chars(s.data() + colon + 1, s.data() + s.size(), value);
  if (ec != std::errc{} || end != s.data() + s.size() || value == 0 || value > 65535)
    return false;
  host = s.substr(0, colon);
  port = static_cast<uint16_t>(value);
  return true;
}

} // namespace alephd
