#include "runtime/archive.hpp"

#include <archive.h>
#include <archive_entry.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>
#include <unordered_map>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <locale.h>
#include <sys/stat.h>
#include <unistd.h>

namespace alephd {

namespace {

constexpr size_t block_size = 64 * 1024;
constexpr size_t max_component = 255; // NAME_MAX on Linux file systems
constexpr size_t max_shown = 200;     // bytes of a name quoted in an error

std::string errno_text(int e = errno) {
  return std::strerror(e);
}

// Quotes a hostile name for a one-line message: printable ASCII as is,
// everything else as \xNN, cut after `max_shown` bytes.
std::string shown(std::string_view name) {
  static constexpr char hex[] = "0123456789abcdef";
  std::string out = "'";
  for (size_t i = 0; i < name.size(); ++i) {
    if (i == max_shown) {
      out += "...";
      break;
    }
    auto c = static_cast<unsigned char>(name[i]);
    if (c >= 0x20 && c < 0x7f && c != '\\' && c != '\'') {
      out += static_cast<char>(c);
    } else {
      out += "\\x";
      out += hex[c >> 4];
      out += hex[c & 0xf];
    }
  }
  return out + "'";
}

std::string entry_error(std::string_view name, const std::string& why) {
  return "zip entry " + shown(name) + ": " + why;
}

bool is_control(unsigned char c) {
  return c < 0x20 || c == 0x7f;
}

// Why an entry of this file type (the S_IFMT bits) is refused; "" for a
// regular file, a directory, or no type at all (read as a regular file).
std::string type_refusal(unsigned type) {
  switch (type) {
    case 0:
    case AE_IFREG:
    case AE_IFDIR:
      return {};
    case AE_IFLNK:
      return "symlinks are not allowed";
    case AE_IFCHR:
    case AE_IFBLK:
      return "device nodes are not allowed";
    case AE_IFIFO:
      return "fifos are not allowed";
    case AE_IFSOCK:
      return "sockets are not allowed";
    default:
      return "unsupported entry type";
  }
}

// Splits a stored entry name into path components, dropping `.` and empty
// ones; "" or why the name is refused.
std::string split_name(std::string_view raw, uint64_t max_length,
                       std::vector<std::string>& parts) {
  parts.clear();
  if (raw.empty())
    return "empty name";
  if (raw.size() > max_length)
    return "name longer than " + std::to_string(max_length) + " bytes";
  for (char c : raw) {
    if (is_control(static_cast<unsigned char>(c)))
      return "name contains a control character";
    // libarchive already reads a Windows '\' separator as '/'; one that gets
    // through anyway is refused rather than becoming part of a file name.
    if (c == '\\')
      return "name contains a backslash";
  }
  if (raw.front() == '/')
    return "absolute path";
  size_t pos = 0;
  while (pos <= raw.size()) {
    auto end = raw.find('/', pos);
    if (end == std::string_view::npos)
      end = raw.size();
    auto part = raw.substr(pos, end - pos);
    if (part == "..")
      return "path has a '..' component";
    if (part.size() > max_component)
      return "path component longer than " + std::to_string(max_component) + " bytes";
    if (!part.empty() && part != ".")
      parts.emplace_back(part);
    pos = end + 1;
  }
  return {};
}

// Where the archive's bytes are, for the raw name scan.
struct byte_source {
  uint64_t size = 0;
  std::string_view memory;
  int fd = -1;

