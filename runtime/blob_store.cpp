#include "runtime/blob_store.hpp"

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include <fcntl.h>
#include <unistd.h>

#include "messages/aleph_message.hpp"

namespace alephd {

namespace {

bool fsync_path(const std::string& path, int flags) {
  int fd = ::open(path.c_str(), flags | O_CLOEXEC);
  if (fd < 0)
    return false;
  bool ok = ::fsync(fd) == 0;
  ::close(fd);
  return ok;
}

std::string errno_text() {
  return std::strerror(errno);
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

blob_store::blob_store(std::string root) : root_(std::move(root)) {
  std::error_code ec;
  std::filesystem::create_directories(root_ + "/tmp", ec);
}

std::string blob_store::path_of(std::string_view hash) const {
  std::string h{hash};
  return root_ + "/" + h.substr(0, 2) + "/" + h.substr(2);
}

bool blob_store::exists(std::string_view hash) const {
  std::error_code ec;
  return is_sha256_hex(hash) && std::filesystem::exists(path_of(hash), ec);
}

std::string blob_store::write(std::string_view data, std::string& hash, std::string_view expected) {
  hash = aleph::sha256_hex(data);
  if (!expected.empty() && hash != expected)
    return "content does not match its hash " + std::string{expected};
  auto final_path = path_of(hash);
  if (exists(hash))
    return {};
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  auto tmp = root_ + "/tmp/" + hash + "." + std::to_string(rng());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0)
    return "cannot create " + tmp + ": " + errno_text();
  size_t off = 0;
  while (off < data.size()) {
    auto n = ::write(fd, data.data() + off, data.size() - off);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      auto err = "cannot write blob: " + errno_text();
      ::close(fd);
      ::unlink(tmp.c_str());
      return err;
    }
    off += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0) {
    auto err = "cannot fsync blob: " + errno_text();
    ::close(fd);
    ::unlink(tmp.c_str());
    return err;
  }
  ::close(fd);
  auto dir = std::filesystem::path{final_path}.parent_path();
  std::error_code ec;
  if (std::filesystem::create_directories(dir, ec))
    fsync_path(root_, O_RDONLY | O_DIRECTORY); // the new shard directory's entry
  if (ec) {
    ::unlink(tmp.c_str());
    return "cannot create " + dir.string() + ": " + ec.message();
  }
  if (::rename(tmp.c_str(), final_path.c_str()) != 0) {
    auto err = "cannot rename blob: " + errno_text();
    ::unlink(tmp.c_str());
    return err;
  }
  // The rename is durable only once the directory entry is.
  if (!fsync_path(dir.string(), O_RDONLY | O_DIRECTORY))
    return "cannot fsync " + dir.string() + ": " + errno_text();
  return {};
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
