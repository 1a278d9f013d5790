#include "runtime/blob_store.hpp"

#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <vector>

#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <unistd.h>

namespace alephd {

namespace {

constexpr std::size_t chunk = 1 << 20;

bool fsync_path(const std::string& path, int flags) {
  int fd = ::open(path.c_str(), flags | O_CLOEXEC);
  if (fd < 0)
    return false;
  bool ok = ::fsync(fd) == 0;
  ::close(fd);
  return ok;
}

blob_error errno_error(const std::string& what, int err) {
  return blob_error{what + ": " + std::strerror(err), err == ENOSPC || err == EDQUOT};
}

bool write_all(int fd, const char* data, std::size_t n, int& err) {
  while (n > 0) {
    auto w = ::write(fd, data, n);
    if (w < 0) {
      if (errno == EINTR)
        continue;
      err = errno;
      return false;
    }
    data += w;
    n -= static_cast<std::size_t>(w);
  }
  return true;
}

} // namespace

bool is_sha256_hex(std::string_view s) {
  if (s.size() != 64)
    return false;
  for (char c : s)
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
      return false;
  return true;
}

// ---- sha256_stream -------------------------------------------------------------------------

struct sha256_stream::impl {
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  ~impl() { EVP_MD_CTX_free(ctx); }
};

sha256_stream::sha256_stream() : impl_(std::make_unique<impl>()) {
  EVP_DigestInit_ex(impl_->ctx, EVP_sha256(), nullptr);
}

sha256_stream::~sha256_stream() = default;

void sha256_stream::update(const void* data, std::size_t n) {
  EVP_DigestUpdate(impl_->ctx, data, n);
}

std::string sha256_stream::hex() {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  EVP_DigestFinal_ex(impl_->ctx, digest, &length);
  EVP_DigestInit_ex(impl_->ctx, EVP_sha256(), nullptr);
  static constexpr char digits[] = "0123456789abcdef";
  std::string out;
  for (unsigned i = 0; i < length; ++i) {
    out += digits[digest[i] >> 4];
    out += digits[digest[i] & 0xf];
  }
  return out;
}

std::string file_stamp(const std::string& path) {
  struct stat st{};
  if (::stat(path.c_str(), &st) != 0)
    return {};
  return std::to_string(st.st_size) + " " + std::to_string(st.st_mtim.tv_sec) + "."
         + std::to_string(st.st_mtim.tv_nsec) + " " + std::to_string(st.st_ino);
}

// ---- blob_store ----------------------------------------------------------------------------

blob_store::blob_store(std::string root) : root_(std::move(root)) {
  std::error_code ec;
  std::filesystem::create_directories(root_ + "/tmp", ec);
  // Temp files of an earlier process are never complete blobs: a blob is renamed out of tmp
  // only once whole and verified.
  for (auto& e : std::filesystem::directory_iterator{root_ + "/tmp", ec})
    std::filesystem::remove(e.path(), ec);
}

std::string blob_store::path_of(std::string_view hash) const {
  std::string h{hash};
  return root_ + "/" + h.substr(0, 2) + "/" + h.substr(2);
}

std::string blob_store::temp_path(std::string_view tag) const {
  static std::atomic<uint64_t> counter{0};
  static const uint64_t salt = std::random_device{}();
  return root_ + "/tmp/" + std::string{tag} + "." + std::to_string(::getpid()) + "."
         + std::to_string(salt) + "." + std::to_string(counter.fetch_add(1));
}

bool blob_store::exists(std::string_view hash) const {
  std::error_code ec;
  return is_sha256_hex(hash) && std::filesystem::exists(path_of(hash), ec);
}

blob_error blob_store::adopt(const std::string& temp, const std::string& hash) {
  auto fail = [&](blob_error e) {
    ::unlink(temp.c_str());
    return e;
  };
  if (!fsync_path(temp, O_RDONLY))
    return fail(errno_error("cannot fsync blob", errno));
  auto final_path = path_of(hash);
  auto dir = std::filesystem::path{final_path}.parent_path();
  std::error_code ec;
  if (std::filesystem::create_directories(dir, ec))
    fsync_path(root_, O_RDONLY | O_DIRECTORY); // the new shard directory's entry
  if (ec)
    return fail(errno_error("cannot create " + dir.string(), ec.value()));
  if (::rename(temp.c_str(), final_path.c_str()) != 0)
    return fail(errno_error("cannot rename blob", errno));
  // The rename is durable only once the directory entry is.
  if (!fsync_path(dir.string(), O_RDONLY | O_DIRECTORY))
    return errno_error("cannot fsync " + dir.string(), errno);
  return {};
}

blob_error blob_store::write(std::string_view data, std::string& hash, std::string_view expected) {
  sha256_stream sha;
  sha.update(data.data(), data.size());
  hash = sha.hex();
  if (!expected.empty() && hash != expected)
    return blob_error{"content does not match its hash " + std::string{expected}};
  if (exists(hash))
    return {};
  auto tmp = temp_path(hash.substr(0, 16));
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0)
    return errno_error("cannot create " + tmp, errno);
  int err = 0;
  bool ok = write_all(fd, data.data(), data.size(), err);
  ::close(fd);
  if (!ok) {
    ::unlink(tmp.c_str());
    return errno_error("cannot write blob", err);
  }
  return adopt(tmp, hash);
}

