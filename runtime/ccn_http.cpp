#include <fstream>

#include <caf/all.hpp>
#include <nlohmann/json.hpp>

#include "messages/aleph_message.hpp"
#include "runtime/blob_store.hpp"
#include "runtime/crypto.hpp"
#include "runtime/gateway.hpp"
#include "runtime/multipart.hpp"
#include "runtime/wall_clock.hpp"
#include "runtime/routes.hpp"

namespace alephd {

namespace {

using nlohmann::json;
using namespace std::chrono_literals;
using gateway::ask;
constexpr auto ccn_ask_timeout = std::chrono::milliseconds{30s};

bool starts_with(std::string_view s, std::string_view p) {
  return s.substr(0, p.size()) == p;
}

// Strict decimal parse of a query parameter within [lo, hi].
bool parse_uint(const std::string& s, uint32_t lo, uint32_t hi, uint32_t& out) {
  if (s.empty() || s.size() > 9 || s.find_first_not_of("0123456789") != std::string::npos)
    return false;
  auto v = std::stoul(s);
  if (v < lo || v > hi)
    return false;
  out = static_cast<uint32_t>(v);
  return true;
}

json message_json(const stored_message& m) {
  auto j = json::parse(m.json, nullptr, false);
  return j.is_discarded() ? json(nullptr) : j;
}

void post_message(const std::shared_ptr<const ccn_context>& ctx, http::request& req,
                  const http::responder& respond) {
  if (req.body_size > ctx->max_message_bytes) {
    respond(http::json_error(413, "message too large (limit " + std::to_string(ctx->max_message_bytes) + " bytes)"));
    return;
  }
  if (!req.body_file.empty()) { // a large message the server spooled to disk
    std::ifstream in{req.body_file, std::ios::binary};
    req.body.assign(std::istreambuf_iterator<char>{in}, {});
  }
  auto parsed = aleph::parse_message(std::string_view{req.body});
  if (!parsed.ok() && parsed.error.field == "type") {
    // pyaleph's envelope {"sync": …, "message": {…}} is accepted as well as a bare message.
    auto doc = json::parse(req.body, nullptr, false);
    if (doc.is_object() && doc.contains("message") && doc["message"].is_object())
      parsed = aleph::parse_message(std::string_view{doc["message"].dump()});
  }
  if (!parsed.ok()) {
    if (parsed.error.field.empty()) {
      respond(http::json_error(400, parsed.error.reason));
      return;
    }
    respond(gateway::json(422, json{{"error", parsed.error.reason}, {"field", parsed.error.field}}));
    return;
  }
  auto& m = *parsed.msg;
  if (ctx->verify_signatures) {
    auto problem = crypto::verify_message_signature(m.chain, m.sender, aleph::to_string(m.type),
                                                    m.item_hash, m.signature);
    if (problem) {
      respond(gateway::json(403, json{{"error", "invalid signature: " + *problem},
                                      {"field", "signature"}}));
      return;
    }
  }
  stored_message sm;
  sm.item_hash = m.item_hash;
  sm.type = std::string{aleph::to_string(m.type)};
  sm.sender = m.sender;
  sm.channel = m.channel;
  sm.time = m.time;
  sm.received = unix_seconds();
  sm.origin = ctx->id;
  sm.json = aleph::to_json(m).dump(-1, ' ', false, json::error_handler_t::replace);
  // Answered by the store itself (no actor per request: see append_reply).
  caf::anon_send(ctx->messages, atom::append_v, std::move(sm),
                 append_reply{[respond](const append_result* r, const caf::error* err) {
                   if (err != nullptr) {
                     respond(gateway::error_response(*err));
                     return;
                   }
                   respond(gateway::json(200, json{{"item_hash", r->item_hash},
                                                   {"status", r->status},
                                                   {"message_status", r->status},
                                                   {"duplicate", r->duplicate},
                                                   {"publication_status",
                                                    {{"status", "success"}, {"failed", json::array()}}}}));
                 }});
}

void list_messages(const std::shared_ptr<const ccn_context>& ctx, const http::request& req,
                   const http::responder& respond) {
  message_query q;
  auto param = [&](const char* a, const char* b = nullptr) -> const std::string* {
    if (auto i = req.query.find(a); i != req.query.end())
      return &i->second;
    if (b != nullptr)
      if (auto i = req.query.find(b); i != req.query.end())
        return &i->second;
    return nullptr;
  };
  if (auto t = param("msgType", "msgTypes"); t && !t->empty()) {
    if (!aleph::parse_message_type(*t)) {
      respond(http::json_error(400, "msgType must be one of POST, AGGREGATE, STORE, PROGRAM, INSTANCE, FORGET"));
      return;
    }
    q.type = *t;
  }
  if (auto a = param("addresses"); a && !a->empty()) {
    size_t start = 0;
    while (start <= a->size()) {
      auto comma = a->find(',', start);
      auto part = a->substr(start, comma == std::string::npos ? std::string::npos : comma - start);
      if (!part.empty())
        q.addresses.push_back(part);
      if (comma == std::string::npos)
        break;
      start = comma + 1;
    }
  }
  if (auto p = param("page"); p && !parse_uint(*p, 1, 1000000, q.page)) {
    respond(http::json_error(400, "page must be an integer between 1 and 1000000"));
    return;
  }
  if (auto p = param("pagination"); p && !parse_uint(*p, 1, 500, q.per_page)) {
    respond(http::json_error(400, "pagination must be an integer between 1 and 500"));
    return;
  }
  ask(*ctx->sys, ctx->messages, ccn_ask_timeout, respond,
      [respond](const message_page& page) {
        json msgs = json::array();
        for (auto& m : page.messages)
          msgs.push_back(message_json(m));
        respond(gateway::json(200, json{{"messages", std::move(msgs)},
                                        {"pagination_page", page.page},
                                        {"pagination_per_page", page.per_page},
                                        {"pagination_total", page.total},
                                        {"pagination_item", "messages"}}));
      },
      atom::list_v, q);
}

void add_file(const std::shared_ptr<const ccn_context>& ctx, http::request& req,
              const http::responder& respond) {
  auto ct = req.headers.count("content-type") ? req.headers.at("content-type") : std::string{};
  bool is_multipart = starts_with(ct, "multipart/form-data");
  auto boundary = is_multipart ? multipart::boundary_of(ct) : std::string{};
  if (is_multipart && boundary.empty())
    return respond(http::json_error(400, "malformed multipart body: no boundary in Content-Type"));
  auto stored = [respond](const file_info& f) {
    respond(gateway::json(200, json{{"status", "success"}, {"hash", f.hash}, {"size", f.size}}));
  };
  auto too_large = [&] {
    respond(http::json_error(413, "file too large (limit " + std::to_string(ctx->max_file_bytes)
                                    + " bytes)"));
  };
  if (!req.body_file.empty()) {
    // A large body was spooled to disk by the server: the store takes the file (or its part).
    file_source src;
    src.path = req.body_file;
    src.length = req.body_size;
    if (is_multipart) {
      src.boundary = boundary;
    } else {
      if (src.length > ctx->max_file_bytes)
        return too_large();
      src.sha256 = req.body_sha256;
    }
    return ask(*ctx->sys, ctx->files, ccn_ask_timeout, respond, stored, atom::put_v, std::move(src));
  }
  std::string data;
  if (is_multipart) {
    auto& body = req.body;
    auto read = [&body](uint64_t off, uint64_t n) {
      return off >= body.size() ? std::string{} : body.substr(off, n);
    };
    auto part = multipart::find_file(read, body.size(), boundary);
    if (!part)
      return respond(http::json_error(400, "malformed multipart body: expected a part named \"file\""));
    data = body.substr(part->offset, part->length);
  } else {
    data = std::move(req.body);
  }
  if (data.empty())
    return respond(http::json_error(400, "empty file"));
  if (data.size() > ctx->max_file_bytes)
    return too_large();
  ask(*ctx->sys, ctx->files, ccn_ask_timeout, respond, stored, atom::put_v, std::move(data));
}

json node_json(const node_view& v) {
  json j{{"id", v.id},           {"role", v.role},   {"name", v.name},
         {"address", v.address}, {"status", v.status}, {"software_version", v.software_version}};
  if (v.role == "crn") {
    j["ccn"] = v.ccn_id;
    j["capacity"] = {{"vcpus", v.vcpus}, {"memory_mib", v.memory_mib}, {"disk_mib", v.disk_mib}};
    j["registered"] = v.registered > 0 ? json(gateway::iso_time(v.registered)) : json(nullptr);
    j["last_heartbeat"] =
      v.last_heartbeat > 0 ? json(gateway::iso_time(v.last_heartbeat)) : json(nullptr);
  } else {
    j["since"] = v.registered > 0 ? json(gateway::iso_time(v.registered)) : json(nullptr);
  }
  return j;
}

void nodes(const std::shared_ptr<const ccn_context>& ctx, const http::responder& respond) {
  ask(*ctx->sys, ctx->registry, ccn_ask_timeout, respond,
      [ctx, respond](const std::vector<node_view>& crns) {
        ask(*ctx->sys, ctx->peer, ccn_ask_timeout, respond,
            [ctx, respond, crns](const std::vector<node_view>& peers) {
              json ccns = json::array();
              ccns.push_back(json{{"id", ctx->id},
                                  {"role", "ccn"},
                                  {"name", ctx->name},
                                  {"address", ctx->http_endpoint},
                                  {"node_endpoint", ctx->node_endpoint},
                                  {"status", "active"},
                                  {"self", true},
                                  {"software_version", ALEPHD_VERSION}});
              for (auto& p : peers)
                ccns.push_back(node_json(p));
              json out_crns = json::array();
              for (auto& c : crns)
                out_crns.push_back(node_json(c));
              respond(gateway::json(200, json{{"ccns", std::move(ccns)}, {"crns", std::move(out_crns)}}));
            },
            atom::list_v);
      },
      atom::list_v);
}

void metrics(const std::shared_ptr<const ccn_context>& ctx, const http::responder& respond) {
  ask(*ctx->sys, ctx->registry, ccn_ask_timeout, respond,
      [ctx, respond](const std::vector<node_view>& crns) {
        std::map<std::string, int> by_state{{"linked", 0}, {"waiting", 0}, {"down", 0}, {"unlinked", 0}};
        for (auto& c : crns)
          ++by_state[c.status];
        std::string out;
        out += "# HELP alephd_uptime_seconds Seconds since this node started.\n";
        out += "# TYPE alephd_uptime_seconds gauge\n";
        out += "alephd_uptime_seconds{role=\"ccn\"} " + std::to_string(unix_seconds() - ctx->started) + "\n";
        out += "# HELP alephd_crns CRNs known to this CCN by state.\n";
        out += "# TYPE alephd_crns gauge\n";
        for (auto& [state, n] : by_state)
          out += "alephd_crns{state=\"" + state + "\"} " + std::to_string(n) + "\n";
        http::response r;
        r.content_type = "text/plain; version=0.0.4";
        r.body = std::move(out);
        respond(std::move(r));
      },
      atom::list_v);
}

} // namespace

http::handler ccn_routes(std::shared_ptr<const ccn_context> ctx) {
  return [ctx](http::request&& req, http::responder respond) {
    const auto& path = req.path;
    const bool get = req.method == "GET";
    const bool post = req.method == "POST";
    auto wrong_method = [&] { respond(http::json_error(405, "method " + req.method + " not allowed on " + path)); };
    if (path == "/api/v0/messages" || path == "/api/v0/messages.json") {
      if (post)
        return post_message(ctx, req, respond);
      if (get)
        return list_messages(ctx, req, respond);
      return wrong_method();
    }
    if (starts_with(path, "/api/v0/messages/")) {
      if (!get)
        return wrong_method();
      auto hash = path.substr(17);
      if (!aleph::is_item_hash(hash))
        return respond(http::json_error(400, "not an item hash: " + hash.substr(0, 80)));
      return ask(*ctx->sys, ctx->messages, ccn_ask_timeout, respond,
                 [respond](const stored_message& m) {
                   respond(gateway::json(200, json{{"status", "processed"},
                                                   {"item_hash", m.item_hash},
                                                   {"message", message_json(m)}}));
                 },
                 atom::get_v, hash);
    }
    if (path == "/api/v0/storage/add_file") {
      if (!post)
        return wrong_method();
      return add_file(ctx, req, respond);
    }
    if (starts_with(path, "/api/v0/storage/raw/")) {
      if (!get)
        return wrong_method();
      auto hash = path.substr(20);
      if (!is_sha256_hex(hash))
        return respond(http::json_error(400, "not a sha256 hash: " + hash.substr(0, 80)));
      return ask(*ctx->sys, ctx->files, ccn_ask_timeout, respond,
                 [respond](const file_info& f) { respond(gateway::file_response(f)); },
                 atom::fetch_v, hash, std::string{}, caf::actor{}); // a lost copy comes back from a replica
    }
    if (path == "/api/v0/nodes") {
      if (!get)
        return wrong_method();
      return nodes(ctx, respond);
    }
    if (path == "/api/v0/allocations") {
      if (!get)
        return wrong_method();
      return ask(*ctx->sys, ctx->scheduler, ccn_ask_timeout, respond,
                 [respond](const std::vector<placement>& ps) {
                   json out = json::array();
                   for (auto& p : ps)
                     out.push_back(json{{"item_hash", p.item_hash}, {"kind", p.kind},
                                        {"crn", p.crn_id.empty() ? json(nullptr) : json(p.crn_id)},
                                        {"epoch", p.epoch}, {"state", p.state}, {"detail", p.detail}});
                   respond(gateway::json(200, json{{"allocations", std::move(out)}}));
                 },
                 atom::list_v);
    }
    if (path == "/api/v0/scores") {
      if (!get)
        return wrong_method();
      if (!ctx->prober)
        return respond(http::json_error(404, "this CCN does not score CRNs"));
      return ask(*ctx->sys, ctx->prober, ccn_ask_timeout, respond,
                 [respond](const std::vector<node_score>& scores) {
                   json out = json::array();
                   for (auto& s : scores)
                     out.push_back(json{{"node_id", s.id}, {"name", s.name}, {"asn", s.asn},
                                        {"samples", s.samples}, {"base_latency_p25", s.base_p25},
                                        {"base_latency_p95", s.base_p95},
                                        {"diagnostic_vm_latency_p25", s.diag_p25},
                                        {"full_check_latency_p25", s.full_p25},
                                        {"performance", s.performance}, {"version", s.version},
                                        {"total_score", s.total},
                                        {"decentralization", s.decentralization},
                                        {"multiplier", s.multiplier}});
                   respond(gateway::json(200, json{{"scores", std::move(out)}}));
                 },
                 atom::list_v);
    }
    if (path == "/api/v0/rewards") {
      if (!get)
        return wrong_method();
      uint64_t epoch = 0;
      if (!gateway::query_number(req, "epoch", epoch, UINT64_MAX / 2))
        return respond(http::json_error(400, "epoch must be an epoch number"));
      if (!ctx->epochs)
        return respond(http::json_error(404, "this CCN computes no reward epochs"));
      return ask(*ctx->sys, ctx->epochs, ccn_ask_timeout, respond,
                 [respond](const std::string& text) {
                   http::response r;
                   r.status = 200;
                   r.content_type = "application/json";
                   r.body = text;
                   respond(std::move(r));
                 },
                 atom::rewards_v, epoch);
    }
    if (path == "/api/v0/usage") {
      if (!get)
        return wrong_method();
      if (!ctx->usage)
        return respond(http::json_error(404, "this CCN keeps no usage book"));
      return ask(*ctx->sys, ctx->usage, ccn_ask_timeout, respond,
                 [respond](const std::map<std::string, uint64_t>& heads) {
                   respond(gateway::json(200, json{{"nodes", heads}}));
                 },
                 atom::status_v);
    }
    if (starts_with(path, "/api/v0/usage/")) {
      if (!get)
        return wrong_method();
      auto node = path.substr(14);
      if (node.empty() || node.size() > 128 || node.find('/') != std::string::npos)
        return respond(http::json_error(400, "malformed node id"));
      auto page = gateway::page_of(req, respond);
      if (!page)
        return;
      if (!ctx->usage)
        return respond(http::json_error(404, "this CCN keeps no usage book"));
      return ask(*ctx->sys, ctx->usage, ccn_ask_timeout, respond,
                 [respond](const std::vector<usage_entry>& entries) {
                   respond(gateway::usage_page(entries));
                 },
                 atom::list_v, node, page->after, page->limit);
    }
    if (path == "/metrics") {
      if (!get)
        return wrong_method();
      return metrics(ctx, respond);
    }
    if (path == "/" || path == "/api/v0/info") {
      return respond(gateway::json(200, json{{"role", "ccn"}, {"id", ctx->id}, {"name", ctx->name},
                                             {"version", ALEPHD_VERSION},
                                             {"node_endpoint", ctx->node_endpoint}}));
    }
    respond(http::json_error(404, "no route for " + req.method + " " + path.substr(0, 200)));
  };
}

} // namespace alephd
