# Debian 12 packages; scripts/install-deps installs them.
find_package(Threads REQUIRED)

# CAF 0.17.6 ships no CMake config: find it by hand.
find_path(CAF_INCLUDE_DIR caf/all.hpp REQUIRED)
find_library(CAF_CORE_LIBRARY NAMES caf_core REQUIRED)
find_library(CAF_IO_LIBRARY NAMES caf_io REQUIRED)
add_library(CAF::core SHARED IMPORTED)
set_target_properties(CAF::core PROPERTIES
  IMPORTED_LOCATION "${CAF_CORE_LIBRARY}"
  INTERFACE_INCLUDE_DIRECTORIES "${CAF_INCLUDE_DIR}"
  INTERFACE_LINK_LIBRARIES Threads::Threads)
add_library(CAF::io SHARED IMPORTED)
set_target_properties(CAF::io PROPERTIES
  IMPORTED_LOCATION "${CAF_IO_LIBRARY}"
  INTERFACE_LINK_LIBRARIES CAF::core)
# TLS for node links (--tls-cert/--tls-key/--tls-ca).
find_library(CAF_OPENSSL_LIBRARY NAMES caf_openssl REQUIRED)
add_library(CAF::openssl SHARED IMPORTED)
set_target_properties(CAF::openssl PROPERTIES
  IMPORTED_LOCATION "${CAF_OPENSSL_LIBRARY}"
  INTERFACE_LINK_LIBRARIES CAF::io)

find_package(Boost 1.74 REQUIRED COMPONENTS filesystem)
find_package(msgpack 4 CONFIG REQUIRED)
find_package(spdlog CONFIG REQUIRED)
find_package(nlohmann_json 3.11 CONFIG REQUIRED)
find_package(OpenSSL REQUIRED)
find_package(GTest CONFIG REQUIRED)
find_package(LibArchive 3.6 REQUIRED)

find_path(LMDB_INCLUDE_DIR lmdb.h REQUIRED)
find_library(LMDB_LIBRARY NAMES lmdb REQUIRED)
add_library(LMDB::lmdb UNKNOWN IMPORTED)
set_target_properties(LMDB::lmdb PROPERTIES
  IMPORTED_LOCATION "${LMDB_LIBRARY}"
  INTERFACE_INCLUDE_DIRECTORIES "${LMDB_INCLUDE_DIR}")

# Signatures: secp256k1 recovery (EVM wallets), ed25519 (libsodium), keccak-256 (Crypto++).
find_package(PkgConfig REQUIRED)
pkg_check_modules(SECP256K1 REQUIRED IMPORTED_TARGET libsecp256k1)
pkg_check_modules(SODIUM REQUIRED IMPORTED_TARGET libsodium)
pkg_check_modules(CRYPTOPP REQUIRED IMPORTED_TARGET libcrypto++)
# The guest agent's syscall filter for sandboxed programs.
pkg_check_modules(SECCOMP REQUIRED IMPORTED_TARGET libseccomp)
find_library(SECCOMP_STATIC_LIBRARY NAMES libseccomp.a REQUIRED) # the agent links statically
