// Owner authentication (X-SignedPubKey / X-SignedOperation): aleph-vm's published example,
// keys made here, and every way a request can be wrong.
#include "runtime/owner_auth.hpp"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <openssl/bn.h>

using namespace alephd;
using namespace alephd::owner_auth;
using nlohmann::json;

namespace {

std::string wallet_a() {
  return std::string(31, '\0') + "\x0a";
}
std::string wallet_b() {
  return std::string(31, '\0') + "\x0b";
}

constexpr double now = 1764000000; // 2025-11-24T16:00:00Z

struct headers {
  std::string pubkey, operation;
};

headers sign(const std::string& wallet, const p256_key& key, const std::string& method,
             const std::string& path, double time = now, const std::string& domain = "crn.test",
             double expires = now + 3600) {
  return {signed_pubkey_eth(wallet, key, domain, expires),
          signed_operation(key, method, path, domain, time)};
}

std::string error_of(const headers& h, const std::string& method = "POST",
                     const std::string& path = "/control/machine/x/stop", double at = now) {
  auto out = verify(h.pubkey, h.operation, method, path, "crn.test", at);
  return out.ok ? std::string{} : out.error;
}

} // namespace

TEST(owner_auth, the_example_of_aleph_vms_documentation_verifies) {
  // doc/operator_auth.md of aleph-vm: a key signed by 0xbA26…23b0, an operation GET / on
  // localhost at 2010-12-25T17:05:55Z.
  std::string pubkey =
    R"({"payload": "7b227075626b6579223a207b22637276223a2022502d323536222c20226b7479223a20224543222c202278223a20223962446f34754949686b735a5272677a31477972325050656d4334364e735f4730577144364d4d6a774673222c202279223a20226f48343342786c7854334f3065733336685967713143372d61325a535a71456d5f6b56356e636c79667a59227d2c2022616c67223a20224543445341222c2022646f6d61696e223a20226c6f63616c686f7374222c202261646472657373223a2022307862413236623135333539314434363230666432413734304130463165463730644164363532336230222c202265787069726573223a2022323031302d31322d32365431373a30353a35355a227d", "signature": "0xea99ef5f1a10f2d103f94dce4f8650730315246e6d15cf9e5862c11adfd6482703cd1ec684a4f3dffb36ae5c4a57b08a47108fe55e3b2454e45f6e63342e0f471b"})";
  std::string operation =
    R"({"payload": "7b2274696d65223a2022323031302d31322d32355431373a30353a35355a222c20226d6574686f64223a2022474554222c202270617468223a20222f222c2022646f6d61696e223a20226c6f63616c686f7374227d", "signature": "6f737654cd00e4d4155d387509978e7a9a4d27f5b59c9492ac1dec7b09f9aecc58c9365526bbddd6211b65f40f4956c50ab26f395f7170ce1698c11e28e25d3a"})";
  auto at = *parse_iso8601("2010-12-25T17:05:55Z");
  auto out = verify(pubkey, operation, "GET", "/", "localhost", at);
  ASSERT_TRUE(out.ok) << out.error;
  EXPECT_EQ(out.ok->address, "0xba26b153591d4620fd2a740a0f1ef70dad6523b0");
  EXPECT_EQ(out.ok->chain, "ETH");
  EXPECT_TRUE(same_owner("0xbA26b153591D4620fd2A740A0F1eF70dAd6523b0", *out.ok));
  // The same proof for another request, node or time is not valid.
  EXPECT_FALSE(verify(pubkey, operation, "POST", "/", "localhost", at).ok);
  EXPECT_FALSE(verify(pubkey, operation, "GET", "/control", "localhost", at).ok);
  EXPECT_FALSE(verify(pubkey, operation, "GET", "/", "crn.example.org", at).ok);
  EXPECT_FALSE(verify(pubkey, operation, "GET", "/", "localhost", at + 180).ok);
  EXPECT_FALSE(verify(pubkey, operation, "GET", "/", "localhost", at + 2 * 86400).ok); // expired
}

