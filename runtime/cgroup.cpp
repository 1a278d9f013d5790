#include "runtime/cgroup.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <set>
#include <sstream>
#include <system_error>
#include <thread>
#include <utility>

namespace alephd {

namespace {

using clock_type = std::chrono::steady_clock;

// The controllers this module uses, the main one (path()) first.
constexpr std::string_view v1_controllers[] = {"memory", "pids", "cpu", "cpuacct"};
constexpr std::string_view v2_controllers[] = {"memory", "pids", "cpu"};
constexpr uint64_t v2_cpu_period_us = 100000;
constexpr uint64_t min_cpu_quota_us = 1000; // the kernel's lower bound
constexpr double max_cpus = 10000;

std::string errno_text(int e) {
  // strerror() is not thread-safe; the generic category's message is.
  return std::error_code(e, std::generic_category()).message();
}

std::vector<std::string_view> split(std::string_view s, char sep) {
  std::vector<std::string_view> out;
  size_t start = 0;
  while (start <= s.size()) {
    size_t end = s.find(sep, start);
    if (end == std::string_view::npos)
      end = s.size();
    out.push_back(s.substr(start, end - start));
    start = end + 1;
  }
  return out;
}

std::set<std::string> words(std::string_view s) {
  std::set<std::string> out;
  for (auto w : split(s, ' ')) {
    while (!w.empty() && (w.back() == '\n' || w.back() == '\t'))
      w.remove_suffix(1);
    if (!w.empty())
      out.emplace(w);
  }
  return out;
}

std::string join(const std::vector<std::string>& v, std::string_view sep) {
  std::string out;
  for (const auto& s : v) {
    if (!out.empty())
      out += sep;
    out += s;
  }
  return out;
}

// mountinfo escapes space, tab, newline and backslash as \ooo.
std::string unescape_mount(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 3 < s.size()) {
      auto o = s.substr(i + 1, 3);
      auto octal = [](char c) { return c >= '0' && c <= '7'; };
      if (o.size() == 3 && std::all_of(o.begin(), o.end(), octal)) {
        out += static_cast<char>((o[0] - '0') * 64 + (o[1] - '0') * 8 + (o[2] - '0'));
        i += 3;
        continue;
      }
    }
    out += s[i];
  }
  return out;
}

struct mount_entry {
  std::string root, point, fstype;
  std::set<std::string> options; // super options
};

std::vector<mount_entry> parse_mountinfo(std::string_view text) {
  std::vector<mount_entry> out;
  for (auto line : split(text, '\n')) {
    std::vector<std::string_view> f;
    for (auto w : split(line, ' '))
      if (!w.empty())
        f.push_back(w);
    // id parent dev root point options [optional...] - fstype source superoptions
    auto dash = std::find(f.begin(), f.end(), std::string_view{"-"});
    if (f.size() < 6 || dash == f.end() || dash - f.begin() < 6 || f.end() - dash < 4)
      continue;
    mount_entry m;
    m.root = unescape_mount(f[3]);
    m.point = unescape_mount(f[4]);
    m.fstype = std::string{dash[1]};
    for (auto o : split(dash[3], ','))
      if (!o.empty())
        m.options.emplace(o);
    if (m.fstype == "cgroup" || m.fstype == "cgroup2")
      out.push_back(std::move(m));
  }
  return out;
}

// The directory of cgroup `path` (as /proc/self/cgroup shows it) under a
// mount of its hierarchy whose root is `root`, or nothing if the mount does
// not show that cgroup.
std::optional<std::string> under_mount(const mount_entry& m, std::string_view path) {
  if (path.empty() || path[0] != '/' || m.point.empty() || m.point[0] != '/')
    return std::nullopt;
  std::string_view rel;
  if (m.root == "/")
    rel = path;
  else if (path == m.root)
    rel = "";
  else if (path.size() > m.root.size() && path.substr(0, m.root.size()) == m.root
           && path[m.root.size()] == '/')
    rel = path.substr(m.root.size());
  else
    return std::nullopt;
  // A cgroup outside our cgroup namespace shows as "/../..".
  for (auto part : split(rel, '/'))
    if (part == ".." || part == ".")
      return std::nullopt;
  std::string dir = m.point;
  while (dir.size() > 1 && dir.back() == '/')
    dir.pop_back();
  if (rel != "/")
    dir += rel;
  return dir;
}

