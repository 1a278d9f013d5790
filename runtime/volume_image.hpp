#pragma once

// Persistent volumes of a fixed size (`persistence: host` with `size_mib`): an
// ext4 image file that the CRN loop-mounts at the volume's directory, so that a
// program cannot write more than it asked for and fill the host's disk. Needs
// root and loop devices; a caller falls back to a plain directory (size not
// enforced) when mounting fails, and says so.

#include <cstdint>
#include <string>

namespace alephd {

/// Whether something is mounted at `dir` (per /proc/self/mountinfo).
bool is_mount_point(const std::string& dir);

/// Makes `image` (`size_mib`, ext4) unless it exists (then it is kept with its
/// data, whatever its size) and mounts it at `dir` (nodev, nosuid) unless
/// something is mounted there already. "" or a one-line error.
std::string mount_volume_image(const std::string& image, const std::string& dir,
                               uint64_t size_mib);

/// Unmounts `dir` when something is mounted there; "" or a one-line error.
std::string unmount_volume(const std::string& dir);

} // namespace alephd
