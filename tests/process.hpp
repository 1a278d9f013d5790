// The process harness of sim/ with this build's alephd as the binary.
#pragma once

#include "sim/process.hpp"

namespace alephd::test {

using sim::eventually;
using sim::port_free;

/// `alephd args...` of this build.
class process : public sim::process {
public:
  process(std::vector<std::string> args, std::string log_path)
    : sim::process(ALEPHD_BINARY, std::move(args), std::move(log_path)) {
  }
};

} // namespace alephd::test