std::optional<std::string> read_file(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return std::nullopt;
  std::string out;
  char buf[4096];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0) {
      bool ok = n == 0;
      ::close(fd);
      if (!ok)
        return std::nullopt;
      return out;
    }
    out.append(buf, static_cast<size_t>(n));
  }
}

bool write_file(const std::string& path, std::string_view value, std::string& err) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) {
    err = "cgroup: cannot open " + path + ": " + errno_text(errno);
    return false;
  }
  ssize_t n;
  do
    n = ::write(fd, value.data(), value.size());
  while (n < 0 && errno == EINTR);
  int e = n < 0 ? errno : EIO;
  ::close(fd);
  if (n != static_cast<ssize_t>(value.size())) {
    err = "cgroup: cannot write '" + std::string{value} + "' to " + path + ": " + errno_text(e);
    return false;
  }
  return true;
}

bool exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0;
}

bool is_dir(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

std::vector<std::string> subdirs(const std::string& dir) {
  std::vector<std::string> out;
  DIR* d = ::opendir(dir.c_str());
  if (!d)
    return out;
  while (auto* e = ::readdir(d)) {
    std::string n = e->d_name;
    if (n == "." || n == "..")
      continue;
    if (e->d_type == DT_DIR || (e->d_type == DT_UNKNOWN && is_dir(dir + "/" + n)))
      out.push_back(std::move(n));
  }
  ::closedir(d);
  std::sort(out.begin(), out.end());
  return out;
}

uint64_t to_u64(std::string_view s) {
  uint64_t v = 0;
  bool any = false;
  for (char c : s) {
    if (c < '0' || c > '9')
      break;
    v = v * 10 + static_cast<uint64_t>(c - '0');
    any = true;
  }
  return any ? v : 0;
}

// A number file ("max" and missing files read as 0).
uint64_t read_u64(const std::string& path) {
  auto text = read_file(path);
  return text ? to_u64(*text) : 0;
}

// The value of `key` in a "key value" per line file.
std::optional<uint64_t> read_key(const std::string& path, std::string_view key) {
  auto text = read_file(path);
  if (!text)
    return std::nullopt;
  for (auto line : split(*text, '\n')) {
    if (line.size() > key.size() && line.substr(0, key.size()) == key && line[key.size()] == ' ')
      return to_u64(line.substr(key.size() + 1));
  }
  return std::nullopt;
}

std::vector<pid_t> procs(const std::string& dir) {
  std::vector<pid_t> out;
  if (auto text = read_file(dir + "/cgroup.procs"))
    for (auto line : split(*text, '\n'))
      if (auto v = to_u64(line); v > 0)
        out.push_back(static_cast<pid_t>(v));
  return out;
}

bool valid_name(const std::string& s) {
  if (s.empty() || s.size() > 200 || s == "." || s == "..")
    return false;
  return std::all_of(s.begin(), s.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.'
           || c == '_' || c == '-';
  });
}

// SIGKILLs what runs in `dir` and its sub-groups and removes them, deepest
// first. True when `dir` is gone; adds what is still there to `left`.
bool sweep(const std::string& dir, size_t& left, int& last_errno) {
  if (!exists(dir))
    return true;
  for (const auto& sub : subdirs(dir))
    sweep(dir + "/" + sub, left, last_errno);
  auto pids = procs(dir);
  for (pid_t p : pids)
    ::kill(p, SIGKILL);
  if (::rmdir(dir.c_str()) == 0 || errno == ENOENT)
    return true;
  last_errno = errno;
  left += std::max<size_t>(pids.size(), 1);
  return false;
}

// Candidate v2 bases: this process's cgroup, then its parent (not above the mount).
std::vector<std::string> v2_bases(const cgroup_layout& l) {
  std::vector<std::string> out;
  if (l.v2_self.empty())
    return out;
  out.push_back(l.v2_self);
  if (l.v2_self != l.v2_mount && l.v2_self.size() > l.v2_mount.size()) {
    auto parent = l.v2_self.substr(0, l.v2_self.rfind('/'));
    if (parent.size() >= l.v2_mount.size())
      out.push_back(parent);
  }
  return out;
}

