#include "runtime/node.hpp"

#include "tests/caf_fixture.hpp"

using namespace alephd;
using namespace alephd::test;

// Named so that the suites can share one unity-built test binary.
namespace watchdog_tests {

namespace {

// Quits with whatever error it is sent, like an actor whose LMDB failed.
caf::behavior idle(caf::event_based_actor* self) {
  return {[self](caf::error& reason) { self->quit(std::move(reason)); }};
}

struct watchdog_test : caf_fixture {
  std::shared_ptr<std::vector<std::string>> failures = std::make_shared<std::vector<std::string>>();
  caf::actor a = sys.spawn(idle);
  caf::actor b = sys.spawn(idle);
  caf::actor dog = spawn_watchdog(sys, "ccn test", {a, b},
                                  [f = failures](const std::string& what) { f->push_back(what); });

  ~watchdog_test() override {
    for (auto& x : {a, b, dog})
      caf::anon_send_exit(x, caf::exit_reason::user_shutdown);
    sched.run();
  }
};

TEST_F(watchdog_test, a_failed_actor_is_fatal) {
  sched.run();
  caf::anon_send(a, make_error(ec::storage_failure, "disk gone"));
  sched.run();
  ASSERT_EQ(failures->size(), 1u);
  EXPECT_NE(failures->at(0).find("ccn test"), std::string::npos) << failures->at(0);
  caf::anon_send_exit(b, caf::exit_reason::kill);
  sched.run();
  EXPECT_EQ(failures->size(), 2u);
}

TEST_F(watchdog_test, a_shutdown_is_not_a_failure) {
  sched.run();
  caf::anon_send_exit(a, caf::exit_reason::user_shutdown);
  sched.run();
  EXPECT_TRUE(failures->empty());
}

} // namespace

} // namespace watchdog_tests
