// The simulator's link proxies (sim/proxy.hpp): relaying, and retargeting to a node that came
// back on another port (its old connections end, new ones reach the new port).
#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include "sim/proxy.hpp"

namespace {

// A loopback server that answers every connection with one letter and keeps it open.
class letter_server {
public:
  explicit letter_server(char letter) : letter_{letter} {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(fd_, 8) != 0
        || ::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len) != 0)
      return;
    port_ = ntohs(a.sin_port);
    thread_ = std::thread{[this] {
      while (!stop_) {
        pollfd p{fd_, POLLIN, 0};
        if (::poll(&p, 1, 50) <= 0)
          continue;
        int c = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
        if (c < 0)
          continue;
        (void)!::write(c, &letter_, 1);
        held_.push_back(c);
      }
    }};
  }
  ~letter_server() {
    stop_ = true;
    if (thread_.joinable())
      thread_.join();
    for (int c : held_)
      ::close(c);
    ::close(fd_);
  }
  uint16_t port() const { return port_; }

private:
  char letter_;
  int fd_ = -1;
  uint16_t port_ = 0;
  std::atomic<bool> stop_{false};
  std::vector<int> held_;
  std::thread thread_;
};

int connect_to(uint16_t port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  timeval tv{2, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

// The first byte the connection reads: the letter, 0 when it was closed, -1 on a timeout.
int read_one(int fd) {
  char c = 0;
  auto n = ::read(fd, &c, 1);
  return n == 1 ? c : n == 0 ? 0 : -1;
}

TEST(sim_proxy, relays_to_its_target_and_follows_a_retarget) {
  letter_server a{'A'}, b{'B'};
  ASSERT_NE(a.port(), 0);
  ASSERT_NE(b.port(), 0);
  alephd::sim::link_proxies proxies;
  auto id = proxies.add(a.port());
  int old_conn = connect_to(proxies.port(id));
  ASSERT_GE(old_conn, 0);
  EXPECT_EQ(read_one(old_conn), 'A');
  proxies.retarget(id, b.port());
  EXPECT_EQ(read_one(old_conn), 0) << "a connection to the old target ends";
  ::close(old_conn);
  int fresh = connect_to(proxies.port(id));
  ASSERT_GE(fresh, 0);
  EXPECT_EQ(read_one(fresh), 'B') << "a new one reaches the new target";
  ::close(fresh);
}

TEST(sim_proxy, a_partition_holds_new_connections_until_it_heals) {
  letter_server a{'A'};
  alephd::sim::link_proxies proxies;
  auto id = proxies.add(a.port());
  proxies.partition(id, true);
  int held = connect_to(proxies.port(id)); // accepted, and then nothing
  ASSERT_GE(held, 0);
  EXPECT_EQ(read_one(held), -1) << "no byte crosses a partition";
  proxies.partition(id, false);
  EXPECT_EQ(read_one(held), 0) << "a held connection is closed when the partition heals";
  ::close(held);
  int fresh = connect_to(proxies.port(id));
  ASSERT_GE(fresh, 0);
  EXPECT_EQ(read_one(fresh), 'A');
  ::close(fresh);
}

} // namespace
