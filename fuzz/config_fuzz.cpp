// libFuzzer: config files and command lines. The input is an INI file; its lines, split on
// NUL, are also tried as a command line. Errors are fine; crashes and hangs are not.
#include <cstdint>
#include <cstdio>
#include <string>
#include <unistd.h>
#include <vector>

#include "runtime/config.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path = "/tmp/alephd-config-fuzz-" + std::to_string(::getpid()) + ".ini";
  if (FILE* f = std::fopen(path.c_str(), "wb")) {
    std::fwrite(data, 1, size, f);
    std::fclose(f);
  }
  alephd::settings s;
  bool help = false;
  (void)alephd::parse_settings({"--config", path}, s, help);
  std::vector<std::string> args;
  std::string cur;
  for (size_t i = 0; i < size; ++i) {
    if (data[i] == 0) {
      args.push_back(cur);
      cur.clear();
    } else {
      cur.push_back(static_cast<char>(data[i]));
    }
  }
  args.push_back(cur);
  alephd::settings s2;
  (void)alephd::parse_settings(args, s2, help);
  return 0;
}
