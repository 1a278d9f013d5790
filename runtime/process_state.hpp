#pragma once

// What /proc says about a process, for executors that watch processes they did
// not start (a sandbox or VM a restarted CRN adopts) and must never signal a
// reused pid.

#include <optional>
#include <string>
#include <utility>

namespace alephd {

/// State letter and start time (fields 3 and 22 of /proc/PID/stat), or
/// nullopt if there is no such process.
std::optional<std::pair<char, std::string>> proc_state(int pid);

/// Whether `pid` runs (not a zombie) and is the process that started at
/// `start` (the start time of proc_state), not a later one with its pid.
bool process_is(int pid, const std::string& start);

} // namespace alephd
