#include "runtime/sysinfo.hpp"

#include <fstream>
#include <sstream>
#include <thread>

#include <sys/statvfs.h>
#include <sys/utsname.h>

namespace alephd {

system_usage read_system_usage(const std::string& data_dir) {
  system_usage u;
  u.cpu_count = std::thread::hardware_concurrency();
  if (std::ifstream in{"/proc/loadavg"}; in)
    in >> u.load1 >> u.load5 >> u.load15;
  if (std::ifstream in{"/proc/meminfo"}; in) {
    std::string key, unit;
    uint64_t value = 0;
    while (in >> key >> value) {
      std::getline(in, unit);
      if (key == "MemTotal:")
        u.mem_total_kb = value;
      else if (key == "MemAvailable:")
        u.mem_available_kb = value;
    }
  }
  if (std::ifstream in{"/proc/cpuinfo"}; in) {
    std::string line;
    while (std::getline(in, line)) {
      auto colon = line.find(':');
      if (colon == std::string::npos)
        continue;
      auto key = line.substr(0, line.find_last_not_of(" \t", colon - 1) + 1);
      auto value = colon + 2 <= line.size() ? line.substr(colon + 2) : std::string{};
      if (key == "vendor_id" && u.vendor.empty())
        u.vendor = value;
      else if (key == "cpu MHz") {
        double mhz = std::strtod(value.c_str(), nullptr);
        if (u.cpu_mhz_min == 0 || mhz < u.cpu_mhz_min)
          u.cpu_mhz_min = mhz;
        if (mhz > u.cpu_mhz_max)
          u.cpu_mhz_max = mhz;
      }
    }
  }
  struct statvfs sv {};
  if (::statvfs(data_dir.c_str(), &sv) == 0) {
    u.disk_total_kb = sv.f_blocks * sv.f_frsize / 1024;
    u.disk_available_kb = sv.f_bavail * sv.f_frsize / 1024;
  }
  struct utsname un {};
  if (::uname(&un) == 0)
    u.architecture = un.machine;
  return u;
}

} // namespace alephd
