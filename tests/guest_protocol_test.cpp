#include "runtime/guest_protocol.hpp"

#include <gtest/gtest.h>
#include <msgpack.hpp>

#include <random>
#include <string>
#include <vector>

namespace gp = alephd::guest;

namespace {

std::vector<gp::frame> samples() {
  gp::configure cfg;
  cfg.code = std::string{"\x7f" "ELF\0\x01\xff binary", 14};
  cfg.encoding = "plain";
  cfg.entrypoint = "main";
  cfg.interface = "binary";
  cfg.variables = {{"GREETING", "hello"}, {"EMPTY", ""}};
  cfg.volumes = {{"/data", "/srv/vol/1", false}, {"/opt/ro", "/srv/vol/2", true}};
  cfg.authorized_keys = {"ssh-ed25519 AAAA test@host"};
  cfg.app_port = 18080;
  gp::http_request req{42, "POST", "/api/items", "a=1&b=2",
                       {{"Content-Type", "application/json"}, {"X-Dup", "1"},
                        {"X-Dup", "2"}},
                       std::string{"{\"k\":\0}", 7}};
  gp::http_response resp{42, 201, {{"Location", "/api/items/7"}},
                         std::string{"\0\1\2", 3}, ""};
  return {gp::ready{"0.1.0", false, {}},
          cfg,
          gp::configure_result{false, "zip not supported yet"},
          req,
          resp,
          gp::event{"{\"item_hash\":\"abc\"}"},
          gp::log{"stdout", "hello world"},
          gp::halt{},
          gp::halted{-1}};
}

// Encodes `m` as a raw msgpack payload with the prefix, for hand-made frames.
template <class F>
std::string raw_frame(F&& pack_body) {
  msgpack::sbuffer buf;
  msgpack::packer<msgpack::sbuffer> pk{buf};
  pack_body(pk);
  auto n = static_cast<uint32_t>(buf.size());
  std::string out{static_cast<char>(n >> 24), static_cast<char>(n >> 16),
                  static_cast<char>(n >> 8), static_cast<char>(n)};
  out.append(buf.data(), buf.size());
  return out;
}

// Feeds all of `bytes` and returns the error of the first failure ("" if none).
std::string decode_error(const std::string& bytes) {
  gp::decoder dec;
  dec.feed(bytes.data(), bytes.size());
  std::string error;
  while (dec.next(error)) {
  }
  return error;
}

} // namespace

TEST(guest_protocol, round_trip_every_frame_type) {
  auto all = samples();
  ASSERT_EQ(all.size(), std::variant_size_v<gp::frame>);
  for (const auto& f : all) {
    auto bytes = gp::encode(f);
    gp::decoder dec;
    dec.feed(bytes.data(), bytes.size());
    std::string error;
    auto back = dec.next(error);
    ASSERT_TRUE(back.has_value()) << gp::type_name(f) << ": " << error;
    EXPECT_EQ(*back, f) << gp::type_name(f);
    EXPECT_EQ(dec.buffered(), 0u);
    EXPECT_FALSE(dec.next(error));
    EXPECT_TRUE(error.empty());
  }
}

TEST(guest_protocol, length_prefix_is_big_endian_payload_size) {
  auto bytes = gp::encode(gp::halt{});
  ASSERT_GT(bytes.size(), 4u);
  auto n = (std::size_t{static_cast<unsigned char>(bytes[0])} << 24)
           | (std::size_t{static_cast<unsigned char>(bytes[1])} << 16)
           | (std::size_t{static_cast<unsigned char>(bytes[2])} << 8)
           | std::size_t{static_cast<unsigned char>(bytes[3])};
  EXPECT_EQ(n, bytes.size() - 4);
  // The payload is a plain msgpack map readable by any msgpack library.
  auto oh = msgpack::unpack(bytes.data() + 4, n);
  ASSERT_EQ(oh.get().type, msgpack::type::MAP);
  auto m = oh.get().as<std::map<std::string, msgpack::object>>();
  EXPECT_EQ(m.at("type").as<std::string>(), "halt");
  EXPECT_EQ(m.at("v").as<uint32_t>(), gp::protocol_version);
}

