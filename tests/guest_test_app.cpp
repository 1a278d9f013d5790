// A tiny single-threaded HTTP server used as the guest agent's program in
// guest_agent_test. Listens on 127.0.0.1:$APP_PORT (after $START_DELAY_MS).
//   GET /echo?Q  -> 200 "Q GREETING" ($GREETING from the environment)
//   GET /chunked -> 200, the same body sent with chunked encoding
//   GET /crash   -> exits with code 3 without answering
//   GET /big?N   -> 200 with a body of N bytes
//   GET /garbage -> a response that is not HTTP
//   GET /instance -> 200, a random token drawn at start (tells one run from another)
//   GET /conn    -> 200 "C N": the N-th request on the program's C-th connection
//                   (?timeout=N: with `Keep-Alive: timeout=N`)
// With IGNORE_SIGTERM=1 it ignores SIGTERM (to test the SIGKILL escalation).
// It closes each connection after one answer (without saying so in the answer), unless
// KEEPALIVE=1: then each connection has its own thread and carries requests until the client
// closes it or sends `Connection: close` (KEEPALIVE=serial: the same, one connection at a time,
// as a blocking single-threaded server); with DROP_REUSED=1 as well, it closes a connection
// without answering when a second request arrives on it (a server closing an idle connection
// just as the next request comes).
// Prints "listening on PORT" and one line per request to stdout, and dies with
// its parent (so a killed test leaves nothing behind).

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace {

std::mutex event_mu;
std::string last_event; // the body of the last POST /aleph/event

void write_all(int fd, const std::string& s) {
  std::size_t off = 0;
  while (off < s.size()) {
    auto n = ::send(fd, s.data() + off, s.size() - off, MSG_NOSIGNAL);
    if (n <= 0)
      return;
    off += static_cast<std::size_t>(n);
  }
}

} // namespace

