// The cache behind a node's content store, on the deterministic scheduler: downloads through a
// link double (single-flight), pins, LRU eviction between watermarks, corruption found on read
// and by the scrub, spooled and multipart sources, FORGET while pinned, recovery of an index.
#include "actors/content_store.hpp"

#include <filesystem>
#include <fstream>
#include <map>

#include "messages/aleph_message.hpp"
#include "runtime/blob_store.hpp"
#include "runtime/multipart.hpp"
#include "tests/caf_fixture.hpp"

using namespace alephd;
using namespace alephd::test;

namespace fs = std::filesystem;

// Named so that the suites can share one unity-built test binary.
namespace cache_shard_tests {

namespace {

struct origin_state {
  std::map<std::string, std::string> files;
  int reads = 0;
  int locates = 0;
  /// Reads held back while `hold` is set; a tick answers them.
  std::vector<std::pair<std::string, caf::typed_response_promise<file_blob>>> held;
  bool hold = false;
};

// A CRN's link as the cache sees it: the CCN's files, by hash, over the link itself.
ccn_link_actor::behavior_type origin(ccn_link_actor::stateful_pointer<origin_state> self) {
  return {
    [=](atom::status, link_state) {},
    [=](atom::allocate, const allocation& a) { return allocation_ack{a.item_hash, a.epoch, "", false, "double"}; },
    [=](atom::get) { return link_info{}; },
    [=](atom::get, const std::string& h) -> caf::result<stored_message> {
      return make_error(ec::not_found, "no message " + h);
    },
    [=](atom::get, const std::string& h, bool) -> caf::result<stored_message> {
      return make_error(ec::not_found, "no message " + h);
    },
    [=](atom::replicate, const std::string& h) -> caf::result<file_info> {
      return make_error(ec::unavailable, "no replicas here: " + h);
    },
    [=](atom::remove, const std::string&) {},
    [=](atom::confirm, const std::vector<std::string>&) {},
    [=](atom::locate, const std::string&) -> caf::result<std::string> {
      ++self->state.locates;
      return std::string{}; // no HTTP address: files come over the link
    },
    [=](atom::read, const std::string& h) -> caf::result<file_blob> {
      ++self->state.reads;
      auto i = self->state.files.find(h);
      if (i == self->state.files.end())
        return make_error(ec::not_found, "no file " + h);
      if (self->state.hold) {
        auto rp = self->make_response_promise<file_blob>();
        self->state.held.emplace_back(h, rp);
        return rp;
      }
      return file_blob{h, i->second};
    },
    [=](atom::tick) {
      auto& st = self->state;
      for (auto& [h, rp] : st.held)
        rp.deliver(file_blob{h, st.files[h]});
      st.held.clear();
    },
    [=](atom::connect) {},
    [=](atom::run, const std::string&, const stored_message&) { return uint16_t{500}; },
    [=](atom::exited, const execution_info&) {},
  };
}

struct cache_test : caf_fixture {
  temp_dir dir;
  std::string root = dir.str() + "/cache";
  std::shared_ptr<lmdb::env> env = open_test_env(dir);
  ccn_link_actor link = spawn(origin);

  content_store_actor make_cache(uint64_t max_bytes, bool scrub = false) {
    content_store_config c;
    c.root = root;
    c.env = env;
    c.shards = 4;
    c.max_bytes = max_bytes;
    c.max_file_bytes = max_bytes;
    c.keep_stored = false;
    c.fetch_missing = true;
    c.scrub_bytes = scrub ? 1 << 20 : 0;
    c.scrub_interval = std::chrono::seconds(1);
    auto store = spawn(content_store, c);
    caf::anon_send(store, atom::connect_v, caf::actor_cast<file_source_actor>(link));
    sched.run();
    return store;
  }

  // A file the origin holds: `n` bytes of `c`; returns its hash.
  std::string offer(size_t n, char c) {
    std::string data(n, c);
    auto hash = aleph::sha256_hex(data);
    state_of<origin_state>(link).files[hash] = data;
    return hash;
  }

  reply<file_info> fetch(const content_store_actor& store, const std::string& hash,
                         const std::string& owner = {}) {
    return ask<file_info>(store, atom::fetch_v, hash, owner, caf::actor{});
  }

  std::vector<std::string> held(const content_store_actor& store) {
    sched.run();
    return *ask<std::vector<std::string>>(store, atom::inventory_v).value;
  }

  cache_usage usage(const content_store_actor& store) {
    sched.run();
    return *ask<cache_usage>(store, atom::usage_v).value;
  }

