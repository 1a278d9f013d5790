#include "sim/options.hpp"

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <fstream>
#include <random>
#include <sstream>

#include "runtime/config.hpp"

namespace alephd::sim {

using namespace std::chrono_literals;

// ccn-wipe loses a CCN's disk, which no single node survives unless its peers hold everything
// it acknowledged; it is not in the default mix.
// disk-full fills a CCN's data dir, a small tmpfs the simulator mounts (so it needs root).
const std::vector<std::string> all_kinds{"crn-kill", "ccn-kill", "crn-pause", "ccn-pause", "partition",
                                         "slow-link", "host-kill", "host-pause", "restart", "ccn-wipe",
                                         "disk-full"};

namespace {

// A whole number from `lo` to `hi` into a uint32_t or uint64_t field.
template <class T>
std::function<std::string(config&, const std::string&)> whole(T config::*field, T lo, T hi) {
  return [=](config& c, const std::string& v) -> std::string {
    if (v.empty() || v.size() > 18 || v.find_first_not_of("0123456789") != std::string::npos)
      return "must be a whole number, got '" + v.substr(0, 40) + "'";
    auto n = std::stoull(v);
    if (n < lo || n > hi)
      return "must be between " + std::to_string(lo) + " and " + std::to_string(hi);
    c.*field = static_cast<T>(n);
    return {};
  };
}

std::function<std::string(config&, const std::string&)> rate(double config::*field) {
  return [=](config& c, const std::string& v) -> std::string {
    char* end = nullptr;
    errno = 0;
    double d = std::strtod(v.c_str(), &end);
    if (v.empty() || *end != '\0' || errno != 0 || !(d >= 0) || d > 1000)
      return "must be a number from 0 to 1000, got '" + v.substr(0, 40) + "'";
    c.*field = d;
    return {};
  };
}

std::function<std::string(config&, const std::string&)> span(ms config::*field, ms lo) {
  return [=](config& c, const std::string& v) -> std::string {
    ms d{};
    if (!parse_duration(v, d))
      return "must be a duration such as 500ms, 3s or 2m, got '" + v.substr(0, 40) + "'";
    if (d < lo)
      return "must be at least " + std::to_string(lo.count()) + "ms";
    c.*field = d;
    return {};
  };
}

} // namespace

const std::vector<option>& options() {
  static const std::vector<option> table{
    {"cluster.ccns", "CCNs (default 3; at most 10 as processes, 1000 with --in-process)", whole<uint32_t>(&config::ccns, 1, 1000)},
    {"cluster.crns-per-ccn", "CRNs that start on each CCN (1-3; default 3)", whole<uint32_t>(&config::crns_per_ccn, 1, 3)},
    {"cluster.extra-crns", "more CRNs, spread over the CCNs; they start waiting (0-10; default 0)", whole<uint32_t>(&config::extra_crns, 0, 10)},
    {"cluster.max-linked-crns", "CRNs a CCN links at most (default 3)", whole<uint32_t>(&config::max_linked, 1, 10)},
    {"cluster.replicas", "copies of each uploaded file the CCNs keep on CRNs (default 2)", whole<uint32_t>(&config::replicas, 0, 16)},
    {"cluster.heartbeat-interval", "the nodes' heartbeat interval (default 250ms)", span(&config::heartbeat, 50ms)},
    {"cluster.failure-timeout", "a CRN silent this long is down (default 1500ms)", span(&config::failure_timeout, 100ms)},
    {"cluster.epoch-seconds", "length of a reward epoch (default 10)", whole<uint64_t>(&config::epoch_seconds, 1, 86400)},
    {"cluster.ccn-disk-mib", "size of the tmpfs mounted on each CCN's data dir when disk-full faults run (default 256)", whole<uint64_t>(&config::ccn_disk_mib, 16, 65536)},
    {"cluster.sample-interval", "CRN metering sample interval (default 1s)", span(&config::sample_interval, 100ms)},
    {"run.seed", "seed of the fault schedule and the workload (default 1)", whole<uint64_t>(&config::seed, 0, UINT64_MAX / 4)},
    {"run.duration", "how long faults and workload run (default 60s)", span(&config::duration, 1000ms)},
    {"run.converge-timeout", "time the cluster gets to converge after the faults (default 30s)", span(&config::converge_timeout, 1000ms)},
    {"run.reschedule-deadline", "a persistent program runs again within this time of its CRN's death (default 20s)", span(&config::reschedule_deadline, 1000ms)},
    {"run.scenario", "a named fault schedule instead of faults.kinds: crn-crash, ccn-crash, partition-heal, flapping-node, rolling-restart, disk-full (root), or none (default none)",
     [](config& c, const std::string& v) -> std::string {
       static const std::vector<std::string> names{"crn-crash", "ccn-crash", "partition-heal", "flapping-node",
                                                   "rolling-restart", "disk-full"};
       if (v == "none" || v.empty()) {
         c.scenario.clear();
         return {};
       }
       if (std::find(names.begin(), names.end(), v) == names.end())
         return "unknown scenario '" + v.substr(0, 40) + "'";
       c.scenario = v;
       return {};
     }},
    {"run.minimise-runs", "a failing run is run again with fewer of its faults, this many times at most, to find the fewest that still break the same invariant; auto = 30 with --in-process, where a seed replays exactly, 8 as processes, where each is a whole cluster run (default auto)",
     [](config& c, const std::string& v) -> std::string {
       if (v == "auto") {
         c.minimise_runs = -1;
         return {};
       }
       if (v.empty() || v.size() > 6 || v.find_first_not_of("0123456789") != std::string::npos || std::stoul(v) > 1000)
         return "must be auto or a whole number from 0 to 1000, got '" + v.substr(0, 40) + "'";
       c.minimise_runs = static_cast<int64_t>(std::stoul(v));
       return {};
     }},
    {"run.minimise-time", "wall time those re-runs may take in all (default 10m)", span(&config::minimise_time, 1000ms)},
    {"run.poll-interval", "how often the monitor samples every node (default 250ms)", span(&config::poll, 50ms)},
    {"workload.messages-per-second", "signed POST messages (default 4)", rate(&config::messages_per_s)},
    {"workload.uploads-per-second", "file uploads with a STORE (default 0.5)", rate(&config::uploads_per_s)},
    {"workload.calls-per-second", "calls of the on-demand programs (default 1)", rate(&config::calls_per_s)},
    {"workload.upload-bytes", "size of each uploaded file (default 4096)", whole<uint64_t>(&config::upload_bytes, 1, 64ull << 20)},
    {"workload.persistent-programs", "persistent programs placed by the CCNs (default 2; at most 100 as processes)", whole<uint32_t>(&config::persistent, 0, 100000)},
    {"workload.on-demand-programs", "on-demand programs called on the CRNs (default 1)", whole<uint32_t>(&config::on_demand, 0, 100)},
    {"workload.instances", "instances: QEMU microVMs on a small rootfs, placed by the CCNs in turn; a boot takes seconds under TCG (0-4; default 0; not with --in-process)", whole<uint32_t>(&config::instances, 0, 4)},
    {"faults.interval", "time from one fault to the next (default 6s)", span(&config::fault_interval, 500ms)},
    {"faults.kinds", "comma-separated: crn-kill, ccn-kill, host-kill, crn-pause, ccn-pause, host-pause, partition, slow-link, restart, ccn-wipe, disk-full (root), or none (default: all but ccn-wipe and disk-full)",
     [](config& c, const std::string& v) -> std::string {
       std::vector<std::string> out;
       std::stringstream in{v};
       for (std::string k; std::getline(in, k, ',');) {
         k.erase(0, k.find_first_not_of(' '));
         k.erase(k.find_last_not_of(' ') + 1);
         if (k == "none" || k.empty())
           continue;
         if (std::find(all_kinds.begin(), all_kinds.end(), k) == all_kinds.end())
           return "unknown fault kind '" + k.substr(0, 40) + "'";
         out.push_back(k);
       }
       c.kinds = out;
       return {};
     }},
    {"faults.only", "inject only these faults of the schedule, by number as --plan shows them (e.g. 3,7), or none; the others are skipped at their times (default: all)",
     [](config& c, const std::string& v) -> std::string {
       if (v == "all") {
         c.only_faults.reset();
         return {};
       }
       std::vector<std::size_t> out;
       if (v != "none") {
         std::stringstream in{v};
         for (std::string k; std::getline(in, k, ',');) {
           k.erase(0, k.find_first_not_of(' '));
           k.erase(k.find_last_not_of(' ') + 1);
           if (k.empty() || k.size() > 6 || k.find_first_not_of("0123456789") != std::string::npos || std::stoul(k) == 0)
             return "expected fault numbers from 1 such as 3,7, or none or all, got '" + v.substr(0, 40) + "'";
           out.push_back(std::stoul(k));
         }
         if (out.empty())
           return "expected fault numbers from 1 such as 3,7, or none or all";
       }
       std::sort(out.begin(), out.end());
       out.erase(std::unique(out.begin(), out.end()), out.end());
       c.only_faults = out;
       return {};
     }},
    {"faults.down-time", "a killed node restarts after this (default 3s)", span(&config::down_time, 0ms)},
    {"faults.pause-time", "a paused node continues after this (default 3s)", span(&config::pause_time, 0ms)},
    {"faults.partition-time", "a partition or a slow link heals after this (default 4s)", span(&config::partition_time, 0ms)},
    {"faults.slow-link-delay", "delay a slow link adds to each chunk (default 200ms)", span(&config::slow_delay, 1ms)},
  };
  return table;
}

namespace {

std::string set_option(config& c, const std::string& name, const std::string& value) {
  for (auto& o : options())
    if (name == o.name) {
      auto err = o.set(c, value);
      return err.empty() ? err : name + ": " + err;
    }
  return "unknown option '" + name.substr(0, 60) + "'";
}

std::string read_config(const std::string& path, config& c) {
  std::ifstream in{path};
  if (!in)
    return "--config: cannot read " + path;
  std::string group, line;
  for (int n = 1; std::getline(in, line); ++n) {
    auto first = line.find_first_not_of(" \t\r");
    if (first == std::string::npos || line[first] == '#' || line[first] == ';')
      continue;
    line = line.substr(first, line.find_last_not_of(" \t\r") + 1 - first);
    if (line.front() == '[') {
      if (line.back() != ']')
        return path + ":" + std::to_string(n) + ": malformed section '" + line.substr(0, 40) + "'";
      group = line.substr(1, line.size() - 2);
      continue;
    }
    auto eq = line.find('=');
    if (eq == std::string::npos || group.empty())
      return path + ":" + std::to_string(n) + ": expected `name = value` under a [section]";
    auto key = line.substr(0, eq);
    key.erase(key.find_last_not_of(" \t") + 1);
    auto value = line.substr(eq + 1);
    value.erase(0, value.find_first_not_of(" \t"));
    if (auto err = set_option(c, group + "." + key, value); !err.empty())
      return path + ":" + std::to_string(n) + ": " + err;
  }
  return {};
}

} // namespace

// --config first, then every other argument over it.
std::string parse_args(const std::vector<std::string>& args, config& c) {
  for (std::size_t i = 0; i < args.size(); ++i)
    if (args[i] == "--config" || args[i].rfind("--config=", 0) == 0) {
      auto path = args[i] == "--config" ? (i + 1 < args.size() ? args[i + 1] : "") : args[i].substr(9);
      if (path.empty())
        return "--config needs a file";
      if (auto err = read_config(path, c); !err.empty())
        return err;
    }
  for (std::size_t i = 0; i < args.size(); ++i) {
    auto a = args[i];
    if (a.rfind("--", 0) != 0)
      return "unexpected argument '" + a.substr(0, 60) + "'";
    auto name = a.substr(2);
    std::string value;
    bool has_value = false;
    if (auto eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
      has_value = true;
    }
    if (name == "keep" || name == "plan" || name == "in-process") {
      (name == "keep" ? c.keep : name == "plan" ? c.plan_only : c.in_process) = true;
      continue;
    }
    if (!has_value) {
      if (i + 1 >= args.size())
        return "--" + name + " needs a value";
      value = args[++i];
    }
    if (name == "config")
      continue;
    if (name == "seed")
      name = "run.seed";
    if (name == "report" || name == "html" || name == "dir") {
      if (value.empty())
        return "--" + name + " needs a path";
      (name == "report" ? c.report : name == "html" ? c.html : c.dir) = value;
      continue;
    }
    if (auto err = set_option(c, name, value); !err.empty())
      return err;
  }
  return {};
}

std::vector<std::string> node_names(const config& c) {
  std::vector<std::string> out;
  for (uint32_t i = 0; i < c.ccns; ++i)
    out.push_back("ccn-" + std::to_string(i));
  for (uint32_t i = 0; i < c.ccns; ++i)
    for (uint32_t k = 0; k < c.crns_per_ccn; ++k)
      out.push_back("crn-" + std::to_string(i) + "-" + std::to_string(k));
  for (uint32_t e = 0; e < c.extra_crns; ++e)
    out.push_back("crn-x" + std::to_string(e));
  return out;
}

// The fault schedule: a function of the seed and the cluster's shape only, so a seed repeats it.
std::vector<planned_fault> plan_faults(const config& c) {
  std::vector<planned_fault> out;
  std::mt19937_64 rng{c.seed};
  auto n_nodes = node_names(c).size();
  auto n_crns = n_nodes - c.ccns;
  auto count = static_cast<std::size_t>(c.duration / c.fault_interval) + 1;
  auto kinds = c.kinds;
  if (c.scenario == "crn-crash")
    kinds = {"crn-kill", "host-kill"};
  else if (c.scenario == "ccn-crash")
    kinds = {"ccn-kill"};
  else if (c.scenario == "partition-heal")
    kinds = {"partition"};
  else if (c.scenario == "disk-full")
    kinds = {"disk-full"};
  else if (c.scenario == "flapping-node") {
    // One CRN, drawn from the seed, killed and back again and again.
    auto target = c.ccns + rng() % n_crns;
    for (std::size_t i = 0; i < count; ++i)
      out.push_back(planned_fault{"flap", target});
    return out;
  } else if (c.scenario == "rolling-restart") {
    // Every node once, a CCN after its CRNs, as an operator upgrading the network would.
    auto names = node_names(c);
    for (uint32_t i = 0; i < c.ccns; ++i) {
      for (std::size_t k = 0; k < names.size(); ++k)
        if (names[k].rfind("crn-" + std::to_string(i) + "-", 0) == 0)
          out.push_back(planned_fault{"restart", k});
      out.push_back(planned_fault{"restart", i});
    }
    for (std::size_t k = 0; k < names.size(); ++k)
      if (names[k].rfind("crn-x", 0) == 0)
        out.push_back(planned_fault{"restart", k});
    return out;
  }
  if (kinds.empty())
    return out;
  for (std::size_t i = 0; i < count; ++i) {
    planned_fault f;
    f.kind = kinds[rng() % kinds.size()];
    auto crn = [&] { return c.ccns + rng() % n_crns; };
    auto ccn = [&] { return static_cast<std::size_t>(rng() % c.ccns); };
    if (f.kind == "crn-kill" || f.kind == "crn-pause" || f.kind == "slow-link")
      f.target = crn();
    else if (f.kind == "ccn-kill" || f.kind == "ccn-pause" || f.kind == "ccn-wipe" || f.kind == "disk-full")
      f.target = ccn();
    else if (f.kind == "partition")
      f.target = c.ccns > 1 && rng() % 2 == 0 ? ccn() : crn();
    else if (f.kind == "restart")
      f.target = rng() % n_nodes;
    else if (f.kind == "host-kill" || f.kind == "host-pause")
      f.target = c.persistent == 0 ? 0 : rng() % c.persistent;
    out.push_back(f);
  }
  return out;
}

std::string describe(const config& c, const planned_fault& f) {
  if (f.kind == "host-kill" || f.kind == "host-pause")
    return f.kind + " of the CRN running persistent program " + std::to_string(f.target);
  return f.kind + " " + node_names(c).at(f.target);
}

bool selected(const config& c, std::size_t number) {
  return !c.only_faults || std::binary_search(c.only_faults->begin(), c.only_faults->end(), number);
}

std::string fault_list(const std::vector<std::size_t>& numbers) {
  if (numbers.empty())
    return "none";
  std::string out;
  for (auto n : numbers)
    out += (out.empty() ? "" : ",") + std::to_string(n);
  return out;
}

} // namespace alephd::sim
