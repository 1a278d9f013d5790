// transfer::download against a bare HTTP server on a loopback port the OS chooses: small and
// large files of sizes that do not fall on the disk's blocks (a large file is written with
// O_DIRECT, its last partial block buffered), a file system that refuses O_DIRECT, progress,
// a connection lost half-way, cancellation and a full disk. Every failure leaves no file behind.
#include <atomic>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <future>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include "runtime/blob_store.hpp"
#include "runtime/transfer.hpp"
#include "tests/bare_http.hpp"

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using alephd::transfer::download;
using alephd::transfer::options;

namespace {

std::string bytes_of(size_t n, uint64_t seed) {
  std::mt19937_64 rng{seed};
  std::string s(n, '\0');
  for (auto& c : s)
    c = static_cast<char>(rng());
  return s;
}

std::string sha256_of(const std::string& s) {
  alephd::sha256_stream sha;
  sha.update(s.data(), s.size());
  return sha.hex();
}

std::string slurp(const fs::path& p) {
  std::ifstream in{p, std::ios::binary};
  return std::string{std::istreambuf_iterator<char>{in}, {}};
}

// Pages of [0, bytes) of the file at `p` that sit in the page cache.
size_t cached_pages(const fs::path& p, size_t bytes) {
  int fd = ::open(p.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return SIZE_MAX;
  void* m = ::mmap(nullptr, bytes, PROT_READ, MAP_SHARED, fd, 0);
  ::close(fd);
  if (m == MAP_FAILED)
    return SIZE_MAX;
  auto page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  std::vector<unsigned char> in((bytes + page - 1) / page);
  size_t n = SIZE_MAX;
  if (::mincore(m, bytes, in.data()) == 0) {
    n = 0;
    for (auto v : in)
      n += v & 1;
  }
  ::munmap(m, bytes);
  return n;
}

// Whether files in `dir` can be opened with O_DIRECT.
bool takes_o_direct(const fs::path& dir) {
  auto probe = dir / "o_direct.probe";
  int fd = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC | O_DIRECT, 0600);
  if (fd >= 0)
    ::close(fd);
  fs::remove(probe);
  return fd >= 0;
}

// Mounts a file system of `type` at `at` for the test's length; false (with the test skipped)
// where mounting is not allowed.
struct scoped_mount {
  fs::path at;
  bool ok = false;
  scoped_mount(fs::path p, const char* type, const char* opts) : at{std::move(p)} {
    fs::create_directories(at);
    ok = ::mount(type, at.c_str(), type, MS_NOSUID | MS_NODEV, opts) == 0;
  }
  ~scoped_mount() {
    if (ok)
      ::umount2(at.c_str(), MNT_DETACH);
  }
};

// Serves one GET: a Content-Length of body.size(), then the first `send` bytes of body (all by
// default), then closes. The test owns the thread's end through the destructor.
class one_shot_server {
public:
  /// With `gate`: the rest of the body after its first 1,000 bytes waits until it is ready.
  explicit one_shot_server(std::string body, size_t send = std::string::npos,
                           std::shared_future<void> gate = {})
    : body_{std::move(body)}, send_{std::min(send, body_.size())}, gate_{std::move(gate)} {
    fd_ = alephd::test::listen_loopback(port_);
    if (fd_ < 0)
      throw std::runtime_error{std::string{"cannot listen: "} + std::strerror(errno)};
    thread_ = std::thread{[this] { serve(); }};
  }
  ~one_shot_server() {
    ::shutdown(fd_, SHUT_RDWR); // wakes an accept that never got its client
    thread_.join();
    ::close(fd_);
  }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }

private:
  void serve() {
    int c = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (c < 0)
      return;
    alephd::test::read_request_head(c);
    auto head = "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: "
                + std::to_string(body_.size()) + "\r\n\r\n";
    // Head and the body's start in one write, as a server would: the client finds part of the
    // body already read behind the header.
    auto first = head + body_.substr(0, std::min<size_t>(send_, 1000));
    bool ok = ::send(c, first.data(), first.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(first.size());
    if (gate_.valid())
      gate_.wait();
    for (size_t at = std::min<size_t>(send_, 1000); ok && at < send_;) {
      auto n = ::send(c, body_.data() + at, std::min<size_t>(send_ - at, 1 << 20), MSG_NOSIGNAL);
      ok = n > 0;
      at += ok ? static_cast<size_t>(n) : 0;
    }
    ::close(c);
  }

  std::string body_;
  size_t send_;
  std::shared_future<void> gate_;
  int fd_ = -1;
  uint16_t port_ = 0;
  std::thread thread_;
};

struct transfer : ::testing::Test {
  fs::path dir;
  void SetUp() override {
    dir = fs::temp_directory_path()
          / ("alephd-transfer-" + std::to_string(::getpid()) + "-"
             + ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir);
    fs::create_directories(dir);
  }
  void TearDown() override { fs::remove_all(dir); }
};

TEST_F(transfer, a_small_file_arrives_whole_and_hashed) {
  auto body = bytes_of(100'000 + 7, 1);
  one_shot_server server{body};
  auto dest = dir / "small";
  auto r = download(server.url(), "/f", dest, uint64_t{1} << 30, options{});
  ASSERT_TRUE(r.error.empty()) << r.error;
  EXPECT_EQ(r.status, 200u);
  EXPECT_EQ(r.size, body.size());
  EXPECT_EQ(r.sha256, sha256_of(body));
  EXPECT_TRUE(slurp(dest) == body);
}

TEST_F(transfer, a_large_file_with_an_unaligned_tail_arrives_whole_and_hashed) {
  // Five 4 MiB pieces, then a tail of 12,345 bytes: three whole blocks and a partial one.
  auto body = bytes_of((20 << 20) + 12'345, 2);
  one_shot_server server{body};
  auto dest = dir / "large";
  options o;
  std::vector<std::pair<uint64_t, uint64_t>> seen;
  o.progress = [&](uint64_t done, uint64_t total) { seen.emplace_back(done, total); };
  auto r = download(server.url(), "/f", dest, uint64_t{1} << 30, o);
  ASSERT_TRUE(r.error.empty()) << r.error;
  EXPECT_EQ(r.size, body.size());
  EXPECT_EQ(r.sha256, sha256_of(body));
  EXPECT_EQ(fs::file_size(dest), body.size());
  if (takes_o_direct(dir)) {
    // Written direct: none of the whole pieces went through the page cache.
    EXPECT_EQ(cached_pages(dest, 20 << 20), 0u) << "the large file was not written with O_DIRECT";
  }
  EXPECT_TRUE(slurp(dest) == body) << "the bytes on disk differ from the bytes sent";
  ASSERT_GE(seen.size(), 3u);
  for (size_t i = 1; i < seen.size(); ++i)
    EXPECT_LE(seen[i - 1].first, seen[i].first) << "progress went backwards";
  EXPECT_GT(seen[seen.size() - 2].first, 0u);
  EXPECT_LT(seen[seen.size() - 2].first, body.size()) << "progress came only at the end";
  EXPECT_EQ(seen[seen.size() - 2].second, body.size());
  EXPECT_EQ(seen.back(), std::make_pair(uint64_t{body.size()}, uint64_t{body.size()}));
}

TEST_F(transfer, sizes_around_the_large_download_threshold_arrive_whole) {
  for (size_t size : {size_t{(4 << 20) - 1}, size_t{4 << 20}, size_t{(4 << 20) + 1},
                      size_t{(8 << 20) + 4096}}) {
    auto body = bytes_of(size, size);
    one_shot_server server{body};
    auto dest = dir / ("size-" + std::to_string(size));
    auto r = download(server.url(), "/f", dest, uint64_t{1} << 30, options{});
    ASSERT_TRUE(r.error.empty()) << size << ": " << r.error;
    EXPECT_EQ(r.size, size);
    EXPECT_EQ(r.sha256, sha256_of(body)) << size;
    EXPECT_TRUE(slurp(dest) == body) << size;
  }
}

TEST_F(transfer, a_file_system_that_refuses_o_direct_gets_buffered_writes) {
  if (::geteuid() != 0)
    GTEST_SKIP() << "mounting a ramfs needs root";
  scoped_mount ramfs{dir / "ramfs", "ramfs", ""};
  if (!ramfs.ok)
    GTEST_SKIP() << "cannot mount a ramfs here: " << std::strerror(errno);
  ASSERT_FALSE(takes_o_direct(ramfs.at)) << "ramfs was expected to refuse O_DIRECT";
  auto body = bytes_of((12 << 20) + 777, 7);
  one_shot_server server{body};
  auto dest = ramfs.at / "buffered";
  auto r = download(server.url(), "/f", dest, uint64_t{1} << 30, options{});
  ASSERT_TRUE(r.error.empty()) << r.error;
  EXPECT_EQ(r.sha256, sha256_of(body));
  EXPECT_TRUE(slurp(dest) == body);
}

TEST_F(transfer, a_large_file_of_whole_blocks_arrives_whole) {
  auto body = bytes_of(24 << 20, 3);
  one_shot_server server{body};
  auto dest = dir / "blocks";
  auto r = download(server.url(), "/f", dest, uint64_t{1} << 30, options{});
  ASSERT_TRUE(r.error.empty()) << r.error;
  EXPECT_EQ(r.sha256, sha256_of(body));
  EXPECT_TRUE(slurp(dest) == body);
}

TEST_F(transfer, many_large_downloads_at_once_all_arrive_and_only_four_hold_big_buffers) {
  if (!takes_o_direct(dir))
    GTEST_SKIP() << dir << " refuses O_DIRECT: which downloads used their buffers is not visible";
  constexpr size_t n = 6, size = (8 << 20) + 100;
  std::promise<void> go;
  std::shared_future<void> gate = go.get_future().share();
  std::vector<std::string> bodies;
  std::vector<std::unique_ptr<one_shot_server>> servers;
  for (size_t i = 0; i < n; ++i) {
    bodies.push_back(bytes_of(size, 100 + i));
    servers.push_back(std::make_unique<one_shot_server>(bodies.back(), std::string::npos, gate));
  }
  std::vector<alephd::transfer::result> results(n);
  std::vector<std::thread> clients;
  for (size_t i = 0; i < n; ++i)
    clients.emplace_back([&, i] {
      results[i] = download(servers[i]->url(), "/f", dir / ("many-" + std::to_string(i)),
                            uint64_t{1} << 30, options{});
    });
  // Every download has its head and is waiting for the body when the servers go on.
  std::this_thread::sleep_for(1s);
  go.set_value();
  for (auto& c : clients)
    c.join();
  size_t direct = 0;
  for (size_t i = 0; i < n; ++i) {
    ASSERT_TRUE(results[i].error.empty()) << i << ": " << results[i].error;
    EXPECT_EQ(results[i].sha256, sha256_of(bodies[i])) << i;
    direct += cached_pages(dir / ("many-" + std::to_string(i)), 8 << 20) == 0 ? 1 : 0;
  }
  EXPECT_EQ(direct, 4u) << "downloads that used the 16 MiB pipeline (O_DIRECT) at once";
}

TEST_F(transfer, a_connection_lost_half_way_fails_and_leaves_no_file) {
  for (size_t size : {size_t{300'000}, size_t{(20 << 20) + 5}}) {
    auto body = bytes_of(size, 4);
    one_shot_server server{body, size / 2};
    auto dest = dir / ("cut-" + std::to_string(size));
    auto r = download(server.url(), "/f", dest, uint64_t{1} << 30, options{});
    EXPECT_NE(r.error.find("download interrupted"), std::string::npos) << r.error;
    EXPECT_NE(r.error.find("the connection closed"), std::string::npos) << r.error;
    EXPECT_FALSE(r.no_space);
    EXPECT_FALSE(fs::exists(dest)) << "a partial file was left";
  }
}

TEST_F(transfer, a_cancelled_large_download_stops_and_leaves_no_file) {
  auto body = bytes_of(32 << 20, 5);
  one_shot_server server{body};
  auto dest = dir / "cancelled";
  std::atomic<bool> cancel{false};
  options o;
  o.cancel = &cancel;
  uint64_t last = 0;
  o.progress = [&](uint64_t done, uint64_t) {
    last = done;
    if (done >= (6 << 20))
      cancel = true;
  };
  auto r = download(server.url(), "/f", dest, uint64_t{1} << 30, o);
  EXPECT_EQ(r.error, "cancelled");
  EXPECT_LT(last, body.size()) << "it stopped before the end";
  EXPECT_FALSE(fs::exists(dest));
}

TEST_F(transfer, a_full_disk_fails_with_no_space_and_leaves_no_file) {
  if (::geteuid() != 0)
    GTEST_SKIP() << "mounting a small tmpfs needs root";
  scoped_mount small{dir / "small-disk", "tmpfs", "size=8m"};
  if (!small.ok)
    GTEST_SKIP() << "cannot mount a tmpfs here: " << std::strerror(errno);
  for (size_t size : {size_t{(24 << 20) + 99}, size_t{12 << 20}}) {
    auto body = bytes_of(size, 6);
    one_shot_server server{body};
    auto dest = small.at / "full";
    auto r = download(server.url(), "/f", dest, uint64_t{1} << 30, options{});
    EXPECT_TRUE(r.no_space) << size << ": " << r.error;
    EXPECT_NE(r.error.find("cannot write"), std::string::npos) << r.error;
    EXPECT_FALSE(fs::exists(dest));
  }
}

} // namespace
