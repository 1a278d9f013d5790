#include "runtime/volume_image.hpp"

#include <sys/mount.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "runtime/process_state.hpp"

namespace alephd {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

namespace {

// A mountinfo path field: spaces, tabs, newlines and backslashes come octal-escaped.
std::string unescape(const std::string& s) {
  std::string out;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 3 < s.size()) {
      auto oct = s.substr(i + 1, 3);
      if (oct.size() == 3 && oct.find_first_not_of("01234567") == std::string::npos) {
        out.push_back(static_cast<char>(std::stoi(oct, nullptr, 8)));
        i += 3;
        continue;
      }
    }
    out.push_back(s[i]);
  }
  return out;
}

} // namespace

bool is_mount_point(const std::string& dir) {
  std::error_code ec;
  auto want = fs::weakly_canonical(dir, ec).string();
  std::ifstream in{"/proc/self/mountinfo"};
  for (std::string line; std::getline(in, line);) {
    std::istringstream fields{line};
    std::string id, parent, devs, root, point;
    fields >> id >> parent >> devs >> root >> point;
    if (unescape(point) == want)
      return true;
  }
  return false;
}

std::string mount_volume_image(const std::string& image, const std::string& dir,
                               uint64_t size_mib) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec)
    return "cannot create " + dir + ": " + ec.message();
  if (is_mount_point(dir))
    return {};
  auto err_file = image + ".err";
  if (!fs::exists(image, ec)) {
    // Made under a temporary name: a crash never leaves a half-made image behind.
    auto tmp = image + ".new";
    fs::remove(tmp, ec);
    {
      std::ofstream f{tmp, std::ios::binary};
      if (!f)
        return "cannot create " + tmp;
    }
    fs::resize_file(tmp, size_mib << 20, ec);
    if (ec)
      return "cannot size " + tmp + ": " + ec.message();
    if (auto e = run_tool("/sbin/mkfs.ext4", {"-q", "-F", "-m", "0", tmp}, err_file, 60s);
        !e.empty()) {
      fs::remove(tmp, ec);
      return e;
    }
    fs::rename(tmp, image, ec);
    if (ec)
      return "cannot rename " + tmp + ": " + ec.message();
  }
  if (auto e = run_tool("/bin/mount", {"-o", "loop,nodev,nosuid", image, dir}, err_file, 30s);
      !e.empty())
    return e;
  fs::remove(err_file, ec);
  return {};
}

std::string unmount_volume(const std::string& dir) {
  if (!is_mount_point(dir))
    return {};
  // Lazily: a program that still has a file open there does not keep the image busy for ever
  // (the loop device is freed with the last reference).
  if (::umount2(dir.c_str(), MNT_DETACH) != 0)
    return "cannot unmount " + dir + ": " + std::strerror(errno);
  return {};
}

} // namespace alephd
