// Every message type survives CAF's binary wire format, the LMDB msgpack
// records survive encode/decode and reject hostile bytes, and errors render
// their context.
#include <string>
#include <vector>

#include "messages/codec.hpp"
#include "tests/caf_fixture.hpp"

using namespace alephd;
using namespace alephd::test;

// Named so that the suites can share one unity-built test binary.
namespace serialization_tests {

namespace {

struct serialization_test : caf_fixture {
  /// Serializes `x` with CAF's binary format and reads it back into a default T.
  template <class T>
  T roundtrip(const T& x) {
    std::vector<char> buf;
    caf::binary_serializer sink{sys, buf};
    auto copy = x;
    if (auto err = sink(copy))
      ADD_FAILURE() << "serializing failed: " << describe(err);
    EXPECT_FALSE(buf.empty());
    T out{};
    caf::binary_deserializer source{sys, buf};
    if (auto err = source(out))
      ADD_FAILURE() << "deserializing failed: " << describe(err);
    EXPECT_EQ(source.remaining(), 0u) << "bytes left after reading the value back";
    return out;
  }

  template <class T>
  std::vector<char> bytes_of(const T& x) {
    std::vector<char> buf;
    caf::binary_serializer sink{sys, buf};
    auto copy = x;
    EXPECT_FALSE(sink(copy));
    return buf;
  }
};

stored_message sample_message() {
  stored_message m;
  m.version = 7;
  m.item_hash = "3c5b05761c8f94a7b8fe6d0d43e5fb91f9689c53c078a870e5e300c7da8a1878";
  m.type = "INSTANCE";
  m.sender = "0x9319Ad3B7A8E0eE24f2E639c40D8eD124C5520Ba";
  m.channel = "TEST";
  m.time = 1700000000.25;
  m.received = 1700000001.5;
  m.origin = "ccn-a";
  m.json = R"({"type":"INSTANCE","content":{"x":"\u00e9"}})";
  return m;
}

file_info sample_file() {
  return file_info{"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", 3,
                   "/data/blobs/ba/7816", 1700000002.75};
}

crn_info sample_crn() {
  return crn_info{3,       "crn-1",   "node one", "http://10.0.0.1:4020", 8, 16384, 100000,
                  "0.1.0", "AS64500", std::string("\x00\x01\xfe\xff", 4) + std::string(28, 'k')};
}

TEST_F(serialization_test, stored_message_roundtrip) {
  auto x = sample_message();
  EXPECT_EQ(roundtrip(x), x);
}

TEST_F(serialization_test, append_result_roundtrip) {
  append_result x{"hash-1", "processed", true};
  EXPECT_EQ(roundtrip(x), x);
}

TEST_F(serialization_test, message_query_roundtrip) {
  message_query x{"PROGRAM", {"0xA", "0xB"}, 3, 50};
  EXPECT_EQ(roundtrip(x), x);
}

TEST_F(serialization_test, message_page_roundtrip) {
  auto second = sample_message();
  second.item_hash = "other";
  message_page x{{sample_message(), second}, 1234567890123ull, 4, 2};
  auto y = roundtrip(x);
  ASSERT_EQ(y.messages.size(), 2u);
  EXPECT_EQ(y, x);
}

TEST_F(serialization_test, file_info_roundtrip) {
  auto x = sample_file();
  EXPECT_EQ(roundtrip(x), x);
}

TEST_F(serialization_test, file_blob_roundtrip_keeps_binary_bytes) {
  file_blob x{"abc123", std::string("\0\x01\xff\n binary", 11)};
  auto y = roundtrip(x);
  EXPECT_EQ(y.data.size(), 11u);
  EXPECT_EQ(y, x);
}

TEST_F(serialization_test, peer_inventory_roundtrip) {
  peer_inventory x{"ccn-b", {"m1", "m2", "m3"}, {"f1"}};
  EXPECT_EQ(roundtrip(x), x);
}

TEST_F(serialization_test, crn_info_roundtrip) {
  auto x = sample_crn();
  EXPECT_EQ(roundtrip(x), x);
}

TEST_F(serialization_test, registration_roundtrip) {
  registration x{link_state::waiting, "ccn-a", 250};
  EXPECT_EQ(roundtrip(x), x);
}

TEST_F(serialization_test, enrollment_roundtrip) {
  enrollment x{1, sample_crn(), 1700000000123ull, std::string(64, '\xee'), "ccn-a"};
  EXPECT_EQ(roundtrip(x), x);
  // What is signed covers every field.
  auto text = signed_text(x);
  auto changed = x;
  changed.info.memory_mib += 1;
  EXPECT_NE(signed_text(changed), text);
  changed = x;
  changed.signed_at_ms += 1;
  EXPECT_NE(signed_text(changed), text);
  changed = x;
  changed.info.public_key[0] = 'z';
  EXPECT_NE(signed_text(changed), text);
  changed = x;
  changed.ccn_id = "ccn-b";
  EXPECT_NE(signed_text(changed), text);
  changed = x;
  changed.signature.clear(); // the signature is not part of what it signs
  EXPECT_EQ(signed_text(changed), text);
}

TEST_F(serialization_test, heartbeat_roundtrip) {
  heartbeat x{"crn-1", 9876543210ull, std::string(64, '\x01')};
  EXPECT_EQ(roundtrip(x), x);
  EXPECT_NE(signed_text(x, 1), signed_text(x, 2));
  EXPECT_NE(signed_text(x, 1), signed_text(heartbeat{"crn-1", 9876543211ull, {}}, 1));
}

TEST_F(serialization_test, heartbeat_ack_roundtrip) {
  heartbeat_ack x{"ccn-a", 42, link_state::down};
  EXPECT_EQ(roundtrip(x), x);
}

TEST_F(serialization_test, node_view_roundtrip) {
  node_view x{"crn-1",  "crn",   "node one", "http://10.0.0.1:4020", "linked", "0.1.0",
              "ccn-a",  8,       16384,      100000,                 1700000000.5,
              1700000009.25};
  EXPECT_EQ(roundtrip(x), x);
}

TEST_F(serialization_test, allocation_roundtrip) {
  allocation x{2, "hash-9", "instance", 5, 4, 4096, 20480, R"({"type":"INSTANCE"})", "ccn-3"};
  EXPECT_EQ(roundtrip(x), x);
}

TEST_F(serialization_test, allocation_ack_roundtrip) {
  allocation_ack x{"hash-9", 5, "crn-2", true, "already running"};
  EXPECT_EQ(roundtrip(x), x);
}

TEST_F(serialization_test, placement_roundtrip) {
  placement x{"hash-9", "program", "crn-3", 2, "allocated", "moved from crn-1"};
  EXPECT_EQ(roundtrip(x), x);
}

TEST_F(serialization_test, execution_info_roundtrip) {
  execution_info x{"hash-9", "instance", "running", 3,    true,  2,      2048,  10240,
                   1.5,      2.5,        3.5,       4.5,  5.5,   "booted in 1 s", "0xowner"};
  EXPECT_EQ(roundtrip(x), x);
}

TEST_F(serialization_test, link_info_roundtrip) {
  link_info x{link_state::linked, "ccn-b", "10.0.0.2:4025", true, 100, 7, 3, 1700000003.125};
  EXPECT_EQ(roundtrip(x), x);
}

TEST_F(serialization_test, log_lines_roundtrip) {
  std::vector<log_line> x{{1700000004.25, "stdout", "listening on 8080"},
                          {1700000005.5, "system", "program exited with code 3"}};
  EXPECT_EQ(roundtrip(x), x);
}

TEST_F(serialization_test, node_scores_roundtrip) {
  node_score x{"crn-1", "one", "AS64500", 24, 0.9, 0.8, 0.7, 0.6, 0.75, 1.0, 0.866, 0.81, 1.0};
  EXPECT_EQ(roundtrip(x), x);
  std::vector<node_score> v{x, node_score{}};
  EXPECT_EQ(roundtrip(v), v);
}

TEST_F(serialization_test, usage_entries_roundtrip) {
  usage_entry x{1,      42,        std::string(64, '0'), std::string(64, 'a'), "crn-1",
                1700000006.5, 60.25, "hash-3",            "persistent_program", 2,
                4096,   123456789, 1u << 30,              1u << 29,             17,
                2048,   4096,      5u << 20};
  EXPECT_EQ(roundtrip(x), x);
  std::vector<usage_entry> v{x, x};
  v[1].seq = 43;
  EXPECT_EQ(roundtrip(v), v);
}

TEST_F(serialization_test, every_link_state_roundtrips) {
  for (auto s : {link_state::unlinked, link_state::linked, link_state::waiting, link_state::down})
    EXPECT_EQ(roundtrip(s), s) << to_string(s);
  // Distinct states have distinct encodings.
  EXPECT_NE(bytes_of(link_state::linked), bytes_of(link_state::waiting));
}

TEST_F(serialization_test, vectors_of_message_types_roundtrip) {
  std::vector<node_view> views{node_view{}, node_view{}};
  views[0].id = "a";
  views[1].id = "b";
  views[1].vcpus = 4;
  EXPECT_EQ(roundtrip(views), views);
  std::vector<placement> ps{placement{"h", "instance", "c", 1, "allocated", ""}};
  EXPECT_EQ(roundtrip(ps), ps);
}

TEST_F(serialization_test, truncated_caf_bytes_fail_to_deserialize_without_crashing) {
  auto buf = bytes_of(sample_message());
  ASSERT_GT(buf.size(), 10u);
  for (size_t n = 0; n < buf.size(); ++n) {
    std::vector<char> cut(buf.begin(), buf.begin() + static_cast<std::ptrdiff_t>(n));
    stored_message out;
    caf::binary_deserializer source{sys, cut};
    EXPECT_TRUE(source(out)) << "a " << n << "-byte prefix of " << buf.size()
                             << " bytes was accepted";
  }
}

TEST_F(serialization_test, an_alephd_error_keeps_its_context_across_the_wire) {
  auto err = make_error(ec::too_large, "file too large (limit 3 bytes)");
  auto back = roundtrip(err);
  EXPECT_TRUE(is(back, ec::too_large));
  EXPECT_EQ(describe(back), "file too large (limit 3 bytes)");
}

// -- describe() and is() -----------------------------------------------------

TEST(describe_test, an_alephd_error_renders_its_context) {
  auto err = make_error(ec::not_found, "file abc not found");
  EXPECT_EQ(describe(err), "file abc not found");
  EXPECT_TRUE(is(err, ec::not_found));
  EXPECT_FALSE(is(err, ec::invalid));
}

TEST(describe_test, an_alephd_error_without_context_renders_its_code) {
  EXPECT_EQ(describe(make_error(ec::wrong_phase)), "wrong_phase");
  EXPECT_EQ(describe(make_error(ec::no_capacity, "")), "no_capacity");
}

TEST(describe_test, no_error_and_caf_errors_render_readably) {
  EXPECT_EQ(describe(caf::error{}), "no error");
  auto sys_err = caf::make_error(caf::sec::request_timeout);
  EXPECT_EQ(describe(sys_err), "request_timeout");
  EXPECT_FALSE(is(sys_err, ec::not_found));
}

TEST(describe_test, is_on_no_error_is_false) {
  EXPECT_FALSE(is(caf::error{}, ec::none));
  EXPECT_FALSE(is(caf::error{}, ec::not_found));
}

TEST(describe_test, every_code_has_a_name) {
  for (auto code : {ec::not_found, ec::invalid, ec::too_large, ec::no_capacity, ec::wrong_phase,
                    ec::storage_failure, ec::unavailable, ec::refused, ec::workload_failed})
    EXPECT_NE(to_string(code), "unknown");
  EXPECT_EQ(to_string(ec::storage_failure), "storage_failure");
  EXPECT_EQ(to_string(link_state::waiting), "waiting");
}

// -- msgpack LMDB records ------------------------------------------------------

TEST(codec_test, stored_message_roundtrip) {
  auto x = sample_message();
  x.version = 1; // the record carries its own version; the struct field is not stored
  auto bytes = codec::encode(x);
  stored_message y;
  ASSERT_TRUE(codec::decode(bytes, y));
  EXPECT_EQ(y, x);
}

TEST(codec_test, file_info_roundtrip_without_the_node_local_path) {
  auto x = sample_file();
  auto bytes = codec::encode(x);
  file_info y;
  ASSERT_TRUE(codec::decode(bytes, y));
  EXPECT_EQ(y.hash, x.hash);
  EXPECT_EQ(y.size, x.size);
  EXPECT_EQ(y.created, x.created);
  EXPECT_EQ(y.path, "") << "the blob path is node-local and must not be persisted";
}

TEST(codec_test, records_are_msgpack_maps_with_a_version) {
  auto bytes = codec::encode(sample_file());
  ASSERT_GE(bytes.size(), 3u);
  EXPECT_EQ(static_cast<unsigned char>(bytes[0]), 0x84); // fixmap with 4 entries
  EXPECT_EQ(bytes.substr(1, 2), "\xa1v");                 // key "v"
  EXPECT_EQ(static_cast<unsigned char>(bytes[3]), 0x01);  // version 1
}

TEST(codec_test, garbage_is_rejected) {
  const std::vector<std::string> inputs = {
    "",
    std::string("\xff\xff\xff\xff", 4),
    "hello world",
    std::string("\x93\x01\x02\x03", 4), // an array, not a map
    std::string("\x81\x01\x02", 3),     // a map with an integer key
    std::string("\x80", 1),             // an empty map: no version
    std::string("\x81\xa1v\xa1x", 5),   // version is a string
    std::string("\xc1", 1),             // never-used msgpack byte
  };
  for (auto& in : inputs) {
    stored_message m;
    file_info f;
    EXPECT_FALSE(codec::decode(in, m)) << "stored_message from " << in.size() << " bytes";
    EXPECT_FALSE(codec::decode(in, f)) << "file_info from " << in.size() << " bytes";
  }
}

TEST(codec_test, every_truncation_is_rejected) {
  auto msg = codec::encode(sample_message());
  for (size_t n = 0; n < msg.size(); ++n) {
    stored_message m;
    EXPECT_FALSE(codec::decode(std::string_view{msg}.substr(0, n), m)) << n << " bytes";
  }
  auto file = codec::encode(sample_file());
  for (size_t n = 0; n < file.size(); ++n) {
    file_info f;
    EXPECT_FALSE(codec::decode(std::string_view{file}.substr(0, n), f)) << n << " bytes";
  }
}

TEST(codec_test, a_newer_version_is_rejected) {
  auto bytes = codec::encode(sample_message());
  ASSERT_EQ(bytes.substr(1, 2), "\xa1v");
  ASSERT_EQ(bytes[3], '\x01');
  bytes[3] = '\x02';
  stored_message m;
  EXPECT_FALSE(codec::decode(bytes, m));
  auto fbytes = codec::encode(sample_file());
  fbytes[3] = '\x7f';
  file_info f;
  EXPECT_FALSE(codec::decode(fbytes, f));
}

TEST(codec_test, registry_entry_roundtrip) {
  auto info = sample_crn();
  for (auto state : {link_state::unlinked, link_state::linked, link_state::waiting,
                     link_state::down}) {
    auto bytes = codec::encode(info, state, 1700000000.5, 42, 1700000000777ull);
    crn_info i2;
    link_state s2 = link_state::unlinked;
    double registered = 0;
    uint64_t order = 0, session = 0;
    ASSERT_TRUE(codec::decode(bytes, i2, s2, registered, order, &session)) << to_string(state);
    EXPECT_EQ(session, 1700000000777ull);
    EXPECT_EQ(i2, info);
    EXPECT_EQ(s2, state);
    EXPECT_EQ(registered, 1700000000.5);
    EXPECT_EQ(order, 42u);
  }
}

TEST(codec_test, registry_entry_with_an_unknown_state_is_rejected) {
  auto bytes = codec::encode(sample_crn(), static_cast<link_state>(9), 1.0, 1);
  crn_info info;
  link_state state = link_state::unlinked;
  double registered = 0;
  uint64_t order = 0;
  EXPECT_FALSE(codec::decode(bytes, info, state, registered, order));
  EXPECT_EQ(state, link_state::unlinked);
}

TEST(codec_test, placement_roundtrip) {
  allocation a{3, "hash-9", "instance", 5, 4, 4096, 20480, R"({"type":"INSTANCE"})", "ccn-3"};
  auto bytes = codec::encode(a, "crn-2", "allocated");
  allocation b;
  std::string crn_id, state;
  ASSERT_TRUE(codec::decode(bytes, b, crn_id, state));
  EXPECT_EQ(b, a);
  EXPECT_EQ(crn_id, "crn-2");
  EXPECT_EQ(state, "allocated");
}

TEST(codec_test, every_truncation_of_the_new_records_is_rejected) {
  auto entry = codec::encode(sample_crn(), link_state::linked, 2.5, 7);
  for (size_t n = 0; n < entry.size(); ++n) {
    crn_info info;
    link_state state = link_state::unlinked;
    double registered = 0;
    uint64_t order = 0;
    EXPECT_FALSE(codec::decode(std::string_view{entry}.substr(0, n), info, state, registered,
                               order))
      << n << " bytes";
  }
  allocation a{1, "h", "program", 2, 1, 128, 0, "{}", "ccn-1"};
  auto placement = codec::encode(a, "crn-1", "pending");
  for (size_t n = 0; n < placement.size(); ++n) {
    allocation b;
    std::string crn_id, state;
    EXPECT_FALSE(codec::decode(std::string_view{placement}.substr(0, n), b, crn_id, state))
      << n << " bytes";
  }
}

TEST(codec_test, a_newer_version_of_the_registry_and_placement_records_is_rejected) {
  auto bytes = codec::encode(allocation{}, "crn-1", "pending");
  bytes[3] = '\x05';
  allocation a;
  std::string crn_id, state;
  EXPECT_FALSE(codec::decode(bytes, a, crn_id, state));
  auto entry = codec::encode(sample_crn(), link_state::linked, 1.0, 1);
  entry[3] = '\x05';
  crn_info info;
  link_state ls = link_state::unlinked;
  double registered = 0;
  uint64_t order = 0;
  EXPECT_FALSE(codec::decode(entry, info, ls, registered, order));
}

TEST(codec_test, a_field_of_the_wrong_type_is_rejected) {
  // {"v": 1, "size": "big"}
  std::string bytes = std::string("\x82\xa1v\x01\xa4size\xa3" "big", 13);
  file_info f;
  EXPECT_FALSE(codec::decode(bytes, f));
}

} // namespace

} // namespace serialization_tests
