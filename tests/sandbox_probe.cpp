// A tiny HTTP program for sandbox_test that reports what it sees from inside
// the sandbox. Listens on 127.0.0.1:$APP_PORT;
//   GET /probe -> 200 {"work":B,"etc_hostname":B,"root":B,"pid":N,
//                      "hostname":"H","host_port_reachable":B}
// where host_port_reachable says whether a TCP connect to
// 127.0.0.1:$PROBE_PORT succeeded within 1 s. Dies with its parent.
//
//   GET /escapes -> 200 {"uid":N,"gid":N,"no_new_privs":N,"seccomp":N,"cap_eff":"HEX",
//                        "ptrace":R,"mount":R,...} where each R is "ok" when the attempt
//                        succeeded, else the errno name; and the same for what a program
//                        may do ("tcp_socket", "netlink_socket", "fork", "write_tmp").
//
// Started as `sandbox_probe --socket PATH ...` it is instead a hostile guest
// agent, whose misbehaviour is named by $ALEPHD_HOSTILE_MODE (set with bwrap's --setenv):
//   silent  - connects and never says anything
//   garbage - sends `ready`, then an impossible frame length
//   stuck   - accepts `configure`, then ignores everything (and SIGTERM)
//   later   - accepts `configure`, answers the first request with garbage
//   hangup  - connects, closes the connection at once and stays alive

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <linux/netlink.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <dirent.h>
#include <vector>
#include <fstream>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

namespace {

bool exists(const char* path) {
  struct stat st{};
  return ::lstat(path, &st) == 0;
}

bool can_connect(uint16_t port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
  if (fd < 0)
    return false;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bool ok = false;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) {
    ok = true;
  } else if (errno == EINPROGRESS) {
    pollfd pfd{fd, POLLOUT, 0};
    if (::poll(&pfd, 1, 1000) == 1) {
      int err = 0;
      socklen_t len = sizeof err;
      ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
      ok = err == 0;
    }
  }
  ::close(fd);
  return ok;
}

// "ok" when `rc` says the call worked (>= 0), else the errno's name; closes a returned fd.
std::string outcome(long rc, bool is_fd = false) {
  if (rc >= 0) {
    if (is_fd)
      ::close(static_cast<int>(rc));
    return "ok";
  }
  const char* name = strerrorname_np(errno);
  return name != nullptr ? name : std::to_string(errno);
}

std::string status_field(const std::string& key) {
  std::ifstream in{"/proc/self/status"};
  std::string line;
  while (std::getline(in, line))
    if (line.rfind(key + ":", 0) == 0) {
      auto v = line.substr(key.size() + 1);
      v.erase(0, v.find_first_not_of(" \t"));
      return v;
    }
  return "?";
}

// The usual ways out of a container, each tried for real.
std::string escapes() {
  std::string j = "{\"uid\":" + std::to_string(::getuid()) + ",\"euid\":" + std::to_string(::geteuid())
                  + ",\"gid\":" + std::to_string(::getgid())
                  + ",\"no_new_privs\":" + std::to_string(::prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0))
                  + ",\"seccomp\":\"" + status_field("Seccomp") + "\""
                  + ",\"cap_eff\":\"" + status_field("CapEff") + "\"";
  auto add = [&](const char* name, const std::string& r) { j += std::string{",\""} + name + "\":\"" + r + "\""; };
  // Attach to the agent (our parent), the way a debugger or an injector would.
  add("ptrace", outcome(::ptrace(PTRACE_ATTACH, ::getppid(), nullptr, nullptr)));
  ::mkdir("/tmp/escape-mnt", 0755);
  add("mount", outcome(::mount("none", "/tmp/escape-mnt", "tmpfs", 0, nullptr)));
  add("umount", outcome(::umount2("/tmp", MNT_DETACH)));
  int devnull = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  add("module_load", outcome(::syscall(SYS_finit_module, devnull, "", 0)));
  ::close(devnull);
  add("init_module", outcome(::syscall(SYS_init_module, nullptr, 0, "")));
  add("raw_socket", outcome(::socket(AF_INET, SOCK_RAW, IPPROTO_ICMP), true));
  add("raw_socket6", outcome(::socket(AF_INET6, SOCK_RAW, IPPROTO_ICMPV6), true));
  add("packet_socket", outcome(::socket(AF_PACKET, SOCK_RAW, 0), true));
  add("sysrq", outcome(::open("/proc/sysrq-trigger", O_WRONLY | O_CLOEXEC), true));
  add("kmsg", outcome(::open("/dev/kmsg", O_RDONLY | O_CLOEXEC), true));
  add("unshare_user", outcome(::unshare(CLONE_NEWUSER)));
  add("unshare_net", outcome(::unshare(CLONE_NEWNET)));
  add("setuid_root", outcome(::setuid(0)));
  add("chroot", outcome(::chroot("/tmp")));
  add("kexec", outcome(::syscall(SYS_kexec_load, 0, 0, nullptr, 0)));
  add("bpf", outcome(::syscall(SYS_bpf, 0, nullptr, 0)));
  add("reboot", outcome(::syscall(SYS_reboot, 0xfee1dead, 672274793, 0x4321fedc, nullptr)));
  // What a program may do.
  add("tcp_socket", outcome(::socket(AF_INET, SOCK_STREAM, 0), true));
  add("netlink_socket", outcome(::socket(AF_NETLINK, SOCK_RAW, NETLINK_ROUTE), true));
  pid_t pid = ::fork();
  if (pid == 0)
    ::_exit(0);
  if (pid > 0)
    ::waitpid(pid, nullptr, 0);
  add("fork", outcome(pid));
  int fd = ::open("/tmp/escape-probe-file", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  add("write_tmp", outcome(fd >= 0 ? ::write(fd, "x", 1) : -1));
  if (fd >= 0)
    ::close(fd);
  return j + "}";
}

