#include "sim/sim.hpp"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <thread>
#include <cmath>
#include <iomanip>
#include <limits>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "runtime/cgroup.hpp"
#include "runtime/config.hpp"
#include "runtime/crypto.hpp"
#include "sim/http_client.hpp"
#include "sim/in_process.hpp"
#include "sim/journal.hpp"
#include "sim/minimise.hpp"
#include "sim/options.hpp"
#include "sim/process.hpp"
#include "sim/proxy.hpp"
#include "sim/report.hpp"

namespace alephd::sim {

namespace {

using json = nlohmann::json;
using steady = std::chrono::steady_clock;
using ms = std::chrono::milliseconds;
using namespace std::chrono_literals;

const std::string localhost = "127.0.0.1";

std::atomic<bool> interrupted{false};

extern "C" void on_interrupt(int) {
  interrupted = true;
}

enum class node_state { up, down, paused };

const char* to_string(node_state s) {
  switch (s) {
    case node_state::up: return "up";
    case node_state::down: return "down";
    case node_state::paused: return "paused";
  }
  return "?";
}



struct node {
  std::string name;
  bool ccn = false;
  uint32_t group = 0;     ///< the CCN it starts on (a CCN: its own index)
  uint16_t http_port = 0;
  uint16_t node_port = 0; ///< CCN: where CRNs and peers connect (through proxies)
  std::vector<std::string> args;
  std::unique_ptr<process> proc;
  node_state state = node_state::down;
  std::vector<std::size_t> links_out; ///< proxies this node connects through
  std::vector<std::size_t> links_in;  ///< proxies that lead to this node
  std::string id;
};

struct acked_message {
  std::string hash;
  std::string ccn;
  double t = 0;
};

struct acked_file {
  std::string hash;
  std::string content; ///< checked byte for byte at the end
};

// Picks `n` distinct free loopback ports; their sockets stay open in `held` (so that nothing
// else, e.g. a proxy, gets them) until the caller closes them just before the nodes start.
std::vector<uint16_t> free_ports(std::size_t n, std::vector<int>& fds) {
  std::vector<uint16_t> out;
  for (std::size_t i = 0; i < n; ++i) {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0
        || ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0)
      break;
    fds.push_back(fd);
    out.push_back(ntohs(a.sin_port));
  }
  return out;
}

std::string dur(ms d) {
  return std::to_string(d.count()) + "ms";
}

// A tiny HTTP server in Perl (perl-base is Essential on Debian, and the sandbox sees the host's
// /usr): the code of every simulated program. Answers each request with its own pid.
const char* program_code = R"(#!/usr/bin/perl
use strict;
use IO::Socket::INET;
my $s = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => ($ENV{APP_PORT} || 8080),
                              Listen => 16, ReuseAddr => 1) or die "listen: $!";
while (my $c = $s->accept) {
  while (my $l = <$c>) { last if $l eq "\r\n" || $l eq "\n"; }
  my $b = "sim $ENV{SIM_NAME} pid $$\n";
  print $c "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: " . length($b)
         . "\r\nConnection: close\r\n\r\n" . $b;
  close $c;
}
)";

class simulation {
public:
  simulation(config c, std::string self) : cfg_(std::move(c)), self_(std::move(self)),
                                           work_rng_(cfg_.seed ^ 0x9e3779b97f4a7c15ull) {
    secret_ = std::string(32, '\0');
    std::mt19937_64 key_rng{cfg_.seed + 7};
    for (auto& ch : secret_)
      ch = static_cast<char>(key_rng() & 0xff);
    sender_ = crypto::eth_address(secret_).value_or("");
  }

  int run();
  /// What the run ended with (after run()).
  run_outcome outcome(int code) {
    std::lock_guard<std::mutex> lock{mu_};
    return run_outcome{code, events_, violations_, faults_started_, report_};
  }

private:
  // ---- time and records ----
  double now() const {
    return std::chrono::duration<double>(steady::now() - start_).count();
  }

  void record(std::string kind, std::string what, std::string node, std::string detail = {}) {
    std::lock_guard<std::mutex> lock{mu_};
    events_.push_back(event{now(), std::move(kind), std::move(what), std::move(node), std::move(detail)});
    auto& e = events_.back();
    if (e.kind != "observe")
      std::cout << "[" << std::fixed << std::setprecision(1) << e.t << "s] " << e.kind << " " << e.what << " "
                << e.node << (e.detail.empty() ? "" : " — " + e.detail) << std::endl;
  }

  // After Ctrl-C or SIGTERM the checks still running see nodes that are being stopped: what
  // they find is not the cluster's fault, and the run ends as interrupted (130).
  void violate(std::string invariant, std::string detail, std::set<std::string> nodes = {}) {
    if (interrupted)
      return;
    {
      std::lock_guard<std::mutex> lock{mu_};
      if (!violations_.empty() && violations_.back().invariant == invariant && violations_.back().detail == detail)
        return;
      violations_.push_back(violation{invariant, now(), detail, std::move(nodes)});
    }
    record("violation", invariant, "", detail);
    failed_ = true;
  }

  void checked(const std::string& invariant, bool ok, const std::string& detail = {}) {
    if (interrupted)
      return;
    std::lock_guard<std::mutex> lock{mu_};
    count_check(checks_, invariant, ok, detail);
  }

  // ---- nodes ----
  bool start(node& n) {
    auto log = dir_ / (n.name + ".log");
    std::unique_ptr<process> p;
    bool ok = false;
    // A port picked for a node can be taken before it binds it (any process's outgoing
    // connection may get it): the node then starts again on fresh ports.
    for (int attempt = 0; attempt < 3 && !ok && !interrupted; ++attempt) {
      std::error_code ec;
      auto before = std::filesystem::file_size(log, ec);
      if (ec)
        before = 0;
      auto args = n.args;
      args.push_back("--data-dir=" + (dir_ / n.name).string());
      args.push_back("--name=" + n.name);
      p = std::make_unique<process>(self_, args, log.string());
      ok = p->wait_ready(30s);
      if (ok || attempt == 2 || interrupted || !port_taken(log, before) || !new_ports(n))
        break;
      p.reset();
    }
    std::lock_guard<std::mutex> lock{mu_};
    n.proc = std::move(p);
    n.state = ok ? node_state::up : node_state::down;
    if (ok)
      n.id = n.proc->ready.count("id") ? n.proc->ready.at("id") : "";
    return ok;
  }

  // Did the node's log since `from` say that a port was taken?
  static bool port_taken(const std::filesystem::path& log, uintmax_t from) {
    std::ifstream in{log, std::ios::binary};
    in.seekg(static_cast<std::streamoff>(from));
    std::string line;
    while (std::getline(in, line))
      if (line.find("cannot listen on") != std::string::npos) // HTTP or node port
        return true;
    return false;
  }

  // Fresh ports for a node's HTTP (and, for a CCN, its node port: the proxies to it follow).
  bool new_ports(node& n) {
    std::vector<int> held;
    auto ports = free_ports(n.ccn ? 2 : 1, held);
    for (int fd : held)
      ::close(fd);
    if (ports.size() != (n.ccn ? 2u : 1u))
      return false;
    std::lock_guard<std::mutex> lock{mu_};
    auto set = [&](const std::string& flag, uint16_t port) {
      for (auto& a : n.args)
        if (a.rfind(flag, 0) == 0)
          a = flag + std::to_string(port);
    };
    n.http_port = ports[0];
    set("--port=", n.http_port);
    if (n.ccn) {
      n.node_port = ports[1];
      set("--node-port=", n.node_port);
      for (auto id : n.links_in)
        proxies_->retarget(id, n.node_port);
    }
    std::cerr << "alephd: sim: " << n.name << " found a port taken; starting it on " << n.http_port << '\n';
    return true;
  }

  void kill(node& n) {
    std::unique_ptr<process> p;
    {
      std::lock_guard<std::mutex> lock{mu_};
      p = std::move(n.proc);
      n.state = node_state::down;
    }
    if (p)
      p->kill9();
  }

  void pause(node& n, bool on) {
    std::lock_guard<std::mutex> lock{mu_};
    if (!n.proc)
      return;
    n.proc->signal(on ? SIGSTOP : SIGCONT);
    n.state = on ? node_state::paused : node_state::up;
  }

