#include "actors/content_store.hpp"

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>

#include "runtime/blob_store.hpp"
#include "tests/caf_fixture.hpp"

using namespace alephd;
using namespace alephd::test;

namespace fs = std::filesystem;

// Named so that the suites can share one unity-built test binary.
namespace content_store_tests {

namespace {

const std::string abc_sha256 = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
const std::string empty_sha256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

// is() must not see an empty error (see serialization_test: is_on_no_error_is_false).
bool failed_with(const caf::error& err, ec code) {
  return err && is(err, code);
}

std::string slurp(const std::string& path) {
  std::ifstream in{path, std::ios::binary};
  return {std::istreambuf_iterator<char>{in}, std::istreambuf_iterator<char>{}};
}

// Every regular file below `dir`, except those under `skip`.
std::vector<fs::path> files_under(const fs::path& dir, const fs::path& skip = {}) {
  std::vector<fs::path> out;
  if (!fs::exists(dir))
    return out;
  for (auto& e : fs::recursive_directory_iterator(dir)) {
    if (!skip.empty() && e.path().string().rfind(skip.string(), 0) == 0)
      continue;
    if (e.is_regular_file())
      out.push_back(e.path());
  }
  return out;
}

// Records every file a store announces.
struct file_recorder_state {
  std::vector<file_info> seen;
};

file_listener_actor::behavior_type
file_recorder(file_listener_actor::stateful_pointer<file_recorder_state> self) {
  return {[=](atom::stored, const file_info& f) { self->state.seen.push_back(f); }};
}

struct content_store_test : caf_fixture {
  temp_dir dir;
  std::string blob_dir = dir.str() + "/blobs";
  std::shared_ptr<lmdb::env> env = open_env();

  std::shared_ptr<lmdb::env> open_env() {
    return open_test_env(dir);
  }