const char* b(bool v) {
  return v ? "true" : "false";
}

std::string link_of(const char* path) {
  char buf[128];
  auto n = ::readlink(path, buf, sizeof buf);
  return n > 0 ? std::string{buf, static_cast<std::size_t>(n)} : "";
}

// What /dev holds and allows: its names, and whether the harmless devices work.
std::string dev_report() {
  std::vector<std::string> names;
  if (DIR* d = ::opendir("/dev")) {
    while (auto* e = ::readdir(d))
      if (std::string_view{e->d_name} != "." && std::string_view{e->d_name} != "..")
        names.emplace_back(e->d_name);
    ::closedir(d);
  }
  std::sort(names.begin(), names.end());
  std::string j = "\"dev\":[";
  for (std::size_t i = 0; i < names.size(); ++i)
    j += (i ? ",\"" : "\"") + names[i] + "\"";
  j += "]";
  int fd = ::open("/dev/null", O_WRONLY | O_CLOEXEC);
  j += ",\"dev_null_write\":\"" + outcome(fd >= 0 ? ::write(fd, "x", 1) : -1) + "\"";
  if (fd >= 0)
    ::close(fd);
  char buf[16];
  fd = ::open("/dev/urandom", O_RDONLY | O_CLOEXEC);
  j += ",\"dev_urandom_read\":\"" + outcome(fd >= 0 && ::read(fd, buf, sizeof buf) == sizeof buf ? 0 : -1) + "\"";
  if (fd >= 0)
    ::close(fd);
  j += ",\"dev_create\":\"" + outcome(::open("/dev/probe-file", O_WRONLY | O_CREAT | O_CLOEXEC, 0644), true) + "\"";
  return j;
}

void write_all(int fd, const std::string& s) {
  std::size_t off = 0;
  while (off < s.size()) {
    auto n = ::send(fd, s.data() + off, s.size() - off, MSG_NOSIGNAL);
    if (n <= 0)
      return;
    off += static_cast<std::size_t>(n);
  }
}

// Frames hand-encoded in msgpack, each with its 4-byte length prefix.
std::string frame(std::string_view payload) {
  auto n = static_cast<uint32_t>(payload.size());
  std::string out{static_cast<char>(n >> 24), static_cast<char>(n >> 16),
                  static_cast<char>(n >> 8), static_cast<char>(n)};
  return out.append(payload);
}

// {"type":"ready","v":1,"version":"x"}
constexpr char ready_payload[] = "\x83\xa4type\xa5ready\xa1v\x01\xa7version\xa1x";
// {"type":"configure_result","v":1,"success":true,"error":""}
constexpr char configured_payload[] = "\x84\xa4type\xb0" "configure_result"
                                      "\xa1v\x01\xa7success\xc3\xa5" "error\xa0";

// Reads at least one byte (or sleeps forever at EOF, staying hostile).
void read_some(int fd) {
  char buf[65536];
  if (::read(fd, buf, sizeof buf) <= 0)
    for (;;)
      ::pause();
}