  struct view {
    std::string name;
    bool ccn;
    uint16_t http;
    node_state state;
    std::string id;
  };

  std::vector<view> snapshot() {
    std::lock_guard<std::mutex> lock{mu_};
    std::vector<view> out;
    for (auto& n : nodes_)
      out.push_back(view{n.name, n.ccn, n.http_port, n.state, n.id});
    return out;
  }

  node* find(const std::string& name) {
    for (auto& n : nodes_)
      if (n.name == name)
        return &n;
    return nullptr;
  }

  bool build_cluster();
  bool wait_linked(ms timeout);
  std::string store_file(const std::string& bytes, const std::string& what);
  bool publish_programs();
  bool publish_instances();
  std::string post(uint16_t ccn_http, const json& m, std::string* error = nullptr);
  json signed_message(const std::string& type, const json& content);

  void monitor_loop();
  void workload_loop();
  void one_fault(std::size_t number, const planned_fault& f);
  void sample_memory();
  void check_durability(const node& ccn, double since);
  void final_checks();
  void teardown();
  json report();

  std::map<std::string, std::set<std::string>> running_programs();
  std::map<std::string, std::string> crn_states_at(uint16_t http);

  config cfg_;
  std::string self_;
  std::filesystem::path dir_;
  bool made_dir_ = false;
  steady::time_point start_ = steady::now();
  std::mt19937_64 work_rng_;
  std::string secret_;
  std::string sender_;

  std::mutex mu_; // guards everything below, and the state of nodes_
  std::vector<node> nodes_;
  std::unique_ptr<link_proxies> proxies_;
  std::vector<std::string> mounts_; ///< tmpfs data dirs to unmount at the end
  std::vector<event> events_;
  std::vector<violation> violations_;
  json checks_ = json::object(); ///< per invariant: checked, failed, last
  std::vector<acked_message> messages_;
  std::vector<acked_file> files_;
  std::map<std::string, uint64_t> outcomes_; // workload operation -> status -> count
  std::vector<std::string> persistent_;
  std::vector<std::string> on_demand_;
  std::vector<std::string> instances_; ///< also in persistent_: checked as they are
  std::map<std::string, std::set<std::string>> placements_; // program -> CRNs running it
  std::vector<json> placement_log_;
  std::vector<pending_reschedule> reschedules_;
  std::vector<json> reschedule_log_;
  std::map<std::string, uint32_t> max_linked_seen_;
  uint64_t faults_applied_ = 0;
  std::vector<std::size_t> faults_started_;
  nlohmann::json report_;
  double memory_peak_mib_ = 0;
  std::vector<json> memory_log_;
  std::atomic<bool> failed_{false};
  std::atomic<bool> stop_workload_{false};
  std::atomic<bool> stop_monitor_{false};
};

bool simulation::build_cluster() {
  proxies_ = std::make_unique<link_proxies>();
  auto n_crns = cfg_.ccns * cfg_.crns_per_ccn + cfg_.extra_crns;
  std::vector<int> held;
  auto ports = free_ports(cfg_.ccns * 2 + n_crns, held);
  struct closer {
    std::vector<int>& fds;
    ~closer() {
      for (int fd : fds)
        ::close(fd);
      fds.clear();
    }
  } release_ports{held};
  if (ports.size() != cfg_.ccns * 2 + n_crns)
    return false;
  std::size_t next_port = 0;
  std::vector<std::string> timing{"--ccn.heartbeat-interval=" + dur(cfg_.heartbeat),
                                  "--ccn.failure-timeout=" + dur(cfg_.failure_timeout), "--log-level=info"};
  for (uint32_t i = 0; i < cfg_.ccns; ++i) {
    node n;
    n.name = node_names(cfg_)[i];
    n.ccn = true;
    n.group = i;
    n.http_port = ports[next_port++];
    n.node_port = ports[next_port++];
    nodes_.push_back(std::move(n));
  }
  auto add_crn = [&](const std::string& name, uint32_t group) {
    node n;
    n.name = name;
    n.group = group;
    n.http_port = ports[next_port++];
    nodes_.push_back(std::move(n));
  };
  auto names = node_names(cfg_);
  for (uint32_t i = 0; i < cfg_.ccns; ++i)
    for (uint32_t k = 0; k < cfg_.crns_per_ccn; ++k)
      add_crn(names[nodes_.size()], i);
  for (uint32_t e = 0; e < cfg_.extra_crns; ++e)
    add_crn(names[nodes_.size()], e % cfg_.ccns);
  // Every node link through a proxy of its own.
  for (auto& n : nodes_) {
    if (n.ccn) {
      n.args = {"ccn", "--port=" + std::to_string(n.http_port), "--node-port=" + std::to_string(n.node_port),
                "--ccn.max-linked-crns=" + std::to_string(cfg_.max_linked),
                "--ccn.replicas=" + std::to_string(cfg_.replicas),
                "--rewards.epoch-seconds=" + std::to_string(cfg_.epoch_seconds)};
      for (auto& peer : nodes_) {
        if (!peer.ccn || &peer == &n)
          continue;
        auto id = proxies_->add(peer.node_port);
        n.links_out.push_back(id);
        peer.links_in.push_back(id);
        n.args.push_back("--peer=127.0.0.1:" + std::to_string(proxies_->port(id)));
      }
    } else {
      // 8 GiB for programs, as aleph-vm reserves, plus 1 GiB for instances beyond the host's 2 GiB.
      n.args = {"crn", "--port=" + std::to_string(n.http_port), "--crn.vcpus=8", "--crn.memory-mib=11264",
                "--cache.max-bytes=268435456", "--ledger.sample-interval=" + dur(cfg_.sample_interval),
                "--execution.adopt-window=60s"};
      // Its own CCN first, the next one as the fail-over.
      std::string ccns;
      for (uint32_t k = 0; k < std::min<uint32_t>(cfg_.ccns, 2); ++k) {
        auto& target = nodes_[(n.group + k) % cfg_.ccns];
        auto id = proxies_->add(target.node_port);
        n.links_out.push_back(id);
        target.links_in.push_back(id);
        ccns += (ccns.empty() ? "" : ",") + std::string("127.0.0.1:") + std::to_string(proxies_->port(id));
      }
      n.args.push_back("--ccn=" + ccns);
    }
    n.args.insert(n.args.end(), timing.begin(), timing.end());
  }
  // disk-full faults fill a CCN's data dir: a small tmpfs of its own.
  auto plan = plan_faults(cfg_);
  if (std::any_of(plan.begin(), plan.end(), [](auto& f) { return f.kind == "disk-full"; }))
    for (auto& n : nodes_) {
      if (!n.ccn)
        continue;
      auto data = dir_ / n.name;
      std::filesystem::create_directories(data);
      auto opts = "size=" + std::to_string(cfg_.ccn_disk_mib) + "m,mode=0700";
      if (::mount("tmpfs", data.c_str(), "tmpfs", MS_NOSUID | MS_NODEV, opts.c_str()) != 0) {
        std::cerr << "alephd: sim: cannot mount a tmpfs on " << data.string() << ": " << std::strerror(errno) << '\n';
        return false;
      }
      mounts_.push_back(data.string());
    }
  // The proxies are bound: the nodes' ports are theirs now.
  for (int fd : held)
    ::close(fd);
  held.clear();
  for (auto& n : nodes_)
    if (n.ccn && !start(n)) {
      if (interrupted)
        return false;
      std::cerr << "alephd: sim: " << n.name << " did not start; its log:\n" << log_tail((dir_ / (n.name + ".log")).string()) << '\n';
      return false;
    }
  for (auto& n : nodes_)
    if (!n.ccn && !start(n)) {
      if (interrupted)
        return false;
      std::cerr << "alephd: sim: " << n.name << " did not start; its log:\n" << log_tail((dir_ / (n.name + ".log")).string()) << '\n';
      return false;
    }
  record("start", "cluster", "", std::to_string(cfg_.ccns) + " CCNs, " + std::to_string(n_crns) + " CRNs");
  return true;
}