TEST(owner_auth, a_proof_made_here_verifies_for_its_request_only) {
  auto key = *p256_generate();
  auto h = sign(wallet_a(), key, "POST", "/control/machine/x/stop");
  auto out = verify(h.pubkey, h.operation, "POST", "/control/machine/x/stop", "crn.test", now);
  ASSERT_TRUE(out.ok) << out.error;
  EXPECT_EQ(out.ok->address, *crypto::eth_address(wallet_a()));
  EXPECT_FALSE(same_owner(*crypto::eth_address(wallet_b()), *out.ok));
  EXPECT_NE(error_of(h, "GET").find("method"), std::string::npos);
  EXPECT_NE(error_of(h, "POST", "/control/machine/y/stop").find("path"), std::string::npos);
  EXPECT_NE(error_of(h, "POST", "/control/machine/x/stop", now + 121).find("2 minutes"), std::string::npos);
  EXPECT_NE(error_of(h, "POST", "/control/machine/x/stop", now - 121).find("2 minutes"), std::string::npos);
  EXPECT_EQ(error_of(h, "POST", "/control/machine/x/stop", now + 119), "");
  auto other_domain = sign(wallet_a(), key, "POST", "/control/machine/x/stop", now, "crn.other");
  EXPECT_NE(error_of(other_domain).find("crn.other"), std::string::npos);
  auto expired = sign(wallet_a(), key, "POST", "/control/machine/x/stop", now, "crn.test", now - 1);
  EXPECT_NE(error_of(expired).find("expired"), std::string::npos);
}

TEST(owner_auth, forged_proofs_are_refused) {
  auto key = *p256_generate();
  auto h = sign(wallet_a(), key, "POST", "/p");
  // A key that claims wallet A's address but that wallet B signed.
  auto payload = json::parse(*crypto::from_hex(json::parse(h.pubkey)["payload"].get<std::string>()));
  auto bytes = payload.dump();
  json forged_key{{"payload", crypto::to_hex(bytes)},
                  {"signature", crypto::eth_personal_sign(wallet_b(), bytes)}};
  EXPECT_NE(error_of({forged_key.dump(), h.operation}, "POST", "/p").find("not signed by"), std::string::npos);
  // A key whose payload was changed after the wallet signed it (a later expiry).
  payload["expires"] = iso8601(now + 86400 * 365);
  json stretched{{"payload", crypto::to_hex(payload.dump())},
                 {"signature", json::parse(h.pubkey)["signature"]}};
  EXPECT_NE(error_of({stretched.dump(), h.operation}, "POST", "/p").find("not signed by"), std::string::npos);
  // An operation signed by another P-256 key than the one the wallet vouched for.
  auto intruder = *p256_generate();
  auto op = signed_operation(intruder, "POST", "/p", "crn.test", now);
  EXPECT_NE(error_of({h.pubkey, op}, "POST", "/p").find("not signed by the key"), std::string::npos);
  // An operation whose payload was changed after signing.
  auto opdoc = json::parse(h.operation);
  auto oppayload = json::parse(*crypto::from_hex(opdoc["payload"].get<std::string>()));
  oppayload["path"] = "/q";
  opdoc["payload"] = crypto::to_hex(oppayload.dump());
  EXPECT_NE(error_of({h.pubkey, opdoc.dump()}, "POST", "/q").find("not signed by the key"), std::string::npos);
}

TEST(owner_auth, a_solana_wallet_can_vouch_for_the_key) {
  auto wallet = crypto::ed25519_generate();
  auto key = *p256_generate();
  auto pub = signed_pubkey_sol(wallet, key, "crn.test", now + 60);
  auto op = signed_operation(key, "GET", "/l", "crn.test", now);
  auto out = verify(pub, op, "GET", "/l", "crn.test", now);
  ASSERT_TRUE(out.ok) << out.error;
  EXPECT_EQ(out.ok->address, crypto::base58_encode(wallet.public_key));
  EXPECT_EQ(out.ok->chain, "SOL");
  auto other = crypto::ed25519_generate();
  auto doc = json::parse(pub);
  doc["signature"] = crypto::to_hex(crypto::ed25519_sign(other, *crypto::from_hex(doc["payload"].get<std::string>())));
  EXPECT_FALSE(verify(doc.dump(), op, "GET", "/l", "crn.test", now).ok);
}

TEST(owner_auth, malformed_headers_get_a_reason_not_a_crash) {
  auto key = *p256_generate();
  auto h = sign(wallet_a(), key, "GET", "/");
  for (std::string bad : {"", "null", "[]", "{}", "not json", R"({"payload": 1, "signature": ""})",
                          R"({"payload": "zz", "signature": ""})", R"({"payload": "5b5d", "signature": ""})",
                          R"({"payload": "7b7d", "signature": "0x00"})"}) {
    auto a = verify(bad, h.operation, "GET", "/", "crn.test", now);
    EXPECT_FALSE(a.ok) << bad;
    EXPECT_FALSE(a.error.empty()) << bad;
    auto b = verify(h.pubkey, bad, "GET", "/", "crn.test", now);
    EXPECT_FALSE(b.ok) << bad;
    EXPECT_FALSE(b.error.empty()) << bad;
  }
  // A JWK that is not a point on P-256.
  auto doc = json::parse(*crypto::from_hex(json::parse(h.pubkey)["payload"].get<std::string>()));
  doc["pubkey"]["x"] = base64url_encode(std::string(32, '\x01'));
  auto bytes = doc.dump();
  json off_curve{{"payload", crypto::to_hex(bytes)}, {"signature", crypto::eth_personal_sign(wallet_a(), bytes)}};
  EXPECT_FALSE(verify(off_curve.dump(), h.operation, "GET", "/", "crn.test", now).ok);
}

