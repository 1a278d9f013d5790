#pragma once

#include <chrono>

namespace alephd {

/// When set, unix_seconds() answers this instead of the system clock: the in-process simulator
/// (`alephd sim --in-process`) sets it to its virtual time, so that a seed replays exactly.
/// Set it before any actor runs; nothing else touches it.
inline double (*wall_clock_override)() = nullptr;

/// Wall-clock seconds since the Unix epoch, for timestamps shown to people (failure
/// detection uses the actor clock instead, so that tests can move time).
inline double unix_seconds() {
  if (wall_clock_override != nullptr)
    return wall_clock_override();
  using namespace std::chrono;
  return duration<double>(system_clock::now().time_since_epoch()).count();
}

} // namespace alephd