std::map<std::string, std::string> simulation::crn_states_at(uint16_t http) {
  std::map<std::string, std::string> out;
  auto r = http_request(localhost, http, "GET", "/api/v0/nodes", {}, {}, 1s);
  if (r.status != 200)
    return out;
  auto j = json::parse(r.body, nullptr, false);
  if (j.is_object() && j.contains("crns") && j["crns"].is_array())
    for (auto& c : j["crns"])
      out[c.value("name", "")] = c.value("status", "");
  return out;
}

// Every CRN linked somewhere, as many as the CCNs can link.
bool simulation::wait_linked(ms timeout) {
  auto want = std::min<std::size_t>(nodes_.size() - cfg_.ccns, std::size_t{cfg_.ccns} * cfg_.max_linked);
  return eventually(
    [&] {
      std::set<std::string> linked;
      for (auto& v : snapshot())
        if (v.ccn && v.state == node_state::up)
          for (auto& [name, status] : crn_states_at(v.http))
            if (status == "linked")
              linked.insert(name);
      return linked.size() >= want || interrupted;
    },
    timeout);
}

json simulation::signed_message(const std::string& type, const json& content) {
  return sim::signed_message(sender_, secret_, type, content);
}

std::string simulation::post(uint16_t ccn_http, const json& m, std::string* error) {
  auto r = http_request(localhost, ccn_http, "POST", "/api/v0/messages", m.dump(),
                        {{"Content-Type", "application/json"}}, 5s);
  if (r.status == 200 || r.status == 202)
    return json::parse(r.body, nullptr, false).value("item_hash", "");
  if (error)
    *error = r.status == 0 ? r.error : std::to_string(r.status) + " " + r.body.substr(0, 200);
  return {};
}

// Uploads `bytes` to the first CCN and posts a STORE for them; the STORE's hash, or "" after a
// one-line error naming `what`.
std::string simulation::store_file(const std::string& bytes, const std::string& what) {
  auto& ccn = nodes_[0];
  auto up = http_request(localhost, ccn.http_port, "POST", "/api/v0/storage/add_file", bytes, {}, 30s);
  auto file = json::parse(up.body, nullptr, false);
  if (up.status != 200 || !file.is_object()) {
    std::cerr << "alephd: sim: uploading " << what << " failed: " << up.status << ' ' << up.body.substr(0, 200) << '\n';
    return {};
  }
  std::string err;
  auto store = post(ccn.http_port, signed_message("STORE", json{{"address", sender_}, {"time", 1700000000.0},
                                                                 {"item_type", "storage"},
                                                                 {"item_hash", file.value("hash", "")}}),
                    &err);
  if (store.empty())
    std::cerr << "alephd: sim: the STORE of " << what << " was refused: " << err << '\n';
  return store;
}

bool simulation::publish_programs() {
  if (cfg_.persistent + cfg_.on_demand == 0)
    return publish_instances();
  auto store = store_file(program_code, "the program code");
  if (store.empty())
    return false;
  std::string err;
  for (uint32_t i = 0; i < cfg_.persistent + cfg_.on_demand; ++i) {
    bool persistent = i < cfg_.persistent;
    auto name = (persistent ? "persistent-" : "on-demand-") + std::to_string(persistent ? i : i - cfg_.persistent);
    json content{{"type", "vm-function"}, {"address", sender_}, {"time", 1700000000.0 + i}, {"allow_amend", false},
                 {"code", {{"encoding", "plain"}, {"entrypoint", "app"}, {"ref", store}, {"interface", "binary"},
                           {"use_latest", false}}},
                 {"variables", {{"APP_PORT", "8080"}, {"SIM_NAME", name}}},
                 {"on", {{"http", true}, {"persistent", persistent}}},
                 {"environment", {{"reproducible", false}, {"internet", false}, {"aleph_api", false},
                                  {"shared_cache", false}}},
                 {"resources", {{"vcpus", 1}, {"memory", 64}, {"seconds", 10}}},
                 {"volumes", json::array()}};
    // Persistent programs go to the CCNs in turn: each CCN places the ones it accepted.
    auto& to = nodes_[persistent ? i % cfg_.ccns : 0];
    auto hash = post(to.http_port, signed_message("PROGRAM", content), &err);
    if (hash.empty()) {
      std::cerr << "alephd: sim: PROGRAM " << name << " was refused: " << err << '\n';
      return false;
    }
    (persistent ? persistent_ : on_demand_).push_back(hash);
    record("start", persistent ? "persistent-program" : "on-demand-program", to.name, hash.substr(0, 12));
  }
  return publish_instances();
}

// Instances (QEMU microVMs) on a 16 MiB ext4 rootfs, placed by the CCNs in turn. They are
// checked as persistent workloads are (exactly once, running again after their CRN's death).
bool simulation::publish_instances() {
  if (cfg_.instances == 0)
    return true;
  auto content = dir_ / "rootfs-content";
  auto image = dir_ / "rootfs.ext4";
  std::error_code ec;
  std::filesystem::create_directories(content / "etc", ec);
  std::ofstream{content / "etc" / "motd"} << "an alephd sim instance\n";
  auto mkfs = "truncate -s 16M '" + image.string() + "' && /sbin/mkfs.ext4 -q -F -d '" + content.string() + "' '"
              + image.string() + "' >/dev/null 2>&1";
  if (std::system(mkfs.c_str()) != 0) {
    std::cerr << "alephd: sim: cannot make the instances' rootfs image (mkfs.ext4, from e2fsprogs)\n";
    return false;
  }
  std::ifstream in{image, std::ios::binary};
  auto store = store_file({std::istreambuf_iterator<char>{in}, std::istreambuf_iterator<char>{}},
                          "the instances' rootfs");
  if (store.empty())
    return false;
  std::string err;
  for (uint32_t i = 0; i < cfg_.instances; ++i) {
    json content{{"address", sender_}, {"time", 1700001000.0 + i}, {"allow_amend", false},
                 {"environment", {{"reproducible", false}, {"internet", false}, {"aleph_api", false},
                                  {"shared_cache", false}}},
                 {"resources", {{"vcpus", 1}, {"memory", 256}, {"seconds", 30}}},
                 {"rootfs", {{"parent", {{"ref", store}, {"use_latest", false}}}, {"persistence", "host"},
                             {"size_mib", 64}}},
                 {"volumes", json::array()}};
    auto& to = nodes_[i % cfg_.ccns];
    auto hash = post(to.http_port, signed_message("INSTANCE", content), &err);
    if (hash.empty()) {
      std::cerr << "alephd: sim: INSTANCE " << i << " was refused: " << err << '\n';
      return false;
    }
    persistent_.push_back(hash);
    instances_.push_back(hash);
    record("start", "instance", to.name, hash.substr(0, 12));
  }
  return true;
}

std::map<std::string, std::set<std::string>> simulation::running_programs() {
  std::map<std::string, std::set<std::string>> out;
  for (auto& v : snapshot()) {
    if (v.ccn || v.state != node_state::up)
      continue;
    auto r = http_request(localhost, v.http, "GET", "/v2/about/executions/list", {}, {}, 1s);
    if (r.status != 200)
      continue;
    auto j = json::parse(r.body, nullptr, false);
    if (!j.is_object())
      continue;
    for (auto& p : persistent_)
      if (j.contains(p) && j[p].value("phase", "") == "running")
        out[p].insert(v.name);
  }
  return out;
}

// The memory of the whole cluster: the proportional set size (shared pages split among the
// processes that share them, so the sum is what the cluster really uses) of every process
// under the simulator — nodes, sandboxes and their programs.
void simulation::sample_memory() {
  std::map<int, int> parent;
  for (auto& e : std::filesystem::directory_iterator{"/proc"}) {
    auto name = e.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos)
      continue;
    std::ifstream stat{e.path() / "stat"};
    std::string line;
    std::getline(stat, line);
    auto paren = line.rfind(')');
    if (paren == std::string::npos)
      continue;
    std::istringstream rest{line.substr(paren + 2)};
    char state = 0;
    int ppid = 0;
    rest >> state >> ppid;
    parent[std::stoi(name)] = ppid;
  }
  auto self = static_cast<int>(::getpid());
  double kib = 0;
  for (auto& [pid, ppid] : parent) {
    int p = ppid;
    for (int depth = 0; p > 1 && p != self && depth < 64; ++depth)
      p = parent.count(p) ? parent[p] : 0;
    if (p != self)
      continue;
    std::ifstream in{"/proc/" + std::to_string(pid) + "/smaps_rollup"};
    for (std::string key; in >> key;) {
      if (key == "Pss:") {
        double v = 0;
        in >> v;
        kib += v;
        break;
      }
      in.ignore(std::numeric_limits<std::streamsize>::max(), '\n');
    }
  }
  std::lock_guard<std::mutex> lock{mu_};
  memory_peak_mib_ = std::max(memory_peak_mib_, kib / 1024);
  memory_log_.push_back(json{{"t", std::round(now() * 10) / 10}, {"mib", std::round(kib / 1024)}});
}

