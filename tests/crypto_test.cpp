// Signatures and node identity: published test vectors, the real signed messages in peer-data,
// tampering, and the node key file.
#include "runtime/crypto.hpp"

#include <filesystem>
#include <fstream>
#include <optional>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <sys/stat.h>

#include "messages/aleph_message.hpp"

using namespace alephd::crypto;

namespace {

std::string unhex(std::string_view h) {
  auto b = from_hex(h);
  EXPECT_TRUE(b.has_value()) << h;
  return b.value_or("");
}

// The well-known example key of the web3.js documentation (never a real wallet).
const std::string test_secret =
  unhex("4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318");

std::string read_file(const std::string& path) {
  std::ifstream in{path};
  return {std::istreambuf_iterator<char>{in}, {}};
}

// The verdict on a peer-data message's own signature (nullopt: it verifies).
std::optional<std::string> peer_data_verdict(const char* name, alephd::aleph::message& out) {
  auto text = read_file(std::string{ALEPHD_PEER_DATA_DIR} + "/" + name);
  auto parsed = alephd::aleph::parse_message(text);
  EXPECT_TRUE(parsed.ok()) << name << ": " << parsed.error.reason;
  if (!parsed.ok())
    return "unparsable";
  out = *parsed.msg;
  return verify_message_signature(out.chain, out.sender, alephd::aleph::to_string(out.type),
                                  out.item_hash, out.signature);
}

struct temp_dir {
  std::string path;
  temp_dir() {
    char tmpl[] = "/tmp/alephd-crypto-XXXXXX";
    path = ::mkdtemp(tmpl);
  }
  ~temp_dir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
};

} // namespace

TEST(encodings, hex_and_base58_round_trip_and_reject_junk) {
  EXPECT_EQ(to_hex("\x01\xab\xff"), "01abff");
  EXPECT_EQ(from_hex("0x01ABff"), std::string("\x01\xab\xff"));
  EXPECT_FALSE(from_hex("abc"));
  EXPECT_FALSE(from_hex("zz"));
  EXPECT_EQ(base58_encode("Hello World!"), "2NEpo7TZRRrLZSi2U");
  EXPECT_EQ(base58_encode(std::string("\0\0\x01", 3)), "112");
  EXPECT_EQ(base58_decode("2NEpo7TZRRrLZSi2U"), std::string("Hello World!"));
  EXPECT_EQ(base58_decode("112"), std::string("\0\0\x01", 3));
  EXPECT_FALSE(base58_decode("0OIl"));
  EXPECT_FALSE(base58_decode(std::string(300, '2')));
}