blob_error blob_store::hash_copy(const std::string& src, uint64_t offset, uint64_t length,
                                 std::string& temp, std::string& hash) {
  int in = ::open(src.c_str(), O_RDONLY | O_CLOEXEC);
  if (in < 0)
    return errno_error("cannot open " + src, errno);
  auto tmp = temp_path("copy");
  int out = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (out < 0) {
    auto e = errno_error("cannot create " + tmp, errno);
    ::close(in);
    return e;
  }
  std::vector<char> buf(chunk);
  sha256_stream sha;
  uint64_t left = length, pos = offset;
  blob_error result;
  while (left > 0 && !result) {
    auto n = ::pread(in, buf.data(), std::min<uint64_t>(left, buf.size()), static_cast<off_t>(pos));
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0) {
      result = n < 0 ? errno_error("cannot read " + src, errno)
                     : blob_error{"cannot read " + src + ": it is shorter than expected"};
      break;
    }
    sha.update(buf.data(), static_cast<std::size_t>(n));
    int err = 0;
    if (!write_all(out, buf.data(), static_cast<std::size_t>(n), err))
      result = errno_error("cannot write blob", err);
    left -= static_cast<uint64_t>(n);
    pos += static_cast<uint64_t>(n);
  }
  ::close(in);
  ::close(out);
  if (result) {
    ::unlink(tmp.c_str());
    return result;
  }
  temp = tmp;
  hash = sha.hex();
  return {};
}

blob_error blob_store::copy_in(const std::string& src, uint64_t offset, uint64_t length,
                               std::string& hash, std::string_view expected) {
  std::string tmp;
  if (auto e = hash_copy(src, offset, length, tmp, hash))
    return e;
  if ((!expected.empty() && hash != expected) || exists(hash)) {
    ::unlink(tmp.c_str());
    if (!expected.empty() && hash != expected)
      return blob_error{"content does not match its hash " + std::string{expected}};
    return {};
  }
  return adopt(tmp, hash);
}

bool blob_store::verify(std::string_view hash) const {
  if (!is_sha256_hex(hash))
    return false;
  int fd = ::open(path_of(hash).c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return false;
  std::vector<char> buf(chunk);
  sha256_stream sha;
  bool ok = true;
  for (;;) {
    auto n = ::read(fd, buf.data(), buf.size());
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0)
      ok = false;
    if (n <= 0)
      break;
    sha.update(buf.data(), static_cast<std::size_t>(n));
  }
  ::close(fd);
  return ok && sha.hex() == hash;
}

void blob_store::remove(std::string_view hash) const {
  if (is_sha256_hex(hash))
    ::unlink(path_of(hash).c_str());
}

bool blob_store::read(std::string_view hash, std::string& out) const {
  if (!is_sha256_hex(hash))
    return false;
  std::ifstream in{path_of(hash), std::ios::binary};
  if (!in)
    return false;
  out.assign(std::istreambuf_iterator<char>{in}, std::istreambuf_iterator<char>{});
  return true;
}

} // namespace alephd