int main() {
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  const char* port_env = std::getenv("APP_PORT");
  if (port_env == nullptr) {
    std::fprintf(stderr, "APP_PORT not set\n");
    return 2;
  }
  if (const char* delay = std::getenv("START_DELAY_MS"))
    ::usleep(static_cast<useconds_t>(std::atoi(delay)) * 1000);
  if (const char* ignore = std::getenv("IGNORE_SIGTERM");
      ignore != nullptr && std::string{ignore} == "1")
    ::signal(SIGTERM, SIG_IGN);
  const char* greeting_env = std::getenv("GREETING");
  std::string greeting = greeting_env ? greeting_env : "";
  std::string instance;
  {
    std::ifstream random{"/dev/urandom", std::ios::binary};
    for (int i = 0; i < 8; ++i) {
      char hex[3];
      std::snprintf(hex, sizeof hex, "%02x", static_cast<unsigned char>(random.get()));
      instance += hex;
    }
  }

  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(std::atoi(port_env)));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0
      || ::listen(fd, 128) != 0) {
    std::fprintf(stderr, "cannot listen: %s\n", std::strerror(errno));
    return 2;
  }
  std::printf("listening on %s\n", port_env);
  std::fflush(stdout);
  std::fprintf(stderr, "ready\n");
  // THREADED=1: each connection on its own thread (a concurrent program); else one at a time.
  const char* threaded_env = std::getenv("THREADED");
  bool threaded = threaded_env != nullptr && std::string{threaded_env} == "1";
  const char* keepalive_env = std::getenv("KEEPALIVE");
  std::string keepalive_mode = keepalive_env ? keepalive_env : "";
  bool keepalive = keepalive_mode == "1" || keepalive_mode == "serial";
  const char* drop_env = std::getenv("DROP_REUSED");
  bool drop_reused = drop_env != nullptr && std::string{drop_env} == "1";
  static std::atomic<int> connections{0};
  auto serve = [greeting, instance, keepalive, drop_reused](int c) {
    int connection = ++connections;
    std::string pending; // bytes read past the request in hand
    for (int nth = 1;; ++nth) {
      char buf[4096];
      while (pending.find("\r\n\r\n") == std::string::npos && pending.size() < 65536) {
        auto n = ::read(c, buf, sizeof buf);
        if (n <= 0)
          break;
        pending.append(buf, static_cast<std::size_t>(n));
      }
      auto head_end = pending.find("\r\n\r\n");
      if (head_end == std::string::npos) { // the client closed, or a head too large
        ::close(c);
        return;
      }
      std::string head_lower = pending.substr(0, head_end + 2);
      for (auto& ch : head_lower)
        ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
      std::size_t body_length = 0;
      if (auto at = head_lower.find("\r\ncontent-length:"); at != std::string::npos)
        body_length = std::strtoull(head_lower.c_str() + at + 17, nullptr, 10);
      while (pending.size() < head_end + 4 + body_length) {
        auto n = ::read(c, buf, sizeof buf);
        if (n <= 0)
          break;
        pending.append(buf, static_cast<std::size_t>(n));
      }
      std::string req = pending.substr(0, std::min(pending.size(), head_end + 4 + body_length));
      pending.erase(0, req.size());
      bool close_after = !keepalive || head_lower.find("\r\nconnection: close\r\n") != std::string::npos;
      auto line_end = req.find("\r\n");
      std::string line = req.substr(0, line_end);
      std::printf("request %s\n", line.c_str());
      std::fflush(stdout);
      if (drop_reused && nth > 1) {
        ::close(c);
        return;
      }
      auto sp1 = line.find(' ');
      auto sp2 = line.find(' ', sp1 + 1);
      std::string target = sp1 == std::string::npos || sp2 == std::string::npos
                             ? ""
                             : line.substr(sp1 + 1, sp2 - sp1 - 1);
      auto q = target.find('?');
      std::string path = target.substr(0, q);
      std::string query = q == std::string::npos ? "" : target.substr(q + 1);
      if (path == "/crash")
        std::exit(3);
      if (path == "/conn") {
        // ?timeout=N: says `Keep-Alive: timeout=N`.
        auto body = std::to_string(connection) + " " + std::to_string(nth);
        std::string extra = query.rfind("timeout=", 0) == 0 ? "Keep-Alive: " + query + "\r\n" : "";
        write_all(c, "HTTP/1.1 200 OK\r\n" + extra + "Content-Length: " + std::to_string(body.size())
                       + "\r\n\r\n" + body);
      } else if (path == "/instance") {
        write_all(c, "HTTP/1.1 200 OK\r\nContent-Length: " + std::to_string(instance.size())
                       + "\r\n\r\n" + instance);
      } else if (path == "/echo") {
        std::string body = query + " " + greeting;
        write_all(c, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                     "X-App: guest-test\r\nContent-Length: "
                       + std::to_string(body.size()) + "\r\n\r\n" + body);
      } else if (path == "/chunked") {
        std::string body = query + " " + greeting;
        char size[32];
        std::snprintf(size, sizeof size, "%zx", body.size());
        write_all(c, std::string{"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"}
                       + size + "\r\n" + body + "\r\n0\r\n\r\n");
      } else if (path == "/big") {
        std::size_t n = std::strtoull(query.c_str(), nullptr, 10);
        write_all(c, "HTTP/1.1 200 OK\r\nContent-Length: " + std::to_string(n)
                       + "\r\n\r\n");
        std::string block(64 * 1024, 'z');
        for (std::size_t sent = 0; sent < n; sent += block.size())
          write_all(c, block.substr(0, std::min(block.size(), n - sent)));
      } else if (path == "/sleep") {
        // ?ms=N: answers after N milliseconds.
        auto ms = query.rfind("ms=", 0) == 0 ? std::atoi(query.c_str() + 3) : 0;
        ::usleep(static_cast<useconds_t>(ms) * 1000);
        write_all(c, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nslept");
      } else if (path == "/env") {
        // ?NAME: the value of an environment variable.
        const char* v = std::getenv(query.c_str());
        std::string body = v ? v : "";
        write_all(c, "HTTP/1.1 200 OK\r\nContent-Length: " + std::to_string(body.size())
                       + "\r\n\r\n" + body);
      } else if (path == "/alloc") {
        // ?mb=N: touches N MiB (a memory limit below that kills the app).
        auto mb = query.rfind("mb=", 0) == 0 ? std::atoi(query.c_str() + 3) : 0;
        std::vector<char*> blocks;
        for (int i = 0; i < mb; ++i) {
          auto* b = static_cast<char*>(std::malloc(1 << 20));
          if (b == nullptr)
            break;
          std::memset(b, 1, 1 << 20);
          blocks.push_back(b);
        }
        write_all(c, "HTTP/1.1 200 OK\r\nContent-Length: " + std::to_string(std::to_string(blocks.size()).size())
                       + "\r\n\r\n" + std::to_string(blocks.size()));
        for (auto* b : blocks)
          std::free(b);
      } else if (path == "/fork") {
        // ?n=N: tries to start N sleeping children; answers how many started.
        auto n = query.rfind("n=", 0) == 0 ? std::atoi(query.c_str() + 2) : 0;
        ::signal(SIGCHLD, SIG_IGN); // children are reaped by the kernel
        int started = 0;
        for (int i = 0; i < n; ++i) {
          pid_t p = ::fork();
          if (p == 0) {
            ::sleep(5);
            ::_exit(0);
          }
          if (p > 0)
            ++started;
        }
        auto body = std::to_string(started);
        write_all(c, "HTTP/1.1 200 OK\r\nContent-Length: " + std::to_string(body.size())
                       + "\r\n\r\n" + body);
      } else if (path == "/aleph/event") {
      // A message event (message-triggered programs): keep its body for /last-event.
      {
        std::lock_guard lock{event_mu};
        last_event = req.substr(head_end + 4);
      }
      write_all(c, "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nstored");
    } else if (path == "/headers") {
      // The request head as received.
      auto head = req.substr(0, req.find("\r\n\r\n"));
      write_all(c, "HTTP/1.1 200 OK\r\nContent-Length: " + std::to_string(head.size())
                     + "\r\n\r\n" + head);
    } else if (path == "/last-event") {
      std::string body;
      {
        std::lock_guard lock{event_mu};
        body = last_event;
      }
      write_all(c, "HTTP/1.1 200 OK\r\nContent-Length: " + std::to_string(body.size())
                     + "\r\n\r\n" + body);
    } else if (path == "/connect") {
      // ?A.B.C.D:PORT: "connected" if a TCP connect succeeds within 1 s, else the error.
      auto colon = query.rfind(':');
      sockaddr_in to{};
      to.sin_family = AF_INET;
      to.sin_port = htons(static_cast<uint16_t>(std::atoi(query.c_str() + colon + 1)));
      std::string body = "bad address";
      if (colon != std::string::npos
          && ::inet_pton(AF_INET, query.substr(0, colon).c_str(), &to.sin_addr) == 1) {
        int s = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        int rc = ::connect(s, reinterpret_cast<sockaddr*>(&to), sizeof to);
        if (rc != 0 && errno == EINPROGRESS) {
          pollfd p{s, POLLOUT, 0};
          int err = ETIMEDOUT;
          socklen_t len = sizeof err;
          if (::poll(&p, 1, 1000) == 1)
            ::getsockopt(s, SOL_SOCKET, SO_ERROR, &err, &len);
          rc = err == 0 ? 0 : -1;
          errno = err;
        }
        body = rc == 0 ? "connected" : std::strerror(errno);
        ::close(s);
      }
      write_all(c, "HTTP/1.1 200 OK\r\nContent-Length: " + std::to_string(body.size())
                     + "\r\n\r\n" + body);
    } else if (path == "/write") {
        // ?MB:PATH: writes "data" (MB = 0) or MB MiB to /PATH; 200 "ok", or 507 with the reason.
        auto colon = query.find(':');
        auto mb = std::atoi(query.substr(0, colon).c_str());
        auto file = "/" + (colon == std::string::npos ? std::string{} : query.substr(colon + 1));
        std::string body = "ok";
        int status = 200;
        if (FILE* f = std::fopen(file.c_str(), "w")) {
          std::string block = mb > 0 ? std::string(1 << 20, 'w') : std::string{"data"};
          for (int i = 0; i < std::max(mb, 1); ++i)
            if (std::fwrite(block.data(), 1, block.size(), f) != block.size()) {
              status = 507;
              body = std::strerror(errno);
              break;
            }
          if (std::fclose(f) != 0 && status == 200) {
            status = 507;
            body = std::strerror(errno);
          }
        } else {
          status = 507;
          body = std::strerror(errno);
        }
        write_all(c, "HTTP/1.1 " + std::to_string(status) + " X\r\nContent-Length: "
                       + std::to_string(body.size()) + "\r\n\r\n" + body);
      } else if (path == "/read") {
        // ?PATH: the first bytes of a file, or 404 if it cannot be read.
        std::ifstream in{"/" + query, std::ios::binary};
        std::string data(256, '\0');
        in.read(data.data(), 256);
        data.resize(static_cast<std::size_t>(in.gcount()));
        if (!in && data.empty())
          write_all(c, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
        else
          write_all(c, "HTTP/1.1 200 OK\r\nContent-Length: " + std::to_string(data.size())
                         + "\r\n\r\n" + data);
      } else if (path == "/garbage") {
        write_all(c, "this is not HTTP at all\r\n\r\n");
      } else {
        write_all(c, "HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found");
      }
      if (close_after) {
        ::close(c);
        return;
      }
    }
  };
  for (;;) {
    int c = ::accept(fd, nullptr, nullptr);
    if (c < 0)
      continue;
    if (threaded || keepalive_mode == "1")
      std::thread{serve, c}.detach();
    else
      serve(c);
  }
}