// v1: this process's directory in each distinct hierarchy we use, memory first.
std::vector<std::string> v1_hierarchies(const cgroup_layout& l) {
  std::vector<std::string> out;
  for (auto c : v1_controllers)
    if (auto it = l.v1.find(std::string{c}); it != l.v1.end())
      if (std::find(out.begin(), out.end(), it->second) == out.end())
        out.push_back(it->second);
  return out;
}

// Enables the wanted controllers `base` can offer in its subtree_control, in
// one write (all or nothing, so a refused base is left as it was). Returns the
// wanted ones enabled afterwards; `note` says why some are not.
std::set<std::string> enable_controllers(const std::string& base, std::string& note) {
  std::set<std::string> result;
  auto avail_text = read_file(base + "/cgroup.controllers");
  auto enabled_text = read_file(base + "/cgroup.subtree_control");
  if (!avail_text || !enabled_text) {
    note = base + " is not a readable cgroup2 directory";
    return result;
  }
  auto avail = words(*avail_text);
  auto enabled = words(*enabled_text);
  std::string add;
  for (auto c : v2_controllers) {
    std::string name{c};
    if (enabled.count(name))
      result.insert(name);
    else if (avail.count(name))
      add += (add.empty() ? "+" : " +") + name;
  }
  if (add.empty())
    return result;
  std::string err;
  if (!write_file(base + "/cgroup.subtree_control", add, err)) {
    note = err;
    return result;
  }
  if (auto t = read_file(base + "/cgroup.subtree_control"))
    for (const auto& c : words(*t))
      if (std::find(std::begin(v2_controllers), std::end(v2_controllers), c)
          != std::end(v2_controllers))
        result.insert(c);
  return result;
}

} // namespace

// -- layout -------------------------------------------------------------------

cgroup_layout cgroup_layout::parse(std::string_view mountinfo, std::string_view proc_self_cgroup) {
  cgroup_layout l;
  auto mounts = parse_mountinfo(mountinfo);
  for (auto line : split(proc_self_cgroup, '\n')) {
    auto c1 = line.find(':');
    if (c1 == std::string_view::npos)
      continue;
    auto c2 = line.find(':', c1 + 1);
    if (c2 == std::string_view::npos)
      continue;
    auto id = line.substr(0, c1);
    auto ctrls = line.substr(c1 + 1, c2 - c1 - 1);
    auto path = line.substr(c2 + 1);
    if (id == "0" && ctrls.empty()) {
      for (const auto& m : mounts)
        if (m.fstype == "cgroup2")
          if (auto dir = under_mount(m, path)) {
            l.v2_mount = m.point;
            while (l.v2_mount.size() > 1 && l.v2_mount.back() == '/')
              l.v2_mount.pop_back();
            l.v2_self = *dir;
            break;
          }
      continue;
    }
    for (auto c : split(ctrls, ',')) {
      if (std::find(std::begin(v1_controllers), std::end(v1_controllers), c)
          == std::end(v1_controllers))
        continue;
      for (const auto& m : mounts)
        if (m.fstype == "cgroup" && m.options.count(std::string{c}))
          if (auto dir = under_mount(m, path)) {
            l.v1.emplace(std::string{c}, *dir);
            break;
          }
    }
  }
  if (l.v1.count("memory") || l.v1.count("pids") || l.v1.count("cpu"))
    l.version = 1;
  else if (!l.v2_self.empty())
    l.version = 2;
  return l;
}

cgroup_layout cgroup_layout::detect() {
  auto mountinfo = read_file("/proc/self/mountinfo");
  auto self = read_file("/proc/self/cgroup");
  if (!mountinfo || !self)
    return {};
  return parse(*mountinfo, *self);
}

// -- cgroup -------------------------------------------------------------------

std::optional<cgroup> cgroup::create(const std::string& root_name, const std::string& name,
                                     const cgroup_limits& limits, std::string& err) {
  return create(cgroup_layout::detect(), root_name, name, limits, err);
}

