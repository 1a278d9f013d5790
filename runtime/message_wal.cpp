#include "runtime/message_wal.hpp"

#include <algorithm>
#include <chrono>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <thread>
#include <utility>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <boost/crc.hpp>

namespace alephd {

namespace {

// Integers are stored little-endian (the byte order of every host alephd builds for).
constexpr char segment_magic[8] = {'A', 'L', 'E', 'P', 'H', 'W', 'A', 'L'};
constexpr uint32_t segment_version = 1;
constexpr uint32_t record_magic = 0x52574c41; // "ALWR"

template <class T>
void put(std::string& out, T x) {
  out.append(reinterpret_cast<const char*>(&x), sizeof(T));
}

template <class T>
T get(const char* p) {
  T x;
  std::memcpy(&x, p, sizeof(T));
  return x;
}

// CRC-32 of a record's fields after its magic and crc (lengths, generation, seq, bytes).
uint32_t record_crc(uint32_t hash_len, uint32_t record_len, uint64_t generation, uint64_t seq,
                    const char* hash, const char* record) {
  boost::crc_32_type crc;
  crc.process_bytes(&hash_len, sizeof hash_len);
  crc.process_bytes(&record_len, sizeof record_len);
  crc.process_bytes(&generation, sizeof generation);
  crc.process_bytes(&seq, sizeof seq);
  crc.process_bytes(hash, hash_len);
  crc.process_bytes(record, record_len);
  return crc.checksum();
}

uint32_t header_crc(const char* p) {
  boost::crc_32_type crc;
  crc.process_bytes(p, 24);
  return crc.checksum();
}

std::string sys_error(const std::string& what) {
  return what + ": " + std::strerror(errno);
}

bool write_all(int fd, const char* data, size_t size, uint64_t offset) {
  while (size > 0) {
    auto n = ::pwrite(fd, data, size, static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR)
        continue;
      return false;
    }
    data += n;
    size -= static_cast<size_t>(n);
    offset += static_cast<uint64_t>(n);
  }
  return true;
}

bool read_all(int fd, char* data, size_t size) {
  uint64_t offset = 0;
  while (size > 0) {
    auto n = ::pread(fd, data, size, static_cast<off_t>(offset));
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      return false;
    data += n;
    size -= static_cast<size_t>(n);
    offset += static_cast<uint64_t>(n);
  }
  return true;
}

// The records of `generation` in a segment's bytes, and where they end.
uint64_t scan(const std::string& seg, uint64_t generation, std::vector<wal_entry>& out) {
  uint64_t pos = message_wal::header_bytes;
  while (pos + message_wal::record_overhead <= seg.size()) {
    const char* p = seg.data() + pos;
    if (get<uint32_t>(p) != record_magic)
      break;
    auto hash_len = get<uint32_t>(p + 4);
    auto record_len = get<uint32_t>(p + 8);
    auto crc = get<uint32_t>(p + 12);
    auto gen = get<uint64_t>(p + 16);
    auto seq = get<uint64_t>(p + 24);
    uint64_t size = message_wal::record_overhead + uint64_t{hash_len} + record_len;
    if (gen != generation || size > seg.size() - pos)
      break;
    const char* hash = p + message_wal::record_overhead;
    const char* record = hash + hash_len;
    if (record_crc(hash_len, record_len, gen, seq, hash, record) != crc)
      break; // torn: the append it belonged to was never acknowledged
    out.push_back(wal_entry{seq, std::string{hash, hash_len}, std::string{record, record_len}});
    pos += size;
  }
  return pos;
}

} // namespace

