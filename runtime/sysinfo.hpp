// Real figures about the host, read from /proc and statvfs.
#pragma once

#include <cstdint>
#include <string>

namespace alephd {

struct system_usage {
  unsigned cpu_count = 0;
  double load1 = 0, load5 = 0, load15 = 0;
  uint64_t mem_total_kb = 0, mem_available_kb = 0;
  uint64_t disk_total_kb = 0, disk_available_kb = 0;
  double cpu_mhz_min = 0, cpu_mhz_max = 0;
  std::string architecture, vendor;
};

/// Reads the host's CPU, load, memory and the disk that holds `data_dir`.
system_usage read_system_usage(const std::string& data_dir);

} // namespace alephd