std::optional<cgroup> cgroup::create(const cgroup_layout& layout, const std::string& root_name,
                                     const std::string& name, const cgroup_limits& limits,
                                     std::string& err) {
  err.clear();
  if (!valid_name(root_name) || !valid_name(name)) {
    err = "cgroup: invalid group name '" + root_name + "/" + name
          + "' (want [A-Za-z0-9._-]+, at most 200 characters)";
    return std::nullopt;
  }
  if (!(limits.cpus >= 0) || limits.cpus > max_cpus) {
    err = "cgroup: cpus out of range (0.." + std::to_string(static_cast<int>(max_cpus)) + ")";
    return std::nullopt;
  }
  std::vector<std::string> needed;
  if (limits.memory_bytes > 0)
    needed.emplace_back("memory");
  if (limits.pids_max > 0)
    needed.emplace_back("pids");
  if (limits.cpus > 0)
    needed.emplace_back("cpu");

  cgroup g;
  g.version_ = layout.version;
  // Directories this call created (removed again on failure).
  std::vector<std::string> created;
  auto fail = [&](std::string message) -> std::optional<cgroup> {
    for (auto it = created.rbegin(); it != created.rend(); ++it)
      ::rmdir(it->c_str());
    err = std::move(message);
    return std::nullopt;
  };
  auto make_dir = [&](const std::string& dir, bool may_exist) -> bool {
    if (::mkdir(dir.c_str(), 0755) == 0) {
      if (!may_exist)
        created.push_back(dir);
      return true;
    }
    if (errno == EEXIST && may_exist && is_dir(dir))
      return true;
    err = errno == EEXIST ? "cgroup: " + dir + " already exists"
                          : "cgroup: cannot create " + dir + ": " + errno_text(errno);
    return false;
  };

  if (layout.version == 1) {
    std::vector<std::string> missing;
    for (const auto& c : needed)
      if (!layout.v1.count(c))
        missing.push_back(c);
    if (!missing.empty())
      return fail("cgroup v1: controller " + join(missing, ", ")
                  + " not mounted (needed by the limits)");
    for (const auto& hier : v1_hierarchies(layout)) {
      auto root = hier + "/" + root_name;
      auto dir = root + "/" + name;
      if (!make_dir(root, true) || !make_dir(dir, false))
        return fail(err);
      g.dirs_.push_back(dir);
      for (const auto& [c, h] : layout.v1)
        if (h == hier)
          g.controllers_[c] = dir;
    }
    if (limits.memory_bytes > 0) {
      auto dir = g.controllers_.at("memory");
      auto bytes = std::to_string(limits.memory_bytes);
      if (!write_file(dir + "/memory.limit_in_bytes", bytes, err))
        return fail(err);
      // memory+swap may not be below memory, so it is written second.
      if (exists(dir + "/memory.memsw.limit_in_bytes")
          && !write_file(dir + "/memory.memsw.limit_in_bytes", bytes, err))
        return fail(err);
    }
    if (limits.pids_max > 0
        && !write_file(g.controllers_.at("pids") + "/pids.max",
                       std::to_string(limits.pids_max), err))
      return fail(err);
    if (limits.cpus > 0) {
      auto dir = g.controllers_.at("cpu");
      uint64_t period = read_u64(dir + "/cpu.cfs_period_us");
      if (period == 0)
        period = v2_cpu_period_us;
      auto quota = std::max<uint64_t>(
        min_cpu_quota_us, static_cast<uint64_t>(std::llround(limits.cpus * double(period))));
      if (!write_file(dir + "/cpu.cfs_quota_us", std::to_string(quota), err))
        return fail(err);
    }
    return g;
  }

  if (layout.version == 2) {
    // The base that can delegate the most controllers; the first on a tie.
    std::string base, notes;
    std::set<std::string> best;
    for (const auto& b : v2_bases(layout)) {
      std::string note;
      auto got = enable_controllers(b, note);
      if (!note.empty())
        notes += (notes.empty() ? "" : "; ") + note;
      if (base.empty() || got.size() > best.size()) {
        base = b;
        best = std::move(got);
      }
      if (best.size() == std::size(v2_controllers))
        break;
    }
    if (base.empty())
      return fail("cgroup v2: this process's cgroup is not under a cgroup2 mount");
    auto root = base + "/" + root_name;
    if (!make_dir(root, true))
      return fail(err);
    // The root group holds no process, so enabling cannot hit the
    // no-internal-processes rule.
    std::string note;
    auto enabled = enable_controllers(root, note);
    std::vector<std::string> missing;
    for (const auto& c : needed)
      if (!enabled.count(c))
        missing.push_back(c);
    if (!missing.empty()) {
      auto avail = read_file(base + "/cgroup.controllers").value_or("");
      while (!avail.empty() && avail.back() == '\n')
        avail.pop_back();
      return fail("cgroup v2: controller " + join(missing, ", ") + " not available under " + base
                  + " (cgroup.controllers: '" + avail + "'"
                  + (notes.empty() ? "" : "; " + notes) + (note.empty() ? "" : "; " + note)
                  + ")");
    }
    auto dir = root + "/" + name;
    if (!make_dir(dir, false))
      return fail(err);
    g.dirs_.push_back(dir);
    for (const auto& c : enabled)
      g.controllers_[c] = dir;
    if (limits.memory_bytes > 0) {
      if (!write_file(dir + "/memory.max", std::to_string(limits.memory_bytes), err))
        return fail(err);
      if (exists(dir + "/memory.swap.max") && !write_file(dir + "/memory.swap.max", "0", err))
        return fail(err);
    }
    if (limits.pids_max > 0
        && !write_file(dir + "/pids.max", std::to_string(limits.pids_max), err))
      return fail(err);
    if (limits.cpus > 0) {
      auto quota = std::max<uint64_t>(
        min_cpu_quota_us,
        static_cast<uint64_t>(std::llround(limits.cpus * double(v2_cpu_period_us))));
      if (!write_file(dir + "/cpu.max",
                      std::to_string(quota) + " " + std::to_string(v2_cpu_period_us), err))
        return fail(err);
    }
    return g;
  }

  return fail("cgroup: no usable cgroup hierarchy (neither a v1 memory, pids or cpu hierarchy "
              "nor a cgroup2 mount holds this process)");
}