std::unique_ptr<message_wal> message_wal::open(const std::string& dir, std::string& err,
                                               uint64_t segment_bytes) {
  namespace fs = std::filesystem;
  std::unique_ptr<message_wal> w{new message_wal};
  w->dir_ = dir;
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) {
    err = "cannot create " + dir + ": " + ec.message();
    return nullptr;
  }
  segment_bytes = std::max<uint64_t>(segment_bytes, header_bytes * 2);
  bool made = false;
  uint64_t sizes[2] = {0, 0};
  for (int i = 0; i < 2; ++i) {
    auto path = dir + "/segment-" + std::to_string(i);
    w->fd_[i] = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (w->fd_[i] < 0) {
      err = sys_error("cannot open " + path);
      return nullptr;
    }
    struct stat st {};
    if (::fstat(w->fd_[i], &st) != 0) {
      err = sys_error("cannot stat " + path);
      return nullptr;
    }
    sizes[i] = static_cast<uint64_t>(st.st_size);
    if (sizes[i] < segment_bytes) {
      // Written, not just allocated: a later overwrite then needs no metadata in its sync.
      std::string zeros(1 << 20, '\0');
      for (uint64_t off = sizes[i]; off < segment_bytes; off += zeros.size()) {
        auto n = std::min<uint64_t>(zeros.size(), segment_bytes - off);
        if (!write_all(w->fd_[i], zeros.data(), n, off)) {
          err = sys_error("cannot write " + path);
          return nullptr;
        }
      }
      if (::fsync(w->fd_[i]) != 0) {
        err = sys_error("cannot sync " + path);
        return nullptr;
      }
      sizes[i] = segment_bytes;
      made = true;
    }
  }
  if (made) {
    int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
      ::fsync(dfd);
      ::close(dfd);
    }
  }
  w->segment_bytes_ = std::min(sizes[0], sizes[1]);
  uint64_t ends[2] = {header_bytes, header_bytes};
  for (int i = 0; i < 2; ++i) {
    std::string seg(w->segment_bytes_, '\0');
    if (!read_all(w->fd_[i], seg.data(), seg.size())) {
      err = sys_error(dir + "/segment-" + std::to_string(i) + ": cannot read");
      return nullptr;
    }
    if (std::memcmp(seg.data(), segment_magic, 8) == 0
        && get<uint32_t>(seg.data() + 8) == segment_version
        && get<uint32_t>(seg.data() + 24) == header_crc(seg.data()))
      w->generation_[i] = get<uint64_t>(seg.data() + 16);
    if (w->generation_[i] != 0)
      ends[i] = scan(seg, w->generation_[i], w->recovered_);
  }
  w->active_ = w->generation_[1] > w->generation_[0] ? 1 : 0;
  w->pos_ = ends[w->active_];
  if (w->generation_[w->active_] == 0 && !w->write_header(w->active_, 1, err))
    return nullptr; // a new log: its first generation (synced with the first append)
  std::sort(w->recovered_.begin(), w->recovered_.end(),
            [](const wal_entry& a, const wal_entry& b) { return a.seq < b.seq; });
  return w;
}

message_wal::~message_wal() {
  for (int fd : fd_)
    if (fd >= 0)
      ::close(fd);
}

std::vector<wal_entry> message_wal::take_recovered() {
  return std::move(recovered_);
}

bool message_wal::write_header(int segment, uint64_t generation, std::string& err) {
  std::string h;
  h.append(segment_magic, 8);
  put<uint32_t>(h, segment_version);
  put<uint32_t>(h, 0);
  put<uint64_t>(h, generation);
  put<uint32_t>(h, header_crc(h.data()));
  h.resize(header_bytes, '\0');
  if (!write_all(fd_[segment], h.data(), h.size(), 0)) {
    failed_ = true;
    err = sys_error(dir_ + "/segment-" + std::to_string(segment) + ": cannot write the header");
    return false;
  }
  generation_[segment] = generation;
  return true;
}

bool message_wal::reset(std::string& err) {
  auto next = std::max(generation_[0], generation_[1]) + 1;
  if (!write_header(1, 0, err) || !write_header(0, next, err))
    return false;
  for (int i = 0; i < 2; ++i)
    if (::fdatasync(fd_[i]) != 0) {
      failed_ = true;
      err = sys_error(dir_ + "/segment-" + std::to_string(i) + ": cannot sync");
      return false;
    }
  active_ = 0;
  pos_ = header_bytes;
  return true;
}

bool message_wal::rotate(std::string& err) {
  int other = 1 - active_;
  if (!write_header(other, std::max(generation_[0], generation_[1]) + 1, err))
    return false;
  active_ = other;
  pos_ = header_bytes;
  return true;
}

bool message_wal::append(const std::vector<wal_entry>& entries, std::string& err) {
  if (failed_) {
    err = "the write-ahead log failed earlier";
    return false;
  }
  buffer_.clear();
  auto gen = generation_[active_];
  for (auto& e : entries) {
    auto hash_len = static_cast<uint32_t>(e.hash.size());
    auto record_len = static_cast<uint32_t>(e.record.size());
    put<uint32_t>(buffer_, record_magic);
    put<uint32_t>(buffer_, hash_len);
    put<uint32_t>(buffer_, record_len);
    put<uint32_t>(buffer_, record_crc(hash_len, record_len, gen, e.seq, e.hash.data(), e.record.data()));
    put<uint64_t>(buffer_, gen);
    put<uint64_t>(buffer_, e.seq);
    buffer_ += e.hash;
    buffer_ += e.record;
  }
  if (!fits(buffer_.size())) {
    err = "the write-ahead log segment is full";
    return false;
  }
  auto path = dir_ + "/segment-" + std::to_string(active_);
  if (injected_stall_ms_ != 0)
    std::this_thread::sleep_for(std::chrono::milliseconds(std::exchange(injected_stall_ms_, 0)));
  if (injected_error_ != 0) {
    errno = std::exchange(injected_error_, 0);
    failed_ = true;
    err = sys_error(path + ": cannot write");
    return false;
  }
  if (!write_all(fd_[active_], buffer_.data(), buffer_.size(), pos_)) {
    failed_ = true;
    err = sys_error(path + ": cannot write");
    return false;
  }
  if (::fdatasync(fd_[active_]) != 0) {
    failed_ = true;
    err = sys_error(path + ": cannot sync");
    return false;
  }
  pos_ += buffer_.size();
  return true;
}

} // namespace alephd
