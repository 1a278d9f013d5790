// alephd::extract_zip against hostile archives. Archives are made here: with
// libarchive's zip writer for well-formed ones, and byte by byte (`raw_zip`)
// for what no writer would produce (NUL bytes in names, device entries,
// headers that lie about sizes, bad checksums). Every test extracts into its
// own temporary directory, next to an "outside" directory that must stay
// untouched, and checks what a user would see on disk.

#include "runtime/archive.hpp"

#include <archive.h>
#include <archive_entry.h>

#include <gtest/gtest.h>

#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <set>
#include <string>
#include <vector>

using alephd::extract_limits;
using alephd::extract_zip;
using alephd::extract_zip_file;
namespace fs = std::filesystem;

namespace {

constexpr uint64_t mib = 1024 * 1024;

// --- archives made with libarchive's writer --------------------------------

struct entry {
  std::string name = {};
  std::string data = {};
  unsigned perm = 0644;
  unsigned type = AE_IFREG;
  std::string link = {};  // symlink target
  uint64_t zeros = 0;     // then `zeros` zero bytes instead of `data`
};

la_ssize_t append(archive*, void* out, const void* p, size_t n) {
  static_cast<std::string*>(out)->append(static_cast<const char*>(p), n);
  return static_cast<la_ssize_t>(n);
}

// A zip of `entries`; `options` go to archive_write_set_options (e.g.
// "zip:encryption=zipcrypt"). Fails the test on any writer error.
std::string make_zip(const std::vector<entry>& entries, const char* options = nullptr,
                     const char* passphrase = nullptr) {
  std::string out;
  archive* a = archive_write_new();
  EXPECT_EQ(archive_write_set_format_zip(a), ARCHIVE_OK);
  if (options != nullptr) {
    EXPECT_EQ(archive_write_set_options(a, options), ARCHIVE_OK) << archive_error_string(a);
  }
  if (passphrase != nullptr) {
    EXPECT_EQ(archive_write_set_passphrase(a, passphrase), ARCHIVE_OK);
  }
  archive_write_set_bytes_in_last_block(a, 1);
  EXPECT_EQ(archive_write_open(a, &out, nullptr, append, nullptr), ARCHIVE_OK);
  for (const auto& x : entries) {
    archive_entry* e = archive_entry_new();
    archive_entry_set_pathname(e, x.name.c_str());
    archive_entry_set_filetype(e, x.type);
    archive_entry_set_perm(e, x.perm);
    archive_entry_set_mtime(e, 1700000000, 0);
    if (x.type == AE_IFLNK)
      archive_entry_set_symlink(e, x.link.c_str());
    else if (x.type == AE_IFREG)
      archive_entry_set_size(e, static_cast<la_int64_t>(x.zeros > 0 ? x.zeros : x.data.size()));
    EXPECT_EQ(archive_write_header(a, e), ARCHIVE_OK) << x.name << ": " << archive_error_string(a);
    if (x.zeros > 0) {
      std::string block(mib, '\0');
      for (uint64_t left = x.zeros; left > 0;) {
        auto n = std::min<uint64_t>(left, block.size());
        EXPECT_EQ(archive_write_data(a, block.data(), n), static_cast<la_ssize_t>(n));
        left -= n;
      }
    } else if (!x.data.empty()) {
      EXPECT_EQ(archive_write_data(a, x.data.data(), x.data.size()),
                static_cast<la_ssize_t>(x.data.size()));
    }
    archive_entry_free(e);
  }
  EXPECT_EQ(archive_write_close(a), ARCHIVE_OK);
  archive_write_free(a);
  return out;
}

std::string make_tar(const std::string& name, const std::string& data) {
  std::string out;
  archive* a = archive_write_new();
  archive_write_set_format_pax_restricted(a);
  archive_write_open(a, &out, nullptr, append, nullptr);
  archive_entry* e = archive_entry_new();
  archive_entry_set_pathname(e, name.c_str());
  archive_entry_set_filetype(e, AE_IFREG);
  archive_entry_set_perm(e, 0644);
  archive_entry_set_size(e, static_cast<la_int64_t>(data.size()));
  archive_write_header(a, e);
  archive_write_data(a, data.data(), data.size());
  archive_entry_free(e);
  archive_write_close(a);
  archive_write_free(a);
  return out;
}

// --- archives made byte by byte ----------------------------------------------

uint32_t crc32(std::string_view s) {
  uint32_t c = 0xffffffff;
  for (unsigned char b : s) {
    c ^= b;
    for (int k = 0; k < 8; ++k)
      c = (c >> 1) ^ (0xedb88320 & (0u - (c & 1)));
  }
  return ~c;
}

void put16(std::string& out, uint32_t v) {
  out += static_cast<char>(v & 0xff);
  out += static_cast<char>((v >> 8) & 0xff);
}

void put32(std::string& out, uint32_t v) {
  put16(out, v & 0xffff);
  put16(out, v >> 16);
}

uint32_t get16(const std::string& s, size_t at) {
  return static_cast<uint8_t>(s[at]) | (static_cast<uint8_t>(s[at + 1]) << 8);
}

uint32_t get32(const std::string& s, size_t at) {
  return get16(s, at) | (get16(s, at + 2) << 16);
}

struct raw_entry {
  std::string name = {};
  std::string payload = {}; // stored bytes (compressed when method is 8)
  uint32_t unix_mode = 0100644;
  uint16_t method = 0;  // 0 stored, 8 deflate
  uint16_t flags = 0;   // general purpose bits (bit 11: UTF-8 names)
  int64_t size = -1;    // declared uncompressed size; -1: payload size
  int64_t crc = -1;     // declared CRC-32; -1: that of the payload
};

// A single-disk zip (local headers, central directory, end record) made
// "on Unix" so that the mode in the external attributes counts.
std::string raw_zip(const std::vector<raw_entry>& entries) {
  std::string out;
  std::string central;
  for (const auto& e : entries) {
    auto offset = static_cast<uint32_t>(out.size());
    auto crc = e.crc >= 0 ? static_cast<uint32_t>(e.crc) : crc32(e.payload);
    auto size = e.size >= 0 ? static_cast<uint32_t>(e.size) : static_cast<uint32_t>(e.payload.size());
    auto common = [&](std::string& h) {
      put16(h, 20); // version needed
      put16(h, e.flags);
      put16(h, e.method);
      put16(h, 0);    // time
      put16(h, 0x21); // date: 1980-01-01
      put32(h, crc);
      put32(h, static_cast<uint32_t>(e.payload.size()));
      put32(h, size);
      put16(h, static_cast<uint32_t>(e.name.size()));
      put16(h, 0); // extra length
    };
    put32(out, 0x04034b50);
    common(out);
    out += e.name;
    out += e.payload;
    put32(central, 0x02014b50);
    put16(central, 0x031e); // made by: Unix, spec 3.0
    common(central);
    put16(central, 0); // comment length
    put16(central, 0); // disk
    put16(central, 0); // internal attributes
    put32(central, e.unix_mode << 16);
    put32(central, offset);
    central += e.name;
  }
  auto cd_offset = static_cast<uint32_t>(out.size());
  out += central;
  put32(out, 0x06054b50);
  put16(out, 0);
  put16(out, 0);
  put16(out, static_cast<uint32_t>(entries.size()));
  put16(out, static_cast<uint32_t>(entries.size()));
  put32(out, static_cast<uint32_t>(central.size()));
  put32(out, cd_offset);
  put16(out, 0);
  return out;
}

// The raw deflate stream and CRC of `zeros` zero bytes, cut out of a
// one-entry zip written by libarchive (no archive comment, one entry).
std::pair<std::string, uint32_t> deflated_zeros(uint64_t zeros) {
  auto zip = make_zip({{.name = "z", .zeros = zeros}});
  auto eocd = zip.size() - 22;
  EXPECT_EQ(get32(zip, eocd), 0x06054b50u);
  auto cd = get32(zip, eocd + 16);
  EXPECT_EQ(get16(zip, cd + 10), 8u) << "expected a deflated entry";
  auto compressed = get32(zip, cd + 20);
  auto data = 30 + get16(zip, 26) + get16(zip, 28);
  return {zip.substr(data, compressed), get32(zip, cd + 16)};
}

// --- the fixture ---------------------------------------------------------

class archive_test : public ::testing::Test {
protected:
  void SetUp() override {
    static std::atomic<int> counter{0};
    root_ = fs::temp_directory_path()
            / ("alephd-archive-test-" + std::to_string(::getpid()) + "-"
               + std::to_string(++counter));
    fs::remove_all(root_);
    dest_ = (root_ / "dest").string();
    outside_ = (root_ / "outside").string();
    fs::create_directories(dest_);
    fs::create_directories(outside_);
    fs::create_directories(root_ / "in");
  }

