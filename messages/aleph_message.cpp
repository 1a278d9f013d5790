#include "messages/aleph_message.hpp"

#include <algorithm>
#include <array>
#include <charconv>
#include <cmath>
#include <exception>
#include <initializer_list>
#include <limits>
#include <utility>

#include <openssl/evp.h>

namespace alephd::aleph {

namespace {

using json = nlohmann::ordered_json;

// BaseContent.time upper bound in aleph-message (year 2262).
constexpr double max_content_time = 9223372036.0;
constexpr std::size_t max_label_length = 256;
constexpr std::size_t max_channel_length = 128;
constexpr std::size_t max_replaces_length = 128;
constexpr std::size_t max_metadata_entries = 256;
constexpr std::size_t max_forget_targets = 1000;
constexpr std::size_t max_forget_reason_length = 1000;
constexpr uint64_t no_limit = std::numeric_limits<uint64_t>::max();

// Thrown inside the validators only; parse_message turns it into a parse_result. Unwinding
// keeps every validator a straight line of "read field or fail" calls.
struct rejection {
  validation_error error;
};

[[noreturn]] void reject(std::string field, std::string reason) {
  throw rejection{validation_error{std::move(field), std::move(reason)}};
}

std::string join(const std::string& path, std::string_view key) {
  if (path.empty())
    return std::string{key};
  std::string out;
  out.reserve(path.size() + 1 + key.size());
  out += path;
  out += '.';
  out += key;
  return out;
}

std::string join(const std::string& path, std::size_t index) {
  return join(path, std::to_string(index));
}

// Python's len(): code points, not bytes.
std::size_t utf8_length(std::string_view text) {
  return static_cast<std::size_t>(std::count_if(text.begin(), text.end(), [](char c) {
    return (static_cast<unsigned char>(c) & 0xC0) != 0x80;
  }));
}

// The value of `key` in `obj`, or nullptr when absent or null (null means absent).
const json* get(const json& obj, const char* key) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null())
    return nullptr;
  return &*it;
}

const json& require(const json& obj, const std::string& path, const char* key) {
  if (const auto* value = get(obj, key))
    return *value;
  reject(join(path, key), "is required");
}

void expect_object(const json& value, const std::string& field) {
  if (!value.is_object())
    reject(field, "must be an object");
}

void expect_array(const json& value, const std::string& field) {
  if (!value.is_array())
    reject(field, "must be an array");
}

void expect_at_most(const json& container, const std::string& field, std::size_t limit) {
  if (container.size() > limit)
    reject(field, "must have at most " + std::to_string(limit) + " entries");
}

std::string as_string(const json& value, const std::string& field,
                      std::size_t max_length = std::string::npos) {
  if (!value.is_string())
    reject(field, "must be a string");
  const auto& text = value.get_ref<const std::string&>();
  if (max_length != std::string::npos && utf8_length(text) > max_length)
    reject(field, "must be at most " + std::to_string(max_length) + " characters");
  return text;
}

std::string req_string(const json& obj, const std::string& path, const char* key,
                       std::size_t max_length = std::string::npos) {
  return as_string(require(obj, path, key), join(path, key), max_length);
}

std::optional<std::string> opt_string(const json& obj, const std::string& path, const char* key,
                                      std::size_t max_length = std::string::npos) {
  if (const auto* value = get(obj, key))
    return as_string(*value, join(path, key), max_length);
  return std::nullopt;
}

std::string as_enum(const json& value, const std::string& field,
                    std::initializer_list<std::string_view> allowed) {
  auto text = as_string(value, field);
  if (std::find(allowed.begin(), allowed.end(), text) != allowed.end())
    return text;
  std::string reason = "must be one of ";
  bool first = true;
  for (auto name : allowed) {
    if (!first)
      reason += ", ";
    reason += name;
    first = false;
  }
  reject(field, std::move(reason));
}

std::optional<std::string> opt_enum(const json& obj, const std::string& path, const char* key,
                                    std::initializer_list<std::string_view> allowed) {
  if (const auto* value = get(obj, key))
    return as_enum(*value, join(path, key), allowed);
  return std::nullopt;
}

std::string as_hash(const json& value, const std::string& field) {
  auto text = as_string(value, field);
  if (!is_item_hash(text))
    reject(field, "must be an item hash");
  return text;
}

std::optional<std::string> opt_hash(const json& obj, const std::string& path, const char* key) {
  if (const auto* value = get(obj, key))
    return as_hash(*value, join(path, key));
  return std::nullopt;
}

bool as_bool(const json& value, const std::string& field) {
  if (!value.is_boolean())
    reject(field, "must be a boolean");
  return value.get<bool>();
}

bool opt_bool(const json& obj, const std::string& path, const char* key, bool fallback) {
  if (const auto* value = get(obj, key))
    return as_bool(*value, join(path, key));
  return fallback;
}

// Floats are refused even when integral (aleph-message declares the sizes strict); a float
// outside the range gets the range message, which is the more useful one for 1e23 or inf.
uint64_t as_uint(const json& value, const std::string& field, uint64_t lo, uint64_t hi) {
  auto out_of_range = [&]() -> std::string {
    if (hi == no_limit)
      return "must be at least " + std::to_string(lo);
    return "must be between " + std::to_string(lo) + " and " + std::to_string(hi);
  };
  if (value.is_number_unsigned()) {
    auto x = value.get<uint64_t>();
    if (x < lo || x > hi)
      reject(field, out_of_range());
    return x;
  }
  if (value.is_number_integer()) {
    auto x = value.get<int64_t>();
    if (x < 0 || static_cast<uint64_t>(x) < lo || static_cast<uint64_t>(x) > hi)
      reject(field, out_of_range());
    return static_cast<uint64_t>(x);
  }
  if (value.is_number_float()) {
    auto x = value.get<double>();
    if (!std::isfinite(x) || x < static_cast<double>(lo) || x > static_cast<double>(hi))
      reject(field, out_of_range());
    reject(field, "must be an integer");
  }
  reject(field, "must be an integer");
}

uint64_t req_uint(const json& obj, const std::string& path, const char* key, uint64_t lo,
                  uint64_t hi) {
  return as_uint(require(obj, path, key), join(path, key), lo, hi);
}

uint64_t opt_uint(const json& obj, const std::string& path, const char* key, uint64_t lo,
                  uint64_t hi, uint64_t fallback) {
  if (const auto* value = get(obj, key))
    return as_uint(*value, join(path, key), lo, hi);
  return fallback;
}