TEST(guest_protocol, frame_split_at_every_byte_decodes_the_same) {
  for (const auto& f : samples()) {
    auto bytes = gp::encode(f);
    for (std::size_t cut = 0; cut <= bytes.size(); ++cut) {
      gp::decoder dec;
      std::string error;
      dec.feed(bytes.data(), cut);
      auto early = dec.next(error);
      if (cut < bytes.size()) {
        ASSERT_FALSE(early) << "cut " << cut;
        ASSERT_TRUE(error.empty()) << error;
        dec.feed(bytes.data() + cut, bytes.size() - cut);
        early = dec.next(error);
      }
      ASSERT_TRUE(early) << gp::type_name(f) << " cut " << cut << ": " << error;
      EXPECT_EQ(*early, f);
    }
  }
}

TEST(guest_protocol, byte_by_byte_feed) {
  auto bytes = gp::encode(samples()[1]);
  gp::decoder dec;
  std::string error;
  std::optional<gp::frame> got;
  for (char c : bytes) {
    ASSERT_FALSE(got);
    dec.feed(&c, 1);
    got = dec.next(error);
    ASSERT_TRUE(error.empty()) << error;
  }
  ASSERT_TRUE(got);
  EXPECT_EQ(*got, samples()[1]);
}

TEST(guest_protocol, three_frames_in_one_buffer) {
  gp::frame a = gp::log{"stderr", "one"};
  gp::frame b = gp::http_response{7, 200, {}, "two", ""};
  gp::frame c = gp::halted{3};
  auto bytes = gp::encode(a) + gp::encode(b) + gp::encode(c);
  // Plus the first half of a fourth frame, which must wait.
  auto fourth = gp::encode(gp::ready{"x", false, {}});
  bytes += fourth.substr(0, fourth.size() / 2);
  gp::decoder dec;
  dec.feed(bytes.data(), bytes.size());
  std::string error;
  auto f1 = dec.next(error);
  auto f2 = dec.next(error);
  auto f3 = dec.next(error);
  ASSERT_TRUE(f1 && f2 && f3) << error;
  EXPECT_EQ(*f1, a);
  EXPECT_EQ(*f2, b);
  EXPECT_EQ(*f3, c);
  EXPECT_FALSE(dec.next(error));
  EXPECT_TRUE(error.empty());
  dec.feed(fourth.data() + fourth.size() / 2, fourth.size() - fourth.size() / 2);
  auto f4 = dec.next(error);
  ASSERT_TRUE(f4) << error;
  EXPECT_EQ(*f4, (gp::frame{gp::ready{"x", false, {}}}));
}

TEST(guest_protocol, huge_length_prefix_fails_without_waiting_for_bytes) {
  std::string bytes = "\xff\xff\xff\xff";
  gp::decoder dec;
  dec.feed(bytes.data(), bytes.size());
  std::string error;
  EXPECT_FALSE(dec.next(error));
  EXPECT_NE(error.find("exceeds"), std::string::npos) << error;
  EXPECT_TRUE(dec.failed());
  EXPECT_EQ(dec.buffered(), 0u);
  // The decoder stays failed and buffers nothing more.
  auto ok = gp::encode(gp::halt{});
  dec.feed(ok.data(), ok.size());
  EXPECT_FALSE(dec.next(error));
  EXPECT_FALSE(error.empty());
  EXPECT_EQ(dec.buffered(), 0u);
}