  content_store_actor make_store(uint64_t max_file_bytes = 0) {
    content_store_config c;
    c.root = blob_dir;
    c.env = env;
    c.max_file_bytes = max_file_bytes;
    c.scrub_bytes = 0;
    return spawn(content_store, c);
  }
};

TEST_F(content_store_test, put_returns_the_sha256_and_writes_the_blob) {
  auto store = make_store();
  auto r = ask<file_info>(store, atom::put_v, std::string{"abc"});
  ASSERT_TRUE(r.value) << describe(r.error);
  EXPECT_EQ(r.value->hash, abc_sha256);
  EXPECT_EQ(r.value->size, 3u);
  EXPECT_GT(r.value->created, 0.0);
  ASSERT_FALSE(r.value->path.empty());
  EXPECT_EQ(fs::path{r.value->path}.parent_path().parent_path(), fs::path{blob_dir});
  ASSERT_TRUE(fs::exists(r.value->path));
  EXPECT_EQ(slurp(r.value->path), "abc");
}

TEST_F(content_store_test, get_after_put_returns_the_same_file) {
  auto store = make_store();
  auto put = ask<file_info>(store, atom::put_v, std::string{"abc"});
  ASSERT_TRUE(put.value);
  auto g = ask<file_info>(store, atom::get_v, abc_sha256);
  ASSERT_TRUE(g.value) << describe(g.error);
  EXPECT_EQ(g.value->hash, abc_sha256);
  EXPECT_EQ(g.value->size, 3u);
  EXPECT_EQ(g.value->path, put.value->path);
  EXPECT_EQ(g.value->created, put.value->created);
}

TEST_F(content_store_test, an_empty_file_is_a_file) {
  auto store = make_store();
  auto r = ask<file_info>(store, atom::put_v, std::string{});
  ASSERT_TRUE(r.value) << describe(r.error);
  EXPECT_EQ(r.value->hash, empty_sha256);
  EXPECT_EQ(r.value->size, 0u);
  EXPECT_TRUE(fs::exists(r.value->path));
}

TEST_F(content_store_test, unknown_hash_is_not_found) {
  auto store = make_store();
  auto g = ask<file_info>(store, atom::get_v, abc_sha256);
  EXPECT_FALSE(g.value);
  EXPECT_TRUE(failed_with(g.error, ec::not_found)) << describe(g.error);
  auto rd = ask<file_blob>(store, atom::read_v, abc_sha256);
  EXPECT_FALSE(rd.value);
  EXPECT_TRUE(failed_with(rd.error, ec::not_found)) << describe(rd.error);
}

TEST_F(content_store_test, malformed_hash_is_invalid) {
  auto store = make_store();
  ASSERT_TRUE(ask<file_info>(store, atom::put_v, std::string{"abc"}).value);
  std::string upper = abc_sha256;
  for (auto& c : upper)
    c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  for (const std::string& bad :
       {std::string{"xyz"}, std::string{}, upper, abc_sha256.substr(0, 63), abc_sha256 + "0",
        std::string{"../../../../etc/passwd"}}) {
    auto g = ask<file_info>(store, atom::get_v, bad);
    EXPECT_FALSE(g.value) << bad;
    EXPECT_TRUE(failed_with(g.error, ec::invalid)) << "'" << bad << "': " << describe(g.error);
  }
}

TEST_F(content_store_test, put_blob_with_the_right_hash_is_stored) {
  auto store = make_store();
  auto r = ask<file_info>(store, atom::put_v, file_blob{abc_sha256, "abc"});
  ASSERT_TRUE(r.value) << describe(r.error);
  EXPECT_EQ(r.value->hash, abc_sha256);
  EXPECT_EQ(slurp(r.value->path), "abc");
}

TEST_F(content_store_test, put_blob_with_a_wrong_hash_is_invalid_and_leaves_no_file) {
  auto store = make_store();
  auto r = ask<file_info>(store, atom::put_v, file_blob{abc_sha256, "abd"});
  EXPECT_FALSE(r.value);
  EXPECT_TRUE(failed_with(r.error, ec::invalid)) << describe(r.error);
  EXPECT_TRUE(files_under(blob_dir).empty()) << "a file was left under " << blob_dir;
  if (fs::exists(blob_dir + "/tmp")) {
    EXPECT_TRUE(fs::is_empty(blob_dir + "/tmp"));
  }
  EXPECT_TRUE(failed_with(ask<file_info>(store, atom::get_v, abc_sha256).error, ec::not_found));
  auto inv = ask<std::vector<std::string>>(store, atom::inventory_v);
  ASSERT_TRUE(inv.value);
  EXPECT_TRUE(inv.value->empty());
}

TEST_F(content_store_test, put_blob_with_a_malformed_hash_is_invalid) {
  auto store = make_store();
  auto r = ask<file_info>(store, atom::put_v, file_blob{"not-a-hash", "abc"});
  EXPECT_FALSE(r.value);
  EXPECT_TRUE(failed_with(r.error, ec::invalid)) << describe(r.error);
  EXPECT_TRUE(files_under(blob_dir).empty());
}

TEST_F(content_store_test, over_max_bytes_is_too_large_and_nothing_is_written) {
  auto store = make_store(3);
  auto ok = ask<file_info>(store, atom::put_v, std::string{"abc"}); // exactly the limit
  ASSERT_TRUE(ok.value) << describe(ok.error);
  auto big = ask<file_info>(store, atom::put_v, std::string{"abcd"});
  EXPECT_FALSE(big.value);
  EXPECT_TRUE(failed_with(big.error, ec::too_large)) << describe(big.error);
  auto blob = ask<file_info>(store, atom::put_v, file_blob{"88d4266fd4e6338d13b845fcf289579d209c897823b9217da3e161936f031589", "abcd"});
  EXPECT_TRUE(failed_with(blob.error, ec::too_large)) << describe(blob.error);
  EXPECT_EQ(files_under(blob_dir, blob_dir + "/tmp").size(), 1u);
  auto inv = ask<std::vector<std::string>>(store, atom::inventory_v);
  ASSERT_TRUE(inv.value);
  EXPECT_EQ(*inv.value, std::vector<std::string>{abc_sha256});
}

TEST_F(content_store_test, read_returns_the_bytes) {
  auto store = make_store();
  std::string data("binary\0\xff data", 13);
  auto put = ask<file_info>(store, atom::put_v, data);
  ASSERT_TRUE(put.value);
  auto rd = ask<file_blob>(store, atom::read_v, put.value->hash);
  ASSERT_TRUE(rd.value) << describe(rd.error);
  EXPECT_EQ(rd.value->hash, put.value->hash);
  EXPECT_EQ(rd.value->data, data);
}

TEST_F(content_store_test, inventory_lists_every_file_once) {
  auto store = make_store();
  ASSERT_TRUE(ask<file_info>(store, atom::put_v, std::string{"abc"}).value);
  ASSERT_TRUE(ask<file_info>(store, atom::put_v, std::string{}).value);
  ASSERT_TRUE(ask<file_info>(store, atom::put_v, std::string{"abc"}).value); // duplicate
  auto inv = ask<std::vector<std::string>>(store, atom::inventory_v);
  ASSERT_TRUE(inv.value);
  auto got = *inv.value;
  std::sort(got.begin(), got.end());
  EXPECT_EQ(got, (std::vector<std::string>{abc_sha256, empty_sha256}));
}

TEST_F(content_store_test, listener_hears_each_new_file_once) {
  auto store = make_store();
  auto rec = spawn(file_recorder);
  caf::anon_send(store, atom::subscribe_v, rec);
  sched.run();
  ASSERT_TRUE(ask<file_info>(store, atom::put_v, std::string{"abc"}).value);
  ASSERT_TRUE(ask<file_info>(store, atom::put_v, std::string{"abc"}).value);
  ASSERT_TRUE(ask<file_info>(store, atom::put_v, file_blob{abc_sha256, "abc"}).value);
  sched.run();
  auto& seen = state_of<file_recorder_state>(rec).seen;
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].hash, abc_sha256);
  EXPECT_EQ(seen[0].size, 3u);
  ASSERT_TRUE(ask<file_info>(store, atom::put_v, std::string{"second"}).value);
  sched.run();
  EXPECT_EQ(seen.size(), 2u);
}

