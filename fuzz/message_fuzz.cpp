// libFuzzer: the JSON message parser (POST /api/v0/messages) and what follows it on a CCN,
// the signature check. What the parser accepts, its JSON output must parse again to the same
// item_hash.
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "messages/aleph_message.hpp"
#include "runtime/crypto.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text{reinterpret_cast<const char*>(data), size};
  auto parsed = alephd::aleph::parse_message(text);
  if (!parsed.ok())
    return 0;
  const auto& m = *parsed.msg;
  (void)alephd::crypto::verify_message_signature(m.chain, m.sender, alephd::aleph::to_string(m.type),
                                                 m.item_hash, m.signature);
  auto out = alephd::aleph::to_json(m).dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
  auto again = alephd::aleph::parse_message(std::string_view{out});
  if (!again.ok() || again.msg->item_hash != m.item_hash)
    std::abort(); // a message we store could not be read back
  return 0;
}