TEST(guest_protocol, one_byte_over_the_limit_is_an_error) {
  // The prefix alone says 16 MiB + 1: rejected before any payload arrives.
  std::size_t n = gp::max_frame_size + 1;
  std::string prefix{static_cast<char>(n >> 24), static_cast<char>(n >> 16),
                     static_cast<char>(n >> 8), static_cast<char>(n)};
  EXPECT_NE(decode_error(prefix), "");
  // The whole 16 MiB + 1 frame arriving at once: same error, nothing kept.
  {
    std::string whole = prefix + std::string(n, '\xc0');
    gp::decoder dec;
    dec.feed(whole.data(), whole.size());
    std::string error;
    EXPECT_FALSE(dec.next(error));
    EXPECT_NE(error.find("exceeds"), std::string::npos) << error;
    EXPECT_EQ(dec.buffered(), 0u);
  }
  // A real frame that big is refused by the encoder as well...
  gp::event big{std::string(gp::max_frame_size, 'x')};
  EXPECT_THROW(gp::encode(big), std::length_error);
  // ...and a decoder with a smaller limit refuses frames above it.
  auto small = gp::encode(gp::log{"stdout", std::string(100, 'y')});
  gp::decoder dec{64};
  dec.feed(small.data(), small.size());
  std::string error;
  EXPECT_FALSE(dec.next(error));
  EXPECT_FALSE(error.empty());
}

TEST(guest_protocol, truncated_msgpack_is_an_error) {
  auto bytes = gp::encode(gp::log{"stdout", "a line of output"});
  // Keep the payload short by 3 bytes but fix the prefix to claim that length.
  std::string payload = bytes.substr(4, bytes.size() - 4 - 3);
  auto n = static_cast<uint32_t>(payload.size());
  std::string frame{static_cast<char>(n >> 24), static_cast<char>(n >> 16),
                    static_cast<char>(n >> 8), static_cast<char>(n)};
  frame += payload;
  auto error = decode_error(frame);
  EXPECT_NE(error, "");
}

TEST(guest_protocol, array_instead_of_map_is_an_error) {
  auto frame = raw_frame([](auto& pk) {
    pk.pack_array(2);
    pk.pack(std::string{"halt"});
    pk.pack(1);
  });
  EXPECT_NE(decode_error(frame).find("not a msgpack map"), std::string::npos);
}

TEST(guest_protocol, unknown_type_is_an_error) {
  auto frame = raw_frame([](auto& pk) {
    pk.pack_map(2);
    pk.pack(std::string{"type"});
    pk.pack(std::string{"reboot"});
    pk.pack(std::string{"v"});
    pk.pack(1);
  });
  EXPECT_NE(decode_error(frame).find("unknown frame type"), std::string::npos);
}

TEST(guest_protocol, missing_or_wrong_version_is_an_error) {
  auto no_v = raw_frame([](auto& pk) {
    pk.pack_map(1);
    pk.pack(std::string{"type"});
    pk.pack(std::string{"halt"});
  });
  EXPECT_NE(decode_error(no_v).find("missing field 'v'"), std::string::npos);
  auto v2 = raw_frame([](auto& pk) {
    pk.pack_map(2);
    pk.pack(std::string{"type"});
    pk.pack(std::string{"halt"});
    pk.pack(std::string{"v"});
    pk.pack(2);
  });
  EXPECT_NE(decode_error(v2).find("version"), std::string::npos);
}

TEST(guest_protocol, wrong_field_type_is_an_error) {
  auto frame = raw_frame([](auto& pk) {
    pk.pack_map(3);
    pk.pack(std::string{"type"});
    pk.pack(std::string{"ready"});
    pk.pack(std::string{"v"});
    pk.pack(1);
    pk.pack(std::string{"version"});
    pk.pack(12);
  });
  EXPECT_NE(decode_error(frame).find("'version' is not a string"),
            std::string::npos);
  auto port = raw_frame([](auto& pk) {
    pk.pack_map(4);
    pk.pack(std::string{"type"});
    pk.pack(std::string{"http_response"});
    pk.pack(std::string{"v"});
    pk.pack(1);
    pk.pack(std::string{"id"});
    pk.pack(-1);
    pk.pack(std::string{"status"});
    pk.pack(200);
  });
  EXPECT_NE(decode_error(port).find("'id'"), std::string::npos);
  auto status = raw_frame([](auto& pk) {
    pk.pack_map(7);
    pk.pack(std::string{"type"});
    pk.pack(std::string{"http_response"});
    pk.pack(std::string{"v"});
    pk.pack(1);
    pk.pack(std::string{"id"});
    pk.pack(1);
    pk.pack(std::string{"status"});
    pk.pack(70000); // does not fit uint16
    pk.pack(std::string{"headers"});
    pk.pack_array(0);
    pk.pack(std::string{"body"});
    pk.pack(std::string{});
    pk.pack(std::string{"error"});
    pk.pack(std::string{});
  });
  EXPECT_NE(decode_error(status).find("'status'"), std::string::npos);
}

