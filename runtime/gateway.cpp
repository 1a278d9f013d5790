#include "runtime/gateway.hpp"

#include <cmath>
#include <ctime>

#include <caf/sec.hpp>

#include "runtime/ledger.hpp"

namespace alephd::gateway {

bool query_number(const http::request& req, const char* key, uint64_t& out, uint64_t max) {
  auto i = req.query.find(key);
  if (i == req.query.end())
    return true;
  auto& v = i->second;
  if (v.empty() || v.size() > 19 || v.find_first_not_of("0123456789") != std::string::npos)
    return false;
  out = std::min<uint64_t>(std::stoull(v), max);
  return true;
}

std::optional<page_request> page_of(const http::request& req, const http::responder& respond) {
  page_request p;
  uint64_t limit = p.limit;
  if (!query_number(req, "after", p.after, UINT64_MAX / 2)) {
    respond(http::json_error(400, "after must be a sequence number"));
    return std::nullopt;
  }
  if (!query_number(req, "limit", limit, 1000) || limit == 0) {
    respond(http::json_error(400, "limit must be a number from 1 to 1000"));
    return std::nullopt;
  }
  p.limit = static_cast<uint32_t>(limit);
  return p;
}

http::response usage_page(const std::vector<usage_entry>& entries) {
  nlohmann::json list = nlohmann::json::array();
  for (auto& e : entries)
    list.push_back(nlohmann::json::parse(ledger_encode(e)));
  nlohmann::json body{{"records", std::move(list)}};
  if (!entries.empty())
    body["next"] = entries.back().seq;
  return json(200, body);
}

http::response error_response(const caf::error& err) {
  unsigned status = 500;
  auto text = describe(err);
  if (err.category() == caf::atom("alephd")) {
    switch (static_cast<ec>(err.code())) {
      case ec::not_found: status = 404; break;
      case ec::invalid: status = 400; break;
      case ec::too_large: status = 413; break;
      case ec::no_capacity: status = 503; break;
      case ec::wrong_phase: status = 409; break;
      case ec::unavailable: status = 503; break;
      case ec::refused: status = 403; break;
      case ec::workload_failed: status = 502; break;
      case ec::no_space: status = 507; break;
      default: status = 500;
    }
  } else if (err.category() == caf::atom("system")) {
    auto code = static_cast<caf::sec>(err.code());
    if (code == caf::sec::request_timeout) {
      status = 504;
      text = "timed out waiting for the node";
    } else if (code == caf::sec::request_receiver_down) {
      status = 503;
      text = "the node is shutting down";
    }
  }
  return http::json_error(status, text);
}

http::response json(unsigned status, const nlohmann::json& body) {
  return http::json(status, body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
}

http::response file_response(const file_info& f) {
  http::response r;
  r.content_type = "application/octet-stream";
  r.file_path = f.path;
  return r;
}

std::string iso_time(double t) {
  auto secs = static_cast<std::time_t>(std::floor(t));
  auto micros = static_cast<long>((t - std::floor(t)) * 1e6);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char buf[64];
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%06ld+00:00", tm.tm_year + 1900,
                tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, micros);
  return buf;
}

} // namespace alephd::gateway
