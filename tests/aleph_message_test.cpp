#include "messages/aleph_message.hpp"

#include <algorithm>
#include <cstdint>
#include <fstream>
#include <functional>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#ifndef ALEPHD_PEER_DATA_DIR
#  error "ALEPHD_PEER_DATA_DIR must name the peer-data/aleph-message folder"
#endif

using namespace alephd::aleph;
using json = nlohmann::ordered_json;

namespace {

std::string read_peer_file(const std::string& name) {
  std::ifstream in(std::string{ALEPHD_PEER_DATA_DIR} + "/" + name, std::ios::binary);
  EXPECT_TRUE(in.good()) << "cannot open " << name;
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

json load(const std::string& name) {
  return json::parse(read_peer_file(name));
}

message parse_ok(std::string_view text) {
  auto result = parse_message(text);
  EXPECT_TRUE(result.ok()) << result.error.field << ": " << result.error.reason;
  return result.ok() ? *result.msg : message{};
}

// Parses a peer file after editing its `content` object.
parse_result parse_edited(const std::string& name, const std::function<void(json&)>& edit) {
  auto doc = load(name);
  edit(doc["content"]);
  return parse_message(doc);
}

void expect_rejected(const parse_result& result, const std::string& field,
                     const std::string& reason) {
  ASSERT_FALSE(result.ok()) << "expected " << field << " to be rejected";
  EXPECT_EQ(result.error.field, field);
  EXPECT_EQ(result.error.reason, reason);
}

bool is_hex64(const std::string& text) {
  return text.size() == 64
         && text.find_first_not_of("0123456789abcdef") == std::string::npos;
}

// True when every key and value of `part` appears unchanged in `whole` (recursively).
bool contained_in(const json& part, const json& whole) {
  if (part.is_object()) {
    if (!whole.is_object())
      return false;
    for (const auto& [key, value] : part.items())
      if (!whole.contains(key) || !contained_in(value, whole[key]))
        return false;
    return true;
  }
  if (part.is_array()) {
    if (!whole.is_array() || whole.size() != part.size())
      return false;
    for (std::size_t i = 0; i < part.size(); ++i)
      if (!contained_in(part[i], whole[i]))
        return false;
    return true;
  }
  return part == whole && part.type() == whole.type();
}

const std::string hash_a = std::string(64, 'a');

// The item_hash Python derives from each file (sha256 of json.dumps(content, separators=(",",":"))),
// or the file's own item_hash when it carries item_content.
const std::vector<std::pair<std::string, std::string>> peer_files{
  {"forget.json", "e0c2de6f48832cf68502512316088b69eebba9e4443dc47dee45740791be7c7d"},
  {"instance_confidential_machine.json",
   "d565f8d10a3d62dd36feea428ac1a5db27fed4f32013258ed82afa7842ccc7cd"},
  {"instance_content.json", "b28fa9a9ede14c9bbd6fde8959be07cfd25a3358d08e01405301adc5a1a2b2c8"},
  {"instance_gpu_machine.json", "cc96b1b00e221ef359c786aaa70e9a47bf28dee1573110903bf9f2aa1c0d1511"},
  {"instance_machine.json", "e80199452c1af282bd90c8f49de04b215f99bdc00360e0c534fff26a00bfab3a"},
  {"machine.json", "7709affb0e042034b0723cd6967252f07eb0a45f7d849c888de3ba9cb4396c14"},
  {"machine_named.json", "2a27884d11fe16efdacf22a6a0e41ba0454ff598bb8fcbcbead5a6b306f8851c"},
};

} // namespace

TEST(aleph_message, message_type_names_round_trip) {
  for (auto x : {message_type::post, message_type::aggregate, message_type::store,
                 message_type::program, message_type::instance, message_type::forget})
    EXPECT_EQ(parse_message_type(to_string(x)), x);
  EXPECT_EQ(to_string(message_type::instance), "INSTANCE");
  EXPECT_EQ(parse_message_type("program"), std::nullopt);
  EXPECT_EQ(parse_message_type(""), std::nullopt);
}

TEST(aleph_message, sha256_hex_matches_known_digests) {
  EXPECT_EQ(sha256_hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST(aleph_message, python_json_writes_floats_as_repr) {
  const std::vector<std::pair<double, std::string>> cases{
    {1e-05, "1e-05"},
    {1e16, "1e+16"},
    {1.0, "1.0"},
    {0.1, "0.1"},
    {123456789012345680.0, "1.2345678901234568e+17"},
    {-0.0, "-0.0"},
    {0.0, "0.0"},
    {1e15, "1000000000000000.0"},
    {0.0001, "0.0001"},
    {2.5e-7, "2.5e-07"},
    {100.0, "100.0"},
    {1e100, "1e+100"},
    {-1.5, "-1.5"},
    {5e-324, "5e-324"},
    {1.7976931348623157e308, "1.7976931348623157e+308"},
    {1732118563.2142403, "1732118563.2142403"},
    {1619017773.8950517, "1619017773.8950517"},
  };
  for (const auto& [value, text] : cases)
    EXPECT_EQ(python_compact_json(json(value)), text) << text;
  EXPECT_EQ(python_compact_json(json(42)), "42");
  EXPECT_EQ(python_compact_json(json(-7)), "-7");
  EXPECT_EQ(python_compact_json(json(UINT64_MAX)), "18446744073709551615");
}

TEST(aleph_message, python_json_escapes_strings_like_json_dumps) {
  EXPECT_EQ(python_compact_json(json("é")), R"("\u00e9")");
  EXPECT_EQ(python_compact_json(json("😀")), R"("\ud83d\ude00")");
  EXPECT_EQ(python_compact_json(json("a\nb\tc\r\b\f")), R"("a\nb\tc\r\b\f")");
  EXPECT_EQ(python_compact_json(json(std::string("\x1f\x7f\x00", 3))),
            R"("\u001f\u007f\u0000")");
  EXPECT_EQ(python_compact_json(json(R"(q"b\s/)")), R"("q\"b\\s/")");
  EXPECT_EQ(python_compact_json(json("日本")), R"("\u65e5\u672c")");
  // Only values built in code can hold bad UTF-8; they must still give valid output.
  EXPECT_EQ(python_compact_json(json(std::string("x\xff", 2))), R"("x\ufffd")");
}

TEST(aleph_message, python_json_keeps_document_order_and_nesting) {
  auto value = json::parse(R"({"z":[[],{}],"ключ":{"b":null,"a":[1,2.0,true,false]},"a":"x"})");
  EXPECT_EQ(python_compact_json(value),
            R"({"z":[[],{}],"\u043a\u043b\u044e\u0447":{"b":null,"a":[1,2.0,true,false]},"a":"x"})");
}

TEST(aleph_message, every_peer_file_parses_with_the_python_item_hash) {
  for (const auto& [name, hash] : peer_files) {
    SCOPED_TRACE(name);
    auto msg = parse_ok(read_peer_file(name));
    EXPECT_TRUE(is_hex64(msg.item_hash));
    EXPECT_EQ(msg.item_hash, hash);
    EXPECT_EQ(msg.item_hash, sha256_hex(msg.item_content));
    EXPECT_EQ(msg.item_type, "inline");
    EXPECT_EQ(msg.chain, "ETH");
  }
}

TEST(aleph_message, content_only_files_get_item_content_from_the_formatter) {
  auto doc = load("machine.json");
  auto msg = parse_ok(doc.dump());
  EXPECT_EQ(msg.item_content, python_compact_json(doc["content"]));
  EXPECT_EQ(msg.raw_content, doc["content"]);
  EXPECT_EQ(json::parse(msg.item_content), doc["content"]);
}

TEST(aleph_message, instance_content_file_hash_and_formatter_round_trip) {
  auto doc = load("instance_content.json");
  const auto item_content = doc["item_content"].get<std::string>();
  EXPECT_EQ(sha256_hex(item_content), doc["item_hash"].get<std::string>());
  // Proves the formatter on real data, floats such as 1732118563.2142403 included.
  EXPECT_EQ(python_compact_json(json::parse(item_content)), item_content);

  auto msg = parse_ok(doc.dump());
  EXPECT_EQ(msg.item_content, item_content);
  EXPECT_EQ(msg.item_hash, "b28fa9a9ede14c9bbd6fde8959be07cfd25a3358d08e01405301adc5a1a2b2c8");
  // The content comes from item_content (no null placeholders), not from the `content` field.
  EXPECT_FALSE(msg.raw_content.contains("variables"));
  const auto& instance = std::get<instance_content>(msg.content);
  EXPECT_EQ(instance.resources.memory, 2048u);
  EXPECT_EQ(instance.rootfs.size_mib, 10240u);
  EXPECT_DOUBLE_EQ(instance.time, 1732118563.2142403);
  ASSERT_TRUE(instance.payment);
  EXPECT_EQ(instance.payment->type, "superfluid");
  EXPECT_EQ(instance.payment->chain, "BASE");
}

TEST(aleph_message, iso_time_is_read_and_written_back_as_given) {
  auto msg = parse_ok(read_peer_file("instance_content.json"));
  EXPECT_DOUBLE_EQ(msg.time, 1732118563.21439);
  EXPECT_EQ(msg.time_text, "2024-11-20T16:02:43.214390+00:00");
  EXPECT_EQ(to_json(msg)["time"], "2024-11-20T16:02:43.214390+00:00");

  auto doc = load("forget.json");
  doc["time"] = "2021-04-21T15:09:33Z";
  auto zulu = parse_ok(doc.dump());
  EXPECT_DOUBLE_EQ(zulu.time, 1619017773.0);
  doc["time"] = "2021-04-21T17:09:33+02:00";
  EXPECT_DOUBLE_EQ(parse_ok(doc.dump()).time, 1619017773.0);
  doc["time"] = "2021-02-30T00:00:00Z";
  expect_rejected(parse_message(doc), "time", "must be a number or an ISO-8601 date");
  doc["time"] = true;
  expect_rejected(parse_message(doc), "time", "must be a number or an ISO-8601 date");
}

TEST(aleph_message, program_fields_are_modelled) {
  auto msg = parse_ok(read_peer_file("machine.json"));
  EXPECT_EQ(msg.type, message_type::program);
  EXPECT_EQ(msg.channel, "Fun-dApps");
  EXPECT_DOUBLE_EQ(msg.time, 1619017773.8950577);
  EXPECT_TRUE(msg.time_text.empty());
  EXPECT_EQ(msg.extras["confirmed"], true);
  EXPECT_EQ(msg.extras["size"], 749);
  EXPECT_EQ(msg.extras["_id"]["$oid"], "6080402d7f44efefd611dc1e");

  const auto& p = std::get<program_content>(msg.content);
  EXPECT_EQ(p.type, "vm-function");
  EXPECT_EQ(p.address, "0x9319Ad3B7A8E0eE24f2E639c40D8eD124C5520Ba");
  EXPECT_EQ(p.code.encoding, "zip");
  EXPECT_EQ(p.code.entrypoint, "example_fastapi_2:app");
  EXPECT_EQ(p.code.ref, "7eb2eca2378ea8855336ed76c8b26219f1cb90234d04441de9cf8cb1c649d003");
  EXPECT_FALSE(p.code.interface);
  EXPECT_TRUE(p.on.http);
  EXPECT_FALSE(p.on.persistent);
  ASSERT_TRUE(p.on.message.is_array());
  EXPECT_EQ(p.on.message.size(), 2u);
  EXPECT_EQ(p.variables.at("VM_CUSTOM_VARIABLE_2"), "32");
  EXPECT_EQ(p.resources.vcpus, 1u);
  EXPECT_EQ(p.resources.memory, 128u);
  EXPECT_EQ(p.resources.seconds, 30u);
  ASSERT_TRUE(p.runtime);
  EXPECT_FALSE(p.runtime->use_latest);
  EXPECT_EQ(p.runtime->comment, "Aleph Alpine Linux with Python 3.8");
  ASSERT_TRUE(p.data);
  EXPECT_EQ(p.data->mount, "/data");
  ASSERT_TRUE(p.data_export);
  EXPECT_EQ(p.data_export->encoding, "zip");
  ASSERT_TRUE(p.requirements && p.requirements->cpu);
  EXPECT_EQ(p.requirements->cpu->architecture, "x86_64");
  EXPECT_EQ(p.replaces, "0x9319Ad3B7A8E0eE24f2E639c40D8eD124C5520Ba");

  ASSERT_EQ(p.volumes.size(), 5u);
  const auto& venv = std::get<immutable_volume>(p.volumes[0]);
  EXPECT_EQ(venv.mount, "/opt/venv");
  EXPECT_FALSE(venv.use_latest);
  EXPECT_EQ(std::get<ephemeral_volume>(p.volumes[1]).size_mib, 5u);
  const auto& sqlite = std::get<persistent_volume>(p.volumes[2]);
  EXPECT_EQ(sqlite.persistence, "host");
  EXPECT_EQ(sqlite.name, "sqlite-data");
  EXPECT_EQ(sqlite.size_mib, 10u);
  EXPECT_EQ(std::get<persistent_volume>(p.volumes[3]).persistence, "store");
  EXPECT_FALSE(std::get<persistent_volume>(p.volumes[4]).mount);

  auto named = parse_ok(read_peer_file("machine_named.json"));
  EXPECT_EQ(std::get<program_content>(named.content).metadata["name"], "test");
}

TEST(aleph_message, instance_fields_are_modelled) {
  auto confidential = parse_ok(read_peer_file("instance_confidential_machine.json"));
  const auto& c = std::get<instance_content>(confidential.content);
  EXPECT_EQ(c.environment.hypervisor, "qemu");
  ASSERT_TRUE(c.environment.trusted_execution);
  EXPECT_EQ(c.environment.trusted_execution->policy, 1u);
  EXPECT_EQ(c.environment.trusted_execution->firmware,
            "e258d248fda94c63753607f7c4494ee0fcbe92f1a76bfdac795c9d84101eb317");
  EXPECT_EQ(c.rootfs.parent.ref, "549ec451d9b099cad112d4aaa2c00ac40fb6729a92ff252ff22eef0b5c3cb613");
  EXPECT_TRUE(c.rootfs.parent.use_latest);
  EXPECT_EQ(c.rootfs.persistence, "host");
  EXPECT_EQ(c.rootfs.size_mib, 20000u);
  EXPECT_EQ(c.authorized_keys.size(), 3u);
  ASSERT_TRUE(c.requirements && c.requirements->node);
  EXPECT_EQ(c.requirements->node->node_hash,
            "4d4db19afca380fdf06ba7f916153d0f740db9de9eee23ad26ba96a90d8a2920");

  auto gpu = parse_ok(read_peer_file("instance_gpu_machine.json"));
  const auto& g = std::get<instance_content>(gpu.content);
  ASSERT_TRUE(g.requirements);
  ASSERT_EQ(g.requirements->gpu.size(), 1u);
  EXPECT_EQ(g.requirements->gpu[0].device_name, "NVIDIA H100");
  EXPECT_EQ(g.requirements->gpu[0].device_class, "0300");
  EXPECT_FALSE(g.environment.trusted_execution);
}

TEST(aleph_message, to_json_round_trip_keeps_the_model_and_the_content) {
  for (const auto& [name, hash] : peer_files) {
    SCOPED_TRACE(name);
    auto first = parse_ok(read_peer_file(name));
    auto out = to_json(first);
    auto again = parse_message(out);
    ASSERT_TRUE(again.ok()) << again.error.field << ": " << again.error.reason;
    EXPECT_EQ(*again.msg, first);
    auto from_text = parse_message(out.dump());
    ASSERT_TRUE(from_text.ok());
    EXPECT_EQ(*from_text.msg, first);
    EXPECT_EQ(out["item_hash"], hash);
    // Nothing of the original content is lost or changed; defaulted fields may be added.
    EXPECT_TRUE(contained_in(first.raw_content, out["content"])) << out["content"].dump();
  }
  auto out = to_json(parse_ok(read_peer_file("instance_confidential_machine.json")));
  EXPECT_EQ(out["content"]["resources"]["vcpus"], 1);
  EXPECT_EQ(out["content"]["rootfs"]["size_mib"], 20000);
  EXPECT_EQ(out["content"]["volumes"][1]["size_mib"], 5);
  EXPECT_EQ(out["content"]["variables"]["VM_CUSTOM_VARIABLE"], "SOMETHING");
  EXPECT_EQ(out["confirmations"][0]["height"], 12284734);

  // Values the model agrees with are written as the original had them, so the content of
  // to_json still hashes to item_hash (an integral time stays an integer, not 1619017773.0).
  auto payg = parse_ok(read_peer_file("instance_content.json"));
  EXPECT_EQ(python_compact_json(to_json(payg)["content"]), payg.item_content);
  auto doc = load("forget.json");
  doc["content"]["time"] = 1619017773;
  auto forget = parse_ok(doc.dump());
  EXPECT_EQ(python_compact_json(to_json(forget)["content"]), forget.item_content);
  EXPECT_EQ(sha256_hex(python_compact_json(to_json(forget)["content"])), forget.item_hash);
}

TEST(aleph_message, to_json_writes_model_changes_and_keeps_unknown_keys) {
  auto doc = load("machine.json");
  doc["content"]["resources"]["future_field"] = "kept";
  auto msg = parse_ok(doc.dump());
  auto& p = std::get<program_content>(msg.content);
  p.resources.vcpus = 4;
  p.code.ref = hash_a;
  p.volumes.pop_back();
  p.replaces.reset();
  auto content = content_to_json(msg);
  EXPECT_EQ(content["resources"]["vcpus"], 4);
  EXPECT_EQ(content["resources"]["future_field"], "kept");
  EXPECT_EQ(content["code"]["ref"], hash_a);
  EXPECT_EQ(content["volumes"].size(), 4u);
  EXPECT_TRUE(content["replaces"].is_null());
  // The first key of the original is still first.
  EXPECT_EQ(content.begin().key(), "type");
}

TEST(aleph_message, message_built_in_code_gets_item_content_and_hash) {
  message msg;
  msg.chain = "ETH";
  msg.sender = "0xabc";
  msg.type = message_type::program;
  program_content p;
  p.address = "0xabc";
  p.time = 1700000000.5;
  p.code.encoding = "squashfs";
  p.code.entrypoint = "run";
  p.code.ref = hash_a;
  p.on.persistent = true;
  p.volumes.push_back(ephemeral_volume{.size_mib = 100, .mount = "/tmp", .comment = {}});
  msg.content = p;

  auto out = to_json(msg);
  ASSERT_TRUE(out.contains("item_content"));
  EXPECT_EQ(out["item_hash"], sha256_hex(out["item_content"].get<std::string>()));
  EXPECT_FALSE(out["content"]["volumes"][0].contains("comment"));
  auto back = parse_message(out);
  ASSERT_TRUE(back.ok()) << back.error.field << ": " << back.error.reason;
  EXPECT_EQ(std::get<program_content>(back.msg->content), p);
  EXPECT_EQ(back.msg->item_hash, out["item_hash"]);
}

TEST(aleph_message, wrong_item_hash_is_rejected) {
  auto doc = load("instance_content.json");
  doc["item_hash"] = hash_a;
  expect_rejected(parse_message(doc), "item_hash", "does not match sha256 of item_content");

  auto tampered = load("instance_content.json");
  auto text = tampered["item_content"].get<std::string>();
  text.replace(text.find("\"memory\":2048"), 13, "\"memory\":4096");
  tampered["item_content"] = text;
  expect_rejected(parse_message(tampered), "item_hash", "does not match sha256 of item_content");

  auto content_only = load("machine.json");
  content_only["item_hash"] = hash_a;
  expect_rejected(parse_message(content_only), "item_hash", "does not match sha256 of content");
}

TEST(aleph_message, item_content_must_be_a_json_object_for_inline_messages) {
  auto doc = load("instance_content.json");
  doc.erase("item_hash");
  doc["item_content"] = "{\"address\":";
  expect_rejected(parse_message(doc), "item_content", "is not valid JSON");
  doc["item_content"] = "[1]";
  expect_rejected(parse_message(doc), "item_content", "must be a JSON object");
  doc["item_content"] = 5;
  expect_rejected(parse_message(doc), "item_content", "must be a string");
  doc["item_content"] = "{}";
  doc["item_type"] = "storage";
  expect_rejected(parse_message(doc), "item_content",
                  "must be absent unless item_type is inline");
}

TEST(aleph_message, vcpus_limits_at_the_edges) {
  auto with_vcpus = [](json value) {
    return parse_edited("machine.json", [&](json& c) { c["resources"]["vcpus"] = value; });
  };
  expect_rejected(with_vcpus(0), "content.resources.vcpus", "must be between 1 and 256");
  EXPECT_TRUE(with_vcpus(1).ok());
  EXPECT_TRUE(with_vcpus(256).ok());
  expect_rejected(with_vcpus(257), "content.resources.vcpus", "must be between 1 and 256");
  expect_rejected(with_vcpus(-1), "content.resources.vcpus", "must be between 1 and 256");
  expect_rejected(with_vcpus(2.5), "content.resources.vcpus", "must be an integer");
  expect_rejected(with_vcpus(2.0), "content.resources.vcpus", "must be an integer");
  expect_rejected(with_vcpus("2"), "content.resources.vcpus", "must be an integer");
  expect_rejected(with_vcpus(true), "content.resources.vcpus", "must be an integer");
  expect_rejected(with_vcpus(std::numeric_limits<double>::infinity()), "content.resources.vcpus",
                  "must be between 1 and 256");
  expect_rejected(with_vcpus(std::numeric_limits<double>::quiet_NaN()), "content.resources.vcpus",
                  "must be between 1 and 256");
  expect_rejected(with_vcpus(UINT64_MAX), "content.resources.vcpus", "must be between 1 and 256");
  // Parsed from text, an integer this large becomes a float; it must still get the range error.
  auto text = load("machine.json").dump();
  text.replace(text.find("\"vcpus\":1"), 9, "\"vcpus\":99999999999999999999999");
  expect_rejected(parse_message(text), "content.resources.vcpus", "must be between 1 and 256");
}

TEST(aleph_message, memory_and_seconds_limits) {
  auto with = [](const char* key, json value) {
    return parse_edited("machine.json", [&](json& c) { c["resources"][key] = value; });
  };
  EXPECT_TRUE(with("memory", 1).ok());
  EXPECT_TRUE(with("memory", 1048576).ok());
  expect_rejected(with("memory", 1048577), "content.resources.memory",
                  "must be between 1 and 1048576");
  expect_rejected(with("memory", 0), "content.resources.memory", "must be between 1 and 1048576");
  expect_rejected(with("seconds", 0), "content.resources.seconds",
                  "must be between 1 and 315360000");
  expect_rejected(with("memory", 1e300), "content.resources.memory",
                  "must be between 1 and 1048576");
  auto no_resources = parse_edited("machine.json", [](json& c) { c.erase("resources"); });
  ASSERT_TRUE(no_resources.ok());
  const auto& r = std::get<program_content>(no_resources.msg->content).resources;
  EXPECT_EQ(r.vcpus, 1u);
  EXPECT_EQ(r.memory, 128u);
  EXPECT_EQ(r.seconds, 1u);
}

TEST(aleph_message, variables_limits) {
  auto with_variables = [](std::size_t count, std::size_t key_length, std::size_t value_length) {
    return parse_edited("machine.json", [&](json& c) {
      json vars = json::object();
      for (std::size_t i = 0; i < count; ++i) {
        auto key = std::to_string(i);
        key.resize(std::max(key.size(), key_length), 'K');
        vars[key] = std::string(value_length, 'v');
      }
      c["variables"] = vars;
    });
  };
  EXPECT_TRUE(with_variables(256, 128, 4096).ok());
  expect_rejected(with_variables(257, 4, 1), "content.variables", "must have at most 256 entries");
  expect_rejected(with_variables(1, 129, 1), "content.variables",
                  "keys must be at most 128 characters");
  expect_rejected(with_variables(1, 5, 4097), "content.variables.0KKKK",
                  "must be at most 4096 characters");
  // Characters, not bytes: 4096 two-byte characters fit.
  auto wide = parse_edited("machine.json", [](json& c) {
    std::string value;
    for (int i = 0; i < 4096; ++i)
      value += "é";
    c["variables"] = json{{"WIDE", value}};
  });
  EXPECT_TRUE(wide.ok());
  auto not_string = parse_edited("machine.json", [](json& c) { c["variables"]["PORT"] = 8080; });
  expect_rejected(not_string, "content.variables.PORT", "must be a string");
  auto not_object = parse_edited("machine.json", [](json& c) { c["variables"] = json::array(); });
  expect_rejected(not_object, "content.variables", "must be an object");
}

TEST(aleph_message, volume_limits_name_the_volume) {
  auto with_volume = [](std::size_t index, const char* key, json value) {
    return parse_edited("machine.json", [&](json& c) { c["volumes"][index][key] = value; });
  };
  EXPECT_TRUE(with_volume(1, "size_mib", 1000).ok());
  expect_rejected(with_volume(1, "size_mib", 1001), "content.volumes.1.size_mib",
                  "must be between 1 and 1000");
  expect_rejected(with_volume(1, "size_mib", 0), "content.volumes.1.size_mib",
                  "must be between 1 and 1000");
  expect_rejected(with_volume(1, "ephemeral", false), "content.volumes.1.ephemeral",
                  "must be true");
  EXPECT_TRUE(with_volume(3, "size_mib", 2097152).ok());
  expect_rejected(with_volume(3, "size_mib", 2097153), "content.volumes.3.size_mib",
                  "must be between 1 and 2097152");
  expect_rejected(with_volume(3, "persistence", "cloud"), "content.volumes.3.persistence",
                  "must be one of host, store");
  expect_rejected(with_volume(0, "ref", "not-a-hash"), "content.volumes.0.ref",
                  "must be an item hash");
  expect_rejected(with_volume(4, "size_mib", 10.5), "content.volumes.4.size_mib",
                  "must be an integer");

  auto with_count = [](std::size_t count) {
    return parse_edited("machine.json", [&](json& c) {
      json volumes = json::array();
      for (std::size_t i = 0; i < count; ++i)
        volumes.push_back(json{{"ephemeral", true}, {"size_mib", 1}});
      c["volumes"] = volumes;
    });
  };
  EXPECT_TRUE(with_count(256).ok());
  expect_rejected(with_count(257), "content.volumes", "must have at most 256 entries");
  auto not_object = parse_edited("machine.json", [](json& c) { c["volumes"][2] = "disk"; });
  expect_rejected(not_object, "content.volumes.2", "must be an object");
}

TEST(aleph_message, rootfs_limits_and_requirements) {
  auto with_size = [](json value) {
    return parse_edited("instance_machine.json",
                        [&](json& c) { c["rootfs"]["size_mib"] = value; });
  };
  EXPECT_TRUE(with_size(1).ok());
  EXPECT_TRUE(with_size(2097152).ok());
  expect_rejected(with_size(2097153), "content.rootfs.size_mib", "must be between 1 and 2097152");
  expect_rejected(with_size(0), "content.rootfs.size_mib", "must be between 1 and 2097152");
  auto no_rootfs = parse_edited("instance_machine.json", [](json& c) { c.erase("rootfs"); });
  expect_rejected(no_rootfs, "content.rootfs", "is required");
  auto no_parent = parse_edited("instance_machine.json",
                                [](json& c) { c["rootfs"].erase("parent"); });
  expect_rejected(no_parent, "content.rootfs.parent", "is required");
  auto bad_persistence = parse_edited("instance_machine.json",
                                      [](json& c) { c["rootfs"]["persistence"] = "disk"; });
  expect_rejected(bad_persistence, "content.rootfs.persistence", "must be one of host, store");
  auto tee_on_firecracker = parse_edited("instance_confidential_machine.json", [](json& c) {
    c["environment"]["hypervisor"] = "firecracker";
  });
  expect_rejected(tee_on_firecracker, "content.environment.trusted_execution",
                  "requires hypervisor qemu");
  auto gpu_without_node = parse_edited("instance_gpu_machine.json",
                                       [](json& c) { c["requirements"].erase("node"); });
  expect_rejected(gpu_without_node, "content.requirements.gpu",
                  "requires requirements.node.node_hash");
}

TEST(aleph_message, authorized_keys_limits) {
  auto with_keys = [](std::size_t count, std::size_t length) {
    return parse_edited("instance_machine.json", [&](json& c) {
      c["authorized_keys"] = std::vector<std::string>(count, std::string(length, 'k'));
    });
  };
  EXPECT_TRUE(with_keys(256, 8192).ok());
  expect_rejected(with_keys(257, 10), "content.authorized_keys", "must have at most 256 entries");
  expect_rejected(with_keys(2, 8193), "content.authorized_keys.0",
                  "must be at most 8192 characters");
  auto not_string = parse_edited("instance_machine.json",
                                 [](json& c) { c["authorized_keys"][1] = 7; });
  expect_rejected(not_string, "content.authorized_keys.1", "must be a string");
}

TEST(aleph_message, program_enums_and_types_are_checked) {
  auto edit = [](const std::function<void(json&)>& f) { return parse_edited("machine.json", f); };
  expect_rejected(edit([](json& c) { c["code"]["encoding"] = "tar"; }), "content.code.encoding",
                  "must be one of plain, zip, squashfs");
  expect_rejected(edit([](json& c) { c["code"]["interface"] = "grpc"; }),
                  "content.code.interface", "must be one of asgi, binary");
  expect_rejected(edit([](json& c) { c["code"] = "main.py"; }), "content.code",
                  "must be an object");
  expect_rejected(edit([](json& c) { c["code"]["entrypoint"] = 3; }), "content.code.entrypoint",
                  "must be a string");
  expect_rejected(edit([](json& c) { c["on"]["http"] = "yes"; }), "content.on.http",
                  "must be a boolean");
  expect_rejected(edit([](json& c) { c["on"]["message"] = json::object(); }),
                  "content.on.message", "must be an array");
  expect_rejected(edit([](json& c) { c["time"] = -1; }), "content.time",
                  "must be between 0 and 9223372036");
  expect_rejected(edit([](json& c) { c.erase("code"); }), "content.code", "is required");
  expect_rejected(edit([](json& c) { c.erase("on"); }), "content.on", "is required");
  expect_rejected(edit([](json& c) { c.erase("address"); }), "content.address", "is required");
  EXPECT_TRUE(edit([](json& c) { c["code"]["interface"] = "binary"; }).ok());
}

TEST(aleph_message, null_for_an_optional_field_means_absent) {
  auto result = parse_edited("machine.json", [](json& c) {
    c["variables"] = nullptr;
    c["data"] = nullptr;
    c["replaces"] = nullptr;
    c["code"]["interface"] = nullptr;
    c["resources"]["published_ports"] = nullptr;
  });
  ASSERT_TRUE(result.ok()) << result.error.field << ": " << result.error.reason;
  const auto& p = std::get<program_content>(result.msg->content);
  EXPECT_TRUE(p.variables.empty());
  EXPECT_FALSE(p.data);
  EXPECT_FALSE(p.replaces);
  // Null for a required field is still missing.
  expect_rejected(parse_edited("machine.json", [](json& c) { c["code"] = nullptr; }),
                  "content.code", "is required");
}

TEST(aleph_message, envelope_fields_are_required_and_typed) {
  auto without = [](const char* key) {
    auto doc = load("forget.json");
    doc.erase(key);
    return parse_message(doc);
  };
  expect_rejected(without("type"), "type", "is required");
  expect_rejected(without("sender"), "sender", "is required");
  expect_rejected(without("chain"), "chain", "is required");
  expect_rejected(without("content"), "content", "is required");
  auto doc = load("forget.json");
  doc["type"] = "DELETE";
  expect_rejected(parse_message(doc), "type",
                  "must be one of POST, AGGREGATE, STORE, PROGRAM, INSTANCE, FORGET");
  doc = load("forget.json");
  doc["content"] = "text";
  expect_rejected(parse_message(doc), "content", "must be an object");
  doc = load("forget.json");
  doc["sender"] = 12;
  expect_rejected(parse_message(doc), "sender", "must be a string");
  doc = load("forget.json");
  doc["item_type"] = "s3";
  expect_rejected(parse_message(doc), "item_type", "must be one of inline, storage, ipfs");
}

TEST(aleph_message, store_and_forget_content) {
  json store{{"chain", "ETH"},
             {"sender", "0xabc"},
             {"type", "STORE"},
             {"time", 1700000000},
             {"content",
              {{"address", "0xabc"},
               {"time", 1700000000.25},
               {"item_type", "storage"},
               {"item_hash", hash_a},
               {"size", 1024}}}};
  auto ok = parse_message(store);
  ASSERT_TRUE(ok.ok()) << ok.error.field << ": " << ok.error.reason;
  const auto& s = std::get<store_content>(ok.msg->content);
  EXPECT_EQ(s.item_hash, hash_a);
  EXPECT_EQ(s.size, 1024u);
  EXPECT_FALSE(workload_of(*ok.msg));
  store["content"]["item_hash"] = "ABC";
  expect_rejected(parse_message(store), "content.item_hash",
                  "must be 64 lowercase hex characters");
  store["content"].erase("item_hash");
  expect_rejected(parse_message(store), "content.item_hash", "is required");

  auto forget = parse_ok(read_peer_file("forget.json"));
  EXPECT_EQ(std::get<forget_content>(forget.content).hashes.size(), 2u);
  auto none = parse_edited("forget.json", [](json& c) { c.erase("hashes"); });
  expect_rejected(none, "content.hashes", "is required");
  auto bad = parse_edited("forget.json", [](json& c) { c["hashes"][1] = 5; });
  expect_rejected(bad, "content.hashes.1", "must be a string");
  auto aggregates_only = parse_edited("forget.json", [](json& c) {
    c.erase("hashes");
    c["aggregates"] = json::array({hash_a});
  });
  EXPECT_TRUE(aggregates_only.ok());
}

TEST(aleph_message, post_and_aggregate_content_stays_opaque) {
  json post{{"chain", "ETH"},
            {"sender", "0xabc"},
            {"type", "POST"},
            {"channel", "TEST"},
            {"time", 1.5},
            {"content", {{"type", "chat"}, {"content", {{"body", "héllo"}}}, {"n", 1e-05}}}};
  auto msg = parse_ok(post.dump());
  EXPECT_TRUE(std::holds_alternative<std::monostate>(msg.content));
  EXPECT_EQ(msg.item_content, R"({"type":"chat","content":{"body":"h\u00e9llo"},"n":1e-05})");
  EXPECT_EQ(msg.item_hash, sha256_hex(msg.item_content));
  EXPECT_EQ(to_json(msg)["content"], post["content"]);
  EXPECT_FALSE(workload_of(msg));
  post["type"] = "AGGREGATE";
  post["content"] = json::array();
  expect_rejected(parse_message(post), "content", "must be an object");
}

TEST(aleph_message, hostile_text_gives_an_error_not_a_crash) {
  auto rejected = [](std::string_view text) {
    auto result = parse_message(text);
    EXPECT_FALSE(result.ok());
    EXPECT_FALSE(result.error.reason.empty());
    return result.error;
  };
  EXPECT_EQ(rejected(""), (validation_error{"", "is not valid JSON"}));
  EXPECT_EQ(rejected("{"), (validation_error{"", "is not valid JSON"}));
  EXPECT_EQ(rejected("[]"), (validation_error{"", "must be an object"}));
  EXPECT_EQ(rejected("null"), (validation_error{"", "must be an object"}));
  EXPECT_EQ(rejected("1e999"), (validation_error{"", "is not valid JSON"}));
  const auto machine = read_peer_file("machine.json");
  rejected(std::string_view(machine).substr(0, machine.size() / 2));
  rejected(std::string("{\"type\":\"POST\",\"chain\":\"ETH\",\"sender\":\"\xff\xfe\",\"content\":{}}"));
  std::string deep = std::string(10000, '[') + std::string(10000, ']');
  EXPECT_EQ(rejected(deep), (validation_error{"", "is nested deeper than 64 levels"}));
  std::string deep_objects;
  for (int i = 0; i < 10000; ++i)
    deep_objects += "{\"a\":";
  EXPECT_EQ(rejected(deep_objects), (validation_error{"", "is nested deeper than 64 levels"}));
  // Brackets inside strings do not count.
  auto bracket_text = parse_message(
    R"({"type":"POST","chain":"ETH","sender":"0x","content":{"t":")" + std::string(100, '[')
    + R"(\""}})");
  EXPECT_TRUE(bracket_text.ok()) << bracket_text.error.reason;

  auto doc = load("forget.json");
  doc.erase("item_hash");
  doc["item_content"] = deep;
  EXPECT_EQ(parse_message(doc).error, (validation_error{"item_content",
                                                        "is nested deeper than 64 levels"}));

  std::string big = "\"" + std::string(10 * 1024 * 1024, 'a') + "\"";
  EXPECT_EQ(rejected(big), (validation_error{"", "must be an object"}));
  EXPECT_EQ(rejected(big.substr(0, big.size() - 1)), (validation_error{"", "is not valid JSON"}));
  auto huge_channel = load("forget.json");
  huge_channel["channel"] = std::string(10 * 1024 * 1024, 'c');
  EXPECT_EQ(parse_message(huge_channel.dump()).error,
            (validation_error{"channel", "must be at most 128 characters"}));
  auto huge_number = machine;
  huge_number.replace(huge_number.find("\"memory\": 128"), 13, "\"memory\": 1e400");
  rejected(huge_number);
}

TEST(aleph_message, mutated_and_truncated_peer_files_never_crash) {
  const auto original = read_peer_file("instance_confidential_machine.json");
  std::size_t accepted = 0;
  for (std::size_t cut = 0; cut < original.size(); cut += 7) {
    auto result = parse_message(std::string_view(original).substr(0, cut));
    EXPECT_FALSE(result.ok());
  }
  uint64_t state = 0x9E3779B97F4A7C15ull;
  auto next = [&state] {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return state;
  };
  const std::string alphabet = "{}[]\",:0123456789-+.eE \\ntrufalsx\xc3\xa9\xff";
  for (int round = 0; round < 3000; ++round) {
    auto text = original;
    for (int k = 0; k < 1 + static_cast<int>(next() % 4); ++k)
      text[next() % text.size()] = alphabet[next() % alphabet.size()];
    auto result = parse_message(text);
    if (result.ok())
      ++accepted;
    else
      EXPECT_FALSE(result.error.reason.empty());
  }
  // Most single-character edits land in strings and still parse; the run must see both kinds.
  EXPECT_GT(accepted, 0u);
  EXPECT_LT(accepted, 3000u);
}

TEST(aleph_message, deep_value_is_rejected_without_recursion) {
  json deep = 1;
  for (int i = 0; i < 10000; ++i) {
    json wrapper = json::array();
    wrapper.push_back(std::move(deep));
    deep = std::move(wrapper);
  }
  json doc{{"chain", "ETH"}, {"sender", "0xabc"}, {"type", "POST"}};
  doc["content"] = json::object();
  doc["content"]["x"] = std::move(deep);
  EXPECT_EQ(parse_message(doc).error, (validation_error{"", "is nested deeper than 64 levels"}));
}

TEST(aleph_message, workload_of_programs_and_instances) {
  auto program = parse_ok(read_peer_file("machine.json"));
  auto spec = workload_of(program);
  ASSERT_TRUE(spec);
  EXPECT_EQ(spec->type, message_type::program);
  EXPECT_EQ(spec->item_hash, program.item_hash);
  EXPECT_EQ(spec->owner, "0x9319Ad3B7A8E0eE24f2E639c40D8eD124C5520Ba");
  EXPECT_TRUE(spec->on_demand);
  EXPECT_FALSE(spec->persistent);
  EXPECT_EQ(spec->vcpus, 1u);
  EXPECT_EQ(spec->memory_mib, 128u);
  EXPECT_EQ(spec->disk_mib, 5u + 10 + 10 + 10); // ephemeral + three persistent, not the immutable

  auto persistent = parse_edited("machine.json", [](json& c) {
    c["on"]["http"] = false;
    c["on"]["persistent"] = true;
  });
  ASSERT_TRUE(persistent.ok());
  auto persistent_spec = workload_of(*persistent.msg);
  ASSERT_TRUE(persistent_spec);
  EXPECT_TRUE(persistent_spec->persistent);
  EXPECT_FALSE(persistent_spec->on_demand);

  auto instance = parse_ok(read_peer_file("instance_machine.json"));
  auto instance_spec = workload_of(instance);
  ASSERT_TRUE(instance_spec);
  EXPECT_EQ(instance_spec->type, message_type::instance);
  EXPECT_TRUE(instance_spec->persistent);
  EXPECT_FALSE(instance_spec->on_demand);
  EXPECT_EQ(instance_spec->disk_mib, 20000u + 5 + 10 + 10 + 10);

  auto payg = parse_ok(read_peer_file("instance_content.json"));
  auto payg_spec = workload_of(payg);
  ASSERT_TRUE(payg_spec);
  EXPECT_EQ(payg_spec->memory_mib, 2048u);
  EXPECT_EQ(payg_spec->disk_mib, 10240u);

  EXPECT_FALSE(workload_of(parse_ok(read_peer_file("forget.json"))));
}
