// alephd: one binary, several roles.
#include <csignal>
#include <filesystem>

#include <unistd.h>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <fstream>
#include <caf/io/middleman.hpp>
#include <caf/openssl/manager.hpp>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "actors/interfaces.hpp"
#include "runtime/cgroup.hpp"
#include "runtime/client.hpp"
#include "runtime/config.hpp"
#include "runtime/ledger.hpp"
#include "runtime/lmdb.hpp"
#include "runtime/reward_epoch.hpp"
#include "runtime/sandbox.hpp"
#include "runtime/node.hpp"
#include "sim/sim.hpp"

namespace {

using namespace alephd;

constexpr const char* usage = R"(alephd — Aleph Cloud node runtime (CRN and CCN)

Usage:
  alephd ccn [--config FILE] [options]   run a Core Channel Node
  alephd crn [--config FILE] [options]   run a Compute Resource Node (--ccn host:port[,host:port…])
  alephd dev [options]                   one CCN and three CRNs in one process, on 127.0.0.1
  alephd sim [--config config/sim.ini] [--seed S] [--report F.json] [--html F.html]
                                         a cluster of CCN and CRN processes with injected
                                         faults and invariant checks (alephd sim --help)
  alephd call|ls|logs|stop|reboot|erase  talk to a CRN (see "Client commands" below)
  alephd ledger verify [--data-dir DIR]  check a CRN's reward ledger chain (default ./.alephd-crn)
  alephd rewards [--data-dir DIR] [--epoch N] [--json]
                                         a CCN's reward epochs; with --epoch, its payouts,
                                         recomputed from the usage book and compared
  alephd --help | --version

)";

int fail_usage(const std::string& msg) {
  std::cerr << "alephd: " << msg << '\n';
  return 2;
}

// `alephd rewards`: the epochs a CCN computed, or one epoch's payouts recomputed from its usage
// book (0 when they match what was stored, 1 when not).
int run_rewards(const std::vector<std::string>& args) {
  std::string dir = "./.alephd-ccn";
  std::optional<uint64_t> epoch;
  bool as_json = false;
  for (std::size_t i = 0; i < args.size(); ++i) {
    auto value = [&](const std::string& flag) -> std::optional<std::string> {
      if (args[i] == flag && i + 1 < args.size())
        return args[++i];
      if (args[i].rfind(flag + "=", 0) == 0)
        return args[i].substr(flag.size() + 1);
      return std::nullopt;
    };
    if (auto d = value("--data-dir")) {
      dir = *d;
    } else if (auto e = value("--epoch")) {
      if (e->empty() || e->size() > 19 || e->find_first_not_of("0123456789") != std::string::npos)
        return fail_usage("rewards: --epoch must be an epoch number, got '" + e->substr(0, 40) + "'");
      epoch = std::stoull(*e);
    } else if (args[i] == "--json") {
      as_json = true;
    } else {
      return fail_usage("rewards: unknown argument '" + args[i].substr(0, 60) + "'");
    }
  }
  auto path = dir + "/lmdb";
  if (access((path + "/data.mdb").c_str(), R_OK) != 0) {
    std::cerr << "alephd: rewards: no CCN data at " << path << '\n';
    return 1;
  }
  std::string err;
  auto env = lmdb::env::open(path, err);
  if (!env) {
    std::cerr << "alephd: rewards: " << err << '\n';
    return 1;
  }
  if (!epoch) {
    auto all = stored_epochs(*env);
    if (all.empty())
      std::cout << "no reward epoch computed yet in " << path << '\n';
    for (auto n : all)
      if (auto r = load_epoch(*env, n))
        std::cout << "epoch " << n << ": " << r->input.ccns.size() << " CCNs, " << r->input.crns.size()
                  << " CRNs scored, usage of " << r->input.ranges.size() << " CRNs\n";
    return 0;
  }
  auto r = load_epoch(*env, *epoch);
  if (!r) {
    std::cerr << "alephd: rewards: no epoch " << *epoch << " in " << path << '\n';
    return 1;
  }
  if (as_json) {
    std::cout << encode_epoch(*r) << '\n';
  } else {
    for (auto* model : {&r->legacy, &r->usage}) {
      auto j = nlohmann::json::parse(*model);
      for (auto& [pool, total] : j["pools"].items())
        std::cout << pool << ": " << total.get<double>() << " ALEPH\n";
      for (auto& p : j["payouts"])
        std::cout << "  " << p["pool"].get<std::string>() << "  " << p["role"].get<std::string>() << "  "
                  << p["recipient"].get<std::string>() << "  " << p["amount"].get<double>() << '\n';
    }
  }
  if (auto diff = verify_epoch(*env, *epoch); !diff.empty()) {
    std::cerr << "alephd: rewards: epoch " << *epoch << ": " << diff << '\n';
    return 1;
  }
  std::cerr << "epoch " << *epoch << ": recomputed from the usage book, matches what was stored\n";
  return 0;
}

