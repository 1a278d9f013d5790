#include "runtime/config.hpp"

#include "runtime/endpoint.hpp"
#include "runtime/reward_epoch.hpp"

#include <charconv>
#include <filesystem>
#include <fstream>
#include <set>
#include <functional>
#include <map>
#include <sstream>

namespace alephd {

namespace {

struct option {
  std::string key;   ///< group.name
  std::string help;
  std::string shorthand; ///< optional top-level flag, e.g. "data-dir"
  std::function<std::string(settings&, const std::string&)> set; ///< returns an error reason
  /// For list options: empties the list, so that the command line replaces the file's list.
  std::function<void(settings&)> clear = nullptr;
};

// A value as it may appear in a one-line error: short, without control characters.
std::string printable(const std::string& v) {
  auto out = v.substr(0, 100);
  for (auto& c : out)
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f)
      c = '?';
  return out;
}

std::string trim(const std::string& s) {
  auto b = s.find_first_not_of(" \t\r");
  if (b == std::string::npos)
    return {};
  auto e = s.find_last_not_of(" \t\r");
  auto t = s.substr(b, e - b + 1);
  if (t.size() >= 2 && ((t.front() == '"' && t.back() == '"') || (t.front() == '\'' && t.back() == '\'')))
    t = t.substr(1, t.size() - 2);
  return t;
}

template <class T>
std::function<std::string(settings&, const std::string&)> integer(T settings::*field, int64_t lo, int64_t hi) {
  return [=](settings& s, const std::string& v) -> std::string {
    int64_t x = 0;
    auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), x);
    if (v.empty() || ec != std::errc{} || end != v.data() + v.size() || x < lo || x > hi)
      return "must be an integer between " + std::to_string(lo) + " and " + std::to_string(hi);
    s.*field = static_cast<T>(x);
    return {};
  };
}

std::function<std::string(settings&, const std::string&)> real(double settings::*field, double lo, double hi) {
  return [=](settings& s, const std::string& v) -> std::string {
    char* end = nullptr;
    double x = std::strtod(v.c_str(), &end);
    if (v.empty() || end != v.c_str() + v.size() || !(x >= lo && x <= hi))
      return "must be a number between " + std::to_string(lo) + " and " + std::to_string(hi);
    s.*field = x;
    return {};
  };
}

std::function<std::string(settings&, const std::string&)> text(std::string settings::*field, bool nonempty = false) {
  return [=](settings& s, const std::string& v) -> std::string {
    if (nonempty && v.empty())
      return "must not be empty";
    s.*field = v;
    return {};
  };
}

std::function<std::string(settings&, const std::string&)> boolean(bool settings::*field) {
  return [=](settings& s, const std::string& v) -> std::string {
    if (v == "true" || v == "yes" || v == "on" || v == "1")
      s.*field = true;
    else if (v == "false" || v == "no" || v == "off" || v == "0")
      s.*field = false;
    else
      return "must be true or false";
    return {};
  };
}

std::function<std::string(settings&, const std::string&)> duration(std::chrono::milliseconds settings::*field,
                                                                   bool zero_ok = false) {
  return [=](settings& s, const std::string& v) -> std::string {
    std::chrono::milliseconds d;
    if (!parse_duration(v, d) || d.count() < 0 || (d.count() == 0 && !zero_ok))
      return zero_ok ? "must be a duration such as 30s, or 0"
                     : "must be a positive duration such as 500ms or 5s";
    s.*field = d;
    return {};
  };
}

// A comma-separated list of host:port endpoints; repeating the flag appends.
std::function<std::string(settings&, const std::string&)> endpoints(std::vector<std::string> settings::*field) {
  return [=](settings& s, const std::string& v) -> std::string {
    std::stringstream in{v};
    std::string item;
    std::vector<std::string> out;
    while (std::getline(in, item, ',')) {
      item = trim(item);
      if (item.empty())
        continue;
      std::string host;
      uint16_t port = 0;
      if (!split_endpoint(item, host, port))
        return "'" + printable(item) + "' is not host:port";
      out.push_back(item);
    }
    for (auto& e : out)
      (s.*field).push_back(e);
    return {};
  };
}

