// Safe extraction of program code uploaded as a zip archive (`code.encoding:
// "zip"`). The CRN unpacks it on the host into a directory that is later
// bind-mounted read-only into the program's sandbox, so the archive is hostile
// until proven otherwise. No CAF here: call it from a blocking context.
//
// libarchive parses the zip (zip format only, no other format or outer
// filter); files and directories are created by this module, never by
// libarchive's disk writer:
// - every path is opened relative to a descriptor of `dest`, one component at
//   a time, with O_NOFOLLOW, and every file is created with O_EXCL, so nothing
//   already in `dest` (a symlink, a file) is ever followed or overwritten;
// - entry names: no absolute path, no `..` component, no empty name, no NUL,
//   control character or backslash, at most `max_path_length` bytes; `./`
//   and repeated slashes are normalized away, and an entry naming `dest`
//   itself (`./`) is skipped;
// - only regular files and directories: symlinks, hard links, devices, fifos
//   and sockets are refused, as are encrypted entries and duplicate entries
//   (two entries with the same normalized path, or a file where a directory
//   is, or the other way round);
// - modes: files 0755 when the entry has the owner-execute bit, else 0644;
//   directories 0755; no setuid/setgid/sticky; the calling user owns all;
// - limits: uncompressed bytes are counted as they are written (header sizes
//   are used only to fail early, never trusted), and no write ever takes the
//   total past `max_total_bytes` or past `max_ratio` times the archive size.
//
// An archive with no entries extracts to an empty `dest` and succeeds; an
// empty (0-byte) input is an error. On any error everything created so far is
// removed again, so an empty `dest` is left empty. Entries that were in `dest`
// before the call are never touched (a collision with one is an error).
//
// Errors are one-line strings naming the offending entry (non-printable bytes
// escaped); nothing throws.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace alephd {

/// Bounds of one extraction. Each is a strict bound; 0 allows nothing.
struct extract_limits {
  uint64_t max_total_bytes = 1ull << 30; ///< sum of uncompressed sizes actually written
  uint64_t max_files = 10000;            ///< entries read, and files + dirs created
  uint64_t max_ratio = 200;              ///< total uncompressed / archive size (zip-bomb guard)
  uint64_t max_path_length = 1024;       ///< bytes in an entry's name as stored
};

/// Extracts the zip in `bytes` into the existing, empty directory `dest`.
/// Returns "" or a one-line error naming the offending entry; on error nothing
/// is left in `dest` (it is emptied).
std::string extract_zip(std::string_view bytes, const std::string& dest,
                        const extract_limits& limits = {});

/// Like `extract_zip` for the zip file at `path`, read through a descriptor
/// and never loaded whole into memory. It must be a regular file that does not
/// change meanwhile (a blob-store file).
std::string extract_zip_file(const std::string& path, const std::string& dest,
                             const extract_limits& limits = {});

} // namespace alephd
