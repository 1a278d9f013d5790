// CRN: one execution's life, in explicit phases:
//   preparing → booting → running → stopping → stopped | failed.
// Executors (bubblewrap sandbox, QEMU microVM) come with the execution issue;
// until then an execution waits in `preparing` and says so in its detail.
#pragma once

#include "actors/interfaces.hpp"

namespace alephd {

struct vm_supervisor_state {
  static inline const char* name = "vm_supervisor";
  execution_info info;
};

vm_supervisor_actor::behavior_type
vm_supervisor(vm_supervisor_actor::stateful_pointer<vm_supervisor_state> self, allocation a);

} // namespace alephd