const std::vector<option>& table() {
  static const std::vector<option> opts = {
    {"global.data-dir", "data directory (LMDB, blobs, node id); default ./.alephd-<role>", "data-dir", text(&settings::data_dir, true)},
    {"global.name", "display name of this node", "name", text(&settings::name)},
    {"global.asn", "CRN: the autonomous system of this node's network, e.g. AS16276; its CCN scores decentralization by it (default: none)", "asn", text(&settings::asn)},
    {"global.log-level", "trace, debug, info, warn, error", "log-level",
     [](settings& s, const std::string& v) -> std::string {
       if (v != "trace" && v != "debug" && v != "info" && v != "warn" && v != "error")
         return "must be one of trace, debug, info, warn, error";
       s.log_level = v;
       return {};
     }},
    {"global.threads", "actor scheduler threads (default 2)", "threads", integer(&settings::threads, 1, 64)},
    {"http.host", "address the HTTP API listens on (default 127.0.0.1)", "", text(&settings::http_host, true)},
    {"http.port", "HTTP port (CRN 4020, CCN 4024; 0 = any free port)", "port", integer(&settings::http_port, 0, 65535)},
    {"http.threads", "HTTP io threads (default 1)", "", integer(&settings::http_threads, 1, 64)},
    {"http.max-connections-per-client", "open connections one client address may hold; more are closed at once; 0 = no limit (default 256)", "", integer(&settings::max_connections_per_client, 0, 1000000)},
    {"http.rate-limit", "requests per second one client address may make, after a burst; more get 429 with Retry-After; 0 = no limit (default 500)", "", real(&settings::rate_limit, 0, 1e9)},
    {"http.rate-burst", "requests one client address may make at once before http.rate-limit applies (default 1000)", "", real(&settings::rate_burst, 1, 1e9)},
    {"http.limit-loopback", "apply the per-client limits to loopback clients too; off by default, as a local reverse proxy carries many clients on one address (default false)", "", boolean(&settings::limit_loopback)},
    {"node.host", "address the node port listens on (CCN; default 127.0.0.1)", "", text(&settings::node_host, true)},
    {"node.port", "node port where CRNs and peer CCNs connect (CCN default 4025; 0 = any free port)", "node-port", integer(&settings::node_port, 0, 65535)},
    {"ccn.max-linked-crns", "CRNs linked at most; the rest wait (default 3)", "", integer(&settings::max_linked_crns, 1, 1000)},
    {"ccn.heartbeat-interval", "how often CRNs send heartbeats (default 1s)", "", duration(&settings::heartbeat_interval)},
    {"ccn.failure-timeout", "a CRN silent this long is down (default 5s)", "", duration(&settings::failure_timeout)},
    {"ccn.peers", "peer CCNs, host:port of their node ports, comma-separated", "peer", endpoints(&settings::peers),
     [](settings& s) { s.peers.clear(); }},
    {"ccn.max-file-size", "largest file accepted by add_file, in bytes (default 104857600)", "", integer(&settings::max_file_size, 1, int64_t{1} << 40)},
    {"ccn.max-message-size", "largest message accepted by POST /api/v0/messages, in bytes (default 1048576)", "", integer(&settings::max_message_size, 1024, int64_t{1} << 30)},
    {"ccn.replicas", "copies of each stored file kept on linked CRNs when its STORE does not say (content.replicas); 0 = none (default 2)", "", integer(&settings::replicas, 0, 16)},
    {"ccn.group-commit", "share one LMDB commit between concurrent messages (default true)", "", boolean(&settings::group_commit)},
    {"ccn.wal", "commit message groups to a write-ahead log (one small fsync each) and index them into LMDB behind (default true; needs group-commit)", "", boolean(&settings::message_wal)},
    {"crn.ccn", "CCNs to link to, host:port of their node ports, in order of preference", "ccn", endpoints(&settings::ccn),
     [](settings& s) { s.ccn.clear(); }},
    {"crn.vcpus", "vCPUs offered (default: the host's cores)", "", integer(&settings::vcpus, 0, 4096)},
    {"crn.memory-mib", "memory offered in MiB (default: the host's memory)", "", integer(&settings::memory_mib, 0, int64_t{1} << 32)},
    {"crn.domain", "CRN: the name owners sign their control operations for (X-SignedOperation domain); default: the host of crn.public-address", "", text(&settings::domain)},
    {"crn.public-address", "the URL clients use to reach this CRN (default http://host:port)", "", text(&settings::public_address)},
    {"execution.reuse-timeout", "an on-demand program idle this long is stopped (default 3600s)", "", duration(&settings::reuse_timeout)},
    {"execution.drain-timeout", "on SIGTERM, calls in flight get this long to finish (default 30s)", "", duration(&settings::drain_timeout)},
    {"execution.keep-on-shutdown", "leave persistent workloads running when the CRN stops (default false)", "", boolean(&settings::keep_on_shutdown)},
    {"execution.adopt-window", "a sandbox or microVM outlives a CRN that dies this long, for the restarted CRN to re-adopt it; 0 = it dies with the CRN (default 60s)", "", duration(&settings::adopt_window, true)},
    {"execution.prealloc", "sandboxes kept pre-started for cold starts of programs (default 0)", "", integer(&settings::prealloc, 0, 64)},
    {"execution.pids-max", "processes per execution, cgroup pids.max (default 512)", "", integer(&settings::pids_max, 8, 1 << 22)},
    {"execution.cgroups", "give each execution a cgroup with memory, pids and CPU limits (default true)", "", boolean(&settings::cgroups)},
    {"execution.guest-binary", "the static guest agent (default: alephd-guest next to alephd)", "", text(&settings::guest_binary)},
    {"execution.microvm-assets", "dir with the kernel and initrd for instances (default: microvm/ next to alephd)", "", text(&settings::microvm_assets)},
    {"execution.bwrap", "the bubblewrap binary (default /usr/bin/bwrap)", "", text(&settings::bwrap, true)},
    {"cache.shards", "cache shard actors, files split by hash prefix (default 4)", "", integer(&settings::cache_shards, 1, 64)},
    {"cache.max-bytes", "CRN: bound of the file cache in bytes; 0 = 10 GiB, at most a fifth of the data dir's file system (default 0)", "", integer(&settings::cache_max_bytes, 0, int64_t{1} << 50)},
    {"cache.high-watermark", "CRN: eviction of least recently used files starts above this percent of max-bytes (default 90)", "", integer(&settings::cache_high_watermark, 1, 100)},
    {"cache.low-watermark", "CRN: eviction stops at this percent of max-bytes (default 80)", "", integer(&settings::cache_low_watermark, 0, 99)},
    {"cache.scrub-interval", "how often a background scrub re-hashes the next blobs; 0 = never (default 60s)", "", duration(&settings::scrub_interval, true)},
    {"cache.scrub-bytes", "bytes re-hashed per scrub round (default 67108864)", "", integer(&settings::scrub_bytes, 1, int64_t{1} << 40)},
    {"scoring.probe-interval", "CCN: how often each linked CRN is probed (default 60s)", "", duration(&settings::probe_interval, false)},
    {"scoring.window", "CCN: probes older than this no longer count in a CRN's score (default 86400s)", "", duration(&settings::score_window, false)},
    {"scoring.diagnostic-ref", "CCN: item hash of a diagnostic program the prober calls on each CRN through /vm/{ref}; empty = the base latency stands in (default empty)", "", text(&settings::diagnostic_ref)},
    {"scoring.accepted-versions", "CCN: comma-separated CRN versions that count as current; empty = this alephd's version", "", text(&settings::accepted_versions)},
    {"rewards.epoch-seconds", "CCN: length of a reward epoch in seconds, aligned on the Unix epoch (default 86400)", "", integer(&settings::epoch_seconds, 1, int64_t{366} * 86400)},
    {"rewards.stakes", "CCN: the network's stakes as ccn:address:amount,... where ccn is a CCN's id or name (default none)", "", text(&settings::stakes)},
    {"rewards.max-paid", "CCN: only the first this many scoring CRNs of a CCN earn the legacy CRN reward (default 5)", "", integer(&settings::max_paid, 0, 1000)},
    {"pricing.program", "ALEPH per compute-unit hour of an on-demand program (default 0.011)", "", real(&settings::price_program, 0, 1e9)},
    {"pricing.persistent-program", "ALEPH per compute-unit hour of a persistent program (default 0.055)", "", real(&settings::price_persistent_program, 0, 1e9)},
    {"pricing.instance", "ALEPH per compute-unit hour of an instance (default 0.055)", "", real(&settings::price_instance, 0, 1e9)},
    {"pricing.storage-gib-hour", "ALEPH per GiB-hour of storage pinned by executions (default 0.0001)", "", real(&settings::price_storage_gib_hour, 0, 1e9)},
    {"ledger.sample-interval", "CRN: each execution's CPU, memory, requests, bytes and pinned storage are written to the reward ledger this often, and when it stops (default 60s)", "", duration(&settings::sample_interval, false)},
    {"tls.cert", "PEM certificate of this node; with tls.key and tls.ca, node links (CRN to CCN, CCN to CCN) run over TLS and each side must show a certificate the CA signed (default: plain TCP)", "tls-cert", text(&settings::tls_cert)},
    {"tls.key", "PEM private key of tls.cert", "tls-key", text(&settings::tls_key)},
    {"tls.ca", "PEM certificate of the CA that signed every node's certificate", "tls-ca", text(&settings::tls_ca)},
    {"security.verify-signatures", "CCN: refuse messages whose wallet signature (EVM personal_sign or Solana ed25519) does not verify, with 403 (default: true for ccn, false for dev)", "verify-signatures",
     [](settings& s, const std::string& v) -> std::string {
       if (v == "true" || v == "yes" || v == "on" || v == "1")
         s.verify_signatures = true;
       else if (v == "false" || v == "no" || v == "off" || v == "0")
         s.verify_signatures = false;
       else
         return "must be true or false";
       return {};
     }},
    {"dev.port-base", "dev: CRNs on base..base+2, CCN HTTP on base+4, node port base+5 (default 4020)", "port-base", integer(&settings::port_base, 1, 65000)},
    {"dev.crns", "dev: number of CRNs, 1 to 4 (they use base..base+3; default 3)", "crns", integer(&settings::dev_crns, 1, 4)},
  };
  return opts;
}