std::optional<cgroup> cgroup::open(const std::string& root_name, const std::string& name,
                                   std::string& err) {
  err.clear();
  if (!valid_name(root_name) || !valid_name(name)) {
    err = "cgroup: invalid group name '" + root_name + "/" + name + "'";
    return std::nullopt;
  }
  auto layout = cgroup_layout::detect();
  cgroup g;
  g.version_ = layout.version;
  if (layout.version == 1) {
    for (const auto& hier : v1_hierarchies(layout)) {
      auto dir = hier + "/" + root_name + "/" + name;
      if (!is_dir(dir))
        continue;
      g.dirs_.push_back(dir);
      for (const auto& [c, h] : layout.v1)
        if (h == hier)
          g.controllers_[c] = dir;
    }
  } else if (layout.version == 2) {
    for (const auto& base : v2_bases(layout)) {
      auto dir = base + "/" + root_name + "/" + name;
      if (!is_dir(dir))
        continue;
      g.dirs_.push_back(dir);
      auto avail = read_file(dir + "/cgroup.controllers").value_or("");
      std::istringstream words{avail};
      for (std::string c; words >> c;)
        g.controllers_[c] = dir;
      break;
    }
  }
  if (g.dirs_.empty()) {
    err = "cgroup: no group " + root_name + "/" + name;
    return std::nullopt;
  }
  return g;
}

bool cgroup::update(const cgroup_limits& limits, std::string& err) {
  auto dir_of = [&](const char* controller) -> std::string {
    auto i = controllers_.find(controller);
    return i == controllers_.end() ? std::string{} : i->second;
  };
  if (limits.memory_bytes > 0) {
    auto dir = dir_of("memory");
    if (dir.empty()) {
      err = "cgroup: no memory controller in this group";
      return false;
    }
    auto bytes = std::to_string(limits.memory_bytes);
    if (version_ == 1) {
      // memory+swap may never be below memory: raise it first, lower it last.
      bool memsw = exists(dir + "/memory.memsw.limit_in_bytes");
      bool lowering = limits.memory_bytes < read_u64(dir + "/memory.limit_in_bytes");
      if (memsw && !lowering && !write_file(dir + "/memory.memsw.limit_in_bytes", bytes, err))
        return false;
      if (!write_file(dir + "/memory.limit_in_bytes", bytes, err))
        return false;
      if (memsw && lowering && !write_file(dir + "/memory.memsw.limit_in_bytes", bytes, err))
        return false;
    } else if (!write_file(dir + "/memory.max", bytes, err)) {
      return false;
    }
  }
  if (limits.pids_max > 0) {
    auto dir = dir_of("pids");
    if (dir.empty() || !write_file(dir + "/pids.max", std::to_string(limits.pids_max), err)) {
      if (dir.empty())
        err = "cgroup: no pids controller in this group";
      return false;
    }
  }
  if (limits.cpus > 0) {
    auto dir = dir_of("cpu");
    if (dir.empty()) {
      err = "cgroup: no cpu controller in this group";
      return false;
    }
    if (version_ == 1) {
      uint64_t period = read_u64(dir + "/cpu.cfs_period_us");
      if (period == 0)
        period = v2_cpu_period_us;
      auto quota = std::max<uint64_t>(
        min_cpu_quota_us, static_cast<uint64_t>(std::llround(limits.cpus * double(period))));
      if (!write_file(dir + "/cpu.cfs_quota_us", std::to_string(quota), err))
        return false;
    } else {
      auto quota = std::max<uint64_t>(
        min_cpu_quota_us,
        static_cast<uint64_t>(std::llround(limits.cpus * double(v2_cpu_period_us))));
      if (!write_file(dir + "/cpu.max",
                      std::to_string(quota) + " " + std::to_string(v2_cpu_period_us), err))
        return false;
    }
  }
  return true;
}