TEST(digests, keccak256_is_ethereums_not_sha3) {
  EXPECT_EQ(to_hex(keccak256("")),
            "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470");
  EXPECT_EQ(to_hex(sha256("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST(evm, address_and_personal_sign_match_the_published_example) {
  EXPECT_EQ(eth_address(test_secret), "0x2c7536e3605d9c16a7a3d7b1898e529396a65c23");
  auto sig = eth_personal_sign(test_secret, "Some data");
  EXPECT_EQ(sig, "0xb91467e570a6466aa9e9876cbcd013baba02900b8979d43fe208a4a4f339f5fd6007e74cd82e"
                 "037b800186422fc2da167c747ef045e5d18a5f5d4300f8e1a0291c");
  EXPECT_EQ(eth_recover("Some data", sig), "0x2c7536e3605d9c16a7a3d7b1898e529396a65c23");
  EXPECT_NE(eth_recover("Some datA", sig), "0x2c7536e3605d9c16a7a3d7b1898e529396a65c23");
  EXPECT_FALSE(eth_recover("Some data", sig.substr(0, 100)));
  EXPECT_FALSE(eth_recover("Some data", "0x" + std::string(130, 'g')));
  EXPECT_FALSE(eth_recover("Some data", sig.substr(0, 130) + "05")); // v must be 27/28 or 0/1
  EXPECT_EQ(eth_personal_sign(std::string(32, '\0'), "x"), ""); // not a valid secret
  EXPECT_FALSE(eth_address("short"));
}

TEST(ed25519, rfc8032_test_vector_and_tampering) {
  auto key = ed25519_from_seed(
    unhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"));
  ASSERT_TRUE(key);
  EXPECT_EQ(to_hex(key->public_key),
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a");
  auto sig = ed25519_sign(*key, "");
  EXPECT_EQ(to_hex(sig), "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821"
                         "590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b");
  EXPECT_TRUE(ed25519_verify(key->public_key, "", sig));
  EXPECT_FALSE(ed25519_verify(key->public_key, "x", sig));
  auto other = ed25519_generate();
  EXPECT_FALSE(ed25519_verify(other.public_key, "", sig));
  EXPECT_FALSE(ed25519_verify(key->public_key, "", sig.substr(1)));
  EXPECT_FALSE(ed25519_from_seed("short"));
}

TEST(message_signatures, the_real_signed_message_verifies) {
  // A message as the network published it, signed by its sender's wallet.
  for (const char* name : {"instance_content.json"}) {
    alephd::aleph::message m;
    auto problem = peer_data_verdict(name, m);
    EXPECT_FALSE(problem) << name << ": " << problem.value_or("");
    // One changed character in what was signed and the same signature is refused.
    auto tampered = m.item_hash;
    tampered[0] = tampered[0] == 'a' ? 'b' : 'a';
    EXPECT_TRUE(verify_message_signature(m.chain, m.sender, alephd::aleph::to_string(m.type),
                                         tampered, m.signature))
      << name;
    EXPECT_TRUE(verify_message_signature(m.chain, m.sender, "POST", m.item_hash, m.signature))
      << name;
  }
}

TEST(message_signatures, a_signature_copied_from_another_message_is_refused) {
  // The other peer-data files are schema fixtures: they carry one signature copied between them
  // and no item_hash, so what they "sign" is not what their sender signed.
  for (const char* name : {"forget.json", "machine.json", "instance_machine.json"}) {
    alephd::aleph::message m;
    auto problem = peer_data_verdict(name, m);
    ASSERT_TRUE(problem) << name;
    EXPECT_NE(problem->find("not by the sender"), std::string::npos) << *problem;
  }
}

TEST(message_signatures, evm_signed_by_the_sender_or_refused) {
  auto sender = *eth_address(test_secret);
  std::string hash(64, 'a');
  auto sig = eth_personal_sign(test_secret, message_verification_text("ETH", sender, "STORE", hash));
  EXPECT_FALSE(verify_message_signature("ETH", sender, "STORE", hash, sig));
  // Checksummed (mixed-case) sender addresses are the same address.
  std::string mixed = "0x2c7536E3605D9C16a7a3D7b1898e529396a65c23";
  auto sig2 = eth_personal_sign(test_secret, message_verification_text("BASE", mixed, "STORE", hash));
  EXPECT_FALSE(verify_message_signature("BASE", mixed, "STORE", hash, sig2));

  auto other = std::string(31, '\x11') + "\x22";
  auto forged = eth_personal_sign(other, message_verification_text("ETH", sender, "STORE", hash));
  auto why = verify_message_signature("ETH", sender, "STORE", hash, forged);
  ASSERT_TRUE(why);
  EXPECT_NE(why->find("not by the sender"), std::string::npos) << *why;
  EXPECT_TRUE(verify_message_signature("ETH", sender, "STORE", hash, ""));
  EXPECT_TRUE(verify_message_signature("ETH", sender, "STORE", hash, "0x1234"));
  // A signature for one chain does not pass for another.
  EXPECT_TRUE(verify_message_signature("BASE", sender, "STORE", hash, sig));
  auto unsupported = verify_message_signature("TEZOS", sender, "STORE", hash, sig);
  ASSERT_TRUE(unsupported);
  EXPECT_NE(unsupported->find("TEZOS"), std::string::npos);
}

TEST(message_signatures, solana_signed_by_the_sender_or_refused) {
  auto key = ed25519_generate();
  auto sender = base58_encode(key.public_key);
  std::string hash(64, 'b');
  auto field = sol_signature_field(key, message_verification_text("SOL", sender, "PROGRAM", hash));
  EXPECT_FALSE(verify_message_signature("SOL", sender, "PROGRAM", hash, field));
  EXPECT_TRUE(verify_message_signature("SOL", sender, "PROGRAM", std::string(64, 'c'), field));
  auto intruder = ed25519_generate();
  auto forged = sol_signature_field(intruder,
                                    message_verification_text("SOL", sender, "PROGRAM", hash));
  EXPECT_TRUE(verify_message_signature("SOL", sender, "PROGRAM", hash, forged)); // publicKey differs
  auto doc = nlohmann::json::parse(forged);
  doc.erase("publicKey");
  EXPECT_TRUE(verify_message_signature("SOL", sender, "PROGRAM", hash, doc.dump()));
  EXPECT_TRUE(verify_message_signature("SOL", sender, "PROGRAM", hash, "not json"));
  EXPECT_TRUE(verify_message_signature("SOL", "0OIl", "PROGRAM", hash, field));
}

TEST(node_key, made_once_private_and_stable) {
  temp_dir dir;
  std::string err;
  auto k1 = load_or_create_node_key(dir.path, err);
  ASSERT_TRUE(k1) << err;
  struct stat st{};
  ASSERT_EQ(::stat((dir.path + "/node.key").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  auto k2 = load_or_create_node_key(dir.path, err);
  ASSERT_TRUE(k2) << err;
  EXPECT_EQ(k1->public_key, k2->public_key);
  EXPECT_EQ(node_id_of(k1->public_key), to_hex(sha256(k1->public_key)));
  EXPECT_EQ(node_id_of(k1->public_key).size(), 64u);
  auto sig = ed25519_sign(*k2, "hello");
  EXPECT_TRUE(ed25519_verify(k1->public_key, "hello", sig));
}

TEST(node_key, refuses_a_key_others_can_read_or_a_malformed_one) {
  temp_dir dir;
  std::string err;
  ASSERT_TRUE(load_or_create_node_key(dir.path, err)) << err;
  auto path = dir.path + "/node.key";
  ::chmod(path.c_str(), 0644);
  EXPECT_FALSE(load_or_create_node_key(dir.path, err));
  EXPECT_NE(err.find("chmod 600"), std::string::npos) << err;
  std::ofstream{path, std::ios::trunc} << "not hex\n";
  ::chmod(path.c_str(), 0600);
  err.clear();
  EXPECT_FALSE(load_or_create_node_key(dir.path, err));
  EXPECT_NE(err.find("malformed"), std::string::npos) << err;
}
