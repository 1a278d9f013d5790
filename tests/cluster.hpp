// A test fixture of real alephd processes (CCNs, CRNs) in a temporary directory, on loopback
// ports the OS chooses; every process is killed and the directory removed at the end, and the
// logs are printed when the test failed.
#pragma once

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include "tests/http_client.hpp"
#include "tests/process.hpp"

namespace alephd::test {

using namespace std::chrono_literals;

inline const std::string localhost = "127.0.0.1";

/// A memory figure of /proc/PID/status (VmRSS, VmHWM, …) in bytes; 0 when it cannot be read.
inline uint64_t status_bytes(int pid, std::string_view field) {
  std::ifstream in{"/proc/" + std::to_string(pid) + "/status"};
  std::string line;
  while (std::getline(in, line))
    if (line.size() > field.size() && line.compare(0, field.size(), field) == 0 && line[field.size()] == ':')
      return std::stoull(line.substr(field.size() + 1)) * 1024;
  return 0;
}

struct cluster : ::testing::Test {
  using json = nlohmann::json;

  std::filesystem::path dir;
  std::vector<std::unique_ptr<process>> procs;

  cluster() {
    std::random_device rd;
    dir = std::filesystem::temp_directory_path()
          / ("alephd-it-" + std::to_string(::getpid()) + "-" + std::to_string(rd()));
    std::filesystem::create_directories(dir);
  }

  ~cluster() override {
    for (auto& p : procs)
      p->kill9();
    for (auto& p : procs)
      remove_crn_cgroups(*p);
    if (HasFailure())
      for (auto& p : procs)
        std::cerr << "---- log of pid " << p->pid() << " ----\n" << p->log() << '\n';
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }

  process& start(const std::string& name, std::vector<std::string> args) {
    args.push_back("--data-dir=" + (dir / name).string());
    args.push_back("--name=" + name);
    procs.push_back(std::make_unique<process>(args, (dir / (name + ".log")).string()));
    auto& p = *procs.back();
    EXPECT_TRUE(p.wait_ready()) << name << " did not start:\n" << p.log();
    return p;
  }

  // Fast failure detection so that the suite stays short.
  static std::vector<std::string> timing() {
    return {"--ccn.heartbeat-interval=200ms", "--ccn.failure-timeout=1s"};
  }

  process& start_ccn(const std::string& name, std::vector<std::string> extra = {}) {
    // These suites post unsigned messages; signature checks have their own tests.
    std::vector<std::string> args{"ccn", "--port=0", "--node-port=0", "--verify-signatures=false"};
    for (auto& a : timing())
      args.push_back(a);
    for (auto& a : extra)
      args.push_back(a);
    return start(name, args);
  }

  process& start_crn(const std::string& name, const std::string& ccns) {
    // A fixed cache bound: the disk a CRN offers (and so admission) does not depend on the
    // size of this machine's disk.
    std::vector<std::string> args{"crn", "--port=0", "--ccn=" + ccns, "--cache.max-bytes=1073741824"};
    for (auto& a : timing())
      args.push_back(a);
    return start(name, args);
  }

  static std::string node_endpoint(const process& ccn) {
    return ccn.ready.at("node");
  }

  static json get_json(uint16_t port, const std::string& target) {
    auto r = http_request(localhost, port, "GET", target, {}, {}, 5s);
    if (r.status != 200)
      return json{};
    return json::parse(r.body, nullptr, false);
  }

  // CRN name -> status at this CCN.
  static std::map<std::string, std::string> crn_states(uint16_t ccn_http) {
    std::map<std::string, std::string> out;
    auto j = get_json(ccn_http, "/api/v0/nodes");
    if (j.is_object() && j.contains("crns"))
      for (auto& c : j["crns"])
        out[c["name"].get<std::string>()] = c["status"].get<std::string>();
    return out;
  }

  static size_t count_state(const std::map<std::string, std::string>& m, const std::string& s) {
    size_t n = 0;
    for (auto& [k, v] : m)
      n += v == s ? 1 : 0;
    return n;
  }
};

} // namespace alephd::test