cgroup::cgroup(cgroup&& other) noexcept
  : version_(other.version_),
    dirs_(std::move(other.dirs_)),
    controllers_(std::move(other.controllers_)),
    procs_fds_(std::move(other.procs_fds_)),
    destroyed_(other.destroyed_) {
  other.dirs_.clear();
  other.controllers_.clear();
  other.procs_fds_.clear();
  other.destroyed_ = true;
}

cgroup& cgroup::operator=(cgroup&& other) noexcept {
  if (this != &other) {
    close_fds();
    version_ = other.version_;
    dirs_ = std::move(other.dirs_);
    controllers_ = std::move(other.controllers_);
    procs_fds_ = std::move(other.procs_fds_);
    destroyed_ = other.destroyed_;
    other.dirs_.clear();
    other.controllers_.clear();
    other.procs_fds_.clear();
    other.destroyed_ = true;
  }
  return *this;
}

cgroup::~cgroup() {
  close_fds();
}

void cgroup::close_fds() noexcept {
  for (int fd : procs_fds_)
    ::close(fd);
  procs_fds_.clear();
}

bool cgroup::prepare_attach(std::string& err) {
  if (destroyed_ || dirs_.empty()) {
    err = "cgroup: group was destroyed (or moved from)";
    return false;
  }
  if (!procs_fds_.empty())
    return true;
  for (const auto& dir : dirs_) {
    auto file = dir + "/cgroup.procs";
    int fd = ::open(file.c_str(), O_WRONLY | O_CLOEXEC);
    if (fd < 0) {
      err = "cgroup: cannot open " + file + ": " + errno_text(errno);
      close_fds();
      return false;
    }
    procs_fds_.push_back(fd);
  }
  return true;
}

bool cgroup::attach_self_in_child() const noexcept {
  if (procs_fds_.empty())
    return false;
  const int* fds = procs_fds_.data();
  for (size_t i = 0, n = procs_fds_.size(); i < n; ++i) {
    ssize_t w;
    do
      w = ::write(fds[i], "0", 1);
    while (w < 0 && errno == EINTR);
    if (w != 1)
      return false;
  }
  return true;
}

bool cgroup::attach(pid_t pid, std::string& err) {
  if (destroyed_ || dirs_.empty()) {
    err = "cgroup: group was destroyed (or moved from)";
    return false;
  }
  if (pid <= 0) {
    err = "cgroup: invalid pid " + std::to_string(pid);
    return false;
  }
  for (const auto& dir : dirs_)
    if (!write_file(dir + "/cgroup.procs", std::to_string(pid), err))
      return false;
  return true;
}

