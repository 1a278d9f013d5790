#pragma once

#include <chrono>

namespace alephd {

/// Wall-clock seconds since the Unix epoch, for timestamps shown to people (failure
/// detection uses the actor clock instead, so that tests can move time).
inline double unix_seconds() {
  using namespace std::chrono;
  return duration<double>(system_clock::now().time_since_epoch()).count();
}

} // namespace alephd