// `alephd ledger verify`: 0 when the chain is whole, 1 naming the first bad entry.
int run_ledger(const std::vector<std::string>& args) {
  if (args.empty() || args[0] != "verify")
    return fail_usage("ledger: expected `alephd ledger verify [--data-dir DIR]`");
  std::string dir = "./.alephd-crn";
  for (std::size_t i = 1; i < args.size(); ++i) {
    if (args[i] == "--data-dir" && i + 1 < args.size())
      dir = args[++i];
    else if (args[i].rfind("--data-dir=", 0) == 0)
      dir = args[i].substr(11);
    else
      return fail_usage("ledger verify: unknown argument '" + args[i].substr(0, 60) + "'");
  }
  auto path = dir + "/ledger";
  if (access((path + "/data.mdb").c_str(), R_OK) != 0) {
    std::cerr << "alephd: ledger verify: no ledger at " << path << '\n';
    return 1;
  }
  std::string err;
  auto ledger = ledger_store::open(path, err, false);
  if (!ledger) {
    std::cerr << "alephd: ledger verify: " << err << '\n';
    return 1;
  }
  auto c = ledger->verify();
  if (!c.ok()) {
    std::cerr << "alephd: ledger " << path << ": entry " << c.first_bad << " is bad: " << c.reason
              << " (" << c.entries << " good entries before it)\n";
    return 1;
  }
  std::cout << "ledger " << path << ": " << c.entries << " entries, chain intact, "
            << ledger->acked() << " acknowledged by the CCN\n";
  return 0;
}

void setup_logging(const settings& s) {
  auto logger = spdlog::stderr_color_mt("alephd");
  spdlog::set_default_logger(logger);
  spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ %v");
  spdlog::set_level(spdlog::level::from_str(s.log_level));
}

// Signals are blocked before any thread starts, so that sigwait() in main gets them.
sigset_t block_signals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGUSR1); // raised by the watchdog when a node actor failed
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  return set;
}

int wait_for_signal(const sigset_t& set) {
  int sig = 0;
  sigwait(&set, &sig);
  return sig;
}

void configure_actor_system(caf::actor_system_config& cfg, const settings& s) {
  add_message_types(cfg);
  cfg.load<caf::io::middleman>();
  if (!s.tls_cert.empty()) {
    // Node links over TLS; both ends must show a certificate the CA signed.
    cfg.load<caf::openssl::manager>();
    cfg.openssl_certificate = s.tls_cert;
    cfg.openssl_key = s.tls_key;
    cfg.openssl_cafile = s.tls_ca;
  }
  cfg.set("scheduler.max-threads", static_cast<size_t>(s.threads));
  // 'sharing' halves remote latency and idles at ~0 % CPU (stack guide §4).
  cfg.set("scheduler.policy", caf::atom("sharing"));
  cfg.set("middleman.workers", size_t{0});
}