  bool read_at(uint64_t offset, void* out, size_t n) const {
    if (offset > size || n > size - offset)
      return false;
    if (fd < 0) {
      std::memcpy(out, memory.data() + offset, n);
      return true;
    }
    auto* p = static_cast<char*>(out);
    while (n > 0) {
      auto got = ::pread(fd, p, n, static_cast<off_t>(offset));
      if (got < 0 && errno == EINTR)
        continue;
      if (got <= 0)
        return false;
      p += got;
      n -= static_cast<size_t>(got);
      offset += static_cast<uint64_t>(got);
    }
    return true;
  }
};

uint16_t le16(const unsigned char* p) {
  return static_cast<uint16_t>(p[0] | (p[1] << 8));
}

uint32_t le32(const unsigned char* p) {
  return static_cast<uint32_t>(le16(p)) | (static_cast<uint32_t>(le16(p + 2)) << 16);
}

uint64_t le64(const unsigned char* p) {
  return static_cast<uint64_t>(le32(p)) | (static_cast<uint64_t>(le32(p + 4)) << 32);
}

// Checks the central directory byte by byte for what libarchive hides:
// - libarchive stops an entry name at its first NUL byte, so "a\0/../../x"
//   would silently become "a";
// - it turns a fifo made on Unix into a regular file.
// Refuses a raw name with a NUL or control byte, in the central directory or
// in the local header it points to, and a Unix file type other than a
// regular file or a directory. Best effort: a layout this does not understand
// is left to libarchive, where such an entry can only come out as a shorter
// name or a regular file, never escape.
// Sets `empty` for an archive that is only an end record saying "no
// entries" (libarchive's zip reader does not recognize that one).
std::string scan_central_directory(const byte_source& src, uint64_t max_entries, bool& empty) {
  empty = false;
  constexpr size_t eocd_size = 22;
  if (src.size < eocd_size)
    return {};
  auto tail_size = static_cast<size_t>(std::min<uint64_t>(src.size, eocd_size + 0xffff));
  std::vector<unsigned char> tail(tail_size);
  auto tail_offset = src.size - tail_size;
  if (!src.read_at(tail_offset, tail.data(), tail_size))
    return {};
  size_t pos = tail_size - eocd_size + 1;
  do {
    if (pos-- == 0)
      return {};
  } while (le32(&tail[pos]) != 0x06054b50);
  uint64_t entries = le16(&tail[pos + 10]);
  uint64_t cd_size = le32(&tail[pos + 12]);
  uint64_t cd_offset = le32(&tail[pos + 16]);
  auto eocd_at = tail_offset + pos;
  if (eocd_at == 0 && entries == 0 && cd_size == 0
      && eocd_size + le16(&tail[pos + 20]) == src.size) {
    empty = true;
    return {};
  }
  if (entries == 0xffff || cd_size == 0xffffffff || cd_offset == 0xffffffff) {
    unsigned char locator[20];
    unsigned char eocd64[56];
    if (eocd_at < sizeof locator || !src.read_at(eocd_at - sizeof locator, locator, sizeof locator)
        || le32(locator) != 0x07064b50 || !src.read_at(le64(locator + 8), eocd64, sizeof eocd64)
        || le32(eocd64) != 0x06064b50)
      return {};
    entries = le64(eocd64 + 32);
    cd_size = le64(eocd64 + 40);
    cd_offset = le64(eocd64 + 48);
  }
  // Data before the archive proper (a self-extractor stub) shifts every offset.
  uint64_t shift = 0;
  if (cd_size <= eocd_at && eocd_at - cd_size > cd_offset)
    shift = eocd_at - cd_size - cd_offset;
  auto bad = [](const std::string& name) {
    for (char c : name)
      if (is_control(static_cast<unsigned char>(c)))
        return true;
    return false;
  };
  auto at = cd_offset + shift;
  std::string name;
  for (uint64_t i = 0; i < entries && i <= max_entries; ++i) {
    unsigned char h[46];
    if (!src.read_at(at, h, sizeof h) || le32(h) != 0x02014b50)
      return {};
    name.resize(le16(h + 28));
    if (!src.read_at(at + sizeof h, name.data(), name.size()))
      return {};
    if (bad(name))
      return entry_error(name, "name contains a NUL or control character");
    constexpr uint16_t made_on_unix = 3;
    auto why = le16(h + 4) >> 8 == made_on_unix ? type_refusal((le32(h + 38) >> 16) & AE_IFMT)
                                                : std::string{};
    if (!why.empty())
      return entry_error(name, why);
    auto local = le32(h + 42);
    unsigned char l[30];
    if (local != 0xffffffff && src.read_at(local + shift, l, sizeof l)
        && le32(l) == 0x04034b50) {
      name.resize(le16(l + 26));
      if (src.read_at(local + shift + sizeof l, name.data(), name.size()) && bad(name))
        return entry_error(name, "name contains a NUL or control character");
    }
    at += sizeof h + le16(h + 28) + le16(h + 30) + le16(h + 32);
  }
  return {};
}

class fd_guard {
public:
  explicit fd_guard(int fd = -1) : fd_(fd) {
  }
  fd_guard(const fd_guard&) = delete;
  fd_guard& operator=(const fd_guard&) = delete;
  ~fd_guard() {
    reset();
  }
  int get() const {
    return fd_;
  }
  void reset(int fd = -1) {
    if (fd_ >= 0)
      ::close(fd_);
    fd_ = fd;
  }
  int release() {
    return std::exchange(fd_, -1);
  }

private:
  int fd_;
};

// libarchive's message, on one line (some end with a newline).
std::string libarchive_error(archive* a) {
  const char* s = archive_error_string(a);
  std::string out = s != nullptr ? s : "unknown libarchive error";
  for (auto& c : out)
    if (is_control(static_cast<unsigned char>(c)))
      c = ' ';
  while (!out.empty() && out.back() == ' ')
    out.pop_back();
  return out;
}

uint64_t saturating_mul(uint64_t a, uint64_t b) {
  uint64_t r = 0;
  return __builtin_mul_overflow(a, b, &r) ? UINT64_MAX : r;
}

// One extraction into an open destination directory. Remembers everything it
// created so that `roll_back` can remove it again, children first.
class extractor {
public:
  extractor(int dest, uint64_t archive_size, const extract_limits& limits)
    : dest_(dest),
      limits_(limits),
      ratio_cap_(saturating_mul(limits.max_ratio, archive_size)),
      buffer_(block_size) {
  }

