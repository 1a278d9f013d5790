// The process harness of sim/ with this build's alephd as the binary.
#pragma once

#include "runtime/cgroup.hpp"
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

/// After a CRN was SIGKILLed: kills what still runs in its executions' cgroups (an adoptable
/// sandbox outlives its CRN for the reconnect window) and removes the groups and their parent
/// (a CRN that exits cleanly removes its parent group itself once it is empty). Needs root
/// (without it, there are no groups).
inline void remove_crn_cgroups(const process& p) {
  if (p.ready.count("role") && p.ready.at("role") == "crn" && p.ready.count("id"))
    cgroup::remove_orphans(cgroup::root_name_for(p.ready.at("id")), nullptr);
}

} // namespace alephd::test
