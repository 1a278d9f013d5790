// The HTML report of `alephd sim`: one self-contained page (no network) that draws, from the JSON
// report embedded in it, the node up/down timeline with the faults marked, the placements of
// persistent programs over time and the CDF of reschedule latencies.
#pragma once

#include <string>

#include <nlohmann/json_fwd.hpp>

namespace alephd::sim {

std::string html_report(const nlohmann::json& report);

} // namespace alephd::sim
