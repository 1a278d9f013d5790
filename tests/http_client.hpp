// The HTTP client of sim/, under the names the suites use.
#pragma once

#include "sim/http_client.hpp"

namespace alephd::test {

using sim::http_connection;
using sim::http_request;
using sim::http_result;
using sim::raw_exchange;

} // namespace alephd::test
