#include "sim/journal.hpp"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <iomanip>
#include <iostream>

#include "runtime/crypto.hpp"

namespace alephd::sim {

using json = nlohmann::json;

json config_json(const config& c) {
  return json{{"ccns", c.ccns}, {"crns_per_ccn", c.crns_per_ccn}, {"extra_crns", c.extra_crns},
              {"max_linked_crns", c.max_linked}, {"failure_timeout_s", c.failure_timeout.count() / 1000.0},
              {"reschedule_deadline_s", c.reschedule_deadline.count() / 1000.0},
              {"run_s", c.duration.count() / 1000.0}, {"fault_kinds", c.kinds},
              {"scenario", c.scenario.empty() ? json(nullptr) : json(c.scenario)},
              {"only_faults", c.only_faults ? json(*c.only_faults) : json(nullptr)}};
}

json to_json(const event& e) {
  return json{{"t", std::round(e.t * 1000) / 1000}, {"kind", e.kind}, {"what", e.what}, {"node", e.node}, {"detail", e.detail}};
}

json to_json(const std::vector<event>& events) {
  json out = json::array();
  for (auto& e : events)
    out.push_back(to_json(e));
  return out;
}

json to_json(const std::vector<violation>& violations) {
  json out = json::array();
  for (auto& v : violations)
    out.push_back(json{{"invariant", v.invariant}, {"t", v.t}, {"detail", v.detail},
                       {"nodes", std::vector<std::string>(v.nodes.begin(), v.nodes.end())}});
  return out;
}

void count_check(json& checks, const std::string& invariant, bool ok, const std::string& detail) {
  auto& c = checks[invariant];
  if (!c.is_object())
    c = json::object();
  c["checked"] = c.value("checked", 0) + 1;
  if (!ok)
    c["failed"] = c.value("failed", 0) + 1;
  if (!detail.empty())
    c["last"] = detail;
}

json latency_summary(const std::vector<json>& reschedules) {
  std::vector<double> latencies;
  for (auto& r : reschedules)
    latencies.push_back(r["latency_s"].get<double>());
  std::sort(latencies.begin(), latencies.end());
  auto pct = [&](double q) -> json {
    if (latencies.empty())
      return nullptr;
    return latencies[std::min(latencies.size() - 1, static_cast<std::size_t>(q * static_cast<double>(latencies.size())))];
  };
  return json{{"p50", pct(0.5)}, {"p99", pct(0.99)}, {"count", latencies.size()}};
}

namespace {

bool shows(const event& e, const violation& v, bool every_fault) {
  return e.kind == "violation"
         || ((e.kind == "fault" || e.kind == "heal") && (every_fault || v.nodes.empty() || v.nodes.count(e.node)));
}

// The events up to the violation's own (heals recorded at the same moment come after it).
std::vector<event> upto(const std::vector<event>& events, const violation& v) {
  std::vector<event> out;
  for (auto& e : events) {
    if (e.t > v.t + 1e-9)
      break;
    out.push_back(e);
    if (e.kind == "violation" && e.what == v.invariant && e.detail == v.detail)
      break;
  }
  return out;
}

} // namespace

void print_history(const std::vector<event>& events, const violation& v, uint64_t seed, const std::string& repeat,
                   const std::string& heading, bool every_fault) {
  std::cerr << "\nINVARIANT VIOLATED: " << v.invariant << ": " << v.detail << "\n  seed " << seed << " (" << repeat
            << ")\n  " << heading << ":\n";
  for (auto& e : upto(events, v)) {
    if (shows(e, v, every_fault))
      std::cerr << "    " << std::fixed << std::setprecision(2) << e.t << "s  " << e.kind << " " << e.what << " "
                << e.node << (e.detail.empty() ? "" : " (" + e.detail + ")") << '\n';
  }
}

json history_json(const std::vector<event>& events, const violation& v, bool every_fault) {
  json out = json::array();
  for (auto& e : upto(events, v)) {
    if (shows(e, v, every_fault))
      out.push_back(to_json(e));
  }
  return out;
}

json signed_message(const std::string& sender, const std::string& secret, const std::string& type, const json& content) {
  auto item_content = content.dump();
  auto item_hash = crypto::to_hex(crypto::sha256(item_content));
  return json{{"chain", "ETH"}, {"sender", sender}, {"type", type}, {"item_type", "inline"},
              {"time", content.value("time", 1700000000.0)}, {"item_content", item_content},
              {"item_hash", item_hash},
              {"signature", crypto::eth_personal_sign(secret, crypto::message_verification_text("ETH", sender, type, item_hash))}};
}

std::string make_work_dir(const std::string& wanted, const std::filesystem::path& base, std::filesystem::path& dir,
                          bool& made) {
  made = false;
  if (wanted.empty()) {
    std::string tmpl = (base / "alephd-sim-XXXXXX").string();
    if (!::mkdtemp(tmpl.data()))
      return std::string{"cannot make a work directory: "} + std::strerror(errno);
    dir = tmpl;
    made = true;
    return {};
  }
  dir = wanted;
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  return ec ? "--dir: " + ec.message() : std::string{};
}

interrupt_handler::interrupt_handler(void (*handler)(int)) {
  struct sigaction sa {};
  sa.sa_handler = handler;
  sigemptyset(&sa.sa_mask);
  ::sigaction(SIGINT, &sa, &old_int_);
  ::sigaction(SIGTERM, &sa, &old_term_);
}

interrupt_handler::~interrupt_handler() {
  ::sigaction(SIGINT, &old_int_, nullptr);
  ::sigaction(SIGTERM, &old_term_, nullptr);
}

void close_work_dir(const std::filesystem::path& dir, bool remove, const std::string& holds) {
  if (remove) {
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  } else {
    std::cout << "alephd sim: " << holds << " in " << dir.string() << std::endl;
  }
}

} // namespace alephd::sim