TEST_F(content_store_test, a_refused_file_is_not_announced) {
  auto store = make_store(3);
  auto rec = spawn(file_recorder);
  caf::anon_send(store, atom::subscribe_v, rec);
  sched.run();
  ask<file_info>(store, atom::put_v, std::string{"abcd"});
  ask<file_info>(store, atom::put_v, file_blob{abc_sha256, "abd"});
  sched.run();
  EXPECT_TRUE(state_of<file_recorder_state>(rec).seen.empty());
}

TEST_F(content_store_test, files_survive_reopening_the_store) {
  std::string path;
  {
    auto store = make_store();
    auto r = ask<file_info>(store, atom::put_v, std::string{"abc"});
    ASSERT_TRUE(r.value);
    path = r.value->path;
    caf::anon_send_exit(store, caf::exit_reason::user_shutdown);
    sched.run();
  }
  owned.clear();
  env.reset();
  env = open_env();
  auto store = make_store();
  auto g = ask<file_info>(store, atom::get_v, abc_sha256);
  ASSERT_TRUE(g.value) << describe(g.error);
  EXPECT_EQ(g.value->size, 3u);
  EXPECT_EQ(g.value->path, path);
  auto rd = ask<file_blob>(store, atom::read_v, abc_sha256);
  ASSERT_TRUE(rd.value);
  EXPECT_EQ(rd.value->data, "abc");
  auto inv = ask<std::vector<std::string>>(store, atom::inventory_v);
  ASSERT_TRUE(inv.value);
  EXPECT_EQ(*inv.value, std::vector<std::string>{abc_sha256});
  // A file known before the restart is a duplicate, not announced again.
  auto rec = spawn(file_recorder);
  caf::anon_send(store, atom::subscribe_v, rec);
  sched.run();
  ASSERT_TRUE(ask<file_info>(store, atom::put_v, std::string{"abc"}).value);
  sched.run();
  EXPECT_TRUE(state_of<file_recorder_state>(rec).seen.empty());
}

} // namespace

} // namespace content_store_tests
