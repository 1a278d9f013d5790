// Message types that travel between alephd actors (and nodes), the project's
// atoms, and its error enum. Plain aggregates with a CAF 0.17 inspect().
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <caf/atom.hpp>
#include <caf/error.hpp>
#include <caf/meta/type_name.hpp>
#include <caf/type_id.hpp>

namespace alephd {

/// Every error an alephd actor can answer with.
enum class ec : uint8_t {
  /// Placeholder; never sent.
  none = 0,
  /// The item (message, file, node, execution) does not exist.
  not_found,
  /// Bad input; the context names the field and the reason.
  invalid,
  /// The input is larger than a configured limit.
  too_large,
  /// Not enough capacity (no CRN, memory, vCPUs or disk).
  no_capacity,
  /// The request is wrong for the actor's current phase.
  wrong_phase,
  /// LMDB or the file system failed.
  storage_failure,
  /// The peer or link needed for the request is not connected.
  unavailable,
  /// The request was understood and refused.
  refused,
  /// A workload failed (it did not start, or it ended while the request waited).
  workload_failed,
  /// The node's disk (or the store's bound) has no room for the data.
  no_space,
};

std::string to_string(ec x);

/// Builds a CAF error in the alephd category.
caf::error make_error(ec x, std::string context = {});

/// Renders any error for a log line or an HTTP body without an actor system.
std::string describe(const caf::error& err);

/// The state of a CRN as seen by its CCN (and by the CRN itself).
enum class link_state : uint8_t {
  /// Not registered with any CCN (CRN side), or never seen (CCN side).
  unlinked = 0,
  /// Registered and counted in the CCN's `max-linked-crns`.
  linked,
  /// Registered but beyond the limit: earns nothing, promoted when a slot frees.
  waiting,
  /// Missed heartbeats for `failure-timeout`, or its process is gone.
  down,
};

std::string to_string(link_state x);

/// One accepted aleph message as the CCN stores and replicates it.
struct stored_message {
  uint8_t version = 1;
  std::string item_hash;
  std::string type;    ///< POST, AGGREGATE, STORE, PROGRAM, INSTANCE, FORGET
  std::string sender;
  std::string channel;
  double time = 0;     ///< the message's own time (unix seconds)
  double received = 0; ///< when this CCN accepted it (unix seconds)
  std::string origin;  ///< id of the CCN that accepted it from a client
  std::string json;    ///< the whole message as JSON, item_content and item_hash filled
  bool operator==(const stored_message&) const = default;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, stored_message& x) {
  return f(caf::meta::type_name("alephd::stored_message"), x.version, x.item_hash, x.type,
           x.sender, x.channel, x.time, x.received, x.origin, x.json);
}

/// The answer to an append: durable once it is sent.
struct append_result {
  std::string item_hash;
  std::string status;     ///< "processed"
  bool duplicate = false; ///< the message was already known
  bool operator==(const append_result&) const = default;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, append_result& x) {
  return f(caf::meta::type_name("alephd::append_result"), x.item_hash, x.status, x.duplicate);
}

/// A filter over the message log, newest first.
struct message_query {
  std::string type;                   ///< empty = any
  std::vector<std::string> addresses; ///< senders; empty = any
  uint32_t page = 1;
  uint32_t per_page = 20;
  bool operator==(const message_query&) const = default;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, message_query& x) {
  return f(caf::meta::type_name("alephd::message_query"), x.type, x.addresses, x.page,
           x.per_page);
}

struct message_page {
  std::vector<stored_message> messages;
  uint64_t total = 0;
  uint32_t page = 1;
  uint32_t per_page = 20;
  bool operator==(const message_page&) const = default;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, message_page& x) {
  return f(caf::meta::type_name("alephd::message_page"), x.messages, x.total, x.page,
           x.per_page);
}

/// A content-addressed file held by a node.
struct file_info {
  std::string hash; ///< lowercase hex sha256
  uint64_t size = 0;
  std::string path; ///< where the blob lives on this node (empty across nodes)
  double created = 0;
  bool operator==(const file_info&) const = default;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, file_info& x) {
  return f(caf::meta::type_name("alephd::file_info"), x.hash, x.size, x.path, x.created);
}

/// A file's bytes as they travel between CCN peers.
struct file_blob {
  std::string hash;
  std::string data;
  bool operator==(const file_blob&) const = default;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, file_blob& x) {
  return f(caf::meta::type_name("alephd::file_blob"), x.hash, x.data);
}

/// A file to store from the node's own disk: a spooled upload, or a byte range of one (a
/// multipart body). Sharded stores route by hash, so an unknown `sha256` is computed first.
struct file_source {
  std::string path;
  uint64_t offset = 0;
  uint64_t length = 0;
  std::string sha256;   ///< of the whole file when known (offset 0, length = its size)
  /// When set, the range is a multipart/form-data body with this boundary: the file is its
  /// part named "file" (else its first part).
  std::string boundary;
  bool operator==(const file_source&) const = default;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, file_source& x) {
  return f(caf::meta::type_name("alephd::file_source"), x.path, x.offset, x.length, x.sha256,
           x.boundary);
}

/// How full a node's content store is (a CRN's cache, a CCN's origin store).
struct cache_usage {
  uint64_t bytes = 0;        ///< blob bytes held
  uint64_t files = 0;
  uint64_t pinned_bytes = 0; ///< held by running executions or storage duty: never evicted
  uint64_t max_bytes = 0;    ///< the bound (0 = none)
  uint64_t downloads = 0;    ///< files fetched since start
  uint64_t evicted = 0;      ///< files evicted since start
  uint64_t corrupt = 0;      ///< blobs found altered on disk (and deleted) since start
  bool operator==(const cache_usage&) const = default;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, cache_usage& x) {
  return f(caf::meta::type_name("alephd::cache_usage"), x.bytes, x.files, x.pinned_bytes,
           x.max_bytes, x.downloads, x.evicted, x.corrupt);
}

/// A file that may be evicted: not pinned, not kept.
struct evict_candidate {
  std::string hash;
  uint64_t size = 0;
  double last_access = 0;
  bool operator==(const evict_candidate&) const = default;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, evict_candidate& x) {
  return f(caf::meta::type_name("alephd::evict_candidate"), x.hash, x.size, x.last_access);
}

/// What one CCN holds, for anti-entropy with its peers.
struct peer_inventory {
  std::string ccn_id;
  std::vector<std::string> messages;
  std::vector<std::string> files;
  bool operator==(const peer_inventory&) const = default;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, peer_inventory& x) {
  return f(caf::meta::type_name("alephd::peer_inventory"), x.ccn_id, x.messages, x.files);
}

/// A CRN's identity and capacity, sent when it registers.
struct crn_info {
  uint8_t version = 1;
  std::string id;
  std::string name;
  std::string address; ///< its public HTTP base URL
  uint32_t vcpus = 0;
  uint64_t memory_mib = 0;
  uint64_t disk_mib = 0;
  std::string software_version;
  std::string asn; ///< its network's autonomous system, as configured (decentralization score)
  std::string public_key; ///< its ed25519 node key (32 bytes); `id` is the hex sha256 of it
  bool operator==(const crn_info&) const = default;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, crn_info& x) {
  return f(caf::meta::type_name("alephd::crn_info"), x.version, x.id, x.name, x.address,
           x.vcpus, x.memory_mib, x.disk_mib, x.software_version, x.asn, x.public_key);
}

/// A CRN's registration, signed with its node key: what `crn_registry` links only when the
/// signature verifies and `info.id` is the hash of `info.public_key`.
struct enrollment {
  uint8_t version = 1;
  crn_info info;
  uint64_t signed_at_ms = 0; ///< unix ms; names the session its heartbeats sign
  std::string signature;     ///< ed25519 over signed_text(enrollment), 64 bytes
  std::string ccn_id;        ///< the CCN it is meant for (a copy cannot enroll elsewhere)
  bool operator==(const enrollment&) const = default;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, enrollment& x) {
  return f(caf::meta::type_name("alephd::enrollment"), x.version, x.info, x.signed_at_ms,
           x.signature, x.ccn_id);
}

/// The exact bytes a CRN signs to register: every field of its info and the time.
std::string signed_text(const enrollment& x);

/// The CCN's answer to a registration.
struct registration {
  link_state state = link_state::unlinked;
  std::string ccn_id;
  uint32_t heartbeat_ms = 1000; ///< how often the CCN expects a heartbeat
  bool operator==(const registration&) const = default;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, registration& x) {
  return f(caf::meta::type_name("alephd::registration"), x.state, x.ccn_id, x.heartbeat_ms);
}

/// A CRN's periodic sign of life.
struct heartbeat {
  std::string crn_id;
  uint64_t seq = 0;        ///< grows with every heartbeat of a session
  std::string signature;   ///< ed25519 over signed_text(heartbeat, session)
  bool operator==(const heartbeat&) const = default;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, heartbeat& x) {
  return f(caf::meta::type_name("alephd::heartbeat"), x.crn_id, x.seq, x.signature);
}

/// The exact bytes a CRN signs for a heartbeat of the session its enrollment opened.
std::string signed_text(const heartbeat& x, uint64_t session);

/// The CCN's answer to a heartbeat: the other direction of the liveness check.
struct heartbeat_ack {
  std::string ccn_id;
  uint64_t seq = 0;
  link_state state = link_state::unlinked;
  bool operator==(const heartbeat_ack&) const = default;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, heartbeat_ack& x) {
  return f(caf::meta::type_name("alephd::heartbeat_ack"), x.ccn_id, x.seq, x.state);
}

/// One row of the corechannel view (`GET /api/v0/nodes`).
struct node_view {
  std::string id;
  std::string role; ///< "ccn" or "crn"
  std::string name;
  std::string address;
  std::string status; ///< linked, waiting, down, unlinked (CRN); active, down (CCN)
  std::string software_version;
  std::string ccn_id; ///< for a CRN: the CCN it is registered with
  uint32_t vcpus = 0;
  uint64_t memory_mib = 0;
  uint64_t disk_mib = 0;
  double registered = 0;     ///< unix seconds
  double last_heartbeat = 0; ///< unix seconds, 0 = never
  bool operator==(const node_view&) const = default;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, node_view& x) {
  return f(caf::meta::type_name("alephd::node_view"), x.id, x.role, x.name, x.address, x.status,
           x.software_version, x.ccn_id, x.vcpus, x.memory_mib, x.disk_mib, x.registered,
           x.last_heartbeat);
}

/// A persistent workload placed on a CRN by a CCN's scheduler.
struct allocation {
  uint8_t version = 1;
  std::string item_hash;
  std::string kind; ///< "program" or "instance"
  uint64_t epoch = 0; ///< grows each time the workload is placed again
  uint32_t vcpus = 1;
  uint64_t memory_mib = 128;
  uint64_t disk_mib = 0;
  std::string message_json;
  std::string owner; ///< id of the CCN that placed it: only that CCN confirms or fences it
  bool operator==(const allocation&) const = default;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, allocation& x) {
  return f(caf::meta::type_name("alephd::allocation"), x.version, x.item_hash, x.kind, x.epoch,
           x.vcpus, x.memory_mib, x.disk_mib, x.message_json, x.owner);
}

/// A CRN's answer to an allocation.
struct allocation_ack {
  std::string item_hash;
  uint64_t epoch = 0;
  std::string crn_id;
  bool accepted = false;
  std::string reason; ///< why it was refused
  bool operator==(const allocation_ack&) const = default;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, allocation_ack& x) {
  return f(caf::meta::type_name("alephd::allocation_ack"), x.item_hash, x.epoch, x.crn_id,
           x.accepted, x.reason);
}

/// Where the scheduler placed a workload.
struct placement {
  std::string item_hash;
  std::string kind;
  std::string crn_id; ///< empty while pending
  uint64_t epoch = 0;
  std::string state;  ///< pending, allocated, refused
  std::string detail;
  bool operator==(const placement&) const = default;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, placement& x) {
  return f(caf::meta::type_name("alephd::placement"), x.item_hash, x.kind, x.crn_id, x.epoch,
           x.state, x.detail);
}

/// One execution on a CRN, as its vm_supervisor reports it.
struct execution_info {
  std::string item_hash;
  std::string kind; ///< program, instance
  std::string phase; ///< preparing, booting, running, stopping, stopped, failed
  uint64_t epoch = 0;
  bool persistent = false;
  uint32_t vcpus = 1;
  uint64_t memory_mib = 128;
  uint64_t disk_mib = 0;
  double defined_at = 0;
  double preparing_at = 0;
  double started_at = 0;
  double stopping_at = 0;
  double stopped_at = 0;
  std::string detail;
  std::string owner; ///< `content.address` of its message: who may control it
  bool operator==(const execution_info&) const = default;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, execution_info& x) {
  return f(caf::meta::type_name("alephd::execution_info"), x.item_hash, x.kind, x.phase, x.epoch,
           x.persistent, x.vcpus, x.memory_mib, x.disk_mib, x.defined_at, x.preparing_at,
           x.started_at, x.stopping_at, x.stopped_at, x.detail, x.owner);
}

/// The CRN's view of its link to a CCN (for HTTP and metrics).
struct link_info {
  link_state state = link_state::unlinked;
  std::string ccn_id;
  std::string ccn_endpoint;
  bool connected = false;
  uint64_t heartbeats_sent = 0;
  uint64_t heartbeats_missed = 0;
  uint64_t reconnects = 0;
  double last_ack = 0;
  bool operator==(const link_info&) const = default;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, link_info& x) {
  return f(caf::meta::type_name("alephd::link_info"), x.state, x.ccn_id, x.ccn_endpoint,
           x.connected, x.heartbeats_sent, x.heartbeats_missed, x.reconnects, x.last_ack);
}

/// One line of a program's output, kept by the CRN (also after the execution ended).
struct log_line {
  double time = 0;    ///< unix seconds, when the CRN received it
  std::string stream; ///< stdout, stderr, or system (the agent's and the CRN's own notes)
  std::string line;
  bool operator==(const log_line&) const = default;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, log_line& x) {
  return f(caf::meta::type_name("alephd::log_line"), x.time, x.stream, x.line);
}

/// One metering sample of one execution in a CRN's reward ledger. The CRN
/// numbers its entries 1, 2, … and chains them: `prev` is the previous entry's
/// `hash`, `hash` the sha256 of this entry's canonical JSON without `hash`
/// (runtime/ledger.hpp). The CCN keeps them by (node, seq), once each.
struct usage_entry {
  uint8_t version = 1;
  uint64_t seq = 0;
  std::string prev; ///< hex sha256 of entry seq − 1; 64 zeros for the first
  std::string hash;
  std::string node; ///< the CRN's id
  double time = 0;  ///< unix seconds at the end of the sample
  double wall_s = 0; ///< seconds this sample covers
  std::string item_hash;
  std::string product; ///< program, persistent_program, instance
  uint32_t vcpus = 0;
  uint64_t memory_mib = 0; ///< reserved
  uint64_t cpu_ns = 0;     ///< CPU time used during the sample
  uint64_t mem_peak = 0;   ///< bytes
  uint64_t mem_avg = 0;    ///< bytes
  uint64_t requests = 0;
  uint64_t bytes_in = 0;   ///< HTTP request bodies
  uint64_t bytes_out = 0;  ///< HTTP response bodies
  uint64_t storage_bytes = 0; ///< cached files it pins
  bool operator==(const usage_entry&) const = default;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, usage_entry& x) {
  return f(caf::meta::type_name("alephd::usage_entry"), x.version, x.seq, x.prev, x.hash, x.node,
           x.time, x.wall_s, x.item_hash, x.product, x.vcpus, x.memory_mib, x.cpu_ns, x.mem_peak,
           x.mem_avg, x.requests, x.bytes_in, x.bytes_out, x.storage_bytes);
}

/// A CRN's score as the CCN's prober computes it (reference §6.3) over its probes of the
/// scoring window.
struct node_score {
  std::string id;
  std::string name;
  std::string asn;
  uint64_t samples = 0;
  double base_p25 = 0, base_p95 = 0, diag_p25 = 0, full_p25 = 0; ///< latency scores
  double performance = 0;
  double version = 0;
  double total = 0;
  double decentralization = 0;
  double multiplier = 0;
  bool operator==(const node_score&) const = default;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, node_score& x) {
  return f(caf::meta::type_name("alephd::node_score"), x.id, x.name, x.asn, x.samples, x.base_p25,
           x.base_p95, x.diag_p25, x.full_p25, x.performance, x.version, x.total,
           x.decentralization, x.multiplier);
}

} // namespace alephd

