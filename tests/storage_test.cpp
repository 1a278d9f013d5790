// The CCN's content store with real processes: streamed uploads and downloads of a large file
// within a bounded RSS, `alephd upload`, ranges, limits (413), a full disk (507), kill -9 in the
// middle of an upload, and a blob altered on disk.
#include <csignal>
#include <cstdio>
#include <fstream>
#include <random>
#include <set>
#include <thread>

#include <sys/mount.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "runtime/blob_store.hpp"
#include "runtime/transfer.hpp"
#include "tests/cluster.hpp"

using namespace std::chrono_literals;
using nlohmann::json;
using alephd::test::cluster;
using alephd::test::eventually;
using alephd::test::http_request;
using alephd::test::localhost;
using alephd::test::process;
namespace fs = std::filesystem;

namespace {

// Writes `mib` MiB of pseudo-random bytes; returns their sha256.
std::string make_file(const std::string& path, size_t mib) {
  std::mt19937_64 rng{42};
  std::vector<uint64_t> block((1 << 20) / 8);
  alephd::sha256_stream sha;
  std::ofstream out{path, std::ios::binary};
  for (size_t i = 0; i < mib; ++i) {
    for (auto& w : block)
      w = rng();
    out.write(reinterpret_cast<const char*>(block.data()), 1 << 20);
    sha.update(block.data(), 1 << 20);
  }
  return sha.hex();
}

// The peak resident set of a process (VmHWM), in bytes.
uint64_t peak_rss(pid_t pid) {
  return alephd::test::status_bytes(pid, "VmHWM");
}

// Runs `alephd args...`; returns the exit code, with stdout and stderr.
int run_cli(const std::string& args, const fs::path& dir, std::string& out, std::string& err) {
  auto o = dir / "cli.out", e = dir / "cli.err";
  auto rc = std::system((std::string{ALEPHD_BINARY} + " " + args + " > " + o.string() + " 2> "
                         + e.string()).c_str());
  auto slurp = [](const fs::path& p) {
    std::ifstream in{p};
    return std::string{std::istreambuf_iterator<char>{in}, {}};
  };
  out = slurp(o);
  err = slurp(e);
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

// Blob files (not temp files) under a blob dir.
size_t blob_count(const fs::path& blobs) {
  size_t n = 0;
  std::error_code ec;
  for (auto& e : fs::recursive_directory_iterator{blobs, ec})
    if (e.is_regular_file() && e.path().parent_path().filename() != "tmp")
      ++n;
  return n;
}

size_t temp_count(const fs::path& blobs) {
  size_t n = 0;
  std::error_code ec;
  for (auto& e : fs::directory_iterator{blobs / "tmp", ec})
    n += e.is_regular_file() ? 1 : 0;
  return n;
}

struct storage : cluster {};

TEST_F(storage, a_large_file_is_uploaded_and_served_in_a_stream_with_bounded_memory) {
  auto& ccn = start_ccn("ccn", {"--ccn.max-file-size=1073741824"});
  auto http = ccn.port("http");
  auto file = (dir / "big.bin").string();
  constexpr size_t mib = 1024;
  auto hash = make_file(file, mib);
  std::string out, err;
  auto rc = run_cli("upload " + file + " --progress --ccn http://127.0.0.1:" + std::to_string(http),
                    dir, out, err);
  ASSERT_EQ(rc, 0) << err;
  EXPECT_EQ(out, hash + "\n");
  EXPECT_NE(err.find("100% [##############################]"), std::string::npos) << err;
  // Served whole, streamed into a file and hashed on the way.
  auto copy = (dir / "copy.bin").string();
  alephd::transfer::options o;
  auto r = alephd::transfer::download("http://127.0.0.1:" + std::to_string(http),
                                      "/api/v0/storage/raw/" + hash, copy, uint64_t{1} << 40, o);
  ASSERT_TRUE(r.error.empty()) << r.error;
  EXPECT_EQ(r.sha256, hash);
  EXPECT_EQ(r.size, mib << 20);
  // A byte range of it.
  auto part = http_request(localhost, http, "GET", "/api/v0/storage/raw/" + hash, {},
                           {{"Range", "bytes=1000000-1000999"}}, 10s);
  EXPECT_EQ(part.status, 206);
  std::ifstream in{file, std::ios::binary};
  in.seekg(1000000);
  std::string expected(1000, '\0');
  in.read(expected.data(), 1000);
  EXPECT_TRUE(part.body == expected);
  // Neither direction held the file in memory.
  auto peak = peak_rss(ccn.pid());
  EXPECT_GT(peak, 0u);
  EXPECT_LT(peak, 256ull << 20) << "peak RSS " << (peak >> 20) << " MiB for a " << mib << " MiB file";
  EXPECT_EQ(temp_count(dir / "ccn" / "blobs"), 0u);
}

TEST_F(storage, bad_hashes_unknown_files_and_files_over_the_limit_get_clear_errors) {
  auto& ccn = start_ccn("ccn", {"--ccn.max-file-size=1048576"});
  auto http = ccn.port("http");
  auto malformed = http_request(localhost, http, "GET", "/api/v0/storage/raw/xyz", {}, {}, 5s);
  EXPECT_EQ(malformed.status, 400);
  auto unknown = http_request(localhost, http, "GET", "/api/v0/storage/raw/" + std::string(64, 'a'), {}, {}, 5s);
  EXPECT_EQ(unknown.status, 404);
  EXPECT_TRUE(json::parse(unknown.body, nullptr, false).contains("error")) << unknown.body;
  // 3 MiB raw and a 1.5 MiB multipart file against a 1 MiB limit.
  auto big = http_request(localhost, http, "POST", "/api/v0/storage/add_file",
                          std::string(3 << 20, 'x'), {}, 20s);
  EXPECT_EQ(big.status, 413) << big.body;
  std::string part(3 << 19, 'y');
  auto body = "--b\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\n" + part + "\r\n--b--\r\n";
  auto multi = http_request(localhost, http, "POST", "/api/v0/storage/add_file", body,
                            {{"Content-Type", "multipart/form-data; boundary=b"}}, 20s);
  EXPECT_EQ(multi.status, 413) << multi.body;
  EXPECT_EQ(blob_count(dir / "ccn" / "blobs"), 0u) << "nothing refused is stored";
  EXPECT_TRUE(eventually([&] { return temp_count(dir / "ccn" / "blobs") == 0; }, 5s));
  // Within the limit, both ways work.
  auto ok = http_request(localhost, http, "POST", "/api/v0/storage/add_file",
                         std::string(1 << 20, 'z'), {}, 20s);
  EXPECT_EQ(ok.status, 200) << ok.body;
}

TEST_F(storage, a_full_disk_answers_507_keeps_nothing_half_written_and_keeps_serving) {
  if (::geteuid() != 0)
    GTEST_SKIP() << "mounting a small tmpfs needs root";
  auto data = dir / "ccn";
  fs::create_directories(data);
  ASSERT_EQ(::mount("tmpfs", data.c_str(), "tmpfs", MS_NOSUID | MS_NODEV, "size=40m"), 0)
    << std::strerror(errno);
  struct unmount_at_end {
    fs::path p;
    std::vector<std::unique_ptr<process>>* procs;
    ~unmount_at_end() {
      for (auto& x : *procs)
        x->kill9();
      ::umount2(p.c_str(), MNT_DETACH);
    }
  } guard{data, &procs};
  auto& ccn = start_ccn("ccn", {"--ccn.max-file-size=104857600"});
  auto http = ccn.port("http");
  auto small = http_request(localhost, http, "POST", "/api/v0/storage/add_file",
                            std::string(2 << 20, 's'), {}, 20s);
  ASSERT_EQ(small.status, 200) << small.body;
  auto full = http_request(localhost, http, "POST", "/api/v0/storage/add_file",
                           std::string(64 << 20, 'f'), {}, 30s);
  EXPECT_EQ(full.status, 507) << full.body;
  auto err = json::parse(full.body, nullptr, false);
  EXPECT_TRUE(err.is_object() && err.contains("error")) << full.body;
  EXPECT_TRUE(eventually([&] { return temp_count(data / "blobs") == 0; }, 5s))
    << "the partial upload was removed";
  EXPECT_EQ(blob_count(data / "blobs"), 1u);
  // Still serving: reads, and writes that fit.
  auto hash = json::parse(small.body)["hash"].get<std::string>();
  EXPECT_EQ(http_request(localhost, http, "GET", "/api/v0/storage/raw/" + hash, {}, {}, 10s).status, 200);
  auto again = http_request(localhost, http, "POST", "/api/v0/storage/add_file",
                            std::string(1 << 20, 'a'), {}, 20s);
  EXPECT_EQ(again.status, 200) << again.body;
}

TEST_F(storage, kill_9_in_the_middle_of_an_upload_leaves_no_partial_file) {
  auto& ccn = start_ccn("ccn", {"--ccn.max-file-size=1073741824"});
  auto http = ccn.port("http");
  auto blobs = dir / "ccn" / "blobs";
  // Announce 100 MiB, send 20 MiB, and kill the CCN while it waits for the rest.
  std::string head = "POST /api/v0/storage/add_file HTTP/1.1\r\nHost: x\r\nContent-Length: "
                     + std::to_string(100 << 20) + "\r\n\r\n";
  std::thread sender([&] {
    alephd::test::raw_exchange(localhost, http, head + std::string(20 << 20, 'k'), 10s, false);
  });
  EXPECT_TRUE(eventually([&] { return temp_count(blobs) == 1; }, 10s)) << "the body is spooled";
  ccn.kill9();
  sender.join();
  EXPECT_EQ(blob_count(blobs), 0u);
  auto& again = start("ccn", {"ccn", "--port=0", "--node-port=0"});
  EXPECT_EQ(temp_count(blobs), 0u) << "a restart removes what an upload left";
  EXPECT_EQ(blob_count(blobs), 0u);
  auto listed = http_request(localhost, again.port("http"), "GET", "/api/v0/storage/raw/" + std::string(64, '0'), {}, {}, 5s);
  EXPECT_EQ(listed.status, 404);
}

TEST_F(storage, a_blob_altered_on_disk_is_never_served) {
  auto& ccn = start_ccn("ccn");
  auto http = ccn.port("http");
  auto up = http_request(localhost, http, "POST", "/api/v0/storage/add_file", "original bytes", {}, 10s);
  ASSERT_EQ(up.status, 200) << up.body;
  auto hash = json::parse(up.body)["hash"].get<std::string>();
  auto blob = dir / "ccn" / "blobs" / hash.substr(0, 2) / hash.substr(2);
  ASSERT_TRUE(fs::exists(blob));
  std::ofstream{blob, std::ios::trunc} << "tampered bytes";
  auto r = http_request(localhost, http, "GET", "/api/v0/storage/raw/" + hash, {}, {}, 10s);
  EXPECT_EQ(r.status, 404) << r.body;
  EXPECT_FALSE(fs::exists(blob)) << "the altered blob is deleted";
  EXPECT_NE(ccn.log().find("altered on disk"), std::string::npos);
  // Uploading it again restores it.
  auto re = http_request(localhost, http, "POST", "/api/v0/storage/add_file", "original bytes", {}, 10s);
  EXPECT_EQ(re.status, 200);
  auto back = http_request(localhost, http, "GET", "/api/v0/storage/raw/" + hash, {}, {}, 10s);
  EXPECT_EQ(back.status, 200);
  EXPECT_EQ(back.body, "original bytes");
}


std::string store_message(const std::string& file, const std::string& sender, double time) {
  json m{{"chain", "ETH"},
         {"sender", sender},
         {"type", "STORE"},
         {"item_type", "inline"},
         {"time", time},
         {"content", {{"address", sender}, {"time", time}, {"item_type", "storage"},
                      {"item_hash", file}}}};
  return m.dump();
}

std::string forget_message(const std::string& store, const std::string& sender, double time) {
  json m{{"chain", "ETH"},
         {"sender", sender},
         {"type", "FORGET"},
         {"item_type", "inline"},
         {"time", time},
         {"content", {{"address", sender}, {"time", time}, {"hashes", {store}}}}};
  return m.dump();
}

TEST_F(storage, replicas_live_on_two_crns_come_back_after_a_crn_dies_and_go_on_forget) {
  auto& ccn = start_ccn("ccn");
  auto http = ccn.port("http");
  std::map<std::string, process*> crn;
  for (auto name : {"crn-a", "crn-b", "crn-c"})
    crn[name] = &start_crn(name, node_endpoint(ccn));
  ASSERT_TRUE(eventually([&] { return count_state(crn_states(http), "linked") == 3; }, 15s));
  std::string bytes(3 << 20, 'r');
  bytes[12345] = 'x';
  auto up = http_request(localhost, http, "POST", "/api/v0/storage/add_file", bytes, {}, 20s);
  ASSERT_EQ(up.status, 200) << up.body;
  auto file = json::parse(up.body)["hash"].get<std::string>();
  const std::string sender = "0x9319Ad3B7A8E0eE24f2E639c40D8eD124C5520Ba";
  auto posted = http_request(localhost, http, "POST", "/api/v0/messages",
                             store_message(file, sender, 1700000000), {}, 10s);
  ASSERT_EQ(posted.status, 200) << posted.body;
  auto store = json::parse(posted.body)["item_hash"].get<std::string>();
  auto holders = [&] {
    std::set<std::string> out;
    for (auto& [name, p] : crn)
      if (p->running()
          && http_request(localhost, p->port("http"), "GET", "/api/v0/storage/raw/" + file, {}, {}, 5s).status == 200)
        out.insert(name);
    return out;
  };
  ASSERT_TRUE(eventually([&] { return holders().size() == 2; }, 20s)) << holders().size();
  auto first = holders();
  // The CRN holding a replica dies: another one takes its place.
  auto victim = *first.begin();
  crn[victim]->kill9();
  ASSERT_TRUE(eventually([&] { return holders().size() == 2; }, 20s)) << "the count is restored";
  EXPECT_EQ(holders().count(victim), 0u);
  // The CCN loses its own copy: it serves the file from a replica.
  auto blob = dir / "ccn" / "blobs" / file.substr(0, 2) / file.substr(2);
  ASSERT_TRUE(fs::remove(blob));
  auto served = http_request(localhost, http, "GET", "/api/v0/storage/raw/" + file, {}, {}, 20s);
  EXPECT_EQ(served.status, 200) << served.body.substr(0, 200);
  EXPECT_TRUE(served.body == bytes);
  // FORGET: gone from the CRNs and from the CCN.
  auto forgot = http_request(localhost, http, "POST", "/api/v0/messages",
                             forget_message(store, sender, 1700000100), {}, 10s);
  ASSERT_EQ(forgot.status, 200) << forgot.body;
  EXPECT_TRUE(eventually([&] { return holders().empty(); }, 10s));
  EXPECT_TRUE(eventually([&] {
    return http_request(localhost, http, "GET", "/api/v0/storage/raw/" + file, {}, {}, 5s).status == 404;
  }, 10s));
}


TEST_F(storage, a_large_file_reaches_a_peer_ccn_streamed_over_http) {
  auto& a = start_ccn("ccn-a", {"--ccn.max-file-size=1073741824"});
  auto& b = start_ccn("ccn-b", {"--ccn.max-file-size=1073741824", "--peer=" + node_endpoint(a)});
  auto file = (dir / "peer.bin").string();
  auto hash = make_file(file, 200);
  std::string out, err;
  ASSERT_EQ(run_cli("upload " + file + " --no-progress --ccn http://127.0.0.1:" + std::to_string(a.port("http")),
                    dir, out, err), 0) << err;
  ASSERT_EQ(out, hash + "\n");
  auto blob = dir / "ccn-b" / "blobs" / hash.substr(0, 2) / hash.substr(2);
  EXPECT_TRUE(eventually([&] { return fs::exists(blob); }, 60s)) << "the peer fetched it";
  alephd::transfer::options o;
  auto copy = (dir / "from-b.bin").string();
  auto r = alephd::transfer::download("http://127.0.0.1:" + std::to_string(b.port("http")),
                                      "/api/v0/storage/raw/" + hash, copy, uint64_t{1} << 40, o);
  ASSERT_TRUE(r.error.empty()) << r.error;
  EXPECT_EQ(r.sha256, hash);
  EXPECT_LT(peak_rss(b.pid()), 256ull << 20) << "the peer did not hold it in memory";
  EXPECT_LT(peak_rss(a.pid()), 256ull << 20);
}


TEST_F(storage, the_cache_bound_is_reserved_out_of_the_disk_a_crn_offers) {
  auto& ccn = start_ccn("ccn");
  struct statvfs vfs{};
  ASSERT_EQ(::statvfs(dir.c_str(), &vfs), 0);
  uint64_t available = static_cast<uint64_t>(vfs.f_bavail) * vfs.f_frsize;
  auto& crn = start(std::string{"crn"}, {"crn", "--port=0", "--ccn=" + node_endpoint(ccn),
                                         "--cache.max-bytes=" + std::to_string(available / 2)});
  uint64_t offered = 0;
  ASSERT_TRUE(eventually([&] {
    auto j = get_json(ccn.port("http"), "/api/v0/nodes");
    if (!j.is_object() || !j.contains("crns") || j["crns"].empty())
      return false;
    offered = j["crns"][0]["capacity"]["disk_mib"].get<uint64_t>();
    return true;
  }, 10s));
  auto mib = available >> 20;
  EXPECT_GT(offered, mib * 4 / 10) << "offered " << offered << " MiB of " << mib;
  EXPECT_LT(offered, mib * 6 / 10) << "half the disk is the cache's: offered " << offered << " MiB of " << mib;
  auto usage = get_json(crn.port("http"), "/about/usage/system");
  EXPECT_EQ(usage["cache"]["max_bytes"].get<uint64_t>(), available / 2);
}

} // namespace
