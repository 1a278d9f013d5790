// Test helper: a stored message as the message store publishes it, built from a
// real message document (its hash and content recomputed by the parser).
#pragma once

#include <string>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "messages/aleph_message.hpp"
#include "messages/types.hpp"

namespace alephd::test {

inline stored_message stored_from(nlohmann::ordered_json doc, const std::string& origin) {
  doc.erase("item_hash");
  doc.erase("item_content");
  auto parsed = aleph::parse_message(doc);
  EXPECT_TRUE(parsed.ok()) << parsed.error.field << ": " << parsed.error.reason;
  stored_message m;
  if (!parsed.ok())
    return m;
  m.item_hash = parsed.msg->item_hash;
  m.type = std::string{aleph::to_string(parsed.msg->type)};
  m.sender = parsed.msg->sender;
  m.channel = parsed.msg->channel;
  m.time = parsed.msg->time;
  m.received = m.time + 1;
  m.origin = origin;
  m.json = aleph::to_json(*parsed.msg).dump();
  return m;
}

} // namespace alephd::test