void simulation::monitor_loop() {
  auto last_memory = steady::now() - 1h;
  while (!stop_monitor_) {
    auto round = steady::now();
    if (round - last_memory >= 1s) {
      sample_memory();
      last_memory = round;
    }
    // At most max-linked-crns linked at each CCN, at every sample.
    for (auto& v : snapshot()) {
      if (!v.ccn || v.state != node_state::up)
        continue;
      auto states = crn_states_at(v.http);
      if (states.empty())
        continue;
      uint32_t linked = 0;
      std::set<std::string> who{v.name};
      for (auto& [name, status] : states)
        if (status == "linked") {
          ++linked;
          who.insert(name);
        }
      {
        std::lock_guard<std::mutex> lock{mu_};
        max_linked_seen_[v.name] = std::max(max_linked_seen_[v.name], linked);
      }
      checked("max-linked-crns", linked <= cfg_.max_linked);
      if (linked > cfg_.max_linked)
        violate("max-linked-crns", v.name + " has " + std::to_string(linked) + " CRNs linked, more than "
                                     + std::to_string(cfg_.max_linked), who);
    }
    // Where the persistent programs run; reschedules after a CRN's death (seen only by a round
    // that began after the death).
    auto began = now();
    auto running = running_programs();
    auto t = now();
    std::vector<pending_reschedule> late;
    {
      std::lock_guard<std::mutex> lock{mu_};
      for (auto& p : persistent_) {
        auto& now_on = running[p];
        if (now_on != placements_[p]) {
          placements_[p] = now_on;
          placement_log_.push_back(json{{"t", std::round(t * 1000) / 1000}, {"program", p},
                                        {"crns", std::vector<std::string>(now_on.begin(), now_on.end())}});
        }
      }
      for (auto it = reschedules_.begin(); it != reschedules_.end();) {
        auto& on = running[it->program];
        if (!on.empty() && began > it->died) {
          reschedule_log_.push_back(json{{"program", it->program}, {"from", it->crn},
                                         {"to", std::vector<std::string>(on.begin(), on.end())},
                                         {"died", it->died}, {"latency_s", t - it->died}, {"cause", it->cause}});
          it = reschedules_.erase(it);
        } else if (t - it->died > std::chrono::duration<double>(cfg_.reschedule_deadline).count()) {
          late.push_back(*it);
          it = reschedules_.erase(it);
        } else {
          ++it;
        }
      }
    }
    for (auto& l : late) {
      checked("reschedule-deadline", false);
      violate("reschedule-deadline", "persistent program " + l.program.substr(0, 12) + " of " + l.crn
                                       + " is not running anywhere " + std::to_string(cfg_.reschedule_deadline.count())
                                       + "ms after its CRN died", {l.crn});
    }
    auto left = cfg_.poll - std::chrono::duration_cast<ms>(steady::now() - round);
    if (left.count() > 0)
      std::this_thread::sleep_for(left);
  }
}

void simulation::workload_loop() {
  double total = cfg_.messages_per_s + cfg_.uploads_per_s + cfg_.calls_per_s;
  if (total <= 0)
    return;
  std::exponential_distribution<double> gap{total};
  uint64_t n = 0;
  while (!stop_workload_) {
    std::this_thread::sleep_for(std::chrono::duration<double>(std::min(gap(work_rng_), 2.0)));
    if (stop_workload_)
      break;
    double pick = std::uniform_real_distribution<double>{0, total}(work_rng_);
    auto nodes = snapshot();
    std::vector<view> ccns, crns;
    for (auto& v : nodes)
      if (v.state == node_state::up)
        (v.ccn ? ccns : crns).push_back(v);
    auto choose = [&](const std::vector<view>& from) { return from[work_rng_() % from.size()]; };
    ++n;
    if (pick < cfg_.messages_per_s) {
      if (ccns.empty())
        continue;
      auto to = choose(ccns);
      auto m = signed_message("POST", json{{"address", sender_}, {"time", 1700000000.0 + static_cast<double>(n)},
                                           {"type", "sim"}, {"content", {{"n", n}, {"seed", cfg_.seed}}}});
      auto t = now();
      std::string err;
      auto hash = post(to.http, m, &err);
      std::lock_guard<std::mutex> lock{mu_};
      if (!hash.empty())
        messages_.push_back(acked_message{hash, to.name, t});
      ++outcomes_[hash.empty() ? "message refused" : "message acked"];
    } else if (pick < cfg_.messages_per_s + cfg_.uploads_per_s) {
      if (ccns.empty())
        continue;
      auto to = choose(ccns);
      std::string content(cfg_.upload_bytes, '\0');
      for (auto& ch : content)
        ch = static_cast<char>(work_rng_() & 0xff);
      auto up = http_request(localhost, to.http, "POST", "/api/v0/storage/add_file", content, {}, 10s);
      auto hash = up.status == 200 ? json::parse(up.body, nullptr, false).value("hash", "") : "";
      bool acked = false;
      if (!hash.empty()) {
        auto store = post(to.http, signed_message("STORE", json{{"address", sender_}, {"time", 1700000000.0 + static_cast<double>(n)},
                                                                {"item_type", "storage"}, {"item_hash", hash}}));
        acked = !store.empty();
      }
      std::lock_guard<std::mutex> lock{mu_};
      if (acked)
        files_.push_back(acked_file{hash, std::move(content)});
      ++outcomes_[acked ? "upload acked" : "upload refused"];
    } else {
      if (crns.empty() || on_demand_.empty())
        continue;
      auto to = choose(crns);
      auto& program = on_demand_[work_rng_() % on_demand_.size()];
      auto r = http_request(localhost, to.http, "GET", "/vm/" + program + "/", {}, {}, 15s);
      std::lock_guard<std::mutex> lock{mu_};
      ++outcomes_["call " + (r.status == 0 ? std::string("no answer") : std::to_string(r.status))];
    }
  }
}

// Messages a CCN acknowledged before it died are there after its restart.
void simulation::check_durability(const node& ccn, double since) {
  std::vector<std::string> hashes;
  {
    std::lock_guard<std::mutex> lock{mu_};
    for (auto& m : messages_)
      if (m.ccn == ccn.name && m.t < since)
        hashes.push_back(m.hash);
  }
  for (auto& h : hashes) {
    bool ok = eventually([&] {
      return http_request(localhost, ccn.http_port, "GET", "/api/v0/messages/" + h, {}, {}, 2s).status == 200;
    }, 5s);
    checked("acked-messages-survive", ok);
    if (!ok) {
      violate("acked-messages-survive", "message " + h + " acknowledged by " + ccn.name
                                          + " is gone after its restart", {ccn.name});
      return;
    }
  }
}

