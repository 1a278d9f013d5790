// microVM launch to ready: N boots (default 5) of the QEMU microVM executor
// with the assets of scripts/build-microvm-assets, under TCG and, when
// microvm::kvm_usable(), under KVM. For each boot: start() (spawn QEMU, boot,
// `ready`, `configure`, `configure_result`), then the first response of the
// program, then stop(). Target: launch to ready <= 4 s under TCG.
//
// usage: microvm_bench [N]   (assets in $ALEPHD_MICROVM_ASSETS, default
//                             $TMPDIR/alephd-microvm-assets, built if stale)

#include "runtime/microvm.hpp"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#ifndef ALEPHD_GUEST_BINARY
#  error "ALEPHD_GUEST_BINARY must name the static alephd-guest binary"
#endif
#ifndef ALEPHD_MICROVM_SCRIPT
#  error "ALEPHD_MICROVM_SCRIPT must name scripts/build-microvm-assets"
#endif

namespace {

namespace fs = std::filesystem;
using clock_type = std::chrono::steady_clock;

// A trivial program: busybox httpd serving one file.
constexpr const char* program = R"sh(#!/bin/sh
mkdir -p /www
echo ok >/www/index.html
exec /bin/busybox httpd -f -p 127.0.0.1:8080 -h /www
)sh";

double ms_since(clock_type::time_point t0) {
  return std::chrono::duration<double, std::milli>(clock_type::now() - t0).count();
}

struct sample {
  double ready_ms = -1; // start() returned ""
  double first_response_ms = -1;
  double stop_ms = -1;
  std::string error;
};

sample boot_once(const fs::path& assets, const fs::path& run_dir, bool kvm) {
  alephd::microvm_options o;
  o.kernel = (assets / "kernel").string();
  o.initrd = (assets / "initrd").string();
  o.run_dir = run_dir.string();
  o.kvm = kvm ? alephd::kvm_mode::on : alephd::kvm_mode::off;
  o.ready_timeout = std::chrono::seconds(20);
  alephd::guest::configure cfg;
  cfg.code = program;
  cfg.entrypoint = "app";
  cfg.variables = {{"PATH", "/usr/sbin:/usr/bin:/sbin:/bin"}};
  alephd::guest::http_request req{1, "GET", "/index.html", "", {}, ""};
  sample s;
  auto t0 = clock_type::now();
  alephd::microvm vm{o};
  s.error = vm.start(cfg);
  if (!s.error.empty())
    return s;
  s.ready_ms = ms_since(t0);
  auto resp = vm.request(req, std::chrono::seconds(10));
  if (resp.status != 200) {
    s.error = "first request: " + std::to_string(resp.status) + " " + resp.error;
    return s;
  }
  s.first_response_ms = ms_since(t0);
  auto t1 = clock_type::now();
  vm.stop(std::chrono::seconds(4));
  s.stop_ms = ms_since(t1);
  return s;
}

struct stats {
  double p50 = 0, max = 0;
};

stats summarize(std::vector<double> xs) {
  stats s;
  if (xs.empty())
    return s;
  std::sort(xs.begin(), xs.end());
  s.p50 = xs[(xs.size() - 1) / 2];
  s.max = xs.back();
  return s;
}

// Boots `n` times; prints one line per boot and a summary. Returns failures.
int run_mode(const char* name, bool kvm, int n, const fs::path& assets,
             const fs::path& dir) {
  std::vector<double> ready, first, stop;
  int failures = 0;
  boot_once(assets, dir / (std::string{name} + "-warmup"), kvm); // page cache
  for (int i = 0; i < n; ++i) {
    auto s = boot_once(assets, dir / (std::string{name} + "-" + std::to_string(i)), kvm);
    if (!s.error.empty()) {
      ++failures;
      std::printf("  %s boot %d: FAILED: %s\n", name, i + 1, s.error.c_str());
      continue;
    }
    std::printf("  %s boot %d: ready %.0f ms, first response %.0f ms, stop %.0f ms\n",
                name, i + 1, s.ready_ms, s.first_response_ms, s.stop_ms);
    ready.push_back(s.ready_ms);
    first.push_back(s.first_response_ms);
    stop.push_back(s.stop_ms);
  }
  auto r = summarize(ready), f = summarize(first), st = summarize(stop);
  std::printf("%-4s %2d ok %2d failed | launch->ready p50 %6.0f ms max %6.0f ms | "
              "first response p50 %6.0f ms max %6.0f ms | stop p50 %4.0f ms\n",
              name, static_cast<int>(ready.size()), failures, r.p50, r.max, f.p50,
              f.max, st.p50);
  if (!kvm && !ready.empty())
    std::printf("TCG launch->ready target <= 4000 ms: %s\n",
                r.max <= 4000 ? "met (max)" : (r.p50 <= 4000 ? "met (p50)" : "NOT met"));
  return failures;
}

} // namespace

int main(int argc, char** argv) {
  int n = argc > 1 ? std::atoi(argv[1]) : 5;
  if (n <= 0) {
    std::fprintf(stderr, "usage: microvm_bench [N]\n");
    return 2;
  }
  const char* env = std::getenv("ALEPHD_MICROVM_ASSETS");
  fs::path assets = env && *env ? fs::path{env}
                                : fs::temp_directory_path() / "alephd-microvm-assets";
  auto cmd = "'" + std::string{ALEPHD_MICROVM_SCRIPT} + "' '" + assets.string() + "' '"
             + ALEPHD_GUEST_BINARY + "'";
  if (std::system(cmd.c_str()) != 0) {
    std::fprintf(stderr, "microvm_bench: cannot build the assets in %s\n",
                 assets.c_str());
    return 1;
  }
  std::random_device rd;
  auto dir = fs::temp_directory_path() / ("alephd-microvm-bench-" + std::to_string(rd()));
  fs::create_directories(dir);
  std::printf("microVM launch to ready (%d boots per mode; 1 vCPU, 256 MiB; "
              "Debian cloud kernel + busybox initramfs)\n", n);
  int failures = run_mode("TCG", false, n, assets, dir);
  std::string why;
  if (alephd::microvm::kvm_usable(&why))
    failures += run_mode("KVM", true, n, assets, dir);
  else
    std::printf("KVM  skipped: %s\n", why.c_str());
  std::error_code ec;
  fs::remove_all(dir, ec);
  return failures == 0 ? 0 : 1;
}
