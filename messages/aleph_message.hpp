// The aleph-message schema as typed C++: parsing with validation (errors carry the JSON path
// of the offending field), JSON output, and the item_hash rules the network uses. No CAF here,
// so HTTP handlers, tools and tests can use it without an actor system.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>

namespace alephd::aleph {

/// The six kinds of aleph message.
enum class message_type { post, aggregate, store, program, instance, forget };

/// The wire name of a message type: "POST", "AGGREGATE", "STORE", "PROGRAM", "INSTANCE", "FORGET".
std::string_view to_string(message_type x);

/// Who owns a message as stored JSON: its `content.address`, else its `sender`; empty when
/// the text is not a message.
std::string owner_of(std::string_view message_json);

/// The message type named by its wire name (exact, upper case); nullopt for anything else.
std::optional<message_type> parse_message_type(std::string_view text);

/// A rejected message: the JSON path of the offending field and why.
/// `field` is dotted with array indices as numbers (`content.volumes.3.size_mib`); it is
/// empty when the document as a whole is at fault (not JSON, too deep, not an object).
struct validation_error {
  std::string field;
  std::string reason;
  bool operator==(const validation_error&) const = default;
};

/// Deepest nesting of arrays and objects accepted in a message or its item_content.
inline constexpr std::size_t max_json_depth = 64;

/// Schema limits (aleph-message).
inline constexpr uint64_t max_vcpus = 256;
inline constexpr uint64_t max_memory_mib = 1024 * 1024;
inline constexpr uint64_t max_seconds = 10ull * 365 * 24 * 3600;
inline constexpr std::size_t max_volumes = 256;
inline constexpr uint64_t max_ephemeral_size_mib = 1000;
inline constexpr uint64_t max_persistent_size_mib = 2048ull * 1024;
inline constexpr std::size_t max_variables = 256;
inline constexpr std::size_t max_variable_key_length = 128;
inline constexpr std::size_t max_variable_value_length = 4096;
inline constexpr std::size_t max_authorized_keys = 256;
inline constexpr std::size_t max_authorized_key_length = 8192;

/// True for the item hash forms aleph accepts: 64 lowercase hex digits (storage),
/// `Qm…` base58 (44–46 chars) or `bafy…` base32 (59 chars) IPFS CIDs.
bool is_item_hash(std::string_view text);

// ---- Execution content (PROGRAM and INSTANCE) -----------------------------------------------

/// A STORE message a volume or rootfs is copied from.
struct parent_volume {
  std::string ref;
  bool use_latest = true;
  bool operator==(const parent_volume&) const = default;
};

/// Read-only volume made from a STORE message (`ref`).
struct immutable_volume {
  std::string ref;
  bool use_latest = true;
  std::optional<std::string> mount;
  std::optional<std::string> comment;
  bool operator==(const immutable_volume&) const = default;
};

/// Scratch volume lost when the VM stops (`ephemeral: true`).
struct ephemeral_volume {
  uint64_t size_mib = 0;
  std::optional<std::string> mount;
  std::optional<std::string> comment;
  bool operator==(const ephemeral_volume&) const = default;
};

/// Writable volume kept across restarts.
struct persistent_volume {
  std::optional<parent_volume> parent;
  std::optional<std::string> persistence; ///< "host" or "store"
  std::optional<std::string> name;
  uint64_t size_mib = 0;
  std::optional<std::string> mount;
  std::optional<std::string> comment;
  bool operator==(const persistent_volume&) const = default;
};

/// One entry of `volumes`: an object with `ref` is immutable, one with `ephemeral` is
/// ephemeral, any other is persistent.
using machine_volume = std::variant<immutable_volume, ephemeral_volume, persistent_volume>;

/// A port the VM wants forwarded from the host.
struct published_port {
  std::string protocol = "tcp"; ///< "tcp" or "udp"
  uint32_t port = 0;
  bool operator==(const published_port&) const = default;
};

/// `resources` of a PROGRAM or INSTANCE.
struct machine_resources {
  uint32_t vcpus = 1;
  uint64_t memory = 128; ///< MiB
  uint64_t seconds = 1;  ///< per-request timeout of a program
  std::vector<published_port> published_ports;
  bool operator==(const machine_resources&) const = default;
};

/// `requirements.cpu`.
struct cpu_properties {
  std::optional<std::string> architecture;
  std::optional<std::string> vendor;
  std::vector<std::string> features;
  bool operator==(const cpu_properties&) const = default;
};

/// `requirements.node`.
struct node_requirements {
  std::optional<std::string> owner;
  std::optional<std::string> address_regex;
  std::optional<std::string> node_hash;
  std::optional<std::string> terms_and_conditions;
  bool operator==(const node_requirements&) const = default;
};

/// One entry of `requirements.gpu`.
struct gpu_properties {
  std::string vendor;
  std::string device_name;
  std::string device_class; ///< "0300" or "0302"
  std::string device_id;
  bool operator==(const gpu_properties&) const = default;
};

/// `requirements`: where the workload may run.
struct host_requirements {
  std::optional<cpu_properties> cpu;
  std::optional<node_requirements> node;
  std::vector<gpu_properties> gpu;
  bool operator==(const host_requirements&) const = default;
};

/// `payment`.
struct payment_info {
  std::optional<std::string> chain;
  std::optional<std::string> receiver;
  std::string type; ///< "hold", "superfluid" or "credit"
  bool operator==(const payment_info&) const = default;
};

/// `code` of a PROGRAM.
struct code_content {
  std::string encoding; ///< "plain", "zip" or "squashfs"
  std::string entrypoint;
  std::string ref;
  std::optional<std::string> interface; ///< "asgi" or "binary"
  std::vector<std::string> args;
  bool use_latest = false;
  bool operator==(const code_content&) const = default;
};

/// `on` of a PROGRAM: what starts it.
struct function_triggers {
  bool http = false;
  bool persistent = false;
  nlohmann::ordered_json message; ///< subscriptions as given (an array), or null
  bool operator==(const function_triggers&) const = default;
};

/// `environment` of a PROGRAM.
struct program_environment {
  bool reproducible = false;
  bool internet = false;
  bool aleph_api = false;
  bool shared_cache = false;
  bool operator==(const program_environment&) const = default;
};

/// `environment.trusted_execution` of an INSTANCE (AMD SEV).
struct trusted_execution_environment {
  std::optional<std::string> firmware;
  uint64_t policy = 1; ///< AMD SEV policy bits; 1 = NO_DBG
  bool operator==(const trusted_execution_environment&) const = default;
};

/// `environment` of an INSTANCE.
struct instance_environment {
  bool internet = false;
  bool aleph_api = false;
  std::optional<std::string> hypervisor; ///< "firecracker" or "qemu"; absent = node default
  bool reproducible = false;
  bool shared_cache = false;
  std::optional<trusted_execution_environment> trusted_execution;
  bool operator==(const instance_environment&) const = default;
};

/// `runtime` of a PROGRAM.
struct function_runtime {
  std::string ref;
  bool use_latest = true;
  std::string comment;
  bool operator==(const function_runtime&) const = default;
};

/// `data` of a PROGRAM.
struct data_content {
  std::string encoding;
  std::string mount;
  std::string ref;
  bool use_latest = false;
  bool operator==(const data_content&) const = default;
};

/// `export` of a PROGRAM.
struct export_content {
  std::string encoding;
  std::string mount;
  bool operator==(const export_content&) const = default;
};

/// `rootfs` of an INSTANCE.
struct rootfs_volume {
  parent_volume parent;
  std::string persistence; ///< "host" or "store"
  uint64_t size_mib = 0;
  bool operator==(const rootfs_volume&) const = default;
};

/// Content of a PROGRAM message.
struct program_content {
  std::string type = "vm-function";
  std::string address;
  double time = 0;
  bool allow_amend = false;
  nlohmann::ordered_json metadata; ///< an object, or null when absent
  std::map<std::string, std::string> variables;
  std::vector<std::string> authorized_keys;
  code_content code;
  function_triggers on;
  program_environment environment;
  machine_resources resources;
  std::optional<host_requirements> requirements;
  std::vector<machine_volume> volumes;
  std::optional<function_runtime> runtime;
  std::optional<data_content> data;
  std::optional<export_content> data_export; ///< `export` on the wire
  std::optional<std::string> replaces;
  std::optional<payment_info> payment;
  bool operator==(const program_content&) const = default;
};

/// Content of an INSTANCE message.
struct instance_content {
  std::string address;
  double time = 0;
  bool allow_amend = false;
  nlohmann::ordered_json metadata; ///< an object, or null when absent
  std::vector<std::string> authorized_keys;
  std::map<std::string, std::string> variables;
  instance_environment environment;
  machine_resources resources;
  std::optional<payment_info> payment;
  std::optional<host_requirements> requirements;
  std::vector<machine_volume> volumes;
  std::optional<std::string> replaces;
  rootfs_volume rootfs;
  bool operator==(const instance_content&) const = default;
};

/// Content of a STORE message.
struct store_content {
  std::string address;
  double time = 0;
  std::string item_type; ///< "storage" or "ipfs"
  std::string item_hash;
  std::optional<uint64_t> size;
  std::optional<std::string> content_type;
  std::optional<std::string> ref;
  nlohmann::ordered_json metadata; ///< an object, or null when absent
  bool operator==(const store_content&) const = default;
};

/// Content of a FORGET message.
struct forget_content {
  std::string address;
  double time = 0;
  std::vector<std::string> hashes;
  std::vector<std::string> aggregates;
  std::optional<std::string> reason;
  bool operator==(const forget_content&) const = default;
};

/// One aleph message.
struct message {
  std::string chain;
  std::string sender;
  std::string channel;      ///< empty when absent
  std::string signature;    ///< empty when absent
  std::string item_type;    ///< "inline", "storage" or "ipfs"
  std::string item_hash;
  std::string item_content; ///< the signed JSON text of the content (inline messages)
  message_type type = message_type::post;
  double time = 0;        ///< seconds since the epoch
  std::string time_text;  ///< the ISO-8601 text when the input gave one; to_json writes it back
  /// Typed content; monostate for POST and AGGREGATE, whose content stays in raw_content.
  std::variant<std::monostate, program_content, instance_content, store_content, forget_content>
    content;
  /// The content object exactly as parsed, in document key order (from item_content when given).
  nlohmann::ordered_json raw_content;
  /// Top-level fields not modelled above (`confirmed`, `confirmations`, `size`, `_id`, …), in
  /// document order; an object.
  nlohmann::ordered_json extras = nlohmann::ordered_json::object();
  bool operator==(const message&) const = default;
};

/// The outcome of parse_message: a message, or the first validation error.
struct parse_result {
  std::optional<message> msg;
  validation_error error;
  bool ok() const {
    return msg.has_value();
  }
};

/// Parses and validates one message from JSON text. Never throws; never crashes on any input.
/// On success `item_content` and `item_hash` are filled: if the input has `item_content` (item_type
/// inline), it must be a string that parses as the content object (a `content` field next to it is
/// ignored) and `item_hash`, when given, must equal sha256_hex(item_content), else
/// {"item_hash", "does not match sha256 of item_content"}. If the input has only `content`,
/// item_content = python_compact_json(content) and item_hash = sha256_hex(item_content); a given
/// item_hash that differs is rejected. For storage/ipfs messages item_hash is required and kept.
/// Input nested deeper than max_json_depth is rejected before a DOM is built.
parse_result parse_message(std::string_view json_text);

/// As above, from an already parsed document.
parse_result parse_message(const nlohmann::ordered_json& doc);

/// Text overloads, so that a string is never taken for a JSON string value.
inline parse_result parse_message(const std::string& json_text) {
  return parse_message(std::string_view{json_text});
}
inline parse_result parse_message(const char* json_text) {
  return parse_message(std::string_view{json_text});
}

/// The message as JSON: the top-level fields, `item_content`/`item_hash`, `content` (raw_content
/// with every modelled field written from the model, unmodelled keys kept) and the extras.
/// When an inline message has an empty item_content, it and item_hash are derived from that content.
nlohmann::ordered_json to_json(const message& msg);

/// The content object to_json writes for a message.
nlohmann::ordered_json content_to_json(const message& msg);

/// Lowercase hex SHA-256 of the bytes.
std::string sha256_hex(std::string_view bytes);

/// Compact JSON exactly as Python's json.dumps(obj, separators=(",", ":")) writes it: document key
/// order, non-ASCII escaped as \uXXXX (surrogate pairs above U+FFFF), floats in Python repr form
/// (shortest round trip, "1e-05", "1e+16", "1.0"), ints as ints. Invalid UTF-8 in a string (only
/// possible in a value built in code) is written as \ufffd.
std::string python_compact_json(const nlohmann::ordered_json& value);

/// What a scheduler needs from a PROGRAM or INSTANCE.
struct workload_spec {
  std::string item_hash;
  std::string owner; ///< content.address (the sender when empty)
  message_type type = message_type::program;
  bool persistent = false; ///< instances, and programs with on.persistent
  bool on_demand = false;  ///< programs with on.http
  uint32_t vcpus = 1;
  uint64_t memory_mib = 128;
  /// rootfs.size_mib (instances) plus the sizes of persistent and ephemeral volumes.
  uint64_t disk_mib = 0;
  bool operator==(const workload_spec&) const = default;
};

/// The workload of a PROGRAM or INSTANCE message; nullopt for other messages.
std::optional<workload_spec> workload_of(const message& msg);

} // namespace alephd::aleph
