// Helpers for the bare HTTP servers of tests and benches (plain sockets, no HTTP stack).
#pragma once

#include <cerrno>
#include <cstdint>
#include <string>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>

namespace alephd::test {

/// A TCP socket listening on 127.0.0.1 at a port the OS chooses (set in `port`); -1 on failure
/// (errno says why).
inline int listen_loopback(uint16_t& port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(fd, 4) != 0
      || ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    if (fd >= 0) {
      int e = errno;
      ::close(fd);
      errno = e;
    }
    return -1;
  }
  port = ntohs(a.sin_port);
  return fd;
}

/// Reads from `fd` until the end of a request's head (an empty line) or the end of the stream;
/// what was read.
inline std::string read_request_head(int fd) {
  std::string req;
  char buf[4096];
  while (req.find("\r\n\r\n") == std::string::npos) {
    auto n = ::read(fd, buf, sizeof buf);
    if (n <= 0)
      break;
    req.append(buf, static_cast<size_t>(n));
  }
  return req;
}

} // namespace alephd::test