CAF_BEGIN_TYPE_ID_BLOCK(alephd, caf::first_custom_type_id)
  CAF_ADD_TYPE_ID(alephd, (alephd::link_state))
  CAF_ADD_TYPE_ID(alephd, (alephd::stored_message))
  CAF_ADD_TYPE_ID(alephd, (alephd::append_result))
  CAF_ADD_TYPE_ID(alephd, (alephd::message_query))
  CAF_ADD_TYPE_ID(alephd, (alephd::message_page))
  CAF_ADD_TYPE_ID(alephd, (alephd::file_info))
  CAF_ADD_TYPE_ID(alephd, (alephd::file_blob))
  CAF_ADD_TYPE_ID(alephd, (alephd::peer_inventory))
  CAF_ADD_TYPE_ID(alephd, (alephd::crn_info))
  CAF_ADD_TYPE_ID(alephd, (alephd::registration))
  CAF_ADD_TYPE_ID(alephd, (alephd::heartbeat))
  CAF_ADD_TYPE_ID(alephd, (alephd::heartbeat_ack))
  CAF_ADD_TYPE_ID(alephd, (alephd::node_view))
  CAF_ADD_TYPE_ID(alephd, (alephd::allocation))
  CAF_ADD_TYPE_ID(alephd, (alephd::allocation_ack))
  CAF_ADD_TYPE_ID(alephd, (alephd::placement))
  CAF_ADD_TYPE_ID(alephd, (alephd::execution_info))
  CAF_ADD_TYPE_ID(alephd, (alephd::link_info))
  CAF_ADD_TYPE_ID(alephd, (std::vector<alephd::stored_message>))
  CAF_ADD_TYPE_ID(alephd, (std::vector<alephd::node_view>))
  CAF_ADD_TYPE_ID(alephd, (std::vector<alephd::placement>))
  CAF_ADD_TYPE_ID(alephd, (std::vector<alephd::execution_info>))
  CAF_ADD_TYPE_ID(alephd, (alephd::log_line))
  CAF_ADD_TYPE_ID(alephd, (std::vector<alephd::log_line>))
  CAF_ADD_TYPE_ID(alephd, (alephd::file_source))
  CAF_ADD_TYPE_ID(alephd, (alephd::cache_usage))
  CAF_ADD_TYPE_ID(alephd, (alephd::evict_candidate))
  CAF_ADD_TYPE_ID(alephd, (std::vector<alephd::evict_candidate>))
  CAF_ADD_TYPE_ID(alephd, (std::map<std::string, std::vector<std::string>>))
  CAF_ADD_TYPE_ID(alephd, (alephd::usage_entry))
  CAF_ADD_TYPE_ID(alephd, (std::vector<alephd::usage_entry>))
  CAF_ADD_TYPE_ID(alephd, (std::map<std::string, uint64_t>))
  CAF_ADD_TYPE_ID(alephd, (alephd::node_score))
  CAF_ADD_TYPE_ID(alephd, (std::vector<alephd::node_score>))
  CAF_ADD_TYPE_ID(alephd, (alephd::enrollment))
  CAF_ADD_ATOM(alephd, alephd::atom, append, "append")
  CAF_ADD_ATOM(alephd, alephd::atom, get, "get")
  CAF_ADD_ATOM(alephd, alephd::atom, list, "list")
  CAF_ADD_ATOM(alephd, alephd::atom, put, "put")
  CAF_ADD_ATOM(alephd, alephd::atom, read, "read")
  CAF_ADD_ATOM(alephd, alephd::atom, inventory, "inventory")
  CAF_ADD_ATOM(alephd, alephd::atom, subscribe, "subscribe")
  CAF_ADD_ATOM(alephd, alephd::atom, published, "published")
  CAF_ADD_ATOM(alephd, alephd::atom, stored, "stored")
  CAF_ADD_ATOM(alephd, alephd::atom, enroll, "enroll")
  CAF_ADD_ATOM(alephd, alephd::atom, beat, "beat")
  CAF_ADD_ATOM(alephd, alephd::atom, unlink, "unlink")
  CAF_ADD_ATOM(alephd, alephd::atom, status, "status")
  CAF_ADD_ATOM(alephd, alephd::atom, allocate, "allocate")
  CAF_ADD_ATOM(alephd, alephd::atom, stop, "stop")
  CAF_ADD_ATOM(alephd, alephd::atom, tick, "tick")
  CAF_ADD_ATOM(alephd, alephd::atom, flush, "flush")
  CAF_ADD_ATOM(alephd, alephd::atom, hello, "hello")
  CAF_ADD_ATOM(alephd, alephd::atom, replicate, "replicate")
  CAF_ADD_ATOM(alephd, alephd::atom, node, "node")
  CAF_ADD_ATOM(alephd, alephd::atom, connect, "connectccn")
  CAF_ADD_ATOM(alephd, alephd::atom, run, "run")
  CAF_ADD_ATOM(alephd, alephd::atom, logs, "logs")
  CAF_ADD_ATOM(alephd, alephd::atom, erase, "erase")
  CAF_ADD_ATOM(alephd, alephd::atom, reboot, "reboot")
  CAF_ADD_ATOM(alephd, alephd::atom, drain, "drain")
  CAF_ADD_ATOM(alephd, alephd::atom, started, "started")
  CAF_ADD_ATOM(alephd, alephd::atom, exited, "exited")
  CAF_ADD_ATOM(alephd, alephd::atom, confirm, "confirm")
  CAF_ADD_ATOM(alephd, alephd::atom, fetch, "fetch")
  CAF_ADD_ATOM(alephd, alephd::atom, unpin, "unpin")
  CAF_ADD_ATOM(alephd, alephd::atom, remove, "remove")
  CAF_ADD_ATOM(alephd, alephd::atom, usage, "usage")
  CAF_ADD_ATOM(alephd, alephd::atom, evict, "evict")
  CAF_ADD_ATOM(alephd, alephd::atom, scrub, "scrub")
  CAF_ADD_ATOM(alephd, alephd::atom, progress, "progress")
  CAF_ADD_ATOM(alephd, alephd::atom, locate, "locate")
  CAF_ADD_ATOM(alephd, alephd::atom, prepare, "prepare")
  CAF_ADD_ATOM(alephd, alephd::atom, fetched, "fetched")
  CAF_ADD_ATOM(alephd, alephd::atom, sample, "sample")
  CAF_ADD_ATOM(alephd, alephd::atom, probe, "probe")
  CAF_ADD_ATOM(alephd, alephd::atom, rewards, "rewards")
CAF_END_TYPE_ID_BLOCK(alephd)