double content_time(const json& obj, const std::string& path) {
  const auto& value = require(obj, path, "time");
  auto field = join(path, "time");
  if (!value.is_number())
    reject(field, "must be a number");
  auto x = value.get<double>();
  if (!std::isfinite(x) || x < 0 || x > max_content_time)
    reject(field, "must be between 0 and 9223372036");
  return x;
}

std::vector<std::string> string_array(const json& value, const std::string& field,
                                      std::size_t max_entries, std::size_t max_length) {
  expect_array(value, field);
  expect_at_most(value, field, max_entries);
  std::vector<std::string> out;
  out.reserve(value.size());
  for (std::size_t i = 0; i < value.size(); ++i)
    out.push_back(as_string(value[i], join(field, i), max_length));
  return out;
}

std::vector<std::string> hash_array(const json& value, const std::string& field,
                                    std::size_t max_entries) {
  expect_array(value, field);
  expect_at_most(value, field, max_entries);
  std::vector<std::string> out;
  out.reserve(value.size());
  for (std::size_t i = 0; i < value.size(); ++i)
    out.push_back(as_hash(value[i], join(field, i)));
  return out;
}

json opt_object(const json& obj, const std::string& path, const char* key,
                std::size_t max_entries) {
  if (const auto* value = get(obj, key)) {
    auto field = join(path, key);
    expect_object(*value, field);
    expect_at_most(*value, field, max_entries);
    return *value;
  }
  return nullptr;
}

// ---- schema pieces ---------------------------------------------------------------------------

parent_volume parse_parent(const json& value, const std::string& path) {
  expect_object(value, path);
  parent_volume out;
  out.ref = as_hash(require(value, path, "ref"), join(path, "ref"));
  out.use_latest = opt_bool(value, path, "use_latest", true);
  return out;
}

machine_volume parse_volume(const json& value, const std::string& path) {
  expect_object(value, path);
  auto mount = opt_string(value, path, "mount", max_label_length);
  auto comment = opt_string(value, path, "comment", max_label_length);
  if (get(value, "ref") != nullptr) {
    immutable_volume out;
    out.ref = as_hash(*get(value, "ref"), join(path, "ref"));
    out.use_latest = opt_bool(value, path, "use_latest", true);
    out.mount = std::move(mount);
    out.comment = std::move(comment);
    return out;
  }
  if (get(value, "ephemeral") != nullptr) {
    if (!as_bool(*get(value, "ephemeral"), join(path, "ephemeral")))
      reject(join(path, "ephemeral"), "must be true");
    ephemeral_volume out;
    out.size_mib = req_uint(value, path, "size_mib", 1, max_ephemeral_size_mib);
    out.mount = std::move(mount);
    out.comment = std::move(comment);
    return out;
  }
  persistent_volume out;
  if (const auto* parent = get(value, "parent"))
    out.parent = parse_parent(*parent, join(path, "parent"));
  out.persistence = opt_enum(value, path, "persistence", {"host", "store"});
  out.name = opt_string(value, path, "name", max_label_length);
  out.size_mib = req_uint(value, path, "size_mib", 1, max_persistent_size_mib);
  out.mount = std::move(mount);
  out.comment = std::move(comment);
  return out;
}

std::vector<machine_volume> parse_volumes(const json& obj, const std::string& path) {
  std::vector<machine_volume> out;
  const auto* value = get(obj, "volumes");
  if (value == nullptr)
    return out;
  auto field = join(path, "volumes");
  expect_array(*value, field);
  expect_at_most(*value, field, max_volumes);
  out.reserve(value->size());
  for (std::size_t i = 0; i < value->size(); ++i)
    out.push_back(parse_volume((*value)[i], join(field, i)));
  return out;
}

machine_resources parse_resources(const json& obj, const std::string& path) {
  machine_resources out;
  const auto* value = get(obj, "resources");
  if (value == nullptr)
    return out;
  auto field = join(path, "resources");
  expect_object(*value, field);
  out.vcpus = static_cast<uint32_t>(opt_uint(*value, field, "vcpus", 1, max_vcpus, 1));
  out.memory = opt_uint(*value, field, "memory", 1, max_memory_mib, 128);
  out.seconds = opt_uint(*value, field, "seconds", 1, max_seconds, 1);
  if (const auto* ports = get(*value, "published_ports")) {
    auto ports_field = join(field, "published_ports");
    expect_array(*ports, ports_field);
    for (std::size_t i = 0; i < ports->size(); ++i) {
      const auto& entry = (*ports)[i];
      auto entry_field = join(ports_field, i);
      expect_object(entry, entry_field);
      published_port port;
      port.protocol = opt_enum(entry, entry_field, "protocol", {"tcp", "udp"}).value_or("tcp");
      port.port = static_cast<uint32_t>(req_uint(entry, entry_field, "port", 1, 65535));
      out.published_ports.push_back(std::move(port));
    }
  }
  return out;
}

std::map<std::string, std::string> parse_variables(const json& obj, const std::string& path) {
  std::map<std::string, std::string> out;
  const auto* value = get(obj, "variables");
  if (value == nullptr)
    return out;
  auto field = join(path, "variables");
  expect_object(*value, field);
  expect_at_most(*value, field, max_variables);
  for (const auto& [key, entry] : value->items()) {
    if (utf8_length(key) > max_variable_key_length)
      reject(field, "keys must be at most " + std::to_string(max_variable_key_length)
                      + " characters");
    out[key] = as_string(entry, join(field, key), max_variable_value_length);
  }
  return out;
}

std::vector<std::string> parse_authorized_keys(const json& obj, const std::string& path) {
  if (const auto* value = get(obj, "authorized_keys"))
    return string_array(*value, join(path, "authorized_keys"), max_authorized_keys,
                        max_authorized_key_length);
  return {};
}

std::optional<payment_info> parse_payment(const json& obj, const std::string& path) {
  const auto* value = get(obj, "payment");
  if (value == nullptr)
    return std::nullopt;
  auto field = join(path, "payment");
  expect_object(*value, field);
  payment_info out;
  out.chain = opt_string(*value, field, "chain");
  out.receiver = opt_string(*value, field, "receiver");
  out.type = as_enum(require(*value, field, "type"), join(field, "type"),
                     {"hold", "superfluid", "credit"});
  return out;
}