// Reads one whole frame (4-byte big-endian length, then the payload): a large
// `configure` arrives in several reads.
void read_frame(int fd) {
  unsigned char len[4];
  std::size_t got = 0;
  while (got < 4) {
    auto n = ::read(fd, len + got, 4 - got);
    if (n <= 0)
      for (;;)
        ::pause();
    got += static_cast<std::size_t>(n);
  }
  std::size_t left = (std::size_t{len[0]} << 24) | (std::size_t{len[1]} << 16)
                     | (std::size_t{len[2]} << 8) | std::size_t{len[3]};
  char buf[65536];
  while (left > 0) {
    auto n = ::read(fd, buf, std::min(left, sizeof buf));
    if (n <= 0)
      for (;;)
        ::pause();
    left -= static_cast<std::size_t>(n);
  }
}

int hostile(const std::string& socket_path) {
  ::signal(SIGTERM, SIG_IGN);
  ::signal(SIGPIPE, SIG_IGN);
  const char* env_mode = std::getenv("ALEPHD_HOSTILE_MODE");
  std::string mode = env_mode != nullptr ? env_mode : "";
  int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  socket_path.copy(addr.sun_path, sizeof addr.sun_path - 1);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0)
    return 1;
  if (mode == "hangup") {
    ::close(fd);
    for (;;)
      ::pause(); // connected and hung up, but still alive
  }
  if (mode != "silent") {
    write_all(fd, frame({ready_payload, sizeof ready_payload - 1}));
    read_frame(fd); // configure
    if (mode == "garbage") {
      write_all(fd, "\xff\xff\xff\xff");
    } else {
      write_all(fd, frame({configured_payload, sizeof configured_payload - 1}));
      if (mode == "later") {
        read_frame(fd); // the first request
        write_all(fd, frame("\xc1 not msgpack"));
      }
    }
  }
  for (;;)
    read_some(fd); // never answers, never exits
}

} // namespace

int main(int argc, char** argv) {
  if (argc >= 3 && std::string_view{argv[1]} == "--socket")
    return hostile(argv[2]);
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  const char* port_env = std::getenv("APP_PORT");
  const char* probe_env = std::getenv("PROBE_PORT");
  if (port_env == nullptr) {
    std::fprintf(stderr, "APP_PORT not set\n");
    return 2;
  }
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(std::atoi(port_env)));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0
      || ::listen(fd, 16) != 0) {
    std::perror("cannot listen");
    return 2;
  }
  std::printf("probe listening on %s\n", port_env);
  std::fflush(stdout);
  for (;;) {
    int c = ::accept(fd, nullptr, nullptr);
    if (c < 0)
      continue;
    std::string req;
    char buf[4096];
    while (req.find("\r\n\r\n") == std::string::npos && req.size() < 65536) {
      auto n = ::read(c, buf, sizeof buf);
      if (n <= 0)
        break;
      req.append(buf, static_cast<std::size_t>(n));
    }
    if (req.rfind("GET /probe", 0) == 0) {
      char host[256] = {};
      ::gethostname(host, sizeof host - 1);
      bool reachable = probe_env != nullptr
                       && can_connect(static_cast<uint16_t>(std::atoi(probe_env)));
      std::string body = std::string{"{\"work\":"} + b(exists("/work"))
                         + ",\"etc_hostname\":" + b(exists("/etc/hostname"))
                         + ",\"root\":" + b(exists("/root"))
                         + ",\"pid\":" + std::to_string(::getpid())
                         + ",\"hostname\":\"" + host + "\""
                         + ",\"host_port_reachable\":" + b(reachable)
                         + ",\"ns\":{\"net\":\"" + link_of("/proc/self/ns/net")
                         + "\",\"ipc\":\"" + link_of("/proc/self/ns/ipc")
                         + "\",\"uts\":\"" + link_of("/proc/self/ns/uts") + "\"},"
                         + dev_report() + "}";
      write_all(c, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                   "Content-Length: "
                     + std::to_string(body.size()) + "\r\n\r\n" + body);
    } else if (req.rfind("GET /escapes", 0) == 0) {
      auto body = escapes();
      write_all(c, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                   "Content-Length: "
                     + std::to_string(body.size()) + "\r\n\r\n" + body);
    } else {
      write_all(c, "HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found");
    }
    ::close(c);
  }
}