void simulation::one_fault(std::size_t number, const planned_fault& f) {
  auto hold = [&](ms d) {
    auto until = steady::now() + d;
    while (steady::now() < until && !interrupted)
      std::this_thread::sleep_for(20ms);
  };
  auto tag = "#" + std::to_string(number);
  faults_started_.push_back(number);
  bool host = f.kind == "host-kill" || f.kind == "host-pause";
  node* n = host ? nullptr : &nodes_.at(f.target);
  if (host) {
    // The CRN that runs persistent program number `target`, as the monitor saw it last.
    std::lock_guard<std::mutex> lock{mu_};
    if (f.target < persistent_.size())
      if (auto& on = placements_[persistent_[f.target]]; !on.empty())
        n = find(*on.begin());
  }
  if (!n) {
    record("observe", f.kind, "", tag + " skipped: no CRN runs that program now");
    return;
  }
  ++faults_applied_;
  if (f.kind == "crn-kill" || f.kind == "ccn-kill" || f.kind == "host-kill" || f.kind == "ccn-wipe"
      || f.kind == "restart" || f.kind == "flap") {
    // The persistent programs it runs must run again within the deadline.
    if (!n->ccn) {
      std::lock_guard<std::mutex> lock{mu_};
      for (auto& [program, on] : placements_)
        if (on.count(n->name))
          reschedules_.push_back(pending_reschedule{program, n->name, now()});
    }
    auto died = now();
    if (f.kind == "restart") {
      std::lock_guard<std::mutex> lock{mu_};
      if (n->proc)
        n->proc->signal(SIGTERM);
    }
    record("fault", f.kind, n->name, tag);
    if (f.kind == "restart") {
      std::unique_ptr<process> p;
      {
        std::lock_guard<std::mutex> lock{mu_};
        p = std::move(n->proc);
        n->state = node_state::down;
      }
      if (int rc = p ? p->wait_exit(30s) : 0; rc != 0) {
        if (rc < 0)
          p->kill9();
        violate("clean-stop", n->name + (rc < 0 ? " did not stop within 30 s of SIGTERM"
                                                : " exited " + std::to_string(rc) + " on SIGTERM, not 0"),
                {n->name});
      }
    } else {
      kill(*n);
    }
    if (f.kind == "ccn-wipe") {
      std::error_code ec;
      std::filesystem::remove_all(dir_ / n->name, ec); // its disk is lost
    }
    hold(f.kind == "restart" ? 0ms : f.kind == "flap" ? std::min(cfg_.down_time, ms{300}) : cfg_.down_time);
    if (interrupted)
      return; // the node stays down: every node is about to stop
    bool ok = start(*n);
    record("heal", "restart", n->name, ok ? "" : "did not start again");
    if (!ok)
      violate("node-restarts", n->name + " did not start again after " + f.kind, {n->name});
    else if (n->ccn)
      check_durability(*n, died);
  } else if (f.kind == "crn-pause" || f.kind == "ccn-pause" || f.kind == "host-pause") {
    // A paused CRN's programs are out of sight: past failure-timeout its CCN places them again,
    // and the copies it left must stop once it continues.
    if (!n->ccn) {
      std::lock_guard<std::mutex> lock{mu_};
      for (auto& [program, on] : placements_)
        if (on.count(n->name))
          reschedules_.push_back(pending_reschedule{program, n->name, now(), "pause"});
    }
    pause(*n, true);
    record("fault", f.kind, n->name, tag);
    hold(cfg_.pause_time);
    pause(*n, false);
    record("heal", "continue", n->name);
  } else if (f.kind == "partition") {
    // A CRN from the CCN it starts on, or a CCN from its peers.
    std::vector<std::size_t> links;
    std::string detail;
    if (!n->ccn) {
      links.push_back(n->links_out.front());
      detail = "from " + nodes_[n->group].name;
    } else {
      for (auto l : n->links_out)
        links.push_back(l);
      for (auto& other : nodes_)
        if (other.ccn && &other != n)
          for (auto l : other.links_out)
            if (std::find(n->links_in.begin(), n->links_in.end(), l) != n->links_in.end())
              links.push_back(l);
      detail = "from its peer CCNs";
    }
    for (auto l : links)
      proxies_->partition(l, true);
    record("fault", "partition", n->name, tag + " " + detail);
    hold(cfg_.partition_time);
    for (auto l : links)
      proxies_->partition(l, false);
    record("heal", "partition", n->name);
  } else if (f.kind == "disk-full") {
    // Fill the CCN's tmpfs; it must keep answering, and refuse writes with 507, not fail.
    auto filler = dir_ / n->name / "sim-filler";
    {
      std::ofstream out{filler, std::ios::binary};
      std::string chunk(1 << 20, '\0');
      for (uint64_t i = 0; i <= cfg_.ccn_disk_mib && out.write(chunk.data(), static_cast<std::streamsize>(chunk.size())); ++i)
        out.flush();
    }
    record("fault", "disk-full", n->name, tag);
    auto until = steady::now() + cfg_.partition_time;
    int probes = 0, refused = 0;
    while (steady::now() < until && !interrupted) {
      auto info = http_request(localhost, n->http_port, "GET", "/api/v0/info", {}, {}, 2s);
      checked("serves-with-a-full-disk", info.status == 200);
      if (info.status != 200)
        violate("serves-with-a-full-disk", n->name + " did not answer GET /api/v0/info with its disk full ("
                                             + (info.status ? std::to_string(info.status) : info.error) + ")",
                {n->name});
      auto up = http_request(localhost, n->http_port, "POST", "/api/v0/storage/add_file", std::string(1 << 20, 'd'), {}, 10s);
      ++probes;
      bool ok = up.status == 200 || up.status == 507;
      refused += up.status == 507 ? 1 : 0;
      checked("full-disk-answers-507", ok);
      if (!ok)
        violate("full-disk-answers-507", n->name + " answered an upload with its disk full with "
                                           + (up.status ? std::to_string(up.status) + " " + up.body.substr(0, 120) : up.error),
                {n->name});
      std::this_thread::sleep_for(300ms);
    }
    std::error_code ec;
    std::filesystem::remove(filler, ec);
    record("heal", "disk-full", n->name, std::to_string(refused) + " of " + std::to_string(probes) + " uploads refused with 507");
  } else if (f.kind == "slow-link") {
    auto l = n->links_out.front();
    proxies_->delay(l, cfg_.slow_delay);
    record("fault", "slow-link", n->name, tag + " +" + dur(cfg_.slow_delay) + " to " + nodes_[n->group].name);
    hold(cfg_.partition_time);
    proxies_->delay(l, 0ms);
    record("heal", "slow-link", n->name);
  }
}

