// alephd's settings: defaults, INI files and command-line overrides.
// Every option is `group.name`; in an INI file it is `name = value` under
// `[group]`, on the command line `--group.name=value` (or `--group.name value`).
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace alephd {

struct settings {
  // [global]
  std::string data_dir;   ///< empty = role default
  std::string asn;        ///< CRN: the network's autonomous system (decentralization score)
  std::string name;       ///< display name; empty = role and id
  std::string log_level = "info";
  uint32_t threads = 2;   ///< CAF scheduler threads
  // [http]
  std::string http_host = "127.0.0.1";
  int32_t http_port = -1; ///< -1 = role default (CRN 4020, CCN 4024); 0 = OS chooses
  uint32_t http_threads = 1;
  uint32_t max_connections_per_client = 256; ///< 0 = no limit
  double rate_limit = 500;                   ///< requests/s per client address; 0 = no limit
  double rate_burst = 1000;
  bool limit_loopback = false;               ///< the per-client limits apply to 127.0.0.0/8 too
  // [node]: the CAF middleman port where CRNs and peer CCNs connect
  std::string node_host = "127.0.0.1";
  int32_t node_port = -1; ///< -1 = role default (4025); 0 = OS chooses
  // [ccn]
  uint32_t max_linked_crns = 3;
  std::chrono::milliseconds heartbeat_interval{1000};
  std::chrono::milliseconds failure_timeout{5000};
  std::vector<std::string> peers;
  uint64_t max_file_size = 100ull << 20;
  uint64_t max_message_size = 1ull << 20;
  bool group_commit = true;
  bool message_wal = true; ///< group commits go to a write-ahead log, indexed into LMDB behind
  uint32_t replicas = 2; ///< copies of each stored file kept on CRNs
  // [crn]
  std::vector<std::string> ccn;
  uint32_t vcpus = 0;      ///< 0 = detect
  uint64_t memory_mib = 0; ///< 0 = detect
  std::string public_address; ///< empty = http://host:port
  std::string domain;         ///< owners sign operations for it; empty = public-address's host
  // [execution]
  std::chrono::milliseconds reuse_timeout{3600 * 1000}; ///< an idle on-demand program stops after this
  std::chrono::milliseconds drain_timeout{30000};       ///< SIGTERM waits this long for calls in flight
  bool keep_on_shutdown = false; ///< leave persistent workloads running when the CRN stops
  /// A sandbox or microVM outlives a CRN that dies for this long, for a restarted CRN to
  /// re-adopt it; 0 = they die with the CRN.
  std::chrono::milliseconds adopt_window{60000};
  uint32_t prealloc = 0;         ///< pre-started sandboxes kept ready for cold starts
  uint32_t pids_max = 512;       ///< processes per execution (cgroup pids.max)
  bool cgroups = true;           ///< put each execution in its own cgroup with limits
  std::string guest_binary;      ///< empty = alephd-guest next to the alephd executable
  std::string bwrap = "/usr/bin/bwrap";
  std::string microvm_assets; ///< empty = microvm/ next to the alephd executable
  // [cache]: content-addressed files (CRN: the cache; CCN: the origin store)
  uint32_t cache_shards = 4;
  uint64_t cache_max_bytes = 0;       ///< CRN: 0 = 10 GiB, at most a fifth of the file system
  uint32_t cache_high_watermark = 90; ///< percent of max-bytes where eviction starts
  uint32_t cache_low_watermark = 80;  ///< percent of max-bytes where it stops
  std::chrono::milliseconds scrub_interval{60000}; ///< 0 = no background scrub
  uint64_t scrub_bytes = 64ull << 20; ///< bytes re-hashed per scrub round
  // [scoring]: the CCN's prober
  std::chrono::milliseconds probe_interval{60000};
  std::chrono::milliseconds score_window{86400 * 1000};
  std::string diagnostic_ref;     ///< a program the prober calls through /vm/{ref}
  std::string accepted_versions;  ///< comma-separated; empty = this alephd's version
  // [rewards] and [pricing]: the CCN's epochs
  uint64_t epoch_seconds = 86400;
  std::string stakes;             ///< ccn:address:amount,…
  uint32_t max_paid = 5;
  double price_program = 0.011;             ///< ALEPH per compute-unit hour
  double price_persistent_program = 0.055;
  double price_instance = 0.055;
  double price_storage_gib_hour = 0.0001;
  // [ledger]: metering and the reward ledger (CRN)
  std::chrono::milliseconds sample_interval{60000}; ///< one metering sample per execution
  // [tls]: node links (CRN to CCN, CCN to CCN) over TLS with certificates from one CA
  std::string tls_cert; ///< PEM certificate of this node
  std::string tls_key;  ///< PEM private key of that certificate
  std::string tls_ca;   ///< PEM CA that signed every node's certificate
  // [security]
  /// CCN: refuse messages whose wallet signature does not verify; unset = on for `ccn`,
  /// off for `dev` (a local playground posts unsigned messages).
  std::optional<bool> verify_signatures;
  // [dev]
  uint32_t port_base = 4020;
  uint32_t dev_crns = 3;
};

/// Parses `args` (after the command word) into `out`. `--config FILE` is read first,
/// then every other argument overrides it. On error returns a one-line message that
/// names the option; `help` is set for --help.
std::string parse_settings(const std::vector<std::string>& args, settings& out, bool& help);

/// The option reference printed by --help.
std::string settings_help();

/// Parses a duration: "250ms", "5s", "2m", or a plain number of milliseconds.
bool parse_duration(const std::string& text, std::chrono::milliseconds& out);

} // namespace alephd
