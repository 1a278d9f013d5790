// Versioned msgpack records for what alephd persists in LMDB (never CAF's wire format).
#pragma once

#include <string>
#include <string_view>

#include "messages/types.hpp"

namespace alephd::codec {

/// Encodes as a msgpack map with a "v" version field, so records outlive struct changes.
std::string encode(const stored_message& x);
std::string encode(const file_info& x);
/// A registry entry: a CRN, its last state, when it registered, its place in the waiting line.
/// A registry entry; `session` is the signing time of its last accepted enrollment.
std::string encode(const crn_info& info, link_state state, double registered, uint64_t wait_order,
                   uint64_t session = 0);
/// A scheduler's placement: the allocation plus where it went and its state.
std::string encode(const allocation& a, const std::string& crn_id, const std::string& state);

/// Decodes a record written by encode(); false on malformed or unknown-version input.
bool decode(std::string_view bytes, stored_message& x);
bool decode(std::string_view bytes, file_info& x);
bool decode(std::string_view bytes, crn_info& info, link_state& state, double& registered,
            uint64_t& wait_order, uint64_t* session = nullptr);
bool decode(std::string_view bytes, allocation& a, std::string& crn_id, std::string& state);

} // namespace alephd::codec
