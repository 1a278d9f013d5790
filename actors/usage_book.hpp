// CCN: the usage book. Each linked CRN ships its reward-ledger entries here;
// the book keeps each (node, seq) once, in the CCN's LMDB environment
// (databases "usage" and "usage.heads"), checking that each entry continues
// that node's chain. The highest seq held is the CRN's acknowledgement, so a
// batch sent again after a reconnect or a kill -9 of either side is neither
// lost nor counted twice. A node seen for the first time may start at any seq,
// and a node may skip ahead (it shipped those entries to another CCN while
// linked there): each entry is counted by the CCN that received it.
#pragma once

#include <memory>

#include "actors/interfaces.hpp"

namespace alephd {

namespace lmdb {
class env;
}

struct usage_book_state {
  static inline const char* name = "usage_book";
  std::shared_ptr<lmdb::env> env;
  unsigned entries = 0;
  unsigned heads = 0;
  uint64_t duplicates = 0; ///< entries received again and skipped
  uint64_t conflicts = 0;  ///< entries whose seq is held with another hash (refused)
  uint64_t segments = 0;   ///< gaps: entries a CRN shipped to another CCN meanwhile
};

usage_book_actor::behavior_type
usage_book(usage_book_actor::stateful_pointer<usage_book_state> self, std::shared_ptr<lmdb::env> env);

} // namespace alephd