  std::string run(archive* a) {
    for (;;) {
      archive_entry* e = nullptr;
      auto r = archive_read_next_header(a, &e);
      if (r == ARCHIVE_EOF)
        return {};
      if (r != ARCHIVE_OK && r != ARCHIVE_WARN)
        return "corrupt zip archive after " + std::to_string(entries_)
               + " entries: " + libarchive_error(a);
      if (auto err = entry(a, e); !err.empty())
        return err;
    }
  }

  void roll_back() {
    last_dir_.reset();
    std::vector<std::string> parts;
    for (auto i = created_.rbegin(); i != created_.rend(); ++i) {
      split_name(i->first, UINT64_MAX, parts);
      auto leaf = std::move(parts.back());
      parts.pop_back();
      fd_guard parent;
      if (!open_existing(parts, parent))
        continue;
      ::unlinkat(parent.get(), leaf.c_str(), i->second ? AT_REMOVEDIR : 0);
    }
    created_.clear();
    nodes_.clear();
  }

private:
  enum class node : uint8_t { implicit_dir, dir, file };

  std::string entry(archive* a, archive_entry* e) {
    const char* raw = archive_entry_pathname(e);
    if (raw == nullptr)
      raw = archive_entry_pathname_utf8(e);
    if (raw == nullptr)
      return "zip entry #" + std::to_string(entries_ + 1) + ": name cannot be decoded";
    std::string_view name{raw};
    if (++entries_ > limits_.max_files)
      return entry_error(name, "more than " + std::to_string(limits_.max_files)
                                 + " entries in the archive");
    if (auto err = split_name(name, limits_.max_path_length, parts_); !err.empty())
      return entry_error(name, err);
    if (archive_entry_is_encrypted(e))
      return entry_error(name, "encrypted entries are not supported");
    if (archive_entry_hardlink(e) != nullptr)
      return entry_error(name, "hard links are not allowed");
    if (archive_entry_symlink(e) != nullptr)
      return entry_error(name, "symlinks are not allowed");
    auto type = archive_entry_filetype(e);
    if (auto why = type_refusal(type); !why.empty())
      return entry_error(name, why);
    if (type == AE_IFDIR)
      return directory(name);
    if (name.back() == '/')
      return entry_error(name, "file entry name ends with '/'");
    return file(a, e, name);
  }