std::optional<host_requirements> parse_requirements(const json& obj, const std::string& path) {
  const auto* value = get(obj, "requirements");
  if (value == nullptr)
    return std::nullopt;
  auto field = join(path, "requirements");
  expect_object(*value, field);
  host_requirements out;
  if (const auto* cpu = get(*value, "cpu")) {
    auto cpu_field = join(field, "cpu");
    expect_object(*cpu, cpu_field);
    cpu_properties props;
    props.architecture = opt_enum(*cpu, cpu_field, "architecture", {"x86_64", "arm64"});
    props.vendor = opt_string(*cpu, cpu_field, "vendor");
    if (const auto* features = get(*cpu, "features"))
      props.features = string_array(*features, join(cpu_field, "features"), 256, 256);
    out.cpu = std::move(props);
  }
  if (const auto* node = get(*value, "node")) {
    auto node_field = join(field, "node");
    expect_object(*node, node_field);
    node_requirements props;
    props.owner = opt_string(*node, node_field, "owner");
    props.address_regex = opt_string(*node, node_field, "address_regex", 256);
    props.node_hash = opt_hash(*node, node_field, "node_hash");
    props.terms_and_conditions = opt_hash(*node, node_field, "terms_and_conditions");
    out.node = std::move(props);
  }
  if (const auto* gpus = get(*value, "gpu")) {
    auto gpu_field = join(field, "gpu");
    expect_array(*gpus, gpu_field);
    for (std::size_t i = 0; i < gpus->size(); ++i) {
      const auto& entry = (*gpus)[i];
      auto entry_field = join(gpu_field, i);
      expect_object(entry, entry_field);
      gpu_properties gpu;
      gpu.vendor = req_string(entry, entry_field, "vendor");
      gpu.device_name = req_string(entry, entry_field, "device_name");
      gpu.device_class = as_enum(require(entry, entry_field, "device_class"),
                                 join(entry_field, "device_class"), {"0300", "0302"});
      gpu.device_id = req_string(entry, entry_field, "device_id");
      out.gpu.push_back(std::move(gpu));
    }
  }
  return out;
}

// Fields shared by PROGRAM and INSTANCE content.
template <class Content>
void parse_executable_common(const json& c, const std::string& path, Content& out) {
  out.address = req_string(c, path, "address");
  out.time = content_time(c, path);
  out.allow_amend = opt_bool(c, path, "allow_amend", false);
  out.metadata = opt_object(c, path, "metadata", max_metadata_entries);
  out.authorized_keys = parse_authorized_keys(c, path);
  out.variables = parse_variables(c, path);
  out.resources = parse_resources(c, path);
  out.payment = parse_payment(c, path);
  out.requirements = parse_requirements(c, path);
  out.volumes = parse_volumes(c, path);
  out.replaces = opt_string(c, path, "replaces", max_replaces_length);
}

program_content parse_program(const json& c, const std::string& path) {
  program_content out;
  if (const auto* type = get(c, "type"))
    out.type = as_enum(*type, join(path, "type"), {"vm-function"});
  parse_executable_common(c, path, out);

  auto code_field = join(path, "code");
  const auto& code = require(c, path, "code");
  expect_object(code, code_field);
  out.code.encoding = as_enum(require(code, code_field, "encoding"), join(code_field, "encoding"),
                              {"plain", "zip", "squashfs"});
  out.code.entrypoint = req_string(code, code_field, "entrypoint");
  out.code.ref = as_hash(require(code, code_field, "ref"), join(code_field, "ref"));
  out.code.interface = opt_enum(code, code_field, "interface", {"asgi", "binary"});
  if (const auto* args = get(code, "args"))
    out.code.args = string_array(*args, join(code_field, "args"), 1024, std::string::npos);
  out.code.use_latest = opt_bool(code, code_field, "use_latest", false);

  auto on_field = join(path, "on");
  const auto& on = require(c, path, "on");
  expect_object(on, on_field);
  out.on.http = opt_bool(on, on_field, "http", false);
  out.on.persistent = opt_bool(on, on_field, "persistent", false);
  if (const auto* subscriptions = get(on, "message")) {
    auto field = join(on_field, "message");
    expect_array(*subscriptions, field);
    for (std::size_t i = 0; i < subscriptions->size(); ++i)
      expect_object((*subscriptions)[i], join(field, i));
    out.on.message = *subscriptions;
  }

  if (const auto* env = get(c, "environment")) {
    auto field = join(path, "environment");
    expect_object(*env, field);
    out.environment.reproducible = opt_bool(*env, field, "reproducible", false);
    out.environment.internet = opt_bool(*env, field, "internet", false);
    out.environment.aleph_api = opt_bool(*env, field, "aleph_api", false);
    out.environment.shared_cache = opt_bool(*env, field, "shared_cache", false);
  }

  if (const auto* runtime = get(c, "runtime")) {
    auto field = join(path, "runtime");
    expect_object(*runtime, field);
    function_runtime rt;
    rt.ref = as_hash(require(*runtime, field, "ref"), join(field, "ref"));
    rt.use_latest = opt_bool(*runtime, field, "use_latest", true);
    rt.comment = opt_string(*runtime, field, "comment").value_or("");
    out.runtime = std::move(rt);
  }

  if (const auto* data = get(c, "data")) {
    auto field = join(path, "data");
    expect_object(*data, field);
    data_content d;
    d.encoding = as_enum(require(*data, field, "encoding"), join(field, "encoding"),
                         {"plain", "zip", "squashfs"});
    d.mount = req_string(*data, field, "mount");
    d.ref = as_hash(require(*data, field, "ref"), join(field, "ref"));
    d.use_latest = opt_bool(*data, field, "use_latest", false);
    out.data = std::move(d);
  }

  if (const auto* exp = get(c, "export")) {
    auto field = join(path, "export");
    expect_object(*exp, field);
    export_content e;
    e.encoding = as_enum(require(*exp, field, "encoding"), join(field, "encoding"),
                         {"plain", "zip", "squashfs"});
    e.mount = req_string(*exp, field, "mount");
    out.data_export = std::move(e);
  }
  return out;
}