cgroup_stats cgroup::stats() const {
  cgroup_stats s;
  if (dirs_.empty())
    return s;
  if (version_ == 2) {
    const auto& dir = dirs_.front();
    s.memory_current = read_u64(dir + "/memory.current");
    s.memory_peak = read_u64(dir + "/memory.peak");
    s.cpu_usage_ns = read_key(dir + "/cpu.stat", "usage_usec").value_or(0) * 1000;
    s.pids_current = static_cast<uint32_t>(read_u64(dir + "/pids.current"));
    s.oom_kills = read_key(dir + "/memory.events", "oom_kill").value_or(0);
    return s;
  }
  if (auto mem = path("memory"); !mem.empty()) {
    s.memory_current = read_u64(mem + "/memory.usage_in_bytes");
    s.memory_peak = read_u64(mem + "/memory.max_usage_in_bytes");
    s.oom_kills = read_key(mem + "/memory.oom_control", "oom_kill").value_or(0);
  }
  if (auto acct = path("cpuacct"); !acct.empty())
    s.cpu_usage_ns = read_u64(acct + "/cpuacct.usage");
  if (auto pids = path("pids"); !pids.empty())
    s.pids_current = static_cast<uint32_t>(read_u64(pids + "/pids.current"));
  return s;
}

bool cgroup::oom_killed() const {
  if (dirs_.empty())
    return false;
  if (version_ == 2)
    return read_key(dirs_.front() + "/memory.events", "oom_kill").value_or(0) > 0;
  auto mem = path("memory");
  if (mem.empty())
    return false;
  if (auto kills = read_key(mem + "/memory.oom_control", "oom_kill"))
    return *kills > 0;
  return read_u64(mem + "/memory.failcnt") > 0;
}

bool cgroup::destroy(std::string& err, std::chrono::milliseconds timeout) {
  err.clear();
  close_fds();
  if (destroyed_)
    return true;
  auto deadline = clock_type::now() + timeout;
  // cgroup.kill (Linux 5.14+) kills the whole subtree at once, forks included.
  if (version_ == 2)
    for (const auto& dir : dirs_)
      if (exists(dir + "/cgroup.kill")) {
        std::string ignored;
        write_file(dir + "/cgroup.kill", "1", ignored);
      }
  auto pause = std::chrono::milliseconds(1);
  for (;;) {
    size_t left = 0;
    int last_errno = 0;
    bool gone = true;
    for (const auto& dir : dirs_)
      gone = sweep(dir, left, last_errno) && gone;
    if (gone)
      break;
    if (clock_type::now() >= deadline) {
      err = "cgroup: " + dirs_.front() + " still busy after "
            + std::to_string(timeout.count()) + " ms (" + std::to_string(left)
            + " processes or groups left; rmdir: " + errno_text(last_errno) + ")";
      return false;
    }
    std::this_thread::sleep_for(pause);
    pause = std::min(pause * 2, std::chrono::milliseconds(20));
  }
  destroyed_ = true;
  return true;
}

std::string cgroup::path() const {
  return dirs_.empty() ? std::string{} : dirs_.front();
}

std::string cgroup::path(std::string_view controller) const {
  auto it = controllers_.find(controller);
  return it == controllers_.end() ? std::string{} : it->second;
}

int cgroup::version() {
  return cgroup_layout::detect().version;
}

size_t cgroup::remove_orphans(const std::string& root_name,
                              const std::function<bool(const std::string&)>& keep) {
  return remove_orphans(cgroup_layout::detect(), root_name, keep);
}

size_t cgroup::remove_orphans(const cgroup_layout& layout, const std::string& root_name,
                              const std::function<bool(const std::string&)>& keep) {
  if (!valid_name(root_name))
    return 0;
  std::vector<std::string> bases;
  if (layout.version == 1)
    bases = v1_hierarchies(layout);
  else if (layout.version == 2)
    bases = v2_bases(layout);
  // A group may exist in only some v1 hierarchies (a crash during create()).
  std::map<std::string, std::vector<std::string>> groups;
  std::vector<std::string> roots;
  for (const auto& b : bases) {
    auto root = b + "/" + root_name;
    if (!is_dir(root))
      continue;
    roots.push_back(root);
    for (const auto& n : subdirs(root))
      groups[n].push_back(root + "/" + n);
  }
  size_t removed = 0;
  for (auto& [n, dirs] : groups) {
    if (keep && keep(n))
      continue;
    cgroup g;
    g.version_ = layout.version;
    g.dirs_ = std::move(dirs);
    std::string err;
    if (g.destroy(err))
      ++removed;
  }
  // Fails (EBUSY) while a kept or stubborn group remains.
  for (const auto& root : roots)
    ::rmdir(root.c_str());
  return removed;
}

} // namespace alephd
