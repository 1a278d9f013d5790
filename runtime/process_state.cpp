#include "runtime/process_state.hpp"

#include <fstream>
#include <iterator>
#include <sstream>

namespace alephd {

std::optional<std::pair<char, std::string>> proc_state(int pid) {
  if (pid <= 0)
    return std::nullopt;
  std::ifstream in{"/proc/" + std::to_string(pid) + "/stat"};
  std::string stat{std::istreambuf_iterator<char>{in}, {}};
  auto paren = stat.rfind(')'); // the command name may hold spaces
  if (paren == std::string::npos || paren + 2 >= stat.size())
    return std::nullopt;
  std::istringstream rest{stat.substr(paren + 2)};
  std::string field, start;
  char state = '?';
  rest >> state;
  for (int i = 4; i <= 22 && rest >> field; ++i)
    if (i == 22)
      start = field;
  return std::make_pair(state, start);
}

bool process_is(int pid, const std::string& start) {
  auto st = proc_state(pid);
  return st && st->first != 'Z' && st->first != 'X' && st->second == start;
}

} // namespace alephd
