// GoogleTest fixture running actors on CAF's deterministic scheduler:
// nothing runs until the test drives `sched`; time moves only with advance().
#pragma once

#include <filesystem>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include <caf/all.hpp>
#include <caf/scheduler/test_coordinator.hpp>
#include <gtest/gtest.h>

#include "actors/interfaces.hpp"
#include "runtime/lmdb.hpp"

namespace alephd::test {

/// A reply or the error that came instead.
template <class T>
struct reply {
  std::optional<T> value;
  caf::error error;
  bool done = false;
};

struct caf_fixture : ::testing::Test {
  struct config : caf::actor_system_config {
    config() {
      alephd::add_message_types(*this);
      set("scheduler.policy", caf::atom("testing"));
      set("logger.inline-output", true);
    }
  };

  config cfg;
  caf::actor_system sys{cfg};
  caf::scheduler::test_coordinator& sched =
    dynamic_cast<caf::scheduler::test_coordinator&>(sys.scheduler());
  std::vector<caf::actor> owned;

  ~caf_fixture() override {
    for (auto& a : owned)
      caf::anon_send_exit(a, caf::exit_reason::user_shutdown);
    sched.run();
  }

  /// Spawns an actor that the fixture stops at the end of the test.
  template <class... Ts>
  auto spawn(Ts&&... xs) {
    auto h = sys.spawn(std::forward<Ts>(xs)...);
    owned.push_back(caf::actor_cast<caf::actor>(h));
    sched.run();
    return h;
  }

  /// Runs all jobs, then fires due timers, until nothing is left or `d` passed.
  void advance(caf::timespan d) {
    sched.run();
    sched.advance_time(d);
    sched.run();
  }

  /// Sends a request from a fresh actor and returns the reply holder without running the
  /// scheduler (to queue several requests before anything runs).
  template <class T, class Handle, class... Ts>
  std::shared_ptr<reply<T>> ask_later(const Handle& dst, Ts... xs) {
    auto out = std::make_shared<reply<T>>();
    sys.spawn([=](caf::event_based_actor* self) {
      self->request(dst, caf::infinite, xs...)
        .then(
          [out](T& x) {
            out->value = std::move(x);
            out->done = true;
          },
          [out](caf::error& err) {
            out->error = std::move(err);
            out->done = true;
          });
    });
    return out;
  }

  /// Sends a request from a fresh actor, runs the scheduler, and returns the reply.
  template <class T, class Handle, class... Ts>
  reply<T> ask(const Handle& dst, Ts... xs) {
    auto out = ask_later<T>(dst, xs...);
    sched.run();
    return *out;
  }

  /// The state of a stateful typed actor (for white-box checks).
  template <class State, class Handle>
  State& state_of(const Handle& h) {
    auto ptr = caf::actor_cast<caf::abstract_actor*>(h);
    return dynamic_cast<caf::stateful_actor<State, typename Handle::base>&>(*ptr).state;
  }
};

/// A fresh temporary directory, removed at the end of the scope.
struct temp_dir {
  std::filesystem::path path;
  temp_dir() {
    std::random_device rd;
    path = std::filesystem::temp_directory_path()
           / ("alephd-test-" + std::to_string(::getpid()) + "-" + std::to_string(rd()));
    std::filesystem::create_directories(path);
  }
  ~temp_dir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  std::string str() const { return path.string(); }
};

/// Opens (creating) an LMDB environment in `dir`/lmdb; a failure fails the test.
inline std::shared_ptr<lmdb::env> open_test_env(const temp_dir& dir) {
  std::string err;
  auto e = lmdb::env::open(dir.str() + "/lmdb", err);
  EXPECT_TRUE(e) << err;
  return std::shared_ptr<lmdb::env>(std::move(e));
}

} // namespace alephd::test
