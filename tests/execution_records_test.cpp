// The CRN's durable execution records: JSON round trip, tolerance of old and
// broken records, and the LMDB database across reopenings.

#include "runtime/execution_records.hpp"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <random>

#include <unistd.h>

#include "runtime/lmdb.hpp"

using namespace alephd;

// Named so that the suites can share one unity-built test binary.
namespace execution_records_tests {

namespace {

struct temp_dir {
  std::filesystem::path path;
  temp_dir() {
    std::random_device rd;
    path = std::filesystem::temp_directory_path() / ("records-test-" + std::to_string(rd()));
    std::filesystem::create_directories(path);
  }
  ~temp_dir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
};

execution_record sample(const std::string& hash) {
  execution_record r;
  r.alloc = allocation{1, hash, "program", 7, 2, 256, 10, R"({"type":"PROGRAM"})", "ccn-7"};
  r.persistent = true;
  r.executor = "sandbox";
  r.run_dir = "/var/lib/alephd/executions/" + hash + "/run";
  r.network = true;
  r.handle = sandbox_handle{4242, "123456", 4243, "123457", "abcd-1-1", "/dev/shm/x/abc123"};
  r.started_at = 1700000000.5;
  r.request_timeout_ms = 30000;
  r.files = {std::string(64, 'a'), std::string(64, 'b')};
  return r;
}

} // namespace

TEST(execution_records, a_record_survives_its_json_form) {
  auto r = sample("h1");
  auto back = execution_records::decode(execution_records::encode(r));
  ASSERT_TRUE(back);
  EXPECT_EQ(back->alloc, r.alloc);
  EXPECT_EQ(back->persistent, r.persistent);
  EXPECT_EQ(back->executor, r.executor);
  EXPECT_EQ(back->run_dir, r.run_dir);
  EXPECT_EQ(back->network, r.network);
  EXPECT_EQ(back->handle.pid, 4242);
  EXPECT_EQ(back->handle.pid_start, "123456");
  EXPECT_EQ(back->handle.ns_init, 4243);
  EXPECT_EQ(back->handle.ns_init_start, "123457");
  EXPECT_EQ(back->handle.cgroup_name, "abcd-1-1");
  EXPECT_EQ(back->handle.scratch_dir, "/dev/shm/x/abc123");
  EXPECT_EQ(back->sock_dir, "") << "a sandbox's scratch dir is its handle's, not a microVM's sockets";
  EXPECT_DOUBLE_EQ(back->started_at, r.started_at);
  EXPECT_EQ(back->request_timeout_ms, 30000);
  EXPECT_EQ(back->files, r.files);
  auto vm = r;
  vm.executor = "microvm";
  vm.sock_dir = "/tmp/alephd-vm-x";
  auto vm_back = execution_records::decode(execution_records::encode(vm));
  ASSERT_TRUE(vm_back);
  EXPECT_EQ(vm_back->vm_handle().sock_dir, "/tmp/alephd-vm-x");
  EXPECT_EQ(vm_back->handle.scratch_dir, "");
  EXPECT_EQ(vm_back->vm_handle().pid, 4242);
}

TEST(execution_records, broken_records_are_refused_and_optional_fields_default) {
  EXPECT_FALSE(execution_records::decode(""));
  EXPECT_FALSE(execution_records::decode("[]"));
  EXPECT_FALSE(execution_records::decode(R"({"item_hash": "h"})"));
  auto j = nlohmann::json::parse(execution_records::encode(sample("h2")));
  j.erase("executor");
  j.erase("sock_dir");
  j.erase("request_timeout_ms");
  auto old = execution_records::decode(j.dump());
  ASSERT_TRUE(old) << "a record from before these fields must still load";
  EXPECT_EQ(old->executor, "sandbox");
  EXPECT_EQ(old->handle.scratch_dir, "") << "its sandbox has its files in run_dir";
  EXPECT_EQ(old->request_timeout_ms, 1000);
  j["pid"] = "not a number";
  EXPECT_FALSE(execution_records::decode(j.dump()));
}

TEST(execution_records, records_are_kept_across_reopening_and_erased_for_good) {
  temp_dir dir;
  std::string err;
  {
    auto db = execution_records::open(dir.path.string(), err);
    ASSERT_TRUE(db) << err;
    ASSERT_TRUE(db->put(sample("a"), err)) << err;
    ASSERT_TRUE(db->put(sample("b"), err)) << err;
    auto b2 = sample("b");
    b2.alloc.epoch = 8; // replaces the first record of b
    ASSERT_TRUE(db->put(b2, err)) << err;
  }
  auto db = execution_records::open(dir.path.string(), err);
  ASSERT_TRUE(db) << err;
  auto all = db->all();
  ASSERT_EQ(all.size(), 2u);
  EXPECT_EQ(all[0].alloc.item_hash, "a");
  EXPECT_EQ(all[1].alloc.epoch, 8u);
  ASSERT_TRUE(db->get("a"));
  db->erase("a");
  EXPECT_FALSE(db->get("a"));
  EXPECT_EQ(db->all().size(), 1u);
  db->erase("never-there"); // harmless
}

TEST(execution_records, a_dead_or_forged_handle_is_not_alive) {
  auto r = sample("c");
  r.handle.pid = 0;
  EXPECT_FALSE(r.alive());
  r.handle = sandbox_handle{static_cast<int>(::getpid()), "1", static_cast<int>(::getpid()), "1", "", ""};
  EXPECT_FALSE(r.alive()) << "a pid whose start time differs is another process";
  r.executor = "microvm";
  EXPECT_FALSE(r.alive());
  r.kill(); // must not signal this process: its start time does not match (we would die)
}

} // namespace execution_records_tests