instance_content parse_instance(const json& c, const std::string& path) {
  instance_content out;
  parse_executable_common(c, path, out);

  if (const auto* env = get(c, "environment")) {
    auto field = join(path, "environment");
    expect_object(*env, field);
    out.environment.internet = opt_bool(*env, field, "internet", false);
    out.environment.aleph_api = opt_bool(*env, field, "aleph_api", false);
    out.environment.hypervisor = opt_enum(*env, field, "hypervisor", {"firecracker", "qemu"});
    out.environment.reproducible = opt_bool(*env, field, "reproducible", false);
    out.environment.shared_cache = opt_bool(*env, field, "shared_cache", false);
    if (const auto* tee = get(*env, "trusted_execution")) {
      auto tee_field = join(field, "trusted_execution");
      expect_object(*tee, tee_field);
      if (out.environment.hypervisor != "qemu")
        reject(tee_field, "requires hypervisor qemu");
      trusted_execution_environment props;
      props.firmware = opt_hash(*tee, tee_field, "firmware");
      props.policy = opt_uint(*tee, tee_field, "policy", 0, no_limit, 1);
      out.environment.trusted_execution = std::move(props);
    }
  }

  auto rootfs_field = join(path, "rootfs");
  const auto& rootfs = require(c, path, "rootfs");
  expect_object(rootfs, rootfs_field);
  out.rootfs.parent = parse_parent(require(rootfs, rootfs_field, "parent"),
                                   join(rootfs_field, "parent"));
  out.rootfs.persistence = as_enum(require(rootfs, rootfs_field, "persistence"),
                                   join(rootfs_field, "persistence"), {"host", "store"});
  out.rootfs.size_mib = req_uint(rootfs, rootfs_field, "size_mib", 1, max_persistent_size_mib);

  // Passing a GPU through needs QEMU and a chosen node (aleph-message InstanceContent).
  if (out.requirements && !out.requirements->gpu.empty()) {
    auto gpu_field = join(join(path, "requirements"), "gpu");
    if (!out.requirements->node || !out.requirements->node->node_hash)
      reject(gpu_field, "requires requirements.node.node_hash");
    if (out.environment.hypervisor != "qemu")
      reject(gpu_field, "requires hypervisor qemu");
  }
  return out;
}

bool is_lower_hex_64(std::string_view text) {
  return text.size() == 64 && std::all_of(text.begin(), text.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
         });
}

store_content parse_store(const json& c, const std::string& path) {
  store_content out;
  out.address = req_string(c, path, "address");
  out.time = content_time(c, path);
  out.item_type = as_enum(require(c, path, "item_type"), join(path, "item_type"),
                          {"storage", "ipfs"});
  auto hash_field = join(path, "item_hash");
  out.item_hash = as_string(require(c, path, "item_hash"), hash_field);
  if (out.item_type == "storage" && !is_lower_hex_64(out.item_hash))
    reject(hash_field, "must be 64 lowercase hex characters");
  if (out.item_type == "ipfs" && (!is_item_hash(out.item_hash) || is_lower_hex_64(out.item_hash)))
    reject(hash_field, "must be an IPFS CID");
  if (const auto* size = get(c, "size"))
    out.size = as_uint(*size, join(path, "size"), 0, no_limit);
  out.content_type = opt_string(c, path, "content_type");
  out.ref = opt_string(c, path, "ref");
  out.metadata = opt_object(c, path, "metadata", max_metadata_entries);
  return out;
}

forget_content parse_forget(const json& c, const std::string& path) {
  forget_content out;
  out.address = req_string(c, path, "address");
  out.time = content_time(c, path);
  if (const auto* hashes = get(c, "hashes"))
    out.hashes = hash_array(*hashes, join(path, "hashes"), max_forget_targets);
  if (const auto* aggregates = get(c, "aggregates"))
    out.aggregates = hash_array(*aggregates, join(path, "aggregates"), max_forget_targets);
  if (out.hashes.empty() && out.aggregates.empty())
    reject(join(path, "hashes"), "is required");
  out.reason = opt_string(c, path, "reason", max_forget_reason_length);
  return out;
}

// ---- depth limits ----------------------------------------------------------------------------

// Bracket depth of JSON text, skipping strings; stops early once past the limit. Runs before
// the DOM is built so that hostile nesting never reaches a recursive parser.
bool text_within_depth(std::string_view text, std::size_t limit) {
  std::size_t depth = 0;
  bool in_string = false;
  bool escaped = false;
  for (char c : text) {
    if (in_string) {
      if (escaped)
        escaped = false;
      else if (c == '\\')
        escaped = true;
      else if (c == '"')
        in_string = false;
      continue;
    }
    if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > limit)
        return false;
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
  return true;
}

bool value_within_depth(const json& root, std::size_t limit) {
  if (!root.is_structured())
    return true;
  std::vector<std::pair<const json*, std::size_t>> pending{{&root, 1}};
  while (!pending.empty()) {
    auto [value, depth] = pending.back();
    pending.pop_back();
    if (depth > limit)
      return false;
    for (const auto& child : *value)
      if (child.is_structured())
        pending.emplace_back(&child, depth + 1);
  }
  return true;
}

validation_error too_deep(std::string field) {
  return {std::move(field), "is nested deeper than " + std::to_string(max_json_depth) + " levels"};
}