void simulation::final_checks() {
  auto deadline = steady::now() + cfg_.converge_timeout;
  auto left = [&] { return std::max(ms{1000}, std::chrono::duration_cast<ms>(deadline - steady::now())); };
  // Inside one pass too: a node that accepts and never answers must not stretch the checks.
  auto over = [&] { return interrupted || steady::now() > deadline + 1s; };
  // Waits for a check to hold, and no longer once the run is interrupted.
  auto settle = [&](auto fn, ms timeout) { return eventually([&] { return interrupted || fn(); }, timeout); };
  auto nodes = snapshot();
  // Every CRN linked or waiting somewhere, and as many linked as the CCNs can take.
  bool linked = wait_linked(left());
  checked("cluster-converges", linked);
  if (!linked)
    violate("cluster-converges", "not every CRN is linked within converge-timeout after the faults");
  // A program whose CRN died late in the run may still be starting elsewhere (a microVM under
  // TCG takes seconds): the monitor sees it run again, or past its deadline records it as late.
  for (;;) {
    {
      std::lock_guard<std::mutex> lock{mu_};
      if (reschedules_.empty())
        break;
    }
    if (over())
      break;
    std::this_thread::sleep_for(100ms);
  }
  // Acknowledged messages: readable at every CCN (durable and replicated).
  std::vector<std::pair<std::string, std::string>> missing; // ccn, hash
  {
    std::lock_guard<std::mutex> lock{mu_};
    for (auto& v : nodes)
      if (v.ccn)
        for (auto& m : messages_)
          missing.emplace_back(v.name, m.hash);
  }
  auto port_of = [&](const std::string& name) { return find(name)->http_port; };
  auto total = missing.size();
  settle([&] {
    std::erase_if(missing, [&](auto& p) {
      if (over())
        return false;
      return http_request(localhost, port_of(p.first), "GET", "/api/v0/messages/" + p.second, {}, {}, 2s).status == 200;
    });
    return missing.empty();
  }, left());
  checked("acked-messages-everywhere", missing.empty(), std::to_string(total) + " reads");
  if (!missing.empty())
    violate("acked-messages-everywhere", std::to_string(missing.size()) + " of " + std::to_string(total)
                                           + " acknowledged message copies missing, e.g. " + missing[0].second
                                           + " at " + missing[0].first, {missing[0].first});
  if (interrupted)
    return;
  // Stored files: the same bytes from every CCN, and on enough CRNs.
  std::vector<std::pair<std::string, std::size_t>> file_missing; // ccn, file index
  std::size_t n_files = 0;
  {
    std::lock_guard<std::mutex> lock{mu_};
    n_files = files_.size();
  }
  for (auto& v : nodes)
    if (v.ccn)
      for (std::size_t i = 0; i < n_files; ++i)
        file_missing.emplace_back(v.name, i);
  settle([&] {
    std::erase_if(file_missing, [&](auto& p) {
      if (over())
        return false;
      auto r = http_request(localhost, port_of(p.first), "GET", "/api/v0/storage/raw/" + files_[p.second].hash, {}, {}, 5s);
      return r.status == 200 && r.body == files_[p.second].content;
    });
    return file_missing.empty();
  }, left());
  checked("stored-files-everywhere", file_missing.empty(), std::to_string(n_files) + " files");
  if (!file_missing.empty())
    violate("stored-files-everywhere", std::to_string(file_missing.size()) + " stored file copies missing or wrong, e.g. "
                                         + files_[file_missing[0].second].hash + " at " + file_missing[0].first,
            {file_missing[0].first});
  uint32_t n_crns = 0;
  for (auto& v : nodes)
    n_crns += v.ccn ? 0 : 1;
  auto want = std::min(cfg_.replicas, n_crns);
  std::map<std::string, uint32_t> holders;
  bool replicas_ok = settle([&] {
    holders.clear();
    for (std::size_t i = 0; i < n_files && !over(); ++i)
      for (auto& v : nodes)
        if (!v.ccn && http_request(localhost, v.http, "HEAD", "/api/v0/storage/raw/" + files_[i].hash, {}, {}, 2s).status == 200)
          ++holders[files_[i].hash];
    for (std::size_t i = 0; i < n_files; ++i)
      if (holders[files_[i].hash] < want)
        return false;
    return true;
  }, left());
  checked("replica-count", replicas_ok);
  if (!replicas_ok)
    for (std::size_t i = 0; i < n_files; ++i)
      if (holders[files_[i].hash] < want) {
        violate("replica-count", "file " + files_[i].hash + " is on " + std::to_string(holders[files_[i].hash])
                                   + " CRNs, fewer than " + std::to_string(want));
        break;
      }
  if (interrupted)
    return;
  // Each persistent program runs exactly once.
  std::map<std::string, std::set<std::string>> running;
  bool once = settle([&] {
    running = running_programs();
    for (auto& p : persistent_)
      if (running[p].size() != 1)
        return false;
    return true;
  }, left());
  checked("persistent-exactly-once", once);
  if (!once)
    for (auto& p : persistent_)
      if (running[p].size() != 1) {
        std::string where;
        for (auto& c : running[p])
          where += (where.empty() ? "" : ", ") + c;
        violate("persistent-exactly-once", "persistent program " + p.substr(0, 12) + " runs on "
                                             + std::to_string(running[p].size()) + " CRNs (" + where + ")",
                running[p]);
        break;
      }
  if (interrupted)
    return;
  // Metering: each entry of each CRN's ledger counted by exactly one CCN, as the CRN wrote it.
  for (auto& crn : nodes) {
    if (interrupted)
      return;
    if (crn.ccn || crn.state != node_state::up)
      continue;
    std::map<uint64_t, std::string> ledger;
    for (uint64_t after = 0;;) {
      auto r = http_request(localhost, crn.http, "GET", "/about/executions/records?after=" + std::to_string(after) + "&limit=1000", {}, {}, 5s);
      auto j = json::parse(r.body, nullptr, false);
      if (r.status != 200 || !j.is_object() || !j.contains("records") || j["records"].empty())
        break;
      for (auto& e : j["records"])
        ledger[e.value("seq", uint64_t{0})] = e.value("hash", "");
      after = j.value("next", after);
    }
    if (ledger.empty())
      continue;
    auto head = ledger.rbegin()->first;
    std::map<uint64_t, std::vector<std::pair<std::string, std::string>>> counted; // seq -> (ccn, hash)
    bool covered = settle([&] {
      counted.clear();
      for (auto& v : nodes) {
        if (!v.ccn)
          continue;
        for (uint64_t after = 0;;) {
          auto r = http_request(localhost, v.http, "GET", "/api/v0/usage/" + crn.id + "?after=" + std::to_string(after) + "&limit=1000", {}, {}, 5s);
          auto j = json::parse(r.body, nullptr, false);
          if (r.status != 200 || !j.is_object() || !j.contains("records") || j["records"].empty())
            break;
          for (auto& e : j["records"])
            counted[e.value("seq", uint64_t{0})].emplace_back(v.name, e.value("hash", ""));
          after = j.value("next", after);
        }
      }
      for (auto& [seq, hash] : ledger)
        if (seq <= head && !counted.count(seq))
          return false;
      return true;
    }, left());
    std::string problem;
    for (auto& [seq, where] : counted) {
      if (seq > head)
        break; // written after the ledger was read
      if (where.size() > 1)
        problem = "entry " + std::to_string(seq) + " of " + crn.name + " is counted by " + std::to_string(where.size()) + " CCNs";
      else if (!ledger.count(seq) || ledger[seq] != where[0].second)
        problem = "entry " + std::to_string(seq) + " of " + crn.name + " at " + where[0].first + " is not the one the CRN wrote";
      if (!problem.empty())
        break;
    }
    if (problem.empty() && !covered)
      for (auto& [seq, hash] : ledger)
        if (seq <= head && !counted.count(seq)) {
          problem = "entry " + std::to_string(seq) + " of " + crn.name + " is counted by no CCN";
          break;
        }
    checked("metering-exactly-once", problem.empty(), std::to_string(ledger.size()) + " entries of " + crn.name);
    if (!problem.empty())
      violate("metering-exactly-once", problem, {crn.name});
  }
  if (interrupted)
    return;
  // Rewards: each epoch's payouts add up to its pools.
  for (auto& v : nodes) {
    if (!v.ccn)
      continue;
    auto r = http_request(localhost, v.http, "GET", "/api/v0/rewards", {}, {}, 5s);
    if (r.status != 200)
      continue;
    auto j = json::parse(r.body, nullptr, false);
    for (auto model : {"legacy", "usage"}) {
      if (!j.is_object() || !j.contains(model))
        continue;
      auto m = j[model].is_string() ? json::parse(j[model].get<std::string>(), nullptr, false) : j[model];
      if (!m.is_object() || !m.contains("pools"))
        continue;
      for (auto& [pool, amount] : m["pools"].items()) {
        double paid = 0;
        for (auto& p : m.value("payouts", json::array()))
          if (p.value("pool", "") == pool)
            paid += p.value("amount", 0.0);
        double want_total = amount.get<double>();
        bool ok = paid <= want_total + 1e-6 && (paid >= want_total - 1e-6 * std::max(1.0, want_total) || paid == 0);
        checked("rewards-sum-to-pools", ok, v.name + " " + model + " " + pool);
        if (!ok)
          violate("rewards-sum-to-pools", v.name + ": the " + std::string(model) + " payouts of pool " + pool
                                            + " add up to " + std::to_string(paid) + ", not " + std::to_string(want_total),
                  {v.name});
      }
    }
  }
}

void simulation::teardown() {
  std::vector<node*> live;
  {
    std::lock_guard<std::mutex> lock{mu_};
    for (auto& n : nodes_)
      if (n.proc) {
        n.proc->signal(SIGCONT);
        n.proc->signal(SIGTERM);
        live.push_back(&n);
      }
  }
  auto deadline = steady::now() + 20s; // for all of them together
  for (auto* n : live) {
    auto left = std::chrono::duration_cast<ms>(deadline - steady::now());
    if (n->proc->wait_exit(std::max(left, ms{10})) < 0)
      n->proc->kill9();
  }
  proxies_.reset();
  // A sandbox or microVM left by a killed CRN outlives it for the adopt window: whatever still
  // runs from the work dir goes now (QEMU; a sandbox's process is the agent, which bwrap
  // execs, and its command line does not name the work dir: its cgroup finds it, below).
  std::error_code ec;
  for (auto& e : std::filesystem::directory_iterator{"/proc", ec}) {
    auto name = e.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos)
      continue;
    std::ifstream in{e.path() / "cmdline", std::ios::binary};
    std::string cmdline{std::istreambuf_iterator<char>{in}, std::istreambuf_iterator<char>{}};
    int pid = std::stoi(name);
    if (pid != ::getpid() && cmdline.find(dir_.string() + "/") != std::string::npos)
      ::kill(pid, SIGKILL);
  }
  // The killed CRNs' execution cgroups: what still runs in them, the groups and their parent
  // (a CRN that exits cleanly removes its parent group itself once it is empty).
  std::vector<std::string> crn_ids;
  {
    std::lock_guard<std::mutex> lock{mu_};
    for (auto& n : nodes_)
      if (!n.ccn && !n.id.empty())
        crn_ids.push_back(n.id);
  }
  for (const auto& id : crn_ids)
    cgroup::remove_orphans(cgroup::root_name_for(id), nullptr);
  for (auto& m : mounts_)
    ::umount2(m.c_str(), MNT_DETACH);
  mounts_.clear();
}

