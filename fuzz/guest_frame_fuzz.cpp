// libFuzzer: guest-protocol frames as a host reads them from a (hostile) guest: the streaming
// decoder, fed the input in two pieces; every frame it yields must encode and decode to itself.
#include <cstdint>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <string_view>

#include "runtime/guest_protocol.hpp"

namespace gp = alephd::guest;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view bytes{reinterpret_cast<const char*>(data), size};
  std::string error;
  if (auto f = gp::decode_payload(bytes, error)) {
    std::string bytes2;
    try {
      bytes2 = gp::encode(*f);
    } catch (const std::length_error&) {
      return 0;
    }
    auto back = gp::decode_payload(std::string_view{bytes2}.substr(4), error);
    if (!back || !(*back == *f))
      std::abort();
  }
  gp::decoder dec;
  auto cut = size == 0 ? 0 : data[0] % (size + 1);
  dec.feed(bytes.data(), cut);
  dec.feed(bytes.data() + cut, size - cut);
  for (int i = 0; i < 1000; ++i) {
    std::string err;
    auto f = dec.next(err);
    if (!f)
      break;
  }
  return 0;
}
