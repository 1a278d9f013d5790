// libFuzzer: raw bytes sent to the real HTTP server (Boost.Beast with our limits, spooling,
// keep-alive and pipelining) over loopback, the way a client would. The server must answer or
// close, never crash or hang.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>

#include "runtime/http_server.hpp"

namespace {

alephd::http::server& server() {
  static std::unique_ptr<alephd::http::server> s = [] {
    alephd::http::server_options o;
    o.max_body_bytes = 64 * 1024;
    o.max_header_bytes = 8 * 1024;
    o.read_timeout = std::chrono::milliseconds{300};
    o.spool_dir = "/tmp";
    o.spool_threshold = 4096;
    o.threads = 1;
    auto srv = std::make_unique<alephd::http::server>(
      o, [](alephd::http::request&& req, alephd::http::responder respond) {
        respond(alephd::http::json(200, "{\"target\":" + std::to_string(req.target.size())
                                          + ",\"query\":" + std::to_string(req.query.size())
                                          + ",\"body\":" + std::to_string(req.body_size) + "}"));
      });
    if (!srv->start().empty())
      std::abort();
    return srv;
  }();
  return *s;
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto port = server().port();
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return 0;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    ::close(fd);
    return 0;
  }
  size_t off = 0;
  while (off < size) {
    auto n = ::send(fd, data + off, size - off, MSG_NOSIGNAL);
    if (n <= 0)
      break;
    off += static_cast<size_t>(n);
  }
  ::shutdown(fd, SHUT_WR);
  // Read until the server closes; it must within its read timeout (plus slack). libFuzzer's
  // timeout alarm interrupts poll() now and then (EINTR): that is not the server's doing.
  char buf[65536];
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds{5};
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                  deadline - std::chrono::steady_clock::now()).count();
    if (left <= 0) {
      std::fprintf(stderr, "http_fuzz: the server neither answered nor closed within 5 s\n");
      std::abort();
    }
    pollfd p{fd, POLLIN, 0};
    int ready = ::poll(&p, 1, static_cast<int>(left));
    if (ready < 0 && errno == EINTR)
      continue;
    if (ready != 1)
      continue; // timed out: the deadline check above decides
    auto n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      break;
  }
  ::close(fd);
  return 0;
}