json simulation::report() {
  std::lock_guard<std::mutex> lock{mu_};
  json nodes = json::array();
  for (auto& n : nodes_)
    nodes.push_back(json{{"name", n.name}, {"role", n.ccn ? "ccn" : "crn"}, {"group", n.group},
                         {"http", "127.0.0.1:" + std::to_string(n.http_port)}, {"id", n.id}, {"state", to_string(n.state)}});
  return json{
    {"seed", cfg_.seed},
    {"result", violations_.empty() ? "pass" : "fail"},
    {"duration_s", now()},
    {"config", config_json(cfg_)},
    {"nodes", nodes},
    {"events", to_json(events_)},
    {"faults", faults_applied_},
    {"workload", {{"messages_acked", messages_.size()}, {"files_acked", files_.size()},
                  {"persistent_programs", persistent_}, {"on_demand_programs", on_demand_},
                  {"instances", instances_},
                  {"outcomes", outcomes_}}},
    {"placements", placement_log_},
    {"reschedules", reschedule_log_},
    {"reschedule_latency_s", latency_summary(reschedule_log_)},
    {"max_linked_seen", max_linked_seen_},
    {"memory_peak_mib", std::round(memory_peak_mib_)},
    {"memory", memory_log_},
    {"plan", [&] {
       json p = json::array();
       for (auto& f : plan_faults(cfg_))
         p.push_back(describe(cfg_, f));
       return p;
     }()},
    {"link_connections", proxies_ ? proxies_->connections() : 0},
    {"invariants", checks_},
    {"violations", to_json(violations_)},
  };
}

// The seed and the events that show the first violation: the faults and heals of the nodes it
// involves (all faults when it names none), up to the moment it was seen.
int simulation::run() {
  if (interrupted)
    return 130;
  if (auto err = make_work_dir(cfg_.dir, std::filesystem::temp_directory_path(), dir_, made_dir_); !err.empty()) {
    std::cerr << "alephd: sim: " << err << '\n';
    return cfg_.dir.empty() ? 3 : 2;
  }
  interrupt_handler on_signal{on_interrupt};
  std::cout << "alephd sim: seed " << cfg_.seed << ", " << cfg_.ccns << " CCNs x " << cfg_.crns_per_ccn << " CRNs"
            << (cfg_.extra_crns ? " + " + std::to_string(cfg_.extra_crns) : "") << ", work dir " << dir_.string()
            << std::endl;
  int code = 0;
  if (!build_cluster() || !wait_linked(cfg_.converge_timeout) || interrupted) {
    if (!interrupted)
      std::cerr << "alephd: sim: the cluster did not come up (logs in " << dir_.string() << ")\n";
    code = 3;
  } else if (!publish_programs()) {
    code = 3;
  }
  if (code == 0 && !interrupted) {
    record("start", "workload", "");
    std::thread monitor{[this] { monitor_loop(); }};
    std::thread workload{[this] { workload_loop(); }};
    auto end = steady::now() + cfg_.duration;
    std::size_t n = 0;
    auto plan = plan_faults(cfg_);
    // The first fault after one interval, so that placements are seen first.
    auto next = steady::now() + cfg_.fault_interval;
    // A rolling restart goes on until every node has restarted.
    auto more = [&] { return steady::now() < end || (cfg_.scenario == "rolling-restart" && n < plan.size()); };
    while (more() && !interrupted && !failed_) {
      if (n < plan.size() && steady::now() >= next && !interrupted) {
        // One interval from the start of one fault to the start of the next (at once when a
        // fault took longer).
        next = steady::now() + cfg_.fault_interval;
        if (selected(cfg_, n + 1))
          one_fault(n + 1, plan[n]);
        ++n;
      }
      std::this_thread::sleep_for(50ms);
    }
    stop_workload_ = true;
    workload.join();
    if (!interrupted && !failed_) {
      record("start", "converge", "");
      final_checks();
    }
    stop_monitor_ = true;
    monitor.join();
    code = failed_ ? 1 : 0;
  }
  if (interrupted) {
    std::cerr << "alephd: sim: interrupted; stopping every node\n";
    code = code == 0 || code == 3 ? 130 : code; // a violation seen before the signal stays 1
  }
  teardown();
  auto r = report();
  report_ = r; // written by the caller, with the shortest history of a violation
  std::cout << "alephd sim: " << (code == 0 ? "PASS" : "FAIL") << ": seed " << cfg_.seed << ", " << faults_applied_
            << " faults, " << r["workload"]["messages_acked"] << " messages and " << r["workload"]["files_acked"]
            << " files acknowledged, memory peak " << r["memory_peak_mib"] << " MiB";
  if (!r["reschedule_latency_s"]["p50"].is_null())
    std::cout << ", reschedule p50 " << r["reschedule_latency_s"]["p50"].get<double>() << " s";
  std::cout << std::endl;
  close_work_dir(dir_, made_dir_ && ((!cfg_.keep && code == 0) || cfg_.rerun), "logs and data");
  return code;
}

// Sends this process's terminal output nowhere while it lives (a minimiser's re-runs).
class silence {
public:
  silence() : null_{"/dev/null"}, out_(std::cout.rdbuf(null_.rdbuf())), err_(std::cerr.rdbuf(null_.rdbuf())) {}
  ~silence() {
    std::cout.rdbuf(out_);
    std::cerr.rdbuf(err_);
  }
  silence(const silence&) = delete;
  silence& operator=(const silence&) = delete;

private:
  std::ofstream null_;
  std::streambuf* out_;
  std::streambuf* err_;
};

// Set by Ctrl-C or SIGTERM between the re-runs of a search (each run has its own handler).
std::atomic<bool> search_interrupted{false};

extern "C" void on_interrupt_search(int) {
  search_interrupted = true;
}

