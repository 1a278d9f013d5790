#include <functional>
#include <set>

#include <caf/all.hpp>
#include <nlohmann/json.hpp>

#include "runtime/blob_store.hpp"
#include "runtime/execution_table.hpp"
#include "runtime/gateway.hpp"
#include "runtime/wall_clock.hpp"
#include "runtime/routes.hpp"
#include "runtime/sysinfo.hpp"

namespace alephd {

namespace {

using nlohmann::json;
using namespace std::chrono_literals;
using gateway::ask;
constexpr auto crn_ask_timeout = std::chrono::milliseconds{10s};

json time_or_null(double t) {
  return t > 0 ? json(gateway::iso_time(t)) : json(nullptr);
}

std::string vm_type(const execution_info& e) {
  return e.kind == "instance" ? "instance" : (e.persistent ? "persistent_program" : "microvm");
}

json networking_v1() {
  return json{{"ipv4", nullptr}, {"ipv6", nullptr}};
}

json networking_v2() {
  return json{{"ipv4_network", nullptr}, {"host_ipv4", nullptr}, {"ipv6_network", nullptr},
              {"ipv6_ip", nullptr},      {"ipv4_ip", nullptr},   {"mapped_ports", json::object()}};
}

void usage_system_with(const std::shared_ptr<const crn_context>& ctx, const cache_usage* c,
                       const http::responder& respond) {
  auto u = read_system_usage(ctx->data_dir);
  auto now = unix_seconds();
  json body{
    {"cpu",
     {{"count", u.cpu_count},
      {"load_average", {{"load1", u.load1}, {"load5", u.load5}, {"load15", u.load15}}},
      {"core_frequencies", {{"min", u.cpu_mhz_min}, {"max", u.cpu_mhz_max}}}}},
    {"mem", {{"total_kB", u.mem_total_kb}, {"available_kB", u.mem_available_kb}}},
    {"disk", {{"total_kB", u.disk_total_kb}, {"available_kB", u.disk_available_kb}}},
    {"period", {{"start_timestamp", gateway::iso_time(now - std::fmod(now, 60.0))}, {"duration_seconds", 60}}},
    {"properties", {{"cpu", {{"architecture", u.architecture}, {"vendor", u.vendor}, {"features", json::array()}}}}},
    {"gpu", {{"devices", json::array()}, {"available_devices", json::array()}}},
    {"active", true},
  };
  if (c != nullptr)
    body["cache"] = {{"bytes", c->bytes},
                     {"max_bytes", c->max_bytes},
                     {"free_bytes", c->max_bytes > c->bytes ? c->max_bytes - c->bytes : 0},
                     {"files", c->files},
                     {"pinned_bytes", c->pinned_bytes},
                     {"downloads", c->downloads},
                     {"evicted", c->evicted},
                     {"corrupt", c->corrupt}};
  respond(gateway::json(200, body));
}

void usage_system(const std::shared_ptr<const crn_context>& ctx, const http::responder& respond) {
  if (ctx->files)
    return ask(*ctx->sys, ctx->files, crn_ask_timeout, respond,
               [ctx, respond](const cache_usage& c) { usage_system_with(ctx, &c, respond); },
               atom::usage_v);
  usage_system_with(ctx, nullptr, respond);
}

// GET /about/executions/records[?after=SEQ&limit=N]: the reward ledger's metering entries,
// oldest first, with the chain fields so that anyone can check them.
void execution_records_route(const std::shared_ptr<const crn_context>& ctx, const http::request& req,
                             const http::responder& respond) {
  auto page = gateway::page_of(req, respond);
  if (!page)
    return;
  if (!ctx->ledger)
    return respond(http::json_error(404, "this CRN keeps no reward ledger"));
  ask(*ctx->sys, ctx->ledger, crn_ask_timeout, respond,
      [respond](const std::vector<usage_entry>& entries) { respond(gateway::usage_page(entries)); },
      atom::list_v, page->after, page->limit);
}

void executions(const std::shared_ptr<const crn_context>& ctx, bool v2, const http::responder& respond) {
  ask(*ctx->sys, ctx->broker, crn_ask_timeout, respond,
      [respond, v2](const std::vector<execution_info>& xs) {
        json out = json::object();
        for (auto& e : xs) {
          bool running = e.phase == "running";
          if (!v2) {
            // v1 lists running executions only, as aleph-vm does.
            if (running)
              out[e.item_hash] = json{{"networking", networking_v1()}, {"vm_type", vm_type(e)},
                                      {"awaiting_confidential_init", false}};
            continue;
          }
          out[e.item_hash] = json{
            {"networking", networking_v2()},
            {"status",
             {{"defined_at", time_or_null(e.defined_at)}, {"preparing_at", time_or_null(e.preparing_at)},
              {"prepared_at", nullptr}, {"starting_at", nullptr}, {"started_at", time_or_null(e.started_at)},
              {"stopping_at", time_or_null(e.stopping_at)}, {"stopped_at", time_or_null(e.stopped_at)}}},
            {"running", running},
            {"phase", e.phase},
            {"epoch", e.epoch},
            {"detail", e.detail},
            {"resources", {{"vcpus", e.vcpus}, {"memory", e.memory_mib}, {"disk_mib", e.disk_mib}}},
            {"awaiting_confidential_init", false},
            {"vm_type", vm_type(e)},
          };
        }
        respond(gateway::json(200, out));
      },
      atom::list_v);
}

void status_config(const std::shared_ptr<const crn_context>& ctx, const http::responder& respond) {
  ask(*ctx->sys, ctx->link, crn_ask_timeout, respond,
      [ctx, respond](const link_info& li) {
        respond(gateway::json(200, json{{"DOMAIN_NAME", ctx->http_endpoint},
                                        {"version", ALEPHD_VERSION},
                                        {"node_hash", ctx->id},
                                        {"name", ctx->name},
                                        {"CCN_ENDPOINTS", ctx->ccn_endpoints},
                                        {"ccn", {{"id", li.ccn_id.empty() ? json(nullptr) : json(li.ccn_id)},
                                                 {"endpoint", li.ccn_endpoint},
                                                 {"connected", li.connected},
                                                 {"state", to_string(li.state)}}},
                                        {"ENABLE_QEMU_SUPPORT", false},
                                        {"ENABLE_CONFIDENTIAL_COMPUTING", false},
                                        {"ENABLE_GPU_SUPPORT", false}}));
      },
      atom::get_v);
}

void metrics(const std::shared_ptr<const crn_context>& ctx, const http::responder& respond) {
  ask(*ctx->sys, ctx->link, crn_ask_timeout, respond,
      [ctx, respond](const link_info& li) {
        std::string out;
        auto gauge = [&](const char* name, const char* help, const std::string& value, const char* type = "gauge") {
          out += std::string{"# HELP "} + name + " " + help + "\n# TYPE " + name + " " + type + "\n";
          out += std::string{name} + " " + value + "\n";
        };
        gauge("alephd_uptime_seconds", "Seconds since this node started.",
              std::to_string(unix_seconds() - ctx->started));
        out += "# HELP alephd_ccn_link_state The CRN's state at its CCN (1 for the current state).\n";
        out += "# TYPE alephd_ccn_link_state gauge\n";
        for (auto s : {link_state::unlinked, link_state::linked, link_state::waiting, link_state::down})
          out += "alephd_ccn_link_state{state=\"" + to_string(s) + "\"} " + (li.state == s ? "1" : "0") + "\n";
        gauge("alephd_ccn_connected", "1 when connected to a CCN.", li.connected ? "1" : "0");
        gauge("alephd_heartbeats_sent_total", "Heartbeats sent to the CCN.", std::to_string(li.heartbeats_sent), "counter");
        gauge("alephd_heartbeats_missed_total", "Heartbeats the CCN did not answer.", std::to_string(li.heartbeats_missed), "counter");
        gauge("alephd_ccn_reconnects_total", "Times the link to a CCN was lost.", std::to_string(li.reconnects), "counter");
        http::response r;
        r.content_type = "text/plain; version=0.0.4";
        r.body = std::move(out);
        respond(std::move(r));
      },
      atom::get_v);
}

std::string cookie_token(const http::request& req) {
  auto i = req.headers.find("cookie");
  if (i == req.headers.end())
    return {};
  const auto& c = i->second;
  for (size_t pos = 0; pos < c.size();) {
    auto end = c.find(';', pos);
    auto part = c.substr(pos, end == std::string::npos ? std::string::npos : end - pos);
    auto start = part.find_first_not_of(' ');
    if (start != std::string::npos && part.compare(start, 6, "token=") == 0)
      return part.substr(start + 6);
    if (end == std::string::npos)
      break;
    pos = end + 1;
  }
  return {};
}

// Compares secrets in time independent of where they differ.
bool same_secret(const std::string& a, const std::string& b) {
  if (a.size() != b.size() || a.empty())
    return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i)
    diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

bool is_item_hash(const std::string& s) {
  if (s.size() != 64)
    return false;
  for (char c : s)
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
      return false;
  return true;
}

// The node's own operator: the login token as X-Auth-Token, a Bearer token, or the cookie
// set by /about/login.
bool is_admin(const crn_context& ctx, const http::request& req) {
  auto header = [&](const char* name) {
    auto i = req.headers.find(name);
    return i == req.headers.end() ? std::string{} : i->second;
  };
  auto bearer = header("authorization");
  if (bearer.rfind("Bearer ", 0) == 0)
    bearer = bearer.substr(7);
  else
    bearer.clear();
  return same_secret(header("x-auth-token"), ctx.login_token)
         || same_secret(bearer, ctx.login_token) || same_secret(cookie_token(req), ctx.login_token);
}

bool hop_by_hop(const std::string& lower_name) {
  static const std::set<std::string> names{"connection", "keep-alive", "transfer-encoding", "te",
                                           "upgrade", "proxy-connection", "content-length",
                                           "trailer", "host"};
  return names.count(lower_name) > 0;
}

std::string lower(std::string s) {
  for (auto& c : s)
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// A Cookie header without the `token` cookie that /about/login sets.
std::string without_token_cookie(const std::string& header) {
  std::string out;
  size_t pos = 0;
  while (pos <= header.size()) {
    auto end = header.find(';', pos);
    auto part = header.substr(pos, end == std::string::npos ? std::string::npos : end - pos);
    auto start = part.find_first_not_of(' ');
    if (start != std::string::npos && part.compare(start, 6, "token=") != 0)
      out += (out.empty() ? "" : "; ") + part.substr(start);
    if (end == std::string::npos)
      break;
    pos = end + 1;
  }
  return out;
}

// Passes one call to a running execution, straight from the HTTP thread.
void forward(const std::shared_ptr<live_execution>& live, http::request&& req,
             const std::string& suffix, const std::string& admin_token,
             const http::responder& respond) {
  guest::http_request g;
  g.method = req.method;
  auto q = suffix.find('?');
  g.path = q == std::string::npos ? suffix : suffix.substr(0, q);
  g.query_string = q == std::string::npos ? "" : suffix.substr(q + 1);
  if (g.path.empty())
    g.path = "/";
  for (auto& [name, value] : req.headers) {
    if (hop_by_hop(name) || name == "x-auth-token")
      continue; // the node's admin token never reaches a user's program
    if (name == "authorization" && value.rfind("Bearer ", 0) == 0
        && same_secret(value.substr(7), admin_token))
      continue;
    if (name == "cookie") {
      auto kept = without_token_cookie(value);
      if (!kept.empty())
        g.headers.emplace_back(name, kept);
      continue;
    }
    g.headers.emplace_back(name, value);
  }
  g.body = std::move(req.body);
  live->in_flight.fetch_add(1);
  live->requests.fetch_add(1);
  live->bytes_in.fetch_add(g.body.size());
  auto hash = live->item_hash;
  live->exec->request_async(std::move(g), live->timeout,
                            [live, hash, respond](guest::http_response r) {
                              live->last_used_ms = live_execution::now_ms();
                              live->in_flight.fetch_sub(1);
                              live->bytes_out.fetch_add(r.body.size());
                              http::response out;
                              if (!r.error.empty()) {
                                out = http::json_error(r.status >= 400 ? r.status : 502, r.error);
                              } else {
                                out.status = r.status;
                                out.content_type.clear();
                                for (auto& [name, value] : r.headers) {
                                  auto n = lower(name);
                                  if (n == "content-type")
                                    out.content_type = value;
                                  else if (!hop_by_hop(n) && n != "server" && n != "date")
                                    out.headers.emplace_back(name, value);
                                }
                                out.body = std::move(r.body);
                              }
                              out.headers.emplace_back("Aleph-Program-ItemHash", hash);
                              respond(std::move(out));
                            });
}

// ANY /vm/{ref}/{path}: the call goes to a running execution of the program, started first
// when there is none (concurrent first calls share one start).
void vm_call(const std::shared_ptr<const crn_context>& ctx, http::request&& req,
             const http::responder& respond) {
  // The raw target keeps the program's own percent-encoding; an absolute-form target
  // ("http://host/vm/...", as proxies send) is reduced to its path and query first.
  std::string target = req.target;
  if (!target.empty() && target[0] != '/') {
    auto scheme = target.find("://");
    auto path = scheme == std::string::npos ? std::string::npos : target.find_first_of("/?", scheme + 3);
    target = path == std::string::npos ? "/" : target.substr(path);
  }
  if (target.rfind("/vm/", 0) != 0)
    return respond(http::json_error(400, "malformed program call: expected /vm/{item_hash}/{path}"));
  auto rest = target.substr(4); // after "/vm/"
  auto slash = rest.find_first_of("/?");
  auto ref = rest.substr(0, slash);
  auto suffix = slash == std::string::npos ? std::string{"/"} : rest.substr(slash);
  if (suffix[0] == '?')
    suffix = "/" + suffix;
  if (!is_item_hash(ref))
    return respond(http::json_error(400, "malformed program reference '" + ref.substr(0, 80)
                                           + "': expected a 64-digit lowercase hex item_hash"));
  if (ctx->table->draining.load())
    return respond(http::json_error(503, "Server is draining"));
  if (auto live = ctx->table->find(ref); live && live->exec->running())
    return forward(live, std::move(req), suffix, ctx->login_token, respond);
  auto shared_req = std::make_shared<http::request>(std::move(req));
  // Counted until its answer is out, so that a drain lets a call waiting for a cold start finish.
  ctx->table->starting.fetch_add(1);
  std::shared_ptr<void> waiting{nullptr, [table = ctx->table](void*) { table->starting.fetch_sub(1); }};
  http::responder respond_counted = [respond, waiting](http::response r) { respond(std::move(r)); };
  gateway::ask(
    *ctx->sys, ctx->broker, std::chrono::milliseconds{120000}, respond_counted,
    [ctx, ref, suffix, shared_req, respond = respond_counted](const execution_info&) {
      auto live = ctx->table->find(ref);
      if (!live)
        return respond(http::json_error(502, "the program stopped before the call reached it"));
      forward(live, std::move(*shared_req), suffix, ctx->login_token, respond);
    },
    atom::run_v, ref);
}

json log_json(double time, const std::string& stream, const std::string& line) {
  return json{{"time", gateway::iso_time(time)}, {"type", stream}, {"message", line}};
}

// One line as sent on stream_logs (invalid UTF-8 from a program is replaced).
std::string log_text(double time, const std::string& stream, const std::string& line) {
  return log_json(time, stream, line).dump(-1, ' ', false, json::error_handler_t::replace);
}

void operator_action(const std::shared_ptr<const crn_context>& ctx, const std::string& ref,
                     const std::string& action, const http::responder& respond) {
  auto done = [respond](const execution_info& e) {
    respond(gateway::json(200, json{{"item_hash", e.item_hash}, {"phase", e.phase},
                                    {"detail", e.detail}}));
  };
  if (action == "stop")
    return ask(*ctx->sys, ctx->broker, std::chrono::milliseconds{70000}, respond, done, atom::stop_v, ref);
  if (action == "erase")
    return ask(*ctx->sys, ctx->broker, std::chrono::milliseconds{70000}, respond, done, atom::erase_v, ref);
  if (action == "reboot")
    return ask(*ctx->sys, ctx->broker, std::chrono::milliseconds{70000}, respond, done, atom::reboot_v, ref);
  ask(*ctx->sys, ctx->broker, crn_ask_timeout, respond,
      [respond](const std::vector<log_line>& lines) {
        json out = json::array();
        for (auto& l : lines)
          out.push_back(log_json(l.time, l.stream, l.line));
        respond(gateway::json(200, out));
      },
      atom::logs_v, ref);
}

// Sends `ref`'s log lines on `ws`: the kept ones, then each new one while the execution runs;
// closes when it ends (at once for a finished one).
void pump_logs(const std::shared_ptr<const crn_context>& ctx, const std::string& ref,
               const std::shared_ptr<http::websocket>& ws) {
  if (auto feed = ctx->table->find_feed(ref)) {
    auto id = std::make_shared<std::atomic<uint64_t>>(0);
    std::weak_ptr<log_feed> weak = feed;
    ws->on_close([weak, id] {
      if (auto f = weak.lock())
        f->unfollow(id->load());
    });
    id->store(feed->follow(
      [ws](const timed_log& l) { ws->send_text(log_text(l.time, l.stream, l.line)); },
      [ws] { ws->close(); }));
    return;
  }
  ask(*ctx->sys, ctx->broker, crn_ask_timeout,
      [ws](http::response r) { // an error: say it on the socket
        auto j = json::parse(r.body, nullptr, false);
        ws->send_text(json{{"type", "system"}, {"message", j.is_object() ? j.value("error", r.body) : r.body}}.dump());
        ws->close();
      },
      [ws](const std::vector<log_line>& lines) {
        for (auto& l : lines)
          ws->send_text(log_text(l.time, l.stream, l.line));
        ws->close();
      },
      atom::logs_v, ref);
}

// GET /control/machine/{ref}/stream_logs (websocket): the kept lines, then each new one as
// {"time", "type", "message"}; closed by the server when the execution ends.
void stream_logs(const std::shared_ptr<const crn_context>& ctx, const std::string& ref,
                 const http::request& req, const http::responder& respond) {
  if (!http::is_websocket_upgrade(req)) {
    auto r = http::json_error(426, "stream_logs is a websocket: send an upgrade request");
    r.headers.emplace_back("Upgrade", "websocket");
    return respond(std::move(r));
  }
  if (ctx->table->find_feed(ref)) {
    http::response r;
    r.websocket_open = [ctx, ref](std::shared_ptr<http::websocket> ws) { pump_logs(ctx, ref, ws); };
    return respond(std::move(r));
  }
  // A finished or unknown execution: its kept lines, or the error (404) before any upgrade.
  ask(*ctx->sys, ctx->broker, crn_ask_timeout, respond,
      [respond](const std::vector<log_line>& lines) {
        http::response r;
        r.websocket_open = [lines](std::shared_ptr<http::websocket> ws) {
          for (auto& l : lines)
            ws->send_text(log_text(l.time, l.stream, l.line));
          ws->close();
        };
        respond(std::move(r));
      },
      atom::logs_v, ref);
}

// Runs `act` when `who` owns the execution `ref` here and the proof was not used before, else
// hands `fail` the answer: 403 to anyone else (whether `ref` exists is only told to its owner),
// 401 for a replay. A proof is remembered only now, so a stranger's valid proofs fill nothing.
void when_owner(const std::shared_ptr<const crn_context>& ctx, const std::string& ref,
                const owner_auth::verified& who, http::responder fail, std::function<void()> act) {
  ask(*ctx->sys, ctx->broker, crn_ask_timeout, fail,
      [=](const std::vector<execution_info>& all) {
        bool owns = false;
        for (auto& e : all)
          owns = owns || (e.item_hash == ref && !e.owner.empty() && owner_auth::same_owner(e.owner, who));
        if (!owns)
          return fail(http::json_error(403, who.address + " does not own an execution " + ref + " on this CRN"));
        if (!ctx->replays->first_use(who.operation, who.valid_until, unix_seconds()))
          return fail(http::json_error(401, "X-SignedOperation: this operation was already used (a replay)"));
        act();
      },
      atom::list_v);
}

// stream_logs for a browser, which cannot set headers on a websocket (aleph's console): the
// first message is {"auth": {"X-SignedPubKey": …, "X-SignedOperation": …}} (objects or their
// JSON text); the answer is {"status": "connected"} and the logs, or {"status": "failed",
// "reason"} and the socket closes.
void stream_logs_with_auth_message(const std::shared_ptr<const crn_context>& ctx,
                                   const std::string& ref, const std::string& path,
                                   const http::responder& respond) {
  http::response r;
  r.websocket_open = [ctx, ref, path](std::shared_ptr<http::websocket> ws) {
    auto done = std::make_shared<std::atomic<bool>>(false);
    std::weak_ptr<http::websocket> weak = ws;
    ws->on_message([ctx, ref, path, weak, done](std::string text) {
      auto ws = weak.lock();
      if (!ws || done->exchange(true))
        return; // only the first message counts
      auto fail = [ws](const std::string& why) {
        ws->send_text(json{{"status", "failed"}, {"reason", why}}.dump());
        ws->close();
      };
      auto fail_with = [fail](http::response r) {
        auto j = json::parse(r.body, nullptr, false);
        fail(j.is_object() ? j.value("error", r.body) : r.body);
      };
      auto doc = json::parse(text, nullptr, false);
      if (!doc.is_object() || !doc.contains("auth") || !doc["auth"].is_object())
        return fail("the first message must be {\"auth\": {\"X-SignedPubKey\": …, \"X-SignedOperation\": …}}");
      auto field = [&](const char* name) {
        const auto& auth = doc["auth"];
        if (!auth.contains(name))
          return std::string{};
        return auth[name].is_string() ? auth[name].get<std::string>() : auth[name].dump();
      };
      auto now = unix_seconds();
      auto checked = owner_auth::verify(field("X-SignedPubKey"), field("X-SignedOperation"), "GET",
                                        path, ctx->domain, now);
      if (!checked.ok)
        return fail(checked.error);
      when_owner(ctx, ref, *checked.ok, fail_with, [ctx, ref, ws] {
        ws->send_text(json{{"status", "connected"}}.dump());
        pump_logs(ctx, ref, ws);
      });
    });
  };
  respond(std::move(r));
}

// The workload's owner, proven by X-SignedPubKey and X-SignedOperation (aleph-vm's scheme):
// runs `act` when the signer is the `content.address` of `ref`'s message. 401 for a missing,
// bad, expired or replayed proof; 403 for a valid proof by someone else.
void as_owner(const std::shared_ptr<const crn_context>& ctx, const http::request& req,
              const std::string& ref, const http::responder& respond, std::function<void()> act) {
  auto header = [&](const char* name) {
    auto i = req.headers.find(name);
    return i == req.headers.end() ? std::string{} : i->second;
  };
  auto pubkey = header("x-signedpubkey");
  auto operation = header("x-signedoperation");
  if (pubkey.empty() || operation.empty())
    return respond(http::json_error(
      401, "Authentication required: the owner's X-SignedPubKey and X-SignedOperation headers, "
           "or the node's login token as X-Auth-Token"));
  auto now = unix_seconds();
  auto checked = owner_auth::verify(pubkey, operation, req.method, req.path, ctx->domain, now);
  if (!checked.ok)
    return respond(http::json_error(401, checked.error));
  when_owner(ctx, ref, *checked.ok, respond, std::move(act));
}

} // namespace

http::handler crn_routes(std::shared_ptr<const crn_context> ctx) {
  return [ctx](http::request&& req, http::responder respond) {
    const auto& path = req.path;
    if (path.rfind("/vm/", 0) == 0)
      return vm_call(ctx, std::move(req), respond);
    if (path.rfind("/control/machine/", 0) == 0) {
      // /control/machine/{ref}/{stop|reboot|erase|logs|stream_logs}
      auto rest = path.substr(17);
      auto slash = rest.find('/');
      auto ref = rest.substr(0, slash);
      auto action = slash == std::string::npos ? "" : rest.substr(slash + 1);
      static const std::set<std::string> actions{"stop", "reboot", "erase", "logs", "stream_logs"};
      if (!actions.count(action))
        return respond(http::json_error(404, "no route for " + req.method + " " + path.substr(0, 200)));
      bool get = action == "logs" || action == "stream_logs";
      if ((get && req.method != "GET") || (!get && req.method != "POST"))
        return respond(http::json_error(405, "method " + req.method + " not allowed on " + path.substr(0, 200)));
      // Who asks comes first: a stranger learns nothing, not even whether the ref is valid.
      bool admin = is_admin(*ctx, req);
      bool owner_headers = req.headers.count("x-signedpubkey") > 0 && req.headers.count("x-signedoperation") > 0;
      if (!admin && !owner_headers && action == "stream_logs" && http::is_websocket_upgrade(req)
          && is_item_hash(ref))
        return stream_logs_with_auth_message(ctx, ref, req.path, respond);
      if (!admin && !owner_headers)
        return respond(http::json_error(
          401, "Authentication required: the owner's X-SignedPubKey and X-SignedOperation "
               "headers, or the node's login token as X-Auth-Token"));
      if (!is_item_hash(ref))
        return respond(http::json_error(400, "malformed item_hash '" + ref.substr(0, 80) + "'"));
      if (admin) {
        if (action == "stream_logs")
          return stream_logs(ctx, ref, req, respond);
        return operator_action(ctx, ref, action, respond);
      }
      auto shared_req = std::make_shared<const http::request>(std::move(req));
      return as_owner(ctx, *shared_req, ref, respond, [ctx, ref, action, shared_req, respond] {
        if (action == "stream_logs")
          return stream_logs(ctx, ref, *shared_req, respond);
        operator_action(ctx, ref, action, respond);
      });
    }
    if (path.rfind("/api/v0/storage/raw/", 0) == 0) {
      // Files this CRN holds (replicas, cached volumes), for its CCN and peers.
      if (req.method != "GET" && req.method != "HEAD")
        return respond(http::json_error(405, "method " + req.method + " not allowed on " + path.substr(0, 200)));
      auto hash = path.substr(20);
      if (!is_sha256_hex(hash))
        return respond(http::json_error(400, "not a sha256 hash: " + hash.substr(0, 80)));
      if (!ctx->files)
        return respond(http::json_error(404, "file " + hash + " not found"));
      return ask(*ctx->sys, ctx->files, crn_ask_timeout, respond,
                 [respond](const file_info& f) { respond(gateway::file_response(f)); },
                 atom::get_v, hash);
    }
    static const std::set<std::string> known{"/",
                                             "/about/login",
                                             "/about/usage/system",
                                             "/about/executions/list",
                                             "/v2/about/executions/list",
                                             "/about/executions/records",
                                             "/status/check/fastapi",
                                             "/status/config",
                                             "/metrics"};
    if (known.count(path) == 0)
      return respond(http::json_error(404, "no route for " + req.method + " " + path.substr(0, 200)));
    if (req.method != "GET")
      return respond(http::json_error(405, "method " + req.method + " not allowed on " + path));
    if (path == "/about/login") {
      auto t = req.query.count("token") ? req.query.at("token") : cookie_token(req);
      if (!same_secret(t, ctx->login_token))
        return respond(http::json_error(401, "Invalid token"));
      auto r = gateway::json(200, json{{"status", "logged in"}});
      r.headers.emplace_back("Set-Cookie", "token=" + ctx->login_token + "; HttpOnly; SameSite=Strict; Path=/");
      return respond(std::move(r));
    }
    if (path == "/about/usage/system")
      return usage_system(ctx, respond);
    if (path == "/about/executions/list")
      return executions(ctx, false, respond);
    if (path == "/v2/about/executions/list")
      return executions(ctx, true, respond);
    if (path == "/about/executions/records")
      return execution_records_route(ctx, req, respond);
    if (path == "/status/check/fastapi") {
      // The full check the CCN's prober times: the node takes calls and its cache answers.
      if (ctx->table && ctx->table->draining)
        return respond(http::json_error(503, "Server is draining"));
      if (!ctx->files)
        return respond(gateway::json(200, json{{"status", "ok"}}));
      return ask(*ctx->sys, ctx->files, crn_ask_timeout, respond,
                 [respond](const cache_usage& c) {
                   respond(gateway::json(200, json{{"status", "ok"}, {"cache_files", c.files}}));
                 },
                 atom::usage_v);
    }
    if (path == "/status/config")
      return status_config(ctx, respond);
    if (path == "/metrics")
      return metrics(ctx, respond);
    respond(gateway::json(200, json{{"role", "crn"}, {"id", ctx->id}, {"name", ctx->name},
                                    {"version", ALEPHD_VERSION}}));
  };
}

} // namespace alephd