const option* find_option(const std::string& key) {
  for (auto& o : table())
    if (o.key == key || (!o.shorthand.empty() && o.shorthand == key))
      return &o;
  return nullptr;
}

std::string apply(settings& s, const option& o, const std::string& value, const std::string& where) {
  if (auto err = o.set(s, value); !err.empty())
    return where + o.key + ": " + err + " (got '" + printable(value) + "')";
  return {};
}

std::string read_ini(const std::string& path, settings& s) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec))
    return "cannot read config file " + printable(path) + ": not a regular file";
  std::ifstream in{path};
  if (!in)
    return "cannot read config file " + printable(path);
  std::string line, group = "global";
  int n = 0;
  while (std::getline(in, line)) {
    ++n;
    auto where = path + ":" + std::to_string(n) + ": ";
    auto t = trim(line);
    if (t.empty() || t[0] == ';' || t[0] == '#')
      continue;
    if (t.front() == '[') {
      if (t.back() != ']' || t.size() < 3)
        return where + "malformed section header " + t;
      group = trim(t.substr(1, t.size() - 2));
      continue;
    }
    auto eq = t.find('=');
    if (eq == std::string::npos)
      return where + "expected 'name = value', got '" + printable(t) + "'";
    auto key = group + "." + trim(t.substr(0, eq));
    auto value = t.substr(eq + 1);
    if (auto c = value.find(" ;"); c != std::string::npos)
      value.resize(c);
    value = trim(value);
    const option* o = nullptr;
    for (auto& x : table())
      if (x.key == key)
        o = &x;
    if (o == nullptr)
      return where + "unknown option " + printable(key);
    if (auto err = apply(s, *o, value, where); !err.empty())
      return err;
  }
  return {};
}

} // namespace

