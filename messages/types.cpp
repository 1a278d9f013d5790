#include "messages/types.hpp"

#include <caf/message.hpp>
#include <caf/sec.hpp>
#include <nlohmann/json.hpp>

namespace alephd {

namespace {

constexpr auto category = caf::atom("alephd");

std::string hex(const std::string& bytes) {
  static constexpr char digits[] = "0123456789abcdef";
  std::string out;
  for (unsigned char c : bytes) {
    out.push_back(digits[c >> 4]);
    out.push_back(digits[c & 15]);
  }
  return out;
}

} // namespace

// A JSON array keeps every field apart whatever it contains (a name with a newline cannot pose
// as two fields); the prefix keeps a signature for one purpose from passing for another.
std::string signed_text(const enrollment& x) {
  const auto& i = x.info;
  nlohmann::json fields = {x.version,   i.version,          i.id,  i.name,
                           i.address,   i.vcpus,            i.memory_mib,
                           i.disk_mib,  i.software_version, i.asn, hex(i.public_key),
                           x.signed_at_ms, x.ccn_id};
  return "alephd-enrollment\n" + fields.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

std::string signed_text(const heartbeat& x, uint64_t session) {
  nlohmann::json fields = {x.crn_id, session, x.seq};
  return "alephd-heartbeat\n" + fields.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

std::string to_string(ec x) {
  switch (x) {
    case ec::none: return "none";
    case ec::not_found: return "not_found";
    case ec::invalid: return "invalid";
    case ec::too_large: return "too_large";
    case ec::no_capacity: return "no_capacity";
    case ec::wrong_phase: return "wrong_phase";
    case ec::storage_failure: return "storage_failure";
    case ec::unavailable: return "unavailable";
    case ec::refused: return "refused";
    case ec::workload_failed: return "workload_failed";
    case ec::no_space: return "no_space";
  }
  return "unknown";
}

caf::error make_error(ec x, std::string context) {
  return caf::error{static_cast<uint8_t>(x), category, caf::make_message(std::move(context))};
}

std::string describe(const caf::error& err) {
  if (!err)
    return "no error";
  if (err.category() == category) {
    auto code = static_cast<ec>(err.code());
    const auto& ctx = err.context();
    if (ctx.size() == 1 && ctx.match_element<std::string>(0) && !ctx.get_as<std::string>(0).empty())
      return ctx.get_as<std::string>(0);
    return to_string(code);
  }
  if (err.category() == caf::atom("system"))
    return caf::to_string(static_cast<caf::sec>(err.code()));
  return caf::to_string(err);
}

std::string to_string(link_state x) {
  switch (x) {
    case link_state::unlinked: return "unlinked";
    case link_state::linked: return "linked";
    case link_state::waiting: return "waiting";
    case link_state::down: return "down";
  }
  return "unknown";
}

} // namespace alephd