  std::string directory(std::string_view name) {
    if (parts_.empty())
      return {}; // "./": the destination itself
    auto key = join(parts_.size());
    if (auto i = nodes_.find(key); i != nodes_.end()) {
      if (i->second == node::file)
        return entry_error(name, "conflicts with a file of the same path");
      if (i->second == node::dir)
        return entry_error(name, "duplicate entry");
      i->second = node::dir;
      return {};
    }
    fd_guard fd;
    if (auto err = open_dirs(name, parts_.size(), fd); !err.empty())
      return err;
    nodes_[key] = node::dir;
    return {};
  }

  std::string file(archive* a, archive_entry* e, std::string_view name) {
    if (parts_.empty())
      return entry_error(name, "names the destination directory itself");
    auto key = join(parts_.size());
    if (auto i = nodes_.find(key); i != nodes_.end())
      return entry_error(name, i->second == node::file
                                 ? "duplicate entry"
                                 : "conflicts with a directory of the same path");
    // Header sizes only make an honest archive fail early; the real bound
    // is the count of bytes written below.
    if (archive_entry_size_is_set(e) && archive_entry_size(e) > 0) {
      auto declared = static_cast<uint64_t>(archive_entry_size(e));
      if (auto err = check_room(name, declared, "declared size "); !err.empty())
        return err;
    }
    fd_guard parent;
    if (auto err = open_dirs(name, parts_.size() - 1, parent); !err.empty())
      return err;
    if (created_.size() >= limits_.max_files)
      return too_many_created(name);
    const auto& leaf = parts_.back();
    fd_guard out{::openat(parent.get(), leaf.c_str(),
                          O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600)};
    if (out.get() < 0) {
      int e = errno;
      return entry_error(name, e == EEXIST ? "'" + key + "' already exists in the destination"
                                           : "cannot create file: " + errno_text(e));
    }
    created_.emplace_back(key, false);
    nodes_[key] = node::file;
    for (;;) {
      auto n = archive_read_data(a, buffer_.data(), buffer_.size());
      if (n == 0)
        break;
      if (n < 0)
        return entry_error(name, "cannot read data: " + libarchive_error(a));
      auto size = static_cast<uint64_t>(n);
      if (auto err = check_room(name, size); !err.empty())
        return err;
      if (auto err = write_all(out.get(), buffer_.data(), n); !err.empty())
        return entry_error(name, err);
      written_ += size;
    }
    // The owner-execute bit keeps an entrypoint runnable; nothing else of
    // the stored mode survives.
    mode_t mode = (archive_entry_perm(e) & S_IXUSR) != 0 ? 0755 : 0644;
    if (::fchmod(out.get(), mode) != 0)
      return entry_error(name, "cannot set mode: " + errno_text());
    if (::close(out.release()) != 0)
      return entry_error(name, "cannot close file: " + errno_text());
    return {};
  }

  // Would `n` more bytes stay within the byte limit and the ratio guard?
  std::string check_room(std::string_view name, uint64_t n,
                         const char* what = "uncompressed data ") const {
    if (n > limits_.max_total_bytes - written_)
      return entry_error(name, what + ("exceeds the limit of "
                                       + std::to_string(limits_.max_total_bytes) + " bytes"));
    if (written_ > ratio_cap_ || n > ratio_cap_ - written_)
      return entry_error(name, what + ("exceeds " + std::to_string(limits_.max_ratio)
                                       + " times the archive size (zip bomb?)"));
    return {};
  }