TEST(owner_auth, the_replay_key_is_the_same_for_a_malleated_signature) {
  // (r, n - s) is as valid an ECDSA signature as (r, s): the replay key must not tell them apart.
  auto key = *p256_generate();
  auto h = sign(wallet_a(), key, "POST", "/p");
  auto doc = json::parse(h.operation);
  auto sig = *crypto::from_hex(doc["signature"].get<std::string>());
  BIGNUM* n = nullptr;
  BN_hex2bn(&n, "FFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551");
  BIGNUM* s = BN_bin2bn(reinterpret_cast<const unsigned char*>(sig.data()) + 32, 32, nullptr);
  BIGNUM* flipped = BN_new();
  BN_sub(flipped, n, s);
  std::string s2(32, '\0');
  BN_bn2binpad(flipped, reinterpret_cast<unsigned char*>(s2.data()), 32);
  BN_free(n);
  BN_free(s);
  BN_free(flipped);
  doc["signature"] = crypto::to_hex(sig.substr(0, 32) + s2);
  auto a = verify(h.pubkey, h.operation, "POST", "/p", "crn.test", now);
  auto b = verify(h.pubkey, doc.dump(), "POST", "/p", "crn.test", now);
  ASSERT_TRUE(a.ok) << a.error;
  if (b.ok) { // OpenSSL accepts high-s signatures
    EXPECT_EQ(a.ok->operation, b.ok->operation);
  }
  replay_guard guard;
  EXPECT_TRUE(guard.first_use(a.ok->operation, a.ok->valid_until, now));
  if (b.ok) {
    EXPECT_FALSE(guard.first_use(b.ok->operation, b.ok->valid_until, now));
  }
}

TEST(owner_auth, a_key_must_name_the_domain) {
  auto key = *p256_generate();
  auto h = sign(wallet_a(), key, "GET", "/");
  auto payload = json::parse(*crypto::from_hex(json::parse(h.pubkey)["payload"].get<std::string>()));
  payload.erase("domain");
  auto bytes = payload.dump();
  json no_domain{{"payload", crypto::to_hex(bytes)}, {"signature", crypto::eth_personal_sign(wallet_a(), bytes)}};
  auto out = verify(no_domain.dump(), h.operation, "GET", "/", "crn.test", now);
  EXPECT_FALSE(out.ok);
  EXPECT_NE(out.error.find("no domain"), std::string::npos) << out.error;
}

TEST(owner_auth, an_operation_is_accepted_once) {
  replay_guard guard;
  EXPECT_TRUE(guard.first_use("sig-1", now + 120, now));
  EXPECT_FALSE(guard.first_use("sig-1", now + 120, now + 1));
  EXPECT_TRUE(guard.first_use("sig-2", now + 120, now + 1));
  // Forgotten once it could no longer verify anyway.
  EXPECT_TRUE(guard.first_use("sig-1", now + 500, now + 121));
}

TEST(owner_auth, times_and_base64url) {
  EXPECT_EQ(parse_iso8601("2010-12-25T17:05:55Z"), 1293296755.0);
  EXPECT_EQ(parse_iso8601("2010-12-25T19:05:55+02:00"), 1293296755.0);
  EXPECT_EQ(parse_iso8601("2010-12-25T17:05:55.5Z"), 1293296755.5);
  EXPECT_EQ(iso8601(1293296755.9), "2010-12-25T17:05:55Z");
  for (const char* bad : {"", "2010-12-25", "2010-12-25T17:05:55", "2010-13-25T17:05:55Z",
                          "2010-12-25T17:05:55Zjunk", "2010-12-25T17:05:55+2:00", "x010-12-25T17:05:55Z"})
    EXPECT_FALSE(parse_iso8601(bad)) << bad;
  for (std::string s : {std::string{}, std::string{"f"}, std::string{"fo"}, std::string{"\xff\xfe\x00", 3}})
    EXPECT_EQ(base64url_decode(base64url_encode(s)), s);
  EXPECT_EQ(base64url_encode("\xfb\xff"), "-_8");
  EXPECT_FALSE(base64url_decode("a+b/"));
  EXPECT_FALSE(base64url_decode("abcde"));
}
