#include "runtime/message_wal.hpp"

#include <filesystem>
#include <string>
#include <vector>

#include <fcntl.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include "tests/caf_fixture.hpp"

using namespace alephd;

namespace message_wal_tests {

namespace {

struct message_wal_test : ::testing::Test {
  test::temp_dir dir;

  std::string path() const { return (dir.path / "wal").string(); }

  std::unique_ptr<message_wal> open(uint64_t segment_bytes = 16 << 10) {
    std::string err;
    auto w = message_wal::open(path(), err, segment_bytes);
    EXPECT_TRUE(w) << err;
    return w;
  }

  static wal_entry entry(uint64_t seq, size_t size = 100) {
    return wal_entry{seq, "hash" + std::to_string(seq), std::string(size, static_cast<char>('a' + seq % 26))};
  }

  static void append(message_wal& w, const std::vector<wal_entry>& entries) {
    std::string err;
    ASSERT_TRUE(w.append(entries, err)) << err;
  }

  static std::vector<uint64_t> seqs(const std::vector<wal_entry>& es) {
    std::vector<uint64_t> out;
    for (auto& e : es)
      out.push_back(e.seq);
    return out;
  }
};

TEST_F(message_wal_test, a_new_log_is_two_zero_filled_segments_and_empty) {
  auto w = open(16 << 10);
  EXPECT_TRUE(w->take_recovered().empty());
  for (int i = 0; i < 2; ++i)
    EXPECT_EQ(std::filesystem::file_size(dir.path / "wal" / ("segment-" + std::to_string(i))), 16u << 10);
  EXPECT_EQ(w->capacity(), (16u << 10) - message_wal::header_bytes);
}

TEST_F(message_wal_test, appended_entries_are_read_back_whole_and_in_order) {
  {
    auto w = open();
    std::string err;
    ASSERT_TRUE(w->reset(err)) << err;
    append(*w, {entry(1), entry(2)});
    append(*w, {entry(3, 0), entry(4, 3000)});
  }
  auto got = open()->take_recovered();
  ASSERT_EQ(seqs(got), (std::vector<uint64_t>{1, 2, 3, 4}));
  EXPECT_EQ(got[3], entry(4, 3000));
  EXPECT_EQ(got[2].record, "");
}

// A crash in the middle of an append leaves a torn record: it and what follows are dropped,
// what was synced before is kept.
TEST_F(message_wal_test, a_torn_record_ends_the_log) {
  {
    auto w = open();
    std::string err;
    ASSERT_TRUE(w->reset(err)) << err;
    append(*w, {entry(1), entry(2)});
    append(*w, {entry(3), entry(4)});
  }
  // Flip one byte of record 3's bytes (the third record: header 4096 + 2 records before it).
  auto rec = message_wal::record_overhead + entry(1).hash.size() + 100;
  int fd = ::open((dir.path / "wal" / "segment-0").c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  char c = 'Z';
  ASSERT_EQ(::pwrite(fd, &c, 1, static_cast<off_t>(message_wal::header_bytes + 2 * rec + rec - 1)), 1);
  ::close(fd);
  EXPECT_EQ(seqs(open()->take_recovered()), (std::vector<uint64_t>{1, 2}));
}

TEST_F(message_wal_test, reset_empties_the_log_durably) {
  {
    auto w = open();
    append(*w, {entry(1)});
    std::string err;
    ASSERT_TRUE(w->reset(err)) << err;
  }
  EXPECT_TRUE(open()->take_recovered().empty());
}

// Turning over: the other segment starts a newer generation; what the first held stays
// readable until it is itself turned over to, and then none of it comes back.
TEST_F(message_wal_test, a_turned_over_segment_never_yields_its_old_records) {
  std::string err;
  {
    auto w = open(16 << 10);
    ASSERT_TRUE(w->reset(err)) << err;
    for (uint64_t s = 1; s <= 11; ++s)
      append(*w, {entry(s, 1000)});
    EXPECT_FALSE(w->fits(message_wal::footprint(entry(12, 1000)))) << "12 KiB of records fill the segment";
    ASSERT_TRUE(w->rotate(err)) << err;
    EXPECT_EQ(w->active(), 1);
    append(*w, {entry(12, 1000)});
  }
  {
    auto w = open(16 << 10);
    auto got = w->take_recovered();
    EXPECT_EQ(got.size(), 12u) << "both segments are read";
    EXPECT_EQ(w->active(), 1) << "the newer generation is the active one";
    ASSERT_TRUE(w->rotate(err)) << err; // back to segment 0, over its eleven old records
    append(*w, {entry(13, 10)});
  }
  auto got = open(16 << 10)->take_recovered();
  EXPECT_EQ(seqs(got), (std::vector<uint64_t>{12, 13}));
}

TEST_F(message_wal_test, an_entry_larger_than_the_room_left_is_refused) {
  auto w = open(16 << 10);
  std::string err;
  ASSERT_TRUE(w->reset(err)) << err;
  EXPECT_FALSE(w->append({entry(1, 13 << 10)}, err));
  EXPECT_NE(err.find("full"), std::string::npos) << err;
  EXPECT_FALSE(w->failed()) << "nothing was written: the log stays usable";
  append(*w, {entry(2)});
}

TEST_F(message_wal_test, an_unwritable_directory_is_a_clear_error) {
  std::string err;
  auto blocker = dir.path / "blocker";
  { std::FILE* f = std::fopen(blocker.c_str(), "w"); ASSERT_TRUE(f); std::fclose(f); }
  EXPECT_FALSE(message_wal::open((blocker / "wal").string(), err));
  EXPECT_NE(err.find("cannot create"), std::string::npos) << err;
}

} // namespace

} // namespace message_wal_tests