  void TearDown() override {
    std::error_code ec;
    fs::remove_all(root_, ec);
  }

  // Every path below `dir`, relative, directories with a trailing '/'.
  static std::set<std::string> tree(const std::string& dir) {
    std::set<std::string> out;
    for (auto it = fs::recursive_directory_iterator(dir); it != fs::recursive_directory_iterator();
         ++it) {
      auto rel = fs::relative(it->path(), dir).string();
      out.insert(it->is_directory() && !it->is_symlink() ? rel + "/" : rel);
    }
    return out;
  }

  static std::string slurp(const std::string& path) {
    std::ifstream in{path, std::ios::binary};
    return {std::istreambuf_iterator<char>{in}, {}};
  }

  static unsigned mode_of(const std::string& path) {
    struct stat st {};
    EXPECT_EQ(::lstat(path.c_str(), &st), 0) << path;
    return st.st_mode & 07777;
  }

  // The destination must be empty and nothing may have landed outside it.
  void expect_nothing_written() {
    EXPECT_TRUE(tree(dest_).empty()) << "left in dest: " << join(tree(dest_));
    EXPECT_TRUE(tree(outside_).empty()) << "written outside: " << join(tree(outside_));
    std::set<std::string> top;
    for (const auto& p : tree(root_.string()))
      if (p == "in/" || p.rfind("in/", 0) != 0)
        top.insert(p);
    EXPECT_EQ(top, (std::set<std::string>{"dest/", "outside/", "in/"}));
  }