// The three TLS files go together and must be readable PEM.
std::string check_tls(const settings& s) {
  int given = !s.tls_cert.empty() + !s.tls_key.empty() + !s.tls_ca.empty();
  if (given == 0)
    return {};
  if (given != 3)
    return "--tls-cert, --tls-key and --tls-ca go together (node links over TLS need all three)";
  for (auto [flag, path] : {std::pair{"--tls-cert", &s.tls_cert}, std::pair{"--tls-key", &s.tls_key},
                            std::pair{"--tls-ca", &s.tls_ca}}) {
    std::ifstream in{*path};
    std::string head;
    std::getline(in, head);
    if (!in)
      return std::string{flag} + ": cannot read " + *path;
    if (head.rfind("-----BEGIN ", 0) != 0)
      return std::string{flag} + ": " + *path + " is not a PEM file";
  }
  return {};
}

int run(const std::string& role, const settings& s_in) {
  auto s = s_in;
  if (!s.verify_signatures)
    s.verify_signatures = role == "ccn";
  if (auto e = check_tls(s); !e.empty())
    return fail_usage(e);
  if (role == "crn" && s.ccn.empty())
    return fail_usage("--crn.ccn: a CRN needs at least one CCN (--ccn host:port)");
  setup_logging(s);
  auto sigs = block_signals();
  // Declared before the actor system, so it runs after every actor (and the sandbox each
  // execution or pool held) has ended: the CRNs' empty cgroup roots go too; a group a kept
  // workload still uses stays, and so does its root. The same for their sandboxes' scratch
  // dirs (sandbox::release_scratch_group).
  struct remove_cgroup_roots {
    std::vector<std::string> roots, scratch_groups;
    ~remove_cgroup_roots() {
      for (const auto& r : roots)
        cgroup::remove_orphans(r, [](const std::string&) { return true; });
      for (const auto& g : scratch_groups)
        sandbox::release_scratch_group(g);
    }
  } cgroup_roots;
  caf::actor_system_config cfg;
  configure_actor_system(cfg, s);
  caf::actor_system sys{cfg};
  // A failed actor breaks the node: wake main, which stops everything and exits 1.
  auto on_fatal = [](const std::string&) { ::kill(::getpid(), SIGUSR1); };
  std::unique_ptr<ccn_node_runtime> ccn;
  std::vector<std::unique_ptr<crn_node_runtime>> crns;
  std::string err;
  if (role == "ccn") {
    ccn = std::make_unique<ccn_node_runtime>(on_fatal);
    err = ccn->start(sys, s, true);
    if (err.empty())
      std::cout << "READY role=ccn id=" << ccn->id() << " http=" << s.http_host << ':'
                << ccn->http_port() << " node=" << s.node_host << ':' << ccn->node_port()
                << std::endl;
  } else if (role == "crn") {
    crns.push_back(std::make_unique<crn_node_runtime>(on_fatal));
    err = crns[0]->start(sys, s);
    cgroup_roots.roots.push_back(crns[0]->cgroup_root());
    cgroup_roots.scratch_groups.push_back(crns[0]->scratch_group());
    if (err.empty())
      std::cout << "READY role=crn id=" << crns[0]->id() << " http=" << s.http_host << ':'
                << crns[0]->http_port() << std::endl;
  } else { // dev
    auto base = s.data_dir.empty() ? std::string{"./.alephd-dev"} : s.data_dir;
    auto cs = s;
    cs.data_dir = base + "/ccn";
    cs.http_port = static_cast<int32_t>(s.port_base + 4);
    cs.node_port = static_cast<int32_t>(s.port_base + 5);
    if (cs.name.empty())
      cs.name = "dev-ccn";
    ccn = std::make_unique<ccn_node_runtime>(on_fatal);
    err = ccn->start(sys, cs, true);
    std::string table;
    if (err.empty()) {
      table += "alephd dev: a local network on 127.0.0.1 (Ctrl-C stops it)\n";
      table += "  CCN  " + ccn->id() + "  http://" + s.http_host + ":" + std::to_string(ccn->http_port())
               + "  node port " + std::to_string(ccn->node_port()) + "\n";
    }
    for (uint32_t i = 0; err.empty() && i < s.dev_crns; ++i) {
      auto rs = s;
      rs.data_dir = base + "/crn-" + std::to_string(i);
      rs.http_port = static_cast<int32_t>(s.port_base + i);
      rs.name = "dev-crn-" + std::to_string(i);
      crns.push_back(std::make_unique<crn_node_runtime>(on_fatal));
      err = crns.back()->start(sys, rs, {ccn->node()});
      cgroup_roots.roots.push_back(crns.back()->cgroup_root());
      cgroup_roots.scratch_groups.push_back(crns.back()->scratch_group());
      if (err.empty())
        table += "  CRN  " + crns.back()->id() + "  http://" + s.http_host + ":"
                 + std::to_string(crns.back()->http_port()) + "  token " + crns.back()->login_token()
                 + "\n";
    }
    if (err.empty()) {
      std::cout << table << "Try: curl http://" << s.http_host << ':' << ccn->http_port()
                << "/api/v0/nodes\n";
      std::cout << "READY role=dev ccn=" << s.http_host << ':' << ccn->http_port() << std::endl;
    }
  }
  int rc = 0;
  if (!err.empty()) {
    std::cerr << "alephd: " << err << '\n';
    rc = 1;
  } else {
    auto sig = wait_for_signal(sigs);
    if (sig == SIGUSR1) {
      std::cerr << "alephd: a node actor failed; exiting (see the log above)\n";
      rc = 1;
    } else {
      spdlog::info("{}: draining, then stopping", sig == SIGINT ? "SIGINT" : "SIGTERM");
      // Every CRN drains at once: calls in flight finish, new calls get 503.
      std::vector<std::thread> drains;
      for (auto& c : crns)
        drains.emplace_back([&c] { c->drain(); });
      for (auto& t : drains)
        t.join();
    }
  }
  for (auto& c : crns)
    c->stop();
  if (ccn)
    ccn->stop();
  return rc;
}

} // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty()) {
    std::cerr << usage;
    return 2;
  }
  auto cmd = args[0];
  if (cmd == "--help" || cmd == "-h" || cmd == "help") {
    std::cout << usage << client_help() << '\n' << settings_help();
    return 0;
  }
  if (cmd == "--version" || cmd == "version") {
    std::cout << "alephd " << ALEPHD_VERSION << '\n';
    return 0;
  }
  // Before any signal is blocked: `logs --follow` stops on Ctrl-C.
  if (is_client_verb(cmd))
    return run_client(cmd, {args.begin() + 1, args.end()}, std::cout, std::cerr);
  if (cmd == "ledger")
    return run_ledger({args.begin() + 1, args.end()});
  if (cmd == "rewards")
    return run_rewards({args.begin() + 1, args.end()});
  if (cmd == "sim") {
    std::vector<std::string> rest{args.begin() + 1, args.end()};
    if (!rest.empty() && (rest[0] == "--help" || rest[0] == "-h")) {
      std::cout << sim::help();
      return 0;
    }
    // The nodes it launches are this very binary.
    std::error_code ec;
    auto self = std::filesystem::read_symlink("/proc/self/exe", ec);
    return sim::run(rest, ec ? std::string(argv[0]) : self.string());
  }
  if (cmd != "ccn" && cmd != "crn" && cmd != "dev")
    return fail_usage("unknown command '" + cmd.substr(0, 60)
                      + "' (expected ccn, crn, dev or a client verb; see alephd --help)");
  args.erase(args.begin());
  settings s;
  bool help = false;
  if (auto err = parse_settings(args, s, help); !err.empty())
    return fail_usage(err);
  if (help) {
    std::cout << usage << settings_help();
    return 0;
  }
  try {
    return run(cmd, s);
  } catch (const std::exception& e) {
    std::cerr << "alephd: " << e.what() << '\n';
    return 1;
  }
}