TEST(guest_protocol, missing_field_is_an_error) {
  auto frame = raw_frame([](auto& pk) {
    pk.pack_map(3);
    pk.pack(std::string{"type"});
    pk.pack(std::string{"log"});
    pk.pack(std::string{"v"});
    pk.pack(1);
    pk.pack(std::string{"stream"});
    pk.pack(std::string{"stdout"});
  });
  EXPECT_NE(decode_error(frame).find("missing field 'line'"),
            std::string::npos);
}

TEST(guest_protocol, unknown_fields_are_ignored_duplicates_are_not) {
  auto extra = raw_frame([](auto& pk) {
    pk.pack_map(4);
    pk.pack(std::string{"type"});
    pk.pack(std::string{"halted"});
    pk.pack(std::string{"v"});
    pk.pack(1);
    pk.pack(std::string{"exit_code"});
    pk.pack(-9);
    pk.pack(std::string{"added_later"});
    pk.pack_nil();
  });
  gp::decoder dec;
  dec.feed(extra.data(), extra.size());
  std::string error;
  auto f = dec.next(error);
  ASSERT_TRUE(f) << error;
  EXPECT_EQ(*f, gp::frame{gp::halted{-9}});
  auto dup = raw_frame([](auto& pk) {
    pk.pack_map(3);
    pk.pack(std::string{"type"});
    pk.pack(std::string{"halt"});
    pk.pack(std::string{"v"});
    pk.pack(1);
    pk.pack(std::string{"type"});
    pk.pack(std::string{"halted"});
  });
  EXPECT_NE(decode_error(dup).find("duplicate"), std::string::npos);
}

TEST(guest_protocol, hostile_container_sizes_do_not_allocate) {
  // A 6-byte payload that declares an array of 4 billion elements, then a map.
  for (std::string payload : {std::string{"\xdd\xff\xff\xff\xff\x00", 6},
                              std::string{"\xdf\xff\xff\xff\xff\x00", 6},
                              std::string{"\xdb\xff\xff\xff\xff\x00", 6},
                              std::string{"\xc6\xff\xff\xff\xff\x00", 6}}) {
    auto n = static_cast<uint32_t>(payload.size());
    std::string frame{static_cast<char>(n >> 24), static_cast<char>(n >> 16),
                      static_cast<char>(n >> 8), static_cast<char>(n)};
    frame += payload;
    EXPECT_NE(decode_error(frame), "");
  }
  // Deep nesting: 100 nested arrays.
  std::string deep(100, '\x91');
  deep += '\xc0';
  auto n = static_cast<uint32_t>(deep.size());
  std::string frame{static_cast<char>(n >> 24), static_cast<char>(n >> 16),
                    static_cast<char>(n >> 8), static_cast<char>(n)};
  EXPECT_NE(decode_error(frame + deep), "");
}

TEST(guest_protocol, empty_and_trailing_payloads_are_errors) {
  EXPECT_NE(decode_error(std::string(4, '\0')), "");
  auto ok = gp::encode(gp::halt{});
  std::string payload = ok.substr(4) + '\xc0'; // a nil after the map
  auto n = static_cast<uint32_t>(payload.size());
  std::string frame{static_cast<char>(n >> 24), static_cast<char>(n >> 16),
                    static_cast<char>(n >> 8), static_cast<char>(n)};
  EXPECT_NE(decode_error(frame + payload).find("trailing"), std::string::npos);
}