// An argument as a POSIX shell reads it back.
std::string shell_quoted(const std::string& a) {
  if (!a.empty() && a.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_=./,:@%+") == std::string::npos)
    return a;
  std::string out = "'";
  for (char ch : a)
    out += ch == '\'' ? std::string{"'\\''"} : std::string(1, ch);
  return out + "'";
}

// The command that repeats a run with faults `only` and no search: the arguments it was given
// (the cluster's shape and the schedule depend on them), less any faults.only or
// run.minimise-runs and the report, HTML and work dir paths, plus those two options.
std::string repeat_command(const std::vector<std::string>& args, const std::vector<std::size_t>& only) {
  std::string out = "alephd sim";
  for (std::size_t i = 0; i < args.size(); ++i) {
    auto& a = args[i];
    // The search's own options, and the outputs of the failing run (not to be overwritten).
    bool ours = a.rfind("--faults.only", 0) == 0 || a.rfind("--run.minimise-runs", 0) == 0;
    bool output = a == "--report" || a == "--html" || a == "--dir" || a.rfind("--report=", 0) == 0
                  || a.rfind("--html=", 0) == 0 || a.rfind("--dir=", 0) == 0;
    if (ours || output) {
      if (a.find('=') == std::string::npos)
        ++i; // its value follows
      continue;
    }
    out += " " + shell_quoted(a);
  }
  return out + " --faults.only=" + fault_list(only) + " --run.minimise-runs=0";
}

// A run failed: runs it again with fewer of its faults (see minimise.hpp) as far as the limits
// allow, prints the shortest history found and how to repeat it, and adds it to the report.
void explain_violation(const config& c, const std::vector<std::string>& args, run_outcome& first,
                       const std::function<run_outcome(const config&)>& once) {
  const auto& invariant = first.violations.front().invariant;
  auto runs = c.minimise_runs < 0 ? (c.in_process ? 30 : 8) : c.minimise_runs;
  run_outcome best = first;
  shrink_result m;
  m.faults = first.faults_started;
  bool tried = runs > 0 && !first.faults_started.empty();
  std::string stop_reason;
  if (tried) {
    std::cout << "alephd sim: shortening the history: seed " << c.seed << " again with fewer of its "
              << first.faults_started.size() << " faults, until no fault can go and " << invariant
              << " still fails (at most " << runs << " runs, started within " << c.minimise_time.count() / 1000
              << " s)" << std::endl;
    config again = c;
    again.rerun = true;
    again.report.clear();
    again.html.clear();
    again.dir.clear();
    again.keep = false;
    // Ctrl-C between two re-runs ends the search too (a run installs its own handler).
    search_interrupted = false;
    interrupt_handler on_signal{on_interrupt_search};
    auto started = std::chrono::steady_clock::now();
    std::size_t k = 0;
    m = shrink(first.faults_started, [&](const std::vector<std::size_t>& subset) {
      trial t;
      if (search_interrupted) {
        t.stopped = true;
        stop_reason = "interrupted";
        return t;
      }
      auto sorted = subset;
      std::sort(sorted.begin(), sorted.end());
      again.only_faults = sorted;
      run_outcome o;
      {
        silence quiet;
        o = once(again);
      }
      // Anything but "held" (0) or "violated" (1) leaves the question open: the search stops.
      t.stopped = search_interrupted || (o.code != 0 && o.code != 1);
      t.failed = !t.stopped && o.code == 1 && !o.violations.empty() && o.violations.front().invariant == invariant;
      t.used = o.faults_started;
      if (t.stopped)
        stop_reason = o.code == 130 || search_interrupted ? "interrupted"
                                                          : "a re-run exited " + std::to_string(o.code);
      std::cout << "  run " << ++k << " with faults " << fault_list(sorted) << ": "
                << (t.stopped ? stop_reason
                    : t.failed ? invariant + " fails again"
                    : o.code == 1 && !o.violations.empty() ? "fails otherwise (" + o.violations.front().invariant + ")"
                                                            : "every invariant holds")
                << std::endl;
      if (t.failed)
        best = std::move(o);
      return t;
    }, shrink_limits{static_cast<std::size_t>(runs), c.minimise_time});
    std::cout << "alephd sim: " << m.faults.size() << " of " << first.faults_started.size() << " faults ("
              << fault_list(m.faults) << ") after " << m.runs << " runs in " << std::fixed << std::setprecision(1)
              << std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count() << " s"
              << (m.minimal ? "; no fault of them can go" : m.stopped ? "; stopped: " + stop_reason
                                                                      : "; a limit was reached first")
              << std::endl;
  }
  auto& v = best.violations.front();
  // The faults to repeat: those of the shortest history, or the run's own.
  auto faults = tried ? m.faults : first.faults_started;
  auto command = repeat_command(args, faults);
  auto repeat = (c.in_process ? "replays exactly: " : "repeats the schedule, not the timing: ") + command;
  std::string heading;
  auto of = std::to_string(m.faults.size()) + " of " + std::to_string(first.faults_started.size()) + " faults";
  if (!tried)
    heading = "events that show it";
  else if (m.minimal && c.in_process)
    heading = "the shortest history found: " + of + ", none of which can go";
  else if (m.minimal)
    heading = "the shortest history found: " + of + "; without any one of them a re-run held (once each)";
  else
    heading = "the shortest history found before the search stopped: " + of;
  print_history(best.events, v, c.seed, repeat, heading, tried);
  if (!first.report.is_object())
    return;
  first.report["shortest_history"] = nlohmann::json{
    {"minimised", tried}, {"runs", m.runs}, {"minimal", tried && m.minimal}, {"exact_replay", c.in_process},
    {"stopped", stop_reason.empty() ? nlohmann::json(nullptr) : nlohmann::json(stop_reason)},
    {"faults_in_run", first.faults_started}, {"faults", faults}, {"repeat", command},
    {"violation", to_json(std::vector<violation>{v})[0]}, {"events", history_json(best.events, v, tried)}};
}

void write_reports(const config& c, const nlohmann::json& r) {
  if (!r.is_object())
    return;
  if (!c.report.empty())
    std::ofstream{c.report} << r.dump(2) << '\n';
  if (!c.html.empty())
    std::ofstream{c.html} << html_report(r);
}

// One run and its reports; after a violation, the search for its shortest history and the
// reports again with it.
int run_and_report(const config& c, const std::vector<std::string>& args,
                   const std::function<run_outcome(const config&)>& once) {
  auto first = once(c);
  write_reports(c, first.report);
  if (first.code == 1 && !first.violations.empty()) {
    explain_violation(c, args, first, once);
    write_reports(c, first.report);
  }
  return first.code;
}

} // namespace

std::string help() {
  std::ostringstream out;
  out << "Usage: alephd sim [--config config/sim.ini] [--seed S] [--report out.json] [--html out.html]\n"
         "                  [--dir DIR] [--keep] [--plan] [--in-process] [--group.option=value ...]\n\n"
         "Starts N CCNs x 3 CRNs as separate alephd processes on 127.0.0.1 (node links through\n"
         "fault-injecting proxies), runs a workload, injects faults on a schedule drawn from the seed,\n"
         "checks the invariants after each fault and at the end, and stops every node.\n"
         "Exit: 0 every invariant held, 1 one was violated (seed and events printed), 2 bad usage,\n"
         "3 the cluster did not come up, 130 interrupted. --plan prints the fault schedule and exits;\n"
         "--keep keeps the work dir (logs, data) of a passing run; a failing run always keeps it\n"
         "(in-process, only with --keep or --dir: a seed replays exactly, and the stores are big).\n"
         "--in-process runs every node's actors in this one process on CAF's deterministic scheduler\n"
         "in virtual time instead (a seed replays exactly; see README: Cluster simulation).\n\nOptions (also in the INI file as `name = value` under [group]):\n";
  for (auto& o : options())
    out << "  --" << o.name << std::string(o.name[0] ? std::max<int>(2, 30 - static_cast<int>(std::strlen(o.name))) : 2, ' ')
        << o.help << '\n';
  return out.str();
}

int run(const std::vector<std::string>& args, const std::string& self) {
  config c;
  if (auto err = parse_args(args, c); !err.empty()) {
    std::cerr << "alephd: sim: " << err << '\n';
    return 2;
  }
  if (c.only_faults && !c.only_faults->empty()) {
    auto n = plan_faults(c).size();
    if (c.only_faults->back() > n) {
      std::cerr << "alephd: sim: faults.only: fault " << c.only_faults->back() << " is not in the schedule (it has "
                << n << "; see --plan)\n";
      return 2;
    }
  }
  if (c.plan_only) {
    std::cout << "fault schedule of seed " << c.seed << (c.scenario.empty() ? "" : ", scenario " + c.scenario)
              << ", one every " << c.fault_interval.count() << "ms:\n";
    std::size_t i = 0;
    for (auto& f : plan_faults(c)) {
      ++i;
      std::cout << "  #" << i << " " << describe(c, f) << (selected(c, i) ? "" : "  (skipped: faults.only)") << '\n';
    }
    return 0;
  }
  auto once = [&self](const config& cc) {
    run_outcome o;
    if (cc.in_process) {
      o.code = run_in_process(cc, &o);
    } else {
      simulation s{cc, self};
      int code = s.run();
      o = s.outcome(code);
    }
    return o;
  };
  if (c.in_process)
    return run_and_report(c, args, once);
  if (c.ccns > 10 || c.persistent > 100 || c.extra_crns > 10) {
    std::cerr << "alephd: sim: as separate processes at most 10 CCNs, 10 extra CRNs and 100 persistent "
                 "programs (use --in-process for more)\n";
    return 2;
  }
  auto plan = plan_faults(c);
  if (::geteuid() != 0 && std::any_of(plan.begin(), plan.end(), [](auto& f) { return f.kind == "disk-full"; })) {
    std::cerr << "alephd: sim: disk-full faults need root (they mount a small tmpfs on each CCN's data dir)\n";
    return 2;
  }
  return run_and_report(c, args, once);
}

} // namespace alephd::sim
