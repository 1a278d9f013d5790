// The CRN's hash-chained reward ledger: chaining, group commit, reopening,
// acknowledgements, and tampering of every kind detected at the right entry.
#include "runtime/ledger.hpp"

#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>

#include <gtest/gtest.h>
#include <unistd.h>

#include "runtime/lmdb.hpp"

using namespace alephd;
namespace fs = std::filesystem;

// Named so that the suites can share one unity-built test binary.
namespace ledger_tests {

namespace {

usage_entry sample(uint64_t cpu, const std::string& item = "item-1") {
  usage_entry e;
  e.node = "crn-test";
  e.time = 1700000000.25 + static_cast<double>(cpu);
  e.wall_s = 60;
  e.item_hash = item;
  e.product = "program";
  e.vcpus = 1;
  e.memory_mib = 256;
  e.cpu_ns = cpu;
  e.mem_peak = 64 << 20;
  e.mem_avg = 32 << 20;
  e.requests = 3;
  e.bytes_in = 100;
  e.bytes_out = 2000;
  e.storage_bytes = 4096;
  return e;
}

class ledger_test : public ::testing::Test {
protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("alephd-ledger-" + std::to_string(getpid()) + "-" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::unique_ptr<ledger_store> open() {
    std::string err;
    auto l = ledger_store::open(dir_.string(), err);
    EXPECT_TRUE(l) << err;
    return l;
  }

  /// Five entries with cpu_ns 777001 … 777005, appended as 3 + 2.
  void write_five() {
    auto l = open();
    std::vector<usage_entry> a{sample(777001), sample(777002), sample(777003)};
    std::vector<usage_entry> b{sample(777004), sample(777005)};
    std::string err;
    ASSERT_TRUE(l->append(a, err)) << err;
    ASSERT_TRUE(l->append(b, err)) << err;
  }

  /// Edits the raw LMDB environment (the store must be closed).
  void raw(const std::function<void(lmdb::txn&, MDB_dbi)>& fn) {
    std::string err;
    auto env = lmdb::env::open(dir_.string(), err, uint64_t{32} << 30);
    ASSERT_TRUE(env) << err;
    MDB_dbi db = 0;
    ASSERT_TRUE(env->open_db("entries", db, err)) << err;
    lmdb::txn t{*env, true};
    fn(t, db);
    ASSERT_EQ(t.commit(), 0);
  }

  fs::path dir_;
};

} // namespace

TEST(ledger_codec, roundtrip_and_every_field_is_hashed) {
  auto e = sample(42);
  e.seq = 9;
  e.prev = std::string(64, 'b');
  e.hash = ledger_hash(e);
  auto back = ledger_decode(ledger_encode(e));
  ASSERT_TRUE(back);
  EXPECT_EQ(*back, e);
  EXPECT_EQ(ledger_encode(*back), ledger_encode(e));
  std::vector<std::function<void(usage_entry&)>> edits{
    [](auto& x) { x.seq++; },          [](auto& x) { x.prev[0] = 'c'; },
    [](auto& x) { x.node = "other"; }, [](auto& x) { x.time += 1e-6; },
    [](auto& x) { x.wall_s = 61; },    [](auto& x) { x.item_hash = "item-2"; },
    [](auto& x) { x.product = "instance"; }, [](auto& x) { x.vcpus = 2; },
    [](auto& x) { x.memory_mib++; },   [](auto& x) { x.cpu_ns++; },
    [](auto& x) { x.mem_peak++; },     [](auto& x) { x.mem_avg++; },
    [](auto& x) { x.requests++; },     [](auto& x) { x.bytes_in++; },
    [](auto& x) { x.bytes_out++; },    [](auto& x) { x.storage_bytes++; },
    [](auto& x) { x.version = 2; },
  };
  for (std::size_t i = 0; i < edits.size(); ++i) {
    auto changed = e;
    edits[i](changed);
    EXPECT_NE(ledger_hash(changed), e.hash) << "edit " << i;
  }
}

TEST(ledger_codec, hostile_text_is_refused) {
  auto good = ledger_encode(sample(1));
  EXPECT_TRUE(ledger_decode(good));
  for (std::string bad : {"", "null", "[]", "{", "{\"seq\":1}", "\x01\x02garbage"})
    EXPECT_FALSE(ledger_decode(bad)) << bad;
  auto j = good;
  j.insert(1, "\"extra\":1,");
  EXPECT_FALSE(ledger_decode(j)) << "a field the hash does not cover";
  auto wrong = good;
  wrong.replace(wrong.find("\"cpu_ns\":1"), 10, "\"cpu_ns\":\"1\"");
  EXPECT_FALSE(ledger_decode(wrong));
  auto negative = good;
  negative.replace(negative.find("\"requests\":3"), 12, "\"requests\":-3");
  EXPECT_FALSE(ledger_decode(negative));
}

TEST_F(ledger_test, appends_are_numbered_and_chained) {
  write_five();
  auto l = open();
  EXPECT_EQ(l->last_seq(), 5u);
  auto all = l->read(0, 100);
  ASSERT_EQ(all.size(), 5u);
  EXPECT_EQ(all[0].prev, ledger_genesis);
  for (std::size_t i = 0; i < all.size(); ++i) {
    EXPECT_EQ(all[i].seq, i + 1);
    EXPECT_EQ(all[i].cpu_ns, 777001 + i);
    EXPECT_EQ(all[i].hash, ledger_hash(all[i]));
    if (i > 0) {
      EXPECT_EQ(all[i].prev, all[i - 1].hash);
    }
  }
  EXPECT_EQ(l->last_hash(), all[4].hash);
  auto c = l->verify();
  EXPECT_TRUE(c.ok()) << c.reason;
  EXPECT_EQ(c.entries, 5u);
}

TEST_F(ledger_test, reopening_continues_the_chain) {
  write_five();
  auto l = open();
  std::vector<usage_entry> more{sample(9)};
  std::string err;
  ASSERT_TRUE(l->append(more, err)) << err;
  EXPECT_EQ(more[0].seq, 6u);
  EXPECT_EQ(more[0].prev, l->read(4, 1).at(0).hash);
  EXPECT_TRUE(l->verify().ok());
}

TEST_F(ledger_test, read_pages_and_acks_persist) {
  write_five();
  {
    auto l = open();
    auto page = l->read(2, 2);
    ASSERT_EQ(page.size(), 2u);
    EXPECT_EQ(page[0].seq, 3u);
    EXPECT_EQ(page[1].seq, 4u);
    EXPECT_TRUE(l->read(5, 10).empty());
    EXPECT_EQ(l->acked(), 0u);
    std::string err;
    ASSERT_TRUE(l->set_acked(3, err)) << err;
    ASSERT_TRUE(l->set_acked(2, err)); // lower: ignored
    ASSERT_TRUE(l->set_acked(99, err)); // beyond the chain: ignored
    EXPECT_EQ(l->acked(), 3u);
  }
  EXPECT_EQ(open()->acked(), 3u);
}

TEST_F(ledger_test, a_byte_changed_in_the_file_is_found) {
  write_five();
  auto file = dir_ / "data.mdb";
  std::string bytes;
  {
    std::ifstream in{file, std::ios::binary};
    bytes.assign(std::istreambuf_iterator<char>{in}, {});
  }
  // LMDB copies pages on write, so stale copies may hold the same bytes: change them all.
  // 777003 → 777903 keeps the length, so every page stays well-formed.
  std::size_t changed = 0;
  for (auto at = bytes.find("\"cpu_ns\":777003"); at != std::string::npos;
       at = bytes.find("\"cpu_ns\":777003", at + 1), ++changed)
    bytes[at + 12] = '9';
  ASSERT_GT(changed, 0u);
  {
    std::ofstream out{file, std::ios::binary | std::ios::trunc};
    out << bytes;
  }
  auto c = open()->verify();
  EXPECT_FALSE(c.ok());
  EXPECT_EQ(c.first_bad, 3u);
  EXPECT_EQ(c.reason, "content does not match its hash");
  EXPECT_EQ(c.entries, 2u);
}

TEST_F(ledger_test, a_rehashed_forgery_breaks_the_next_link) {
  write_five();
  raw([](lmdb::txn& t, MDB_dbi db) {
    auto e = *ledger_decode(*t.get(db, lmdb::be64(2)));
    e.cpu_ns = 1; // less CPU billed, own hash made to fit
    e.hash = ledger_hash(e);
    ASSERT_EQ(t.put(db, lmdb::be64(2), ledger_encode(e)), 0);
  });
  auto c = open()->verify();
  EXPECT_EQ(c.first_bad, 3u);
  EXPECT_EQ(c.reason, "prev does not match the hash of entry 2");
}

TEST_F(ledger_test, a_removed_entry_is_found) {
  write_five();
  raw([](lmdb::txn& t, MDB_dbi db) { ASSERT_EQ(t.del(db, lmdb::be64(2)), 0); });
  auto c = open()->verify();
  EXPECT_EQ(c.first_bad, 2u);
  EXPECT_EQ(c.reason, "sequence number 3 where 2 was expected");
}

TEST_F(ledger_test, a_cut_tail_after_an_ack_is_found) {
  write_five();
  {
    auto l = open();
    std::string err;
    ASSERT_TRUE(l->set_acked(5, err));
  }
  raw([](lmdb::txn& t, MDB_dbi db) {
    ASSERT_EQ(t.del(db, lmdb::be64(5)), 0);
    ASSERT_EQ(t.del(db, lmdb::be64(4)), 0);
  });
  auto c = open()->verify();
  EXPECT_EQ(c.first_bad, 4u);
  EXPECT_EQ(c.reason, "missing: the CCN acknowledged entries up to 5");
}

TEST_F(ledger_test, an_unreadable_last_entry_refuses_to_open) {
  write_five();
  raw([](lmdb::txn& t, MDB_dbi db) { ASSERT_EQ(t.put(db, lmdb::be64(5), "not json"), 0); });
  std::string err;
  EXPECT_FALSE(ledger_store::open(dir_.string(), err));
  EXPECT_NE(err.find("alephd ledger verify"), std::string::npos) << err;
  auto lenient = ledger_store::open(dir_.string(), err, false);
  ASSERT_TRUE(lenient) << err;
  auto c = lenient->verify();
  EXPECT_EQ(c.first_bad, 5u);
  EXPECT_EQ(c.reason, "not a well-formed entry");
}

} // namespace ledger_tests