// Parses JSON text without exceptions escaping; nullopt when it is not JSON.
std::optional<json> parse_text(std::string_view text) {
  try {
    return json::parse(text.begin(), text.end());
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

// ---- ISO-8601 --------------------------------------------------------------------------------

int64_t days_from_civil(int64_t year, unsigned month, unsigned day) {
  year -= month <= 2 ? 1 : 0;
  const int64_t era = (year >= 0 ? year : year - 399) / 400;
  const auto year_of_era = static_cast<unsigned>(year - era * 400);
  const unsigned day_of_year = (153 * (month + (month > 2 ? -3 : 9)) + 2) / 5 + day - 1;
  const unsigned day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100
                              + day_of_year;
  return era * 146097 + static_cast<int64_t>(day_of_era) - 719468;
}

unsigned days_in_month(int64_t year, unsigned month) {
  static constexpr std::array<unsigned, 12> days{31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  bool leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
  return month == 2 && leap ? 29 : days[month - 1];
}

// Seconds since the epoch of "YYYY-MM-DD[THH:MM[:SS[.ffffff]]][Z|±HH:MM|±HHMM]" (UTC when no
// offset is given). Microseconds are kept exactly as Python's datetime does.
std::optional<double> parse_iso8601(std::string_view s) {
  std::size_t i = 0;
  auto number = [&](std::size_t width, unsigned& out) {
    if (i + width > s.size())
      return false;
    out = 0;
    for (std::size_t k = 0; k < width; ++k) {
      char c = s[i + k];
      if (c < '0' || c > '9')
        return false;
      out = out * 10 + static_cast<unsigned>(c - '0');
    }
    i += width;
    return true;
  };
  auto literal = [&](char c) {
    if (i < s.size() && s[i] == c) {
      ++i;
      return true;
    }
    return false;
  };
  unsigned year = 0, month = 0, day = 0, hour = 0, minute = 0, second = 0;
  int64_t micros = 0;
  int64_t offset = 0;
  if (!number(4, year) || !literal('-') || !number(2, month) || !literal('-') || !number(2, day))
    return std::nullopt;
  if (i < s.size()) {
    if (s[i] != 'T' && s[i] != 't' && s[i] != ' ')
      return std::nullopt;
    ++i;
    if (!number(2, hour) || !literal(':') || !number(2, minute))
      return std::nullopt;
    if (literal(':')) {
      if (!number(2, second))
        return std::nullopt;
      if (literal('.') || literal(',')) {
        std::size_t digits = 0;
        int64_t scale = 100000;
        while (i < s.size() && s[i] >= '0' && s[i] <= '9') {
          if (digits < 6) {
            micros += (s[i] - '0') * scale;
            scale /= 10;
          }
          ++digits;
          ++i;
        }
        if (digits == 0)
          return std::nullopt;
      }
    }
    if (i < s.size()) {
      if (s[i] == 'Z' || s[i] == 'z') {
        ++i;
      } else if (s[i] == '+' || s[i] == '-') {
        int64_t sign = s[i] == '-' ? -1 : 1;
        ++i;
        unsigned off_hour = 0, off_minute = 0;
        if (!number(2, off_hour))
          return std::nullopt;
        if (i < s.size()) {
          literal(':');
          if (!number(2, off_minute))
            return std::nullopt;
        }
        if (off_hour > 23 || off_minute > 59)
          return std::nullopt;
        offset = sign * (off_hour * 3600 + off_minute * 60);
      } else {
        return std::nullopt;
      }
    }
  }
  if (i != s.size() || month < 1 || month > 12 || day < 1 || day > days_in_month(year, month)
      || hour > 23 || minute > 59 || second > 59)
    return std::nullopt;
  int64_t seconds = days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60
                    + second - offset;
  return static_cast<double>(seconds * 1000000 + micros) / 1e6;
}

// ---- JSON output of the model ----------------------------------------------------------------
// What the model does not have (an empty optional or list) is written as a discarded value, which
// parsing never produces: the overlay below reads it as "nothing here" and keeps whatever the
// original content had in that place, or nothing, while real nulls in user data stay nulls.

json absent() {
  return json(json::value_t::discarded);
}

template <class T>
json or_absent(const std::optional<T>& value) {
  return value ? json(*value) : absent();
}

json strings_or_absent(const std::vector<std::string>& values) {
  return values.empty() ? absent() : json(values);
}

json object_or_absent(const json& value) {
  return value.is_null() ? absent() : value;
}

json to_value(const parent_volume& x) {
  return json{{"ref", x.ref}, {"use_latest", x.use_latest}};
}

json to_value(const machine_volume& volume) {
  return std::visit(
    [](const auto& x) -> json {
      using T = std::decay_t<decltype(x)>;
      json out = json::object();
      out["comment"] = or_absent(x.comment);
      out["mount"] = or_absent(x.mount);
      if constexpr (std::is_same_v<T, immutable_volume>) {
        out["ref"] = x.ref;
        out["use_latest"] = x.use_latest;
      } else if constexpr (std::is_same_v<T, ephemeral_volume>) {
        out["ephemeral"] = true;
        out["size_mib"] = x.size_mib;
      } else {
        out["parent"] = x.parent ? to_value(*x.parent) : absent();
        out["persistence"] = or_absent(x.persistence);
        out["name"] = or_absent(x.name);
        out["size_mib"] = x.size_mib;
      }
      return out;
    },
    volume);
}

json to_value(const std::vector<machine_volume>& volumes) {
  if (volumes.empty())
    return absent();
  json out = json::array();
  for (const auto& v : volumes)
    out.push_back(to_value(v));
  return out;
}

json to_value(const machine_resources& x) {
  json out{{"vcpus", x.vcpus}, {"memory", x.memory}, {"seconds", x.seconds}};
  if (x.published_ports.empty()) {
    out["published_ports"] = absent();
  } else {
    json ports = json::array();
    for (const auto& p : x.published_ports)
      ports.push_back(json{{"protocol", p.protocol}, {"port", p.port}});
    out["published_ports"] = std::move(ports);
  }
  return out;
}

json to_value(const std::map<std::string, std::string>& variables) {
  if (variables.empty())
    return absent();
  json out = json::object();
  for (const auto& [key, value] : variables)
    out[key] = value;
  return out;
}

json to_value(const std::optional<payment_info>& x) {
  if (!x)
    return absent();
  return json{{"chain", or_absent(x->chain)}, {"receiver", or_absent(x->receiver)}, {"type", x->type}};
}

json to_value(const std::optional<host_requirements>& x) {
  if (!x)
    return absent();
  json out = json::object();
  if (x->cpu) {
    out["cpu"] = json{{"architecture", or_absent(x->cpu->architecture)},
                      {"vendor", or_absent(x->cpu->vendor)},
                      {"features", strings_or_absent(x->cpu->features)}};
  } else {
    out["cpu"] = absent();
  }
  if (x->node) {
    out["node"] = json{{"owner", or_absent(x->node->owner)},
                       {"address_regex", or_absent(x->node->address_regex)},
                       {"node_hash", or_absent(x->node->node_hash)},
                       {"terms_and_conditions", or_absent(x->node->terms_and_conditions)}};
  } else {
    out["node"] = absent();
  }
  if (x->gpu.empty()) {
    out["gpu"] = absent();
  } else {
    json gpus = json::array();
    for (const auto& g : x->gpu)
      gpus.push_back(json{{"vendor", g.vendor},
                          {"device_name", g.device_name},
                          {"device_class", g.device_class},
                          {"device_id", g.device_id}});
    out["gpu"] = std::move(gpus);
  }
  return out;
}

template <class Content>
void write_executable_common(const Content& x, json& out) {
  out["address"] = x.address;
  out["time"] = x.time;
  out["allow_amend"] = x.allow_amend;
  out["metadata"] = object_or_absent(x.metadata);
  out["authorized_keys"] = strings_or_absent(x.authorized_keys);
  out["variables"] = to_value(x.variables);
  out["resources"] = to_value(x.resources);
  out["payment"] = to_value(x.payment);
  out["requirements"] = to_value(x.requirements);
  out["volumes"] = to_value(x.volumes);
  out["replaces"] = or_absent(x.replaces);
}

json to_value(const program_content& x) {
  json out = json::object();
  out["type"] = x.type;
  write_executable_common(x, out);
  out["code"] = json{{"encoding", x.code.encoding},
                     {"entrypoint", x.code.entrypoint},
                     {"ref", x.code.ref},
                     {"interface", or_absent(x.code.interface)},
                     {"args", strings_or_absent(x.code.args)},
                     {"use_latest", x.code.use_latest}};
  out["on"] = json{{"http", x.on.http}, {"persistent", x.on.persistent}, {"message", object_or_absent(x.on.message)}};
  out["environment"] = json{{"reproducible", x.environment.reproducible},
                            {"internet", x.environment.internet},
                            {"aleph_api", x.environment.aleph_api},
                            {"shared_cache", x.environment.shared_cache}};
  if (x.runtime) {
    out["runtime"] = json{{"ref", x.runtime->ref},
                          {"use_latest", x.runtime->use_latest},
                          {"comment", x.runtime->comment}};
  } else {
    out["runtime"] = absent();
  }
  if (x.data) {
    out["data"] = json{{"encoding", x.data->encoding},
                       {"mount", x.data->mount},
                       {"ref", x.data->ref},
                       {"use_latest", x.data->use_latest}};
  } else {
    out["data"] = absent();
  }
  out["export"] = x.data_export
                    ? json{{"encoding", x.data_export->encoding}, {"mount", x.data_export->mount}}
                    : absent();
  return out;
}

json to_value(const instance_content& x) {
  json out = json::object();
  write_executable_common(x, out);
  json env{{"internet", x.environment.internet},
           {"aleph_api", x.environment.aleph_api},
           {"hypervisor", or_absent(x.environment.hypervisor)},
           {"reproducible", x.environment.reproducible},
           {"shared_cache", x.environment.shared_cache}};
  if (const auto& tee = x.environment.trusted_execution)
    env["trusted_execution"] = json{{"firmware", or_absent(tee->firmware)}, {"policy", tee->policy}};
  else
    env["trusted_execution"] = absent();
  out["environment"] = std::move(env);
  out["rootfs"] = json{{"parent", to_value(x.rootfs.parent)},
                       {"persistence", x.rootfs.persistence},
                       {"size_mib", x.rootfs.size_mib}};
  return out;
}

json to_value(const store_content& x) {
  json out = json::object();
  out["address"] = x.address;
  out["time"] = x.time;
  out["item_type"] = x.item_type;
  out["item_hash"] = x.item_hash;
  out["size"] = or_absent(x.size);
  out["content_type"] = or_absent(x.content_type);
  out["ref"] = or_absent(x.ref);
  out["metadata"] = object_or_absent(x.metadata);
  return out;
}

json to_value(const forget_content& x) {
  json out = json::object();
  out["address"] = x.address;
  out["time"] = x.time;
  out["hashes"] = x.hashes;
  out["aggregates"] = strings_or_absent(x.aggregates);
  out["reason"] = or_absent(x.reason);
  return out;
}

bool is_empty_placeholder(const json& value) {
  return value.is_null() || (value.is_structured() && value.empty());
}

// The original content with the model written over it: original key order and unmodelled keys
// survive, and a value the model agrees with is kept as written (30 stays 30, not 30.0). Where
// the original has nothing to merge into, this just drops the model's absent markers.
json overlay(const json& original, const json& model) {
  if (model.is_object()) {
    static const json no_object = json::object();
    const json& base = original.is_object() ? original : no_object;
    json out = json::object();
    for (const auto& [key, value] : base.items()) {
      auto it = model.find(key);
      if (it == model.end())
        out[key] = value;
      else if (it->is_discarded())
        out[key] = is_empty_placeholder(value) ? value : json(nullptr);
      else
        out[key] = overlay(value, *it);
    }
    for (const auto& [key, value] : model.items())
      if (!value.is_discarded() && !base.contains(key))
        out[key] = overlay(json(), value);
    return out;
  }
  if (model.is_array()) {
    const bool aligned = original.is_array() && original.size() == model.size();
    json out = json::array();
    for (std::size_t i = 0; i < model.size(); ++i)
      out.push_back(overlay(aligned ? original[i] : json(), model[i]));
    return out;
  }
  if (original == model)
    return original;
  return model;
}

// ---- Python-compatible JSON text -------------------------------------------------------------

void write_u_escape(std::string& out, uint32_t unit) {
  static constexpr char hex[] = "0123456789abcdef";
  out += "\\u";
  out += hex[(unit >> 12) & 0xF];
  out += hex[(unit >> 8) & 0xF];
  out += hex[(unit >> 4) & 0xF];
  out += hex[unit & 0xF];
}

// Decodes one UTF-8 sequence at `i`; on success returns the code point and advances `i`.
std::optional<uint32_t> decode_utf8(std::string_view s, std::size_t& i) {
  auto lead = static_cast<unsigned char>(s[i]);
  std::size_t length = 0;
  uint32_t cp = 0;
  uint32_t minimum = 0;
  if ((lead & 0xE0) == 0xC0) {
    length = 2, cp = lead & 0x1F, minimum = 0x80;
  } else if ((lead & 0xF0) == 0xE0) {
    length = 3, cp = lead & 0x0F, minimum = 0x800;
  } else if ((lead & 0xF8) == 0xF0) {
    length = 4, cp = lead & 0x07, minimum = 0x10000;
  } else {
    return std::nullopt;
  }
  if (i + length > s.size())
    return std::nullopt;
  for (std::size_t k = 1; k < length; ++k) {
    auto next = static_cast<unsigned char>(s[i + k]);
    if ((next & 0xC0) != 0x80)
      return std::nullopt;
    cp = (cp << 6) | (next & 0x3F);
  }
  if (cp < minimum || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
    return std::nullopt;
  i += length;
  return cp;
}

void write_python_string(std::string& out, std::string_view s) {
  out += '"';
  std::size_t i = 0;
  while (i < s.size()) {
    auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      switch (c) {
        case '"': out += "\\\""; break;
        case '\\': out += "\\\\"; break;
        case '\n': out += "\\n"; break;
        case '\r': out += "\\r"; break;
        case '\t': out += "\\t"; break;
        case '\b': out += "\\b"; break;
        case '\f': out += "\\f"; break;
        default:
          if (c < 0x20 || c == 0x7F)
            write_u_escape(out, c);
          else
            out += static_cast<char>(c);
      }
      ++i;
      continue;
    }
    auto cp = decode_utf8(s, i);
    if (!cp) {
      write_u_escape(out, 0xFFFD);
      ++i;
    } else if (*cp >= 0x10000) {
      uint32_t v = *cp - 0x10000;
      write_u_escape(out, 0xD800 + (v >> 10));
      write_u_escape(out, 0xDC00 + (v & 0x3FF));
    } else {
      write_u_escape(out, *cp);
    }
  }
  out += '"';
}

// Python's float repr: the shortest digits that round-trip, positional when the decimal
// exponent is in [-4, 16), scientific otherwise, and ".0" on integral positional values.
void write_python_float(std::string& out, double x) {
  if (std::isnan(x)) {
    out += "NaN";
    return;
  }
  if (std::isinf(x)) {
    out += x < 0 ? "-Infinity" : "Infinity";
    return;
  }
  if (x == 0) {
    out += std::signbit(x) ? "-0.0" : "0.0";
    return;
  }
  std::array<char, 64> buffer{};
  auto result = std::to_chars(buffer.data(), buffer.data() + buffer.size(), x,
                              std::chars_format::scientific);
  std::string_view text(buffer.data(), static_cast<std::size_t>(result.ptr - buffer.data()));
  if (text.front() == '-') {
    out += '-';
    text.remove_prefix(1);
  }
  auto e = text.find('e');
  std::string digits;
  for (char c : text.substr(0, e))
    if (c != '.')
      digits += c;
  auto exponent_text = text.substr(e + 1);
  bool negative_exponent = exponent_text.front() == '-';
  if (exponent_text.front() == '-' || exponent_text.front() == '+')
    exponent_text.remove_prefix(1);
  int exponent = 0;
  std::from_chars(exponent_text.data(), exponent_text.data() + exponent_text.size(), exponent);
  if (negative_exponent)
    exponent = -exponent;
  const int point = exponent + 1; // digits before the decimal point
  const int count = static_cast<int>(digits.size());
  if (point > -4 && point <= 16) {
    if (point <= 0) {
      out += "0.";
      out.append(static_cast<std::size_t>(-point), '0');
      out += digits;
    } else if (point >= count) {
      out += digits;
      out.append(static_cast<std::size_t>(point - count), '0');
      out += ".0";
    } else {
      out.append(digits, 0, static_cast<std::size_t>(point));
      out += '.';
      out.append(digits, static_cast<std::size_t>(point));
    }
    return;
  }
  out += digits[0];
  if (count > 1) {
    out += '.';
    out.append(digits, 1);
  }
  out += 'e';
  out += exponent < 0 ? '-' : '+';
  auto magnitude = std::to_string(exponent < 0 ? -exponent : exponent);
  if (magnitude.size() < 2)
    out += '0';
  out += magnitude;
}

void write_python_json(std::string& out, const json& value) {
  switch (value.type()) {
    case json::value_t::object: {
      out += '{';
      bool first = true;
      for (const auto& [key, item] : value.items()) {
        if (!first)
          out += ',';
        first = false;
        write_python_string(out, key);
        out += ':';
        write_python_json(out, item);
      }
      out += '}';
      break;
    }
    case json::value_t::array: {
      out += '[';
      bool first = true;
      for (const auto& item : value) {
        if (!first)
          out += ',';
        first = false;
        write_python_json(out, item);
      }
      out += ']';
      break;
    }
    case json::value_t::string:
      write_python_string(out, value.get_ref<const std::string&>());
      break;
    case json::value_t::boolean:
      out += value.get<bool>() ? "true" : "false";
      break;
    case json::value_t::number_integer:
      out += std::to_string(value.get<int64_t>());
      break;
    case json::value_t::number_unsigned:
      out += std::to_string(value.get<uint64_t>());
      break;
    case json::value_t::number_float:
      write_python_float(out, value.get<double>());
      break;
    case json::value_t::binary:
    case json::value_t::discarded:
    case json::value_t::null:
      out += "null";
      break;
  }
}

// ---- the message envelope --------------------------------------------------------------------

message parse_envelope(const json& doc) {
  if (!doc.is_object())
    reject("", "must be an object");
  message msg;

  const auto& type_value = require(doc, "", "type");
  if (!type_value.is_string())
    reject("type", "must be a string");
  auto type = parse_message_type(type_value.get_ref<const std::string&>());
  if (!type)
    reject("type", "must be one of POST, AGGREGATE, STORE, PROGRAM, INSTANCE, FORGET");
  msg.type = *type;

  msg.chain = req_string(doc, "", "chain");
  if (msg.chain.empty())
    reject("chain", "must not be empty");
  msg.sender = req_string(doc, "", "sender");
  if (msg.sender.empty())
    reject("sender", "must not be empty");
  msg.channel = opt_string(doc, "", "channel", max_channel_length).value_or("");
  msg.signature = opt_string(doc, "", "signature").value_or("");

  if (const auto* time = get(doc, "time")) {
    if (time->is_number()) {
      msg.time = time->get<double>();
      if (!std::isfinite(msg.time))
        reject("time", "must be a finite number");
    } else if (time->is_string()) {
      const auto& text = time->get_ref<const std::string&>();
      auto parsed = parse_iso8601(text);
      if (!parsed)
        reject("time", "must be a number or an ISO-8601 date");
      msg.time = *parsed;
      msg.time_text = text;
    } else {
      reject("time", "must be a number or an ISO-8601 date");
    }
  }

  if (const auto* hash_type = get(doc, "hash_type"))
    as_enum(*hash_type, "hash_type", {"sha256"});

  const auto* item_content = get(doc, "item_content");
  const auto* content = get(doc, "content");
  msg.item_type = opt_enum(doc, "", "item_type", {"inline", "storage", "ipfs"}).value_or("inline");
  const bool is_inline = msg.item_type == "inline";
  auto given_hash = opt_string(doc, "", "item_hash");

  if (item_content != nullptr) {
    msg.item_content = as_string(*item_content, "item_content");
    if (!is_inline)
      reject("item_content", "must be absent unless item_type is inline");
    if (!text_within_depth(msg.item_content, max_json_depth))
      throw rejection{too_deep("item_content")};
    auto parsed = parse_text(msg.item_content);
    if (!parsed)
      reject("item_content", "is not valid JSON");
    if (!parsed->is_object())
      reject("item_content", "must be a JSON object");
    msg.raw_content = std::move(*parsed);
    msg.item_hash = sha256_hex(msg.item_content);
    if (given_hash && *given_hash != msg.item_hash)
      reject("item_hash", "does not match sha256 of item_content");
  } else if (content != nullptr) {
    expect_object(*content, "content");
    msg.raw_content = *content;
    if (is_inline) {
      msg.item_content = python_compact_json(msg.raw_content);
      msg.item_hash = sha256_hex(msg.item_content);
      if (given_hash && *given_hash != msg.item_hash)
        reject("item_hash", "does not match sha256 of content");
    } else {
      if (!given_hash)
        reject("item_hash", "is required");
      if (msg.item_type == "storage" ? !is_lower_hex_64(*given_hash) : !is_item_hash(*given_hash))
        reject("item_hash", "must be an item hash");
      msg.item_hash = *given_hash;
    }
  } else {
    reject("content", "is required");
  }

  switch (msg.type) {
    case message_type::program:
      msg.content = parse_program(msg.raw_content, "content");
      break;
    case message_type::instance:
      msg.content = parse_instance(msg.raw_content, "content");
      break;
    case message_type::store:
      msg.content = parse_store(msg.raw_content, "content");
      break;
    case message_type::forget:
      msg.content = parse_forget(msg.raw_content, "content");
      break;
    case message_type::post:
    case message_type::aggregate:
      break;
  }

  static constexpr std::array<std::string_view, 10> modelled{
    "chain", "sender", "type", "channel", "signature",
    "time", "item_type", "item_hash", "item_content", "content"};
  for (const auto& [key, value] : doc.items())
    if (std::find(modelled.begin(), modelled.end(), key) == modelled.end())
      msg.extras[key] = value;
  return msg;
}

} // namespace

std::string owner_of(std::string_view message_json) {
  auto doc = nlohmann::json::parse(message_json, nullptr, false);
  if (!doc.is_object())
    return {};
  if (auto c = doc.find("content"); c != doc.end() && c->is_object())
    if (auto a = c->find("address"); a != c->end() && a->is_string() && !a->get<std::string>().empty())
      return a->get<std::string>();
  if (auto s = doc.find("sender"); s != doc.end() && s->is_string())
    return s->get<std::string>();
  return {};
}

std::string_view to_string(message_type x) {
  switch (x) {
    case message_type::post: return "POST";
    case message_type::aggregate: return "AGGREGATE";
    case message_type::store: return "STORE";
    case message_type::program: return "PROGRAM";
    case message_type::instance: return "INSTANCE";
    case message_type::forget: return "FORGET";
  }
  return "POST";
}

std::optional<message_type> parse_message_type(std::string_view text) {
  for (auto x : {message_type::post, message_type::aggregate, message_type::store,
                 message_type::program, message_type::instance, message_type::forget})
    if (to_string(x) == text)
      return x;
  return std::nullopt;
}

bool is_item_hash(std::string_view text) {
  auto all_of = [&](std::string_view part, std::string_view alphabet) {
    return part.find_first_not_of(alphabet) == std::string_view::npos;
  };
  if (is_lower_hex_64(text))
    return true;
  if (text.starts_with("Qm") && text.size() >= 44 && text.size() <= 46
      && all_of(text.substr(2), "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"))
    return true;
  return text.starts_with("bafy") && text.size() == 59
         && all_of(text.substr(4), "abcdefghijklmnopqrstuvwxyz234567");
}

parse_result parse_message(std::string_view json_text) {
  if (!text_within_depth(json_text, max_json_depth))
    return {std::nullopt, too_deep("")};
  auto doc = parse_text(json_text);
  if (!doc)
    return {std::nullopt, {"", "is not valid JSON"}};
  return parse_message(*doc);
}

parse_result parse_message(const nlohmann::ordered_json& doc) {
  try {
    if (!value_within_depth(doc, max_json_depth))
      return {std::nullopt, too_deep("")};
    return {parse_envelope(doc), {}};
  } catch (const rejection& r) {
    return {std::nullopt, r.error};
  } catch (const std::exception&) {
    // Only resource exhaustion gets here; the validators check every type they read.
    return {std::nullopt, {"", "could not be processed"}};
  }
}

nlohmann::ordered_json content_to_json(const message& msg) {
  return std::visit(
    [&](const auto& x) -> json {
      using T = std::decay_t<decltype(x)>;
      if constexpr (std::is_same_v<T, std::monostate>)
        return msg.raw_content.is_object() ? msg.raw_content : json::object();
      else
        return overlay(msg.raw_content.is_object() ? msg.raw_content : json::object(),
                       to_value(x));
    },
    msg.content);
}

nlohmann::ordered_json to_json(const message& msg) {
  json out = json::object();
  out["chain"] = msg.chain;
  out["sender"] = msg.sender;
  out["type"] = std::string{to_string(msg.type)};
  if (!msg.channel.empty())
    out["channel"] = msg.channel;
  if (!msg.signature.empty())
    out["signature"] = msg.signature;
  out["time"] = msg.time_text.empty() ? json(msg.time) : json(msg.time_text);
  const auto item_type = msg.item_type.empty() ? std::string{"inline"} : msg.item_type;
  out["item_type"] = item_type;
  auto content = content_to_json(msg);
  if (item_type == "inline") {
    if (msg.item_content.empty()) {
      auto text = python_compact_json(content);
      out["item_hash"] = sha256_hex(text);
      out["item_content"] = std::move(text);
    } else {
      out["item_hash"] = msg.item_hash;
      out["item_content"] = msg.item_content;
    }
  } else {
    out["item_hash"] = msg.item_hash;
  }
  out["content"] = std::move(content);
  if (msg.extras.is_object())
    for (const auto& [key, value] : msg.extras.items())
      if (!out.contains(key))
        out[key] = value;
  return out;
}

std::string sha256_hex(std::string_view bytes) {
  std::array<unsigned char, EVP_MAX_MD_SIZE> digest{};
  unsigned int length = 0;
  if (EVP_Digest(bytes.data(), bytes.size(), digest.data(), &length, EVP_sha256(), nullptr) != 1)
    return {};
  static constexpr char hex[] = "0123456789abcdef";
  std::string out;
  out.reserve(length * 2);
  for (unsigned int i = 0; i < length; ++i) {
    out += hex[digest[i] >> 4];
    out += hex[digest[i] & 0xF];
  }
  return out;
}

std::string python_compact_json(const nlohmann::ordered_json& value) {
  std::string out;
  write_python_json(out, value);
  return out;
}

std::optional<workload_spec> workload_of(const message& msg) {
  auto volume_disk = [](const std::vector<machine_volume>& volumes) {
    uint64_t total = 0;
    for (const auto& v : volumes) {
      if (const auto* e = std::get_if<ephemeral_volume>(&v))
        total += e->size_mib;
      else if (const auto* p = std::get_if<persistent_volume>(&v))
        total += p->size_mib;
    }
    return total;
  };
  workload_spec spec;
  spec.item_hash = msg.item_hash;
  spec.type = msg.type;
  if (const auto* program = std::get_if<program_content>(&msg.content)) {
    spec.owner = program->address;
    spec.persistent = program->on.persistent;
    spec.on_demand = program->on.http;
    spec.vcpus = program->resources.vcpus;
    spec.memory_mib = program->resources.memory;
    spec.disk_mib = volume_disk(program->volumes);
  } else if (const auto* instance = std::get_if<instance_content>(&msg.content)) {
    spec.owner = instance->address;
    spec.persistent = true;
    spec.vcpus = instance->resources.vcpus;
    spec.memory_mib = instance->resources.memory;
    spec.disk_mib = instance->rootfs.size_mib + volume_disk(instance->volumes);
  } else {
    return std::nullopt;
  }
  if (spec.owner.empty())
    spec.owner = msg.sender;
  return spec;
}

} // namespace alephd::aleph
