// Versioned msgpack records for what alephd persists in LMDB (never CAF's wire format).
#pragma once

#include <string>
#include <string_view>

#include "messages/types.hpp"

namespace alephd::codec {

/// Encodes as a msgpack map with a "v" version field, so records outlive struct changes.
std::string encode(const stored_message& x);
std::string encode(const file_info& x);

/// Decodes a record written by encode(); false on malformed or unknown-version input.
bool decode(std::string_view bytes, stored_message& x);
bool decode(std::string_view bytes, file_info& x);

} // namespace alephd::codec