  bool has(const content_store_actor& store, const std::string& hash) {
    auto h = held(store);
    return std::find(h.begin(), h.end(), hash) != h.end();
  }
};

TEST_F(cache_test, a_missing_file_is_downloaded_once_and_then_served_from_disk) {
  auto store = make_cache(1 << 20);
  auto h = offer(1000, 'a');
  auto first = fetch(store, h);
  ASSERT_TRUE(first.value) << describe(first.error);
  EXPECT_EQ(first.value->size, 1000u);
  EXPECT_EQ(fs::file_size(first.value->path), 1000u);
  auto again = fetch(store, h);
  ASSERT_TRUE(again.value);
  EXPECT_EQ(state_of<origin_state>(link).reads, 1);
  EXPECT_EQ(usage(store).downloads, 1u);
}

TEST_F(cache_test, a_hundred_concurrent_fetches_of_one_missing_file_make_one_download) {
  auto store = make_cache(1 << 20);
  auto h = offer(5000, 'b');
  auto& o = state_of<origin_state>(link);
  o.hold = true;
  std::vector<std::shared_ptr<std::optional<file_info>>> got;
  for (int i = 0; i < 100; ++i) {
    auto slot = std::make_shared<std::optional<file_info>>();
    got.push_back(slot);
    auto client = sys.spawn([=](caf::event_based_actor* a) {
      a->request(store, caf::infinite, atom::fetch_v, h, "run-" + std::to_string(i), caf::actor{})
        .then([=](const file_info& f) { *slot = f; });
    });
    owned.push_back(client);
  }
  sched.run();
  EXPECT_EQ(o.reads, 1) << "one download for a hundred requests";
  ASSERT_EQ(o.held.size(), 1u);
  caf::anon_send(link, atom::tick_v);
  sched.run();
  for (auto& slot : got) {
    ASSERT_TRUE(slot->has_value());
    EXPECT_EQ((*slot)->hash, h);
  }
  EXPECT_EQ(o.reads, 1);
  EXPECT_EQ(usage(store).pinned_bytes, 5000u) << "pinned by the hundred owners";
}

TEST_F(cache_test, an_unknown_file_is_not_found_and_a_malformed_hash_is_invalid) {
  auto store = make_cache(1 << 20);
  auto r = fetch(store, std::string(64, 'f'));
  ASSERT_FALSE(r.value);
  EXPECT_TRUE(is(r.error, ec::not_found)) << describe(r.error);
  auto bad = fetch(store, "../etc/passwd");
  ASSERT_FALSE(bad.value);
  EXPECT_TRUE(is(bad.error, ec::invalid)) << describe(bad.error);
}

TEST_F(cache_test, least_recently_used_unpinned_files_go_first_down_to_the_low_watermark) {
  auto store = make_cache(1000); // high 900, low 800
  auto a = offer(250, 'a'), b = offer(250, 'b'), c = offer(250, 'c'), d = offer(250, 'd');
  ASSERT_TRUE(fetch(store, a, "run-1").value); // pinned
  ASSERT_TRUE(fetch(store, b).value);
  ASSERT_TRUE(fetch(store, c).value);
  EXPECT_EQ(usage(store).bytes, 750u); // below the high watermark
  ASSERT_TRUE(fetch(store, b).value);  // b is now more recent than c
  ASSERT_TRUE(fetch(store, d).value);  // 1000 > 900: evict down to 800 at most
  sched.run();
  EXPECT_TRUE(has(store, a)) << "pinned files are never evicted";
  EXPECT_TRUE(has(store, b));
  EXPECT_FALSE(has(store, c)) << "the least recently used unpinned file goes first";
  EXPECT_TRUE(has(store, d));
  EXPECT_FALSE(fs::exists(root + "/" + c.substr(0, 2) + "/" + c.substr(2)));
  auto u = usage(store);
  EXPECT_EQ(u.bytes, 750u);
  EXPECT_EQ(u.evicted, 1u);
  // Releasing the pin lets `a` go at the next pressure.
  caf::anon_send(store, atom::unpin_v, std::string{"run-1"});
  sched.run();
  auto e = offer(250, 'e');
  ASSERT_TRUE(fetch(store, e).value);
  sched.run();
  EXPECT_FALSE(has(store, a)) << "now unpinned, it is the least recently used";
  EXPECT_EQ(usage(store).bytes, 750u);
}

TEST_F(cache_test, when_every_file_is_pinned_nothing_is_evicted) {
  auto store = make_cache(1000);
  auto a = offer(600, 'a'), b = offer(600, 'b');
  ASSERT_TRUE(fetch(store, a, "run-1").value);
  ASSERT_TRUE(fetch(store, b, "run-2").value);
  sched.run();
  EXPECT_TRUE(has(store, a));
  EXPECT_TRUE(has(store, b));
  EXPECT_EQ(usage(store).pinned_bytes, 1200u);
}

TEST_F(cache_test, replicas_only_take_room_that_pinned_files_leave) {
  auto store = make_cache(1000); // high watermark 900
  auto a = offer(600, 'a'), b = offer(200, 'b'), c = offer(200, 'c');
  ASSERT_TRUE(fetch(store, a, "run-1").value);
  auto r = fetch(store, b, "replica:" + b);
  ASSERT_TRUE(r.value) << describe(r.error);
  auto third = fetch(store, c, "replica:" + c); // 800 pinned before it
  ASSERT_TRUE(third.value) << "800 < 900: still room";
  auto d = offer(100, 'd');
  auto full = fetch(store, d, "replica:" + d);
  ASSERT_FALSE(full.value);
  EXPECT_TRUE(is(full.error, ec::no_space)) << describe(full.error);
  EXPECT_TRUE(fetch(store, d, "run-2").value) << "an execution's file is never refused";
}

TEST_F(cache_test, a_replica_stays_pinned_across_a_restart_until_its_ccn_confirms_otherwise) {
  auto a = offer(300, 'a'), b = offer(200, 'b');
  {
    auto store = make_cache(1 << 20);
    ASSERT_TRUE(fetch(store, a, "replica:" + a).value);
    ASSERT_TRUE(fetch(store, b, "replica:" + b).value);
    ASSERT_TRUE(fetch(store, b, "run-1").value);
    caf::anon_send_exit(store, caf::exit_reason::user_shutdown);
    sched.run();
  }
  auto store = make_cache(1 << 20);
  EXPECT_EQ(usage(store).pinned_bytes, 500u) << "the duty pins came back from the index";
  caf::anon_send(store, atom::confirm_v, std::vector<std::string>{b}); // a moved elsewhere
  sched.run();
  EXPECT_EQ(usage(store).pinned_bytes, 200u);
  caf::anon_send(store, atom::confirm_v, std::vector<std::string>{});
  sched.run();
  EXPECT_EQ(usage(store).pinned_bytes, 0u) << "an execution's pin does not outlive a restart";
}

TEST_F(cache_test, a_file_larger_than_the_cache_is_refused) {
  auto store = make_cache(1000);
  auto big = offer(1001, 'x');
  auto r = fetch(store, big);
  ASSERT_FALSE(r.value);
  EXPECT_TRUE(is(r.error, ec::too_large)) << describe(r.error);
  EXPECT_EQ(usage(store).bytes, 0u);
}

TEST_F(cache_test, a_blob_altered_on_disk_is_never_served_and_is_fetched_again) {
  auto store = make_cache(1 << 20);
  auto h = offer(100, 'a');
  auto first = fetch(store, h);
  ASSERT_TRUE(first.value);
  {
    std::ofstream out{first.value->path, std::ios::binary | std::ios::trunc};
    out << std::string(100, 'z');
  }
  auto local = ask<file_info>(store, atom::get_v, h);
  ASSERT_FALSE(local.value) << "an altered blob must not be served";
  EXPECT_TRUE(is(local.error, ec::not_found));
  EXPECT_EQ(usage(store).corrupt, 1u);
  auto again = fetch(store, h);
  ASSERT_TRUE(again.value) << describe(again.error);
  std::ifstream in{again.value->path, std::ios::binary};
  std::string bytes{std::istreambuf_iterator<char>{in}, {}};
  EXPECT_EQ(bytes, std::string(100, 'a'));
  EXPECT_EQ(state_of<origin_state>(link).reads, 2);
}

TEST_F(cache_test, the_scrub_finds_an_alteration_that_kept_size_and_time) {
  auto store = make_cache(1 << 20, true);
  auto h = offer(100, 'a');
  auto f = fetch(store, h, "run-1");
  ASSERT_TRUE(f.value);
  auto path = f.value->path;
  auto when = fs::last_write_time(path);
  {
    std::fstream out{path, std::ios::binary | std::ios::in | std::ios::out};
    out.seekp(10);
    out.put('z'); // same size, same inode
  }
  fs::last_write_time(path, when); // and the same time: only re-hashing can tell
  ASSERT_TRUE(ask<file_info>(store, atom::get_v, h).value) << "the stamp still matches";
  advance(std::chrono::seconds(2));
  EXPECT_EQ(usage(store).corrupt, 1u);
  // It was pinned by a running execution, so the scrub fetched it again at once.
  EXPECT_EQ(state_of<origin_state>(link).reads, 2);
  std::ifstream in{path, std::ios::binary};
  std::string bytes{std::istreambuf_iterator<char>{in}, {}};
  EXPECT_EQ(bytes, std::string(100, 'a'));
}

TEST_F(cache_test, forget_of_a_pinned_file_waits_for_the_last_pin) {
  auto store = make_cache(1 << 20);
  auto h = offer(100, 'a');
  ASSERT_TRUE(fetch(store, h, "run-1").value);
  auto r = ask<bool>(store, atom::remove_v, h);
  ASSERT_TRUE(r.value);
  EXPECT_TRUE(*r.value);
  EXPECT_TRUE(has(store, h)) << "a running execution still uses it";
  caf::anon_send(store, atom::unpin_v, std::string{"run-1"});
  sched.run();
  EXPECT_FALSE(has(store, h));
  auto none = ask<bool>(store, atom::remove_v, h);
  ASSERT_TRUE(none.value);
  EXPECT_FALSE(*none.value);
}

TEST_F(cache_test, a_spooled_upload_is_moved_into_place) {
  auto store = make_cache(0);
  std::string data(200000, 'q');
  auto tmp = root + "/tmp/upload.test";
  std::ofstream{tmp, std::ios::binary} << data;
  file_source src{tmp, 0, data.size(), aleph::sha256_hex(data), {}};
  auto r = ask<file_info>(store, atom::put_v, src);
  ASSERT_TRUE(r.value) << describe(r.error);
  EXPECT_EQ(r.value->hash, aleph::sha256_hex(data));
  EXPECT_FALSE(fs::exists(tmp)) << "the spool file became the blob";
  EXPECT_EQ(fs::file_size(r.value->path), data.size());
}

TEST_F(cache_test, the_file_part_of_a_spooled_multipart_body_is_stored) {
  auto store = make_cache(0);
  std::string file(70000, 'm');
  file[5] = '\r';
  std::string body = "--XyZ\r\nContent-Disposition: form-data; name=\"metadata\"\r\n\r\n{}\r\n"
                     "--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\n"
                     "Content-Type: application/octet-stream\r\n\r\n"
                     + file + "\r\n--XyZ--\r\n";
  auto tmp = root + "/tmp/upload.multipart";
  std::ofstream{tmp, std::ios::binary} << body;
  file_source src{tmp, 0, body.size(), {}, "XyZ"};
  auto r = ask<file_info>(store, atom::put_v, src);
  ASSERT_TRUE(r.value) << describe(r.error);
  EXPECT_EQ(r.value->hash, aleph::sha256_hex(file));
  EXPECT_EQ(r.value->size, file.size());
  file_source broken{tmp, 0, body.size() - 12, {}, "XyZ"}; // no closing delimiter
  std::ofstream{tmp, std::ios::binary} << body.substr(0, body.find("\r\n--XyZ--"));
  auto bad = ask<file_info>(store, atom::put_v, broken);
  ASSERT_FALSE(bad.value);
  EXPECT_TRUE(is(bad.error, ec::invalid)) << describe(bad.error);
}

TEST_F(cache_test, blobs_without_an_index_are_verified_and_indexed_at_start) {
  std::string good = "recovered bytes", hash = aleph::sha256_hex(good);
  fs::create_directories(root + "/" + hash.substr(0, 2));
  std::ofstream{root + "/" + hash.substr(0, 2) + "/" + hash.substr(2)} << good;
  auto liar = std::string(64, 'c');
  fs::create_directories(root + "/cc");
  std::ofstream{root + "/cc/" + liar.substr(2)} << "not what the name says";
  auto store = make_cache(0);
  EXPECT_TRUE(has(store, hash));
  EXPECT_FALSE(has(store, liar));
  EXPECT_FALSE(fs::exists(root + "/cc/" + liar.substr(2)));
  EXPECT_EQ(usage(store).bytes, good.size());
}

TEST(multipart_test, finds_the_file_part_across_window_boundaries) {
  std::string file(3 << 20, 'f');
  file[(1 << 20) - 3] = '-';
  std::string body = "--b\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\n" + file + "\r\n--b--\r\n";
  auto read = [&](uint64_t off, uint64_t n) {
    return off >= body.size() ? std::string{} : body.substr(off, n);
  };
  auto p = multipart::find_file(read, body.size(), "b");
  ASSERT_TRUE(p);
  EXPECT_EQ(body.substr(p->offset, p->length), file);
  EXPECT_EQ(multipart::boundary_of("multipart/form-data; boundary=\"q r\""), "q r");
  EXPECT_EQ(multipart::boundary_of("multipart/form-data"), "");
  EXPECT_FALSE(multipart::find_file(read, body.size(), "nope"));
}

} // namespace

} // namespace cache_shard_tests
