// Fault-injecting TCP proxies for `alephd sim`: every node link of a simulated cluster (CRN to
// CCN, CCN to peer CCN) goes through one, so that the simulator can partition two nodes or slow
// the link between them without root and without touching the nodes.
//
// A partitioned link moves no bytes in either direction (connections stay open, new ones are
// accepted and held): the nodes see silence, as on a real partition, and must notice it by their
// own heartbeats. When the partition heals, the held connections are closed — the nodes reconnect
// — because a real TCP connection would have timed out. A slow link delays every chunk it relays.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>

namespace alephd::sim {

class link_proxies {
public:
  /// Starts the proxies' I/O thread.
  link_proxies();
  /// Closes every connection and stops the thread.
  ~link_proxies();
  link_proxies(const link_proxies&) = delete;
  link_proxies& operator=(const link_proxies&) = delete;

  /// A new proxy on 127.0.0.1 (port chosen by the OS) to 127.0.0.1:`target_port`; returns its
  /// id. Its port is `port(id)`.
  std::size_t add(uint16_t target_port);
  uint16_t port(std::size_t id) const;
  /// Points the proxy at another port (its node came back on another one); its connections to
  /// the old one end.
  void retarget(std::size_t id, uint16_t target_port);

  /// Partitions (true) or heals (false) the link.
  void partition(std::size_t id, bool on);
  /// Delays each relayed chunk by `d` (0 = none).
  void delay(std::size_t id, std::chrono::milliseconds d);

  /// Connections accepted so far over all proxies (for the report).
  uint64_t connections() const;

private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

} // namespace alephd::sim