  static std::string join(const std::set<std::string>& s) {
    std::string out;
    for (const auto& x : s)
      out += x + " ";
    return out;
  }

  // Input files go to in/, beside dest/ and outside/.
  std::string write_file(const std::string& name, const std::string& bytes) {
    auto path = (root_ / "in" / name).string();
    std::ofstream{path, std::ios::binary} << bytes;
    return path;
  }

  fs::path root_;
  std::string dest_;
  std::string outside_;
};

// Holds a file-size rlimit (writes past it fail with EFBIG) while alive.
class file_size_cap {
public:
  explicit file_size_cap(uint64_t bytes) {
    ::getrlimit(RLIMIT_FSIZE, &old_);
    old_handler_ = ::signal(SIGXFSZ, SIG_IGN);
    rlimit r = old_;
    r.rlim_cur = bytes;
    EXPECT_EQ(::setrlimit(RLIMIT_FSIZE, &r), 0);
  }
  ~file_size_cap() {
    ::setrlimit(RLIMIT_FSIZE, &old_);
    ::signal(SIGXFSZ, old_handler_);
  }

private:
  rlimit old_{};
  sighandler_t old_handler_;
};

// --- well-formed archives ------------------------------------------------

TEST_F(archive_test, a_program_extracts_with_contents_and_modes) {
  auto zip = make_zip({
    {.name = "app/", .perm = 0700, .type = AE_IFDIR},
    {.name = "app/entrypoint", .data = "#!/bin/sh\necho hi\n", .perm = 0755},
    {.name = "app/lib/util.py", .data = "x = 1\n", .perm = 0640},
    {.name = "./app/lib/deep/er/data.bin", .data = std::string("\0\1\2", 3), .perm = 0600},
    {.name = "setuid-tool", .data = "bin", .perm = 06777},
    {.name = "exec-only", .data = "x", .perm = 0100},
    {.name = "read-only", .data = "y", .perm = 0444},
    {.name = "empty", .data = "", .perm = 0644},
    {.name = "docs//readme.md", .data = "# hi", .perm = 0644},
    {.name = "docs/", .perm = 0755, .type = AE_IFDIR}, // after the implicit one: fine
  });
  auto old_umask = ::umask(077); // modes must not depend on the umask
  auto err = extract_zip(zip, dest_);
  ::umask(old_umask);
  ASSERT_EQ(err, "");
  EXPECT_EQ(tree(dest_), (std::set<std::string>{
                           "app/", "app/entrypoint", "app/lib/", "app/lib/util.py",
                           "app/lib/deep/", "app/lib/deep/er/", "app/lib/deep/er/data.bin",
                           "setuid-tool", "exec-only", "read-only", "empty", "docs/",
                           "docs/readme.md"}));
  EXPECT_EQ(slurp(dest_ + "/app/entrypoint"), "#!/bin/sh\necho hi\n");
  EXPECT_EQ(slurp(dest_ + "/app/lib/util.py"), "x = 1\n");
  EXPECT_EQ(slurp(dest_ + "/app/lib/deep/er/data.bin"), std::string("\0\1\2", 3));
  EXPECT_EQ(slurp(dest_ + "/docs/readme.md"), "# hi");
  EXPECT_EQ(fs::file_size(dest_ + "/empty"), 0u);
  EXPECT_EQ(mode_of(dest_ + "/app/entrypoint"), 0755u);
  EXPECT_EQ(mode_of(dest_ + "/app/lib/util.py"), 0644u);
  EXPECT_EQ(mode_of(dest_ + "/app/lib/deep/er/data.bin"), 0644u);
  EXPECT_EQ(mode_of(dest_ + "/setuid-tool"), 0755u);
  EXPECT_EQ(mode_of(dest_ + "/exec-only"), 0755u);
  EXPECT_EQ(mode_of(dest_ + "/read-only"), 0644u);
  for (auto dir : {"/app", "/app/lib", "/app/lib/deep", "/docs"})
    EXPECT_EQ(mode_of(dest_ + dir), 0755u) << dir;
  for (const auto& p : tree(dest_)) {
    struct stat st {};
    ASSERT_EQ(::lstat((dest_ + "/" + p).c_str(), &st), 0);
    EXPECT_EQ(st.st_uid, ::geteuid()) << p;
    EXPECT_TRUE(S_ISREG(st.st_mode) || S_ISDIR(st.st_mode)) << p;
  }
  // The entrypoint really runs.
  EXPECT_EQ(::access((dest_ + "/app/entrypoint").c_str(), X_OK), 0);
  EXPECT_TRUE(tree(outside_).empty());
}

TEST_F(archive_test, the_file_overload_extracts_the_same) {
  auto path = write_file("code.zip", make_zip({{.name = "main.py", .data = "print(1)\n"},
                                                {.name = "run", .data = "#!", .perm = 0755}}));
  ASSERT_EQ(extract_zip_file(path, dest_), "");
  EXPECT_EQ(tree(dest_), (std::set<std::string>{"main.py", "run"}));
  EXPECT_EQ(slurp(dest_ + "/main.py"), "print(1)\n");
  EXPECT_EQ(mode_of(dest_ + "/run"), 0755u);
}

TEST_F(archive_test, the_file_overload_reports_a_missing_or_odd_file) {
  auto err = extract_zip_file((root_ / "nope.zip").string(), dest_);
  EXPECT_NE(err.find("cannot open"), std::string::npos) << err;
  err = extract_zip_file(outside_, dest_);
  EXPECT_EQ(err, outside_ + " is not a regular file");
  // A fifo is refused without waiting for a writer.
  auto fifo = (root_ / "in" / "fifo").string();
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  EXPECT_EQ(extract_zip_file(fifo, dest_), fifo + " is not a regular file");
  expect_nothing_written();
}

TEST_F(archive_test, an_empty_archive_gives_an_empty_destination) {
  auto zip = make_zip({});
  ASSERT_EQ(zip.size(), 22u); // just the end record
  EXPECT_EQ(extract_zip(zip, dest_), "");
  expect_nothing_written();
  // Zero bytes are no archive at all.
  EXPECT_EQ(extract_zip("", dest_), "empty input: not a zip archive");
  expect_nothing_written();
}

TEST_F(archive_test, a_missing_destination_is_an_error) {
  auto err = extract_zip(make_zip({{.name = "a", .data = "x"}}), (root_ / "none").string());
  EXPECT_NE(err.find("cannot open destination"), std::string::npos) << err;
  expect_nothing_written();
}

TEST_F(archive_test, non_ascii_names_are_kept_as_stored) {
  std::string cafe = "caf\xc3\xa9.txt";
  auto zip = raw_zip({{.name = cafe, .payload = "x", .flags = 1 << 11},
                      {.name = "plain.txt", .payload = "y"}});
  ASSERT_EQ(extract_zip(zip, dest_), "");
  EXPECT_EQ(slurp(dest_ + "/" + cafe), "x");
}

TEST_F(archive_test, windows_separators_become_directories) {
  auto zip = raw_zip({{.name = "dir\\file.txt", .payload = "w", .flags = 1 << 11}});
  ASSERT_EQ(extract_zip(zip, dest_), "");
  EXPECT_EQ(tree(dest_), (std::set<std::string>{"dir/", "dir/file.txt"}));
}

// --- names ---------------------------------------------------------------

TEST_F(archive_test, traversal_and_absolute_names_are_refused) {
  auto absolute = outside_ + "/abs";
  for (const auto& bad : {std::string{"../evil"}, absolute, std::string{"a/../../b"},
                          std::string{"a/.."}, std::string{"ok/../../../outside/x"}}) {
    SCOPED_TRACE(bad);
    // A good entry first, so the roll-back has something to remove.
    auto zip = make_zip({{.name = "first.txt", .data = "1"}, {.name = bad, .data = "pwned"}});
    auto err = extract_zip(zip, dest_);
    EXPECT_NE(err.find(bad), std::string::npos) << "error must name the entry: " << err;
    EXPECT_TRUE(err.find("'..'") != std::string::npos || err.find("absolute") != std::string::npos)
      << err;
    expect_nothing_written();
    EXPECT_FALSE(fs::exists(root_ / "evil"));
    EXPECT_FALSE(fs::exists(root_ / "b"));
  }
}

TEST_F(archive_test, hostile_names_are_refused) {
  struct bad_name {
    std::string name;
    std::string why;
  };
  std::vector<bad_name> cases = {
    {std::string("a\0/../../x", 10), "NUL or control"},
    {std::string("evil\0", 5), "NUL or control"},
    {"line\nbreak", "control"},
    {"bell\x07", "control"},
    {"del\x7f", "control"},
    {"..\\..\\windows", "'..'"}, // libarchive reads '\' as '/' in names not flagged UTF-8
    {"", "empty name"},
    {std::string(1025, 'a'), "longer than 1024 bytes"},
    {std::string(256, 'c') + "/x", "component longer than 255"},
    {".", "destination directory itself"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    auto zip = raw_zip({{.name = "fine", .payload = "1"}, {.name = c.name, .payload = "2"}});
    auto err = extract_zip(zip, dest_);
    EXPECT_NE(err.find(c.why), std::string::npos) << err;
    EXPECT_EQ(err.find('\n'), std::string::npos) << "one line: " << err;
    expect_nothing_written();
  }
  // libarchive (3.6) reads '\' as '/', in names flagged UTF-8 too, before the
  // checks run: a Windows-made traversal is still a '..' component.
  for (const auto& c : {bad_name{"..\\x", "'..'"}, bad_name{"a\\..\\..\\x", "'..'"},
                        bad_name{std::string("u\0v", 3), "NUL or control"}}) {
    SCOPED_TRACE(c.name);
    auto zip = raw_zip({{.name = "fine", .payload = "1"},
                        {.name = c.name, .payload = "2", .flags = 1 << 11}});
    auto err = extract_zip(zip, dest_);
    EXPECT_NE(err.find(c.why), std::string::npos) << err;
    expect_nothing_written();
  }
  // The same NUL check when reading from a file.
  auto path = write_file("nul.zip", raw_zip({{.name = std::string("a\0b", 3), .payload = "2"}}));
  auto err = extract_zip_file(path, dest_);
  EXPECT_NE(err.find("NUL or control"), std::string::npos) << err;
  expect_nothing_written();
}

TEST_F(archive_test, the_path_length_limit_is_configurable) {
  std::string name(60, 'p');
  auto zip = make_zip({{.name = name, .data = "x"}});
  extract_limits limits;
  limits.max_path_length = 59;
  auto err = extract_zip(zip, dest_, limits);
  EXPECT_NE(err.find("longer than 59 bytes"), std::string::npos) << err;
  expect_nothing_written();
  limits.max_path_length = 60;
  EXPECT_EQ(extract_zip(zip, dest_, limits), "");
  EXPECT_EQ(tree(dest_), (std::set<std::string>{name}));
}

TEST_F(archive_test, a_dot_slash_directory_entry_is_the_destination_itself) {
  auto zip = make_zip({{.name = "./", .perm = 0755, .type = AE_IFDIR},
                       {.name = "./x", .data = "1"}});
  ASSERT_EQ(extract_zip(zip, dest_), "");
  EXPECT_EQ(tree(dest_), (std::set<std::string>{"x"}));
}

// --- entry types -----------------------------------------------------------

TEST_F(archive_test, a_symlink_entry_is_refused) {
  auto zip = make_zip({{.name = "ok", .data = "1"},
                       {.name = "link", .type = AE_IFLNK, .link = outside_},
                       {.name = "link/pwned", .data = "x"}});
  auto err = extract_zip(zip, dest_);
  EXPECT_NE(err.find("'link'"), std::string::npos) << err;
  EXPECT_NE(err.find("symlinks are not allowed"), std::string::npos) << err;
  expect_nothing_written();
}

TEST_F(archive_test, devices_fifos_and_sockets_are_refused) {
  struct bad_type {
    uint32_t mode;
    std::string why;
  };
  for (const auto& c : {bad_type{0020644, "device"}, bad_type{0060644, "device"},
                        bad_type{0010644, "fifo"}, bad_type{0140644, "socket"},
                        bad_type{0120777, "symlink"}}) {
    SCOPED_TRACE(c.why);
    auto zip = raw_zip({{.name = "ok", .payload = "1"},
                        {.name = "node", .payload = "/etc/passwd", .unix_mode = c.mode}});
    auto err = extract_zip(zip, dest_);
    EXPECT_NE(err.find("'node'"), std::string::npos) << err;
    EXPECT_NE(err.find(c.why), std::string::npos) << err;
    expect_nothing_written();
  }
}

TEST_F(archive_test, encrypted_entries_are_refused) {
  for (const char* scheme : {"zip:encryption=zipcrypt", "zip:encryption=aes256"}) {
    SCOPED_TRACE(scheme);
    auto zip = make_zip({{.name = "secret.py", .data = "x = 1\n"}}, scheme, "password");
    auto err = extract_zip(zip, dest_);
    EXPECT_EQ(err, "zip entry 'secret.py': encrypted entries are not supported");
    expect_nothing_written();
  }
}

TEST_F(archive_test, duplicate_entries_are_refused) {
  struct dup {
    std::vector<entry> entries;
    std::string why;
  };
  std::vector<dup> cases = {
    {{{.name = "a.txt", .data = "1"}, {.name = "a.txt", .data = "2"}}, "duplicate entry"},
    {{{.name = "a.txt", .data = "1"}, {.name = "./a.txt", .data = "2"}}, "duplicate entry"},
    {{{.name = "d/", .type = AE_IFDIR}, {.name = "d/", .type = AE_IFDIR}}, "duplicate entry"},
    {{{.name = "x", .data = "1"}, {.name = "x/", .type = AE_IFDIR}}, "conflicts with a file"},
    {{{.name = "d/f", .data = "1"}, {.name = "d", .data = "2"}}, "conflicts with a directory"},
    {{{.name = "f", .data = "1"}, {.name = "f/g", .data = "2"}}, "parent 'f' is a file"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.why);
    auto err = extract_zip(make_zip(c.entries), dest_);
    EXPECT_NE(err.find(c.why), std::string::npos) << err;
    expect_nothing_written();
  }
}

// --- what is already in the destination ---------------------------------------

TEST_F(archive_test, a_symlink_already_in_the_destination_is_never_followed) {
  std::ofstream{outside_ + "/target"} << "original";
  fs::create_directory_symlink(outside_, dest_ + "/lib");
  fs::create_symlink(outside_ + "/target", dest_ + "/run.sh");
  auto before = tree(dest_);
  for (const auto& name : {"lib/x.txt", "run.sh", "lib/", "lib/deeper/y"}) {
    SCOPED_TRACE(name);
    bool dir = std::string_view{name}.back() == '/';
    auto zip = make_zip({{.name = "ok", .data = "1"},
                         dir ? entry{.name = name, .perm = 0755, .type = AE_IFDIR}
                             : entry{.name = name, .data = "pwned"}});
    auto err = extract_zip(zip, dest_);
    EXPECT_NE(err.find("already exists in the destination"), std::string::npos) << err;
    // Nothing new on either side; the symlinks themselves are not ours to remove.
    EXPECT_EQ(tree(dest_), before);
    EXPECT_EQ(tree(outside_), (std::set<std::string>{"target"}));
    EXPECT_EQ(slurp(outside_ + "/target"), "original");
  }
}

// --- limits -----------------------------------------------------------

TEST_F(archive_test, too_many_files_are_refused) {
  std::vector<entry> five;
  for (int i = 0; i < 5; ++i)
    five.push_back({.name = "f" + std::to_string(i), .data = "x"});
  extract_limits limits;
  limits.max_files = 5;
  ASSERT_EQ(extract_zip(make_zip(five), dest_, limits), "");
  EXPECT_EQ(tree(dest_).size(), 5u);
  fs::remove_all(dest_);
  fs::create_directory(dest_);

  auto six = five;
  six.push_back({.name = "f5", .data = "x"});
  auto err = extract_zip(make_zip(six), dest_, limits);
  EXPECT_EQ(err, "zip entry 'f5': more than 5 entries in the archive");
  expect_nothing_written();

  // Directories made for paths count too: 4 entries, 5 things to create.
  std::vector<entry> nested;
  for (int i = 0; i < 4; ++i)
    nested.push_back({.name = "d/f" + std::to_string(i), .data = "x"});
  limits.max_files = 4;
  err = extract_zip(make_zip(nested), dest_, limits);
  EXPECT_EQ(err, "zip entry 'd/f3': more than 4 files and directories to create");
  expect_nothing_written();
}

TEST_F(archive_test, too_many_bytes_by_the_header_are_refused_before_writing) {
  // 48 MiB of zeros compress to ~50 KiB; the header states the size.
  auto zip = make_zip({{.name = "small", .data = "1"}, {.name = "zeros", .zeros = 48 * mib}});
  ASSERT_LT(zip.size(), mib);
  extract_limits limits;
  limits.max_total_bytes = 10 * mib;
  limits.max_ratio = 1u << 20; // only the byte limit is under test
  file_size_cap cap{10 * mib};
  auto err = extract_zip(zip, dest_, limits);
  EXPECT_EQ(err, "zip entry 'zeros': declared size exceeds the limit of 10485760 bytes");
  expect_nothing_written();
}

TEST_F(archive_test, a_header_that_lies_about_the_size_does_not_get_past_the_limit) {
  // 32 MiB of zeros whose headers claim 1000 bytes: only counting what is
  // written catches it. Past 10 MiB any write fails with EFBIG, so an
  // extractor that wrote one byte too many would report a write error.
  auto [deflate, crc] = deflated_zeros(32 * mib);
  auto zip = raw_zip({{.name = "ok", .payload = "1"},
                      {.name = "bomb", .payload = deflate, .method = 8, .size = 1000, .crc = crc}});
  extract_limits limits;
  limits.max_total_bytes = 10 * mib;
  limits.max_ratio = 1u << 20;
  file_size_cap cap{10 * mib};
  auto err = extract_zip(zip, dest_, limits);
  EXPECT_EQ(err, "zip entry 'bomb': uncompressed data exceeds the limit of 10485760 bytes");
  expect_nothing_written();
}

TEST_F(archive_test, the_byte_limit_is_a_total_over_all_entries) {
  // Two entries of 6 MiB, the second claiming 100 bytes: it crosses 10 MiB.
  auto [deflate, crc] = deflated_zeros(6 * mib);
  auto liar = raw_zip({{.name = "a", .payload = deflate, .method = 8,
                        .size = static_cast<int64_t>(6 * mib), .crc = crc},
                       {.name = "b", .payload = deflate, .method = 8, .size = 100, .crc = crc}});
  extract_limits limits;
  limits.max_total_bytes = 10 * mib;
  limits.max_ratio = 1u << 20;
  auto err = extract_zip(liar, dest_, limits);
  EXPECT_EQ(err, "zip entry 'b': uncompressed data exceeds the limit of 10485760 bytes");
  expect_nothing_written();
  // Exactly the limit is allowed.
  auto honest = make_zip({{.name = "a", .zeros = 6 * mib}, {.name = "b", .zeros = 6 * mib}});
  limits.max_total_bytes = 12 * mib;
  EXPECT_EQ(extract_zip(honest, dest_, limits), "");
  EXPECT_EQ(fs::file_size(dest_ + "/a") + fs::file_size(dest_ + "/b"), 12 * mib);
}

TEST_F(archive_test, the_ratio_guard_stops_a_zip_bomb) {
  // 4 MiB of zeros in a few KiB: far more than 200 times the archive.
  auto [deflate, crc] = deflated_zeros(4 * mib);
  auto zip = raw_zip({{.name = "bomb", .payload = deflate, .method = 8, .size = 100, .crc = crc}});
  ASSERT_LT(zip.size() * 200, 4 * mib);
  auto err = extract_zip(zip, dest_);
  EXPECT_EQ(err, "zip entry 'bomb': uncompressed data exceeds 200 times the archive size (zip bomb?)");
  expect_nothing_written();
  // With room for the ratio the same archive is fine (CRC and all).
  auto honest = raw_zip({{.name = "bomb", .payload = deflate, .method = 8,
                          .size = static_cast<int64_t>(4 * mib), .crc = crc}});
  extract_limits limits;
  limits.max_ratio = 1u << 20;
  ASSERT_EQ(extract_zip(honest, dest_, limits), "");
  EXPECT_EQ(fs::file_size(dest_ + "/bomb"), 4 * mib);
}

// --- broken archives -----------------------------------------------------

TEST_F(archive_test, a_truncated_archive_is_an_error_and_leaves_nothing) {
  auto zip = make_zip({{.name = "a.txt", .data = std::string(4000, 'a')},
                       {.name = "dir/b.txt", .data = std::string(4000, 'b')}});
  for (size_t cut : {zip.size() - 1, zip.size() - 30, zip.size() / 2, size_t{40}, size_t{4}}) {
    SCOPED_TRACE(cut);
    auto err = extract_zip(std::string_view{zip}.substr(0, cut), dest_);
    EXPECT_EQ(err, "truncated or corrupt zip archive: no end of central directory record");
    expect_nothing_written();
  }
}

TEST_F(archive_test, corrupt_data_is_an_error_and_leaves_nothing) {
  // A stored entry with the wrong CRC is written out whole before the check.
  auto zip = raw_zip({{.name = "good", .payload = "fine"},
                      {.name = "bad", .payload = "data", .crc = 12345}});
  auto err = extract_zip(zip, dest_);
  EXPECT_NE(err.find("zip entry 'bad'"), std::string::npos) << err;
  expect_nothing_written();

  // Flipped bytes inside deflated data.
  auto deflated = make_zip({{.name = "t.txt", .data = std::string(20000, 'q') + "end"}});
  for (size_t i = 60; i < 80; ++i)
    deflated[i] = static_cast<char>(deflated[i] ^ 0x5a);
  err = extract_zip(deflated, dest_);
  EXPECT_NE(err.find("zip entry 't.txt': cannot read data"), std::string::npos) << err;
  expect_nothing_written();

  // A size that lies within the limits: libarchive's check at the end of the
  // entry, reported on one line (libarchive's own text ends with a newline).
  auto [deflate, crc] = deflated_zeros(100000);
  auto liar = raw_zip({{.name = "liar", .payload = deflate, .method = 8, .size = 100, .crc = crc}});
  extract_limits limits;
  limits.max_ratio = 1u << 20;
  err = extract_zip(liar, dest_, limits);
  EXPECT_NE(err.find("zip entry 'liar': cannot read data: ZIP uncompressed data is wrong size"),
            std::string::npos)
    << err;
  EXPECT_EQ(err.find('\n'), std::string::npos) << err;
  expect_nothing_written();
}

TEST_F(archive_test, other_formats_are_refused) {
  EXPECT_EQ(extract_zip(make_tar("a.txt", "hello"), dest_), "not a zip archive");
  expect_nothing_written();
  EXPECT_EQ(extract_zip("this is not an archive at all, just text", dest_), "not a zip archive");
  expect_nothing_written();
  auto path = write_file("code.tar", make_tar("a.txt", "hello"));
  EXPECT_EQ(extract_zip_file(path, dest_), "not a zip archive");
  expect_nothing_written();
}

} // namespace