TEST(guest_protocol, random_garbage_never_crashes) {
  std::mt19937 rng{20261125};
  std::uniform_int_distribution<int> byte{0, 255};
  std::uniform_int_distribution<std::size_t> len{0, 300};
  auto valid = gp::encode(samples()[3]);
  int errors = 0;
  for (int round = 0; round < 3000; ++round) {
    std::string bytes;
    if (round % 2 == 0) {
      // Pure garbage with a small plausible prefix.
      auto n = len(rng);
      bytes = {0, 0, static_cast<char>(n >> 8), static_cast<char>(n)};
      for (std::size_t i = 0; i < n; ++i)
        bytes.push_back(static_cast<char>(byte(rng)));
    } else {
      // A valid frame with a few bytes of its payload flipped.
      bytes = valid;
      for (int k = 0; k < 3; ++k)
        bytes[4 + len(rng) % (bytes.size() - 4)] = static_cast<char>(byte(rng));
    }
    gp::decoder dec;
    dec.feed(bytes.data(), bytes.size());
    std::string error;
    int frames = 0;
    while (dec.next(error))
      ++frames;
    ASSERT_LE(frames, 1);
    EXPECT_LE(dec.buffered(), bytes.size());
    if (!error.empty())
      ++errors;
  }
  EXPECT_GT(errors, 1000); // garbage is recognized as such
}

TEST(guest_protocol, ready_with_features_round_trips_and_the_field_is_optional) {
  gp::ready r{"0.2.0", true, {"code_file"}};
  auto bytes = gp::encode(r);
  gp::decoder dec;
  dec.feed(bytes.data(), bytes.size());
  std::string error;
  auto back = dec.next(error);
  ASSERT_TRUE(back) << error;
  EXPECT_EQ(std::get<gp::ready>(*back), r);
  // An older agent's ready: version and configured only.
  auto old = raw_frame([](auto& pk) {
    pk.pack_map(4);
    pk.pack(std::string{"type"});
    pk.pack(std::string{"ready"});
    pk.pack(std::string{"v"});
    pk.pack_uint32(gp::protocol_version);
    pk.pack(std::string{"version"});
    pk.pack(std::string{"0.1.0"});
    pk.pack(std::string{"configured"});
    pk.pack(false);
  });
  gp::decoder dec2;
  dec2.feed(old.data(), old.size());
  auto got = dec2.next(error);
  ASSERT_TRUE(got) << error;
  EXPECT_EQ(std::get<gp::ready>(*got), (gp::ready{"0.1.0", false, {}}));
}

TEST(guest_protocol, configure_with_the_code_in_a_file_round_trips_and_the_field_is_optional) {
  auto cfg = std::get<gp::configure>(samples()[1]);
  cfg.code.clear();
  cfg.code_file = "program";
  auto bytes = gp::encode(cfg);
  gp::decoder dec;
  dec.feed(bytes.data(), bytes.size());
  std::string error;
  auto back = dec.next(error);
  ASSERT_TRUE(back) << error;
  EXPECT_EQ(std::get<gp::configure>(*back), cfg);
  // A host that does not know the field (the frame of protocol version 1 before it) still
  // configures: no code_file.
  auto old = raw_frame([](auto& pk) {
    pk.pack_map(10);
    for (auto [k, v] : {std::pair{"type", "configure"}, {"encoding", "plain"},
                        {"entrypoint", "main"}, {"interface", "binary"}}) {
      pk.pack(std::string{k});
      pk.pack(std::string{v});
    }
    pk.pack(std::string{"v"});
    pk.pack_uint32(gp::protocol_version);
    pk.pack(std::string{"code"});
    pk.pack_bin(2);
    pk.pack_bin_body("ab", 2);
    pk.pack(std::string{"variables"});
    pk.pack_map(0);
    pk.pack(std::string{"volumes"});
    pk.pack_array(0);
    pk.pack(std::string{"authorized_keys"});
    pk.pack_array(0);
    pk.pack(std::string{"app_port"});
    pk.pack_uint16(8080);
  });
  gp::decoder dec2;
  dec2.feed(old.data(), old.size());
  auto got = dec2.next(error);
  ASSERT_TRUE(got) << error;
  auto& c = std::get<gp::configure>(*got);
  EXPECT_EQ(c.code, "ab");
  EXPECT_EQ(c.code_file, "");
  EXPECT_EQ(c.entrypoint, "main");
  EXPECT_EQ(c.app_port, 8080);
}