  std::string too_many_created(std::string_view name) const {
    return entry_error(name, "more than " + std::to_string(limits_.max_files)
                               + " files and directories to create");
  }

  static std::string write_all(int fd, const char* p, la_ssize_t n) {
    while (n > 0) {
      auto w = ::write(fd, p, static_cast<size_t>(n));
      if (w < 0 && errno == EINTR)
        continue;
      if (w < 0)
        return "cannot write file: " + errno_text();
      p += w;
      n -= w;
    }
    return {};
  }

  std::string join(size_t n) const {
    std::string out;
    for (size_t i = 0; i < n; ++i) {
      if (i > 0)
        out += '/';
      out += parts_[i];
    }
    return out;
  }

  // Opens the directory made of the first `n` components of `parts_` below
  // the destination, creating the missing ones. A component that is already
  // on disk but was not created here (a pre-existing file, directory or
  // symlink) is an error, never followed.
  std::string open_dirs(std::string_view name, size_t n, fd_guard& out) {
    // Entries usually come directory by directory: reuse the last one.
    auto wanted = join(n);
    if (n > 0 && last_dir_.get() >= 0 && wanted == last_dir_key_) {
      out.reset(::fcntl(last_dir_.get(), F_DUPFD_CLOEXEC, 0));
      if (out.get() < 0)
        return entry_error(name, "cannot open directory: " + errno_text());
      return {};
    }
    fd_guard cur;
    int at = dest_;
    std::string key;
    for (size_t i = 0; i < n; ++i) {
      if (i > 0)
        key += '/';
      key += parts_[i];
      const char* part = parts_[i].c_str();
      auto known = nodes_.find(key);
      bool fresh = known == nodes_.end();
      if (!fresh && known->second == node::file)
        return entry_error(name, "parent '" + key + "' is a file");
      if (fresh) {
        if (created_.size() >= limits_.max_files)
          return too_many_created(name);
        if (::mkdirat(at, part, 0700) != 0) {
          int e = errno;
          return entry_error(name, e == EEXIST
                                     ? "'" + key + "' already exists in the destination"
                                     : "cannot create directory '" + key + "': " + errno_text(e));
        }
        created_.emplace_back(key, true);
        nodes_[key] = node::implicit_dir;
      }
      int fd = ::openat(at, part, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
      if (fd < 0) {
        int e = errno;
        return entry_error(name, "cannot open directory '" + key + "': " + errno_text(e));
      }
      cur.reset(fd);
      at = fd;
      // Created 0700 and widened here so that the umask plays no part.
      if (fresh && ::fchmod(fd, 0755) != 0) {
        int e = errno;
        return entry_error(name, "cannot set mode of '" + key + "': " + errno_text(e));
      }
    }
    out.reset(n == 0 ? ::fcntl(dest_, F_DUPFD_CLOEXEC, 0) : cur.release());
    if (out.get() < 0)
      return entry_error(name, "cannot open destination: " + errno_text());
    if (n > 0) {
      last_dir_.reset(::fcntl(out.get(), F_DUPFD_CLOEXEC, 0));
      last_dir_key_ = std::move(wanted);
    }
    return {};
  }

  // Opens an existing directory below the destination, never following a
  // symlink; for the roll-back.
  bool open_existing(const std::vector<std::string>& parts, fd_guard& out) const {
    out.reset(::fcntl(dest_, F_DUPFD_CLOEXEC, 0));
    for (const auto& part : parts) {
      if (out.get() < 0)
        return false;
      out.reset(::openat(out.get(), part.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    }
    return out.get() >= 0;
  }

  int dest_;
  extract_limits limits_;
  uint64_t ratio_cap_;
  uint64_t written_ = 0;
  uint64_t entries_ = 0;
  std::vector<char> buffer_;
  std::vector<std::string> parts_; // of the current entry
  std::unordered_map<std::string, node> nodes_;
  std::vector<std::pair<std::string, bool>> created_; // path, is a directory
  std::string last_dir_key_;                          // what `last_dir_` is open on
  fd_guard last_dir_;
};

// libarchive converts names flagged as UTF-8 into the charset of the
// thread's locale, and in the "C" locale of a daemon every non-ASCII name
// would fail. This switches the calling thread (uselocale), never the
// process, to C.UTF-8 for its lifetime; without C.UTF-8 nothing changes.
class utf8_thread_locale {
public:
  utf8_thread_locale() : utf8_(::newlocale(LC_CTYPE_MASK, "C.UTF-8", locale_t{})) {
    if (utf8_ != locale_t{})
      old_ = ::uselocale(utf8_);
  }
  utf8_thread_locale(const utf8_thread_locale&) = delete;
  utf8_thread_locale& operator=(const utf8_thread_locale&) = delete;
  ~utf8_thread_locale() {
    if (utf8_ != locale_t{}) {
      ::uselocale(old_);
      ::freelocale(utf8_);
    }
  }

private:
  locale_t utf8_;
  locale_t old_ = locale_t{};
};

struct archive_deleter {
  void operator()(archive* a) const {
    archive_read_free(a);
  }
};

template <class Open>
std::string extract(const byte_source& src, Open open_reader, const std::string& dest,
                    const extract_limits& limits) {
  if (src.size == 0)
    return "empty input: not a zip archive";
  fd_guard dest_fd{::open(dest.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC)};
  if (dest_fd.get() < 0) {
    int e = errno;
    return "cannot open destination " + dest + ": " + errno_text(e);
  }
  bool empty = false;
  if (auto err = scan_central_directory(src, limits.max_files, empty); !err.empty())
    return err;
  if (empty)
    return {};
  utf8_thread_locale utf8;
  std::unique_ptr<archive, archive_deleter> a{archive_read_new()};
  if (!a)
    return "cannot allocate a zip reader";
  // The seekable reader only: it works from the central directory, the
  // archive's authoritative index, which also holds the Unix file types.
  // The streaming reader would trust local headers, read an archive whose
  // end was cut off, and see no symlink for what it is.
  archive_read_support_format_zip_seekable(a.get());
  if (open_reader(a.get()) != ARCHIVE_OK) {
    if (archive_format(a.get()) != 0)
      return "cannot read zip archive: " + libarchive_error(a.get());
    char magic[4] = {};
    if (src.read_at(0, magic, sizeof magic) && std::string_view{magic, 4} == "PK\x03\x04")
      return "truncated or corrupt zip archive: no end of central directory record";
    return "not a zip archive";
  }
  extractor x{dest_fd.get(), src.size, limits};
  auto err = x.run(a.get());
  if (!err.empty()) {
    a.reset(); // no libarchive state outlives the roll-back
    x.roll_back();
  }
  return err;
}

} // namespace

std::string extract_zip(std::string_view bytes, const std::string& dest,
                        const extract_limits& limits) {
  byte_source src;
  src.size = bytes.size();
  src.memory = bytes;
  return extract(
    src,
    [&](archive* a) { return archive_read_open_memory(a, bytes.data(), bytes.size()); }, dest,
    limits);
}

std::string extract_zip_file(const std::string& path, const std::string& dest,
                             const extract_limits& limits) {
  // O_NONBLOCK: a fifo at `path` must be refused below, not block the open.
  fd_guard fd{::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC)};
  if (fd.get() < 0) {
    int e = errno;
    return "cannot open " + path + ": " + errno_text(e);
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) {
    int e = errno;
    return "cannot stat " + path + ": " + errno_text(e);
  }
  if (!S_ISREG(st.st_mode))
    return path + " is not a regular file";
  byte_source src;
  src.size = static_cast<uint64_t>(st.st_size);
  src.fd = fd.get();
  return extract(
    src, [&](archive* a) { return archive_read_open_fd(a, fd.get(), block_size); }, dest,
    limits);
}

} // namespace alephd