bool parse_duration(const std::string& text, std::chrono::milliseconds& out) {
  size_t i = 0;
  while (i < text.size() && std::isdigit(static_cast<unsigned char>(text[i])))
    ++i;
  if (i == 0 || i > 12)
    return false;
  auto n = std::stoll(text.substr(0, i));
  auto unit = text.substr(i);
  if (unit.empty() || unit == "ms")
    out = std::chrono::milliseconds{n};
  else if (unit == "s")
    out = std::chrono::milliseconds{n * 1000};
  else if (unit == "m" || unit == "min")
    out = std::chrono::milliseconds{n * 60000};
  else
    return false;
  return true;
}

std::string parse_settings(const std::vector<std::string>& args, settings& out, bool& help) {
  help = false;
  // Pass 1: the config file, so that the command line overrides it.
  for (size_t i = 0; i < args.size(); ++i) {
    const auto& a = args[i];
    std::string path;
    if (a == "--config" || a == "--config-file") {
      if (i + 1 >= args.size())
        return a + ": needs a file name";
      path = args[i + 1];
    } else if (a.rfind("--config=", 0) == 0) {
      path = a.substr(9);
    } else if (a.rfind("--config-file=", 0) == 0) {
      path = a.substr(14);
    } else {
      continue;
    }
    if (auto err = read_ini(path, out); !err.empty())
      return err;
  }
  std::set<std::string> cli_lists; // list options given on the command line so far
  for (size_t i = 0; i < args.size(); ++i) {
    const auto& a = args[i];
    if (a == "--help" || a == "-h") {
      help = true;
      return {};
    }
    if (a == "--config" || a == "--config-file") {
      ++i;
      continue;
    }
    if (a.rfind("--config=", 0) == 0 || a.rfind("--config-file=", 0) == 0)
      continue;
    if (a.rfind("--", 0) != 0)
      return "unexpected argument '" + printable(a) + "' (options look like --group.name=value)";
    auto body = a.substr(2);
    std::string key = body, value;
    bool has_value = false;
    if (auto eq = body.find('='); eq != std::string::npos) {
      key = body.substr(0, eq);
      value = body.substr(eq + 1);
      has_value = true;
    }
    auto o = find_option(key);
    if (o == nullptr)
      return "unknown option --" + printable(key) + " (see alephd --help)";
    if (!has_value) {
      if (i + 1 >= args.size())
        return "--" + key + ": needs a value";
      value = args[++i];
    }
    if (o->clear && cli_lists.insert(o->key).second)
      o->clear(out);
    if (auto err = apply(out, *o, value, "--"); !err.empty())
      return err;
  }
  {
    std::vector<stake_entry> stakes;
    std::string err;
    if (!parse_stakes(out.stakes, stakes, err))
      return "rewards.stakes: " + err;
  }
  if (out.cache_low_watermark >= out.cache_high_watermark)
    return "cache.low-watermark: must be below cache.high-watermark ("
           + std::to_string(out.cache_high_watermark) + "), got "
           + std::to_string(out.cache_low_watermark);
  return {};
}

std::string settings_help() {
  std::string out = "Options (INI: `name = value` under `[group]`; command line: --group.name=value):\n";
  for (auto& o : table()) {
    auto flag = "--" + o.key + (o.shorthand.empty() ? "" : ", --" + o.shorthand);
    out += "  " + flag;
    out += std::string(flag.size() < 40 ? 40 - flag.size() : 1, ' ') + o.help + "\n";
  }
  return out;
}

} // namespace alephd
