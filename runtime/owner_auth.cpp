#include "runtime/owner_auth.hpp"

#include <cmath>
#include <cstdio>
#include <ctime>
#include <memory>

#include <nlohmann/json.hpp>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>

namespace alephd::owner_auth {

namespace {

using json = nlohmann::json;

// unique_ptr over an OpenSSL object, freed with its own function.
template <auto Free>
struct openssl_free {
  template <class T>
  void operator()(T* p) const {
    Free(p);
  }
};
using pkey_free = openssl_free<EVP_PKEY_free>;
using pctx_free = openssl_free<EVP_PKEY_CTX_free>;
using mdctx_free = openssl_free<EVP_MD_CTX_free>;
using bn_free = openssl_free<BN_clear_free>;
using sig_free = openssl_free<ECDSA_SIG_free>;
using bld_free = openssl_free<OSSL_PARAM_BLD_free>;
using params_free = openssl_free<OSSL_PARAM_free>;
using pkey_ptr = std::unique_ptr<EVP_PKEY, pkey_free>;

const unsigned char* u8(std::string_view s) {
  return reinterpret_cast<const unsigned char*>(s.data());
}

// A P-256 key from its public point, and its private scalar when `d` is not empty.
pkey_ptr make_key(std::string_view x, std::string_view y, std::string_view d) {
  if (x.size() != 32 || y.size() != 32 || (!d.empty() && d.size() != 32))
    return nullptr;
  std::string point = "\x04";
  point.append(x).append(y);
  std::unique_ptr<OSSL_PARAM_BLD, bld_free> bld{OSSL_PARAM_BLD_new()};
  std::unique_ptr<BIGNUM, bn_free> priv;
  if (!bld
      || OSSL_PARAM_BLD_push_utf8_string(bld.get(), OSSL_PKEY_PARAM_GROUP_NAME, "prime256v1", 0) != 1
      || OSSL_PARAM_BLD_push_octet_string(bld.get(), OSSL_PKEY_PARAM_PUB_KEY, point.data(), point.size()) != 1)
    return nullptr;
  if (!d.empty()) {
    priv.reset(BN_bin2bn(u8(d), static_cast<int>(d.size()), nullptr));
    if (!priv || OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_PRIV_KEY, priv.get()) != 1)
      return nullptr;
  }
  std::unique_ptr<OSSL_PARAM, params_free> params{OSSL_PARAM_BLD_to_param(bld.get())};
  std::unique_ptr<EVP_PKEY_CTX, pctx_free> ctx{EVP_PKEY_CTX_new_from_name(nullptr, "EC", nullptr)};
  EVP_PKEY* out = nullptr;
  if (!params || !ctx || EVP_PKEY_fromdata_init(ctx.get()) != 1
      || EVP_PKEY_fromdata(ctx.get(), &out, d.empty() ? EVP_PKEY_PUBLIC_KEY : EVP_PKEY_KEYPAIR,
                           params.get())
           != 1)
    return nullptr;
  pkey_ptr key{out};
  // fromdata does not check that the point is on the curve: a public-key check does.
  std::unique_ptr<EVP_PKEY_CTX, pctx_free> check{EVP_PKEY_CTX_new_from_pkey(nullptr, key.get(), nullptr)};
  if (!check || EVP_PKEY_public_check(check.get()) != 1)
    return nullptr;
  return key;
}

std::string bn_bytes(const BIGNUM* bn) {
  std::string out(32, '\0');
  if (bn == nullptr || BN_bn2binpad(bn, reinterpret_cast<unsigned char*>(out.data()), 32) != 32)
    return {};
  return out;
}

// {"payload": hex, "signature": …} -> the payload bytes, its JSON and the signature text.
std::string unpack(std::string_view header, const char* name, std::string& payload, json& doc,
                   std::string& signature) {
  auto outer = json::parse(header, nullptr, false);
  if (!outer.is_object() || !outer.contains("payload") || !outer["payload"].is_string()
      || !outer.contains("signature") || !outer["signature"].is_string())
    return std::string{name} + " must be JSON {\"payload\": hex, \"signature\": …}";
  auto bytes = crypto::from_hex(outer["payload"].get<std::string>());
  if (!bytes)
    return std::string{name} + ": payload is not hex";
  payload = std::move(*bytes);
  doc = json::parse(payload, nullptr, false);
  if (!doc.is_object())
    return std::string{name} + ": payload is not a JSON object";
  signature = outer["signature"].get<std::string>();
  return {};
}

std::string text_field(const json& doc, const char* key) {
  auto i = doc.find(key);
  return i != doc.end() && i->is_string() ? i->get<std::string>() : std::string{};
}

std::string signed_pubkey_payload(const p256_key& key, std::string_view domain, double expires,
                                  std::string_view address, std::string_view chain) {
  json pubkey{{"crv", "P-256"}, {"kty", "EC"}, {"x", base64url_encode(key.x)}, {"y", base64url_encode(key.y)}};
  return json{{"pubkey", pubkey}, {"alg", "ECDSA"},        {"domain", domain},
              {"address", address}, {"expires", iso8601(expires)}, {"chain", chain}}
    .dump();
}

std::string header_of(std::string_view payload, std::string_view signature) {
  return json{{"payload", crypto::to_hex(payload)}, {"signature", signature}}.dump();
}

} // namespace

std::optional<p256_key> p256_generate() {
  pkey_ptr pk{EVP_EC_gen("P-256")};
  if (!pk)
    return std::nullopt;
  BIGNUM *d = nullptr, *x = nullptr, *y = nullptr;
  EVP_PKEY_get_bn_param(pk.get(), OSSL_PKEY_PARAM_PRIV_KEY, &d);
  EVP_PKEY_get_bn_param(pk.get(), OSSL_PKEY_PARAM_EC_PUB_X, &x);
  EVP_PKEY_get_bn_param(pk.get(), OSSL_PKEY_PARAM_EC_PUB_Y, &y);
  std::unique_ptr<BIGNUM, bn_free> dd{d}, xx{x}, yy{y};
  p256_key k{bn_bytes(d), bn_bytes(x), bn_bytes(y)};
  if (k.d.empty() || k.x.empty() || k.y.empty())
    return std::nullopt;
  return k;
}

std::string es256_sign(const p256_key& key, std::string_view payload) {
  auto pk = make_key(key.x, key.y, key.d);
  std::unique_ptr<EVP_MD_CTX, mdctx_free> md{EVP_MD_CTX_new()};
  size_t len = 0;
  if (!pk || !md || EVP_DigestSignInit(md.get(), nullptr, EVP_sha256(), nullptr, pk.get()) != 1
      || EVP_DigestSign(md.get(), nullptr, &len, u8(payload), payload.size()) != 1)
    return {};
  std::string der(len, '\0');
  if (EVP_DigestSign(md.get(), reinterpret_cast<unsigned char*>(der.data()), &len, u8(payload),
                     payload.size())
      != 1)
    return {};
  const auto* p = reinterpret_cast<const unsigned char*>(der.data());
  std::unique_ptr<ECDSA_SIG, sig_free> sig{d2i_ECDSA_SIG(nullptr, &p, static_cast<long>(len))};
  if (!sig)
    return {};
  const BIGNUM *r = nullptr, *s = nullptr;
  ECDSA_SIG_get0(sig.get(), &r, &s);
  auto out = bn_bytes(r);
  auto sb = bn_bytes(s);
  return out.empty() || sb.empty() ? std::string{} : out + sb;
}

bool es256_verify(std::string_view x, std::string_view y, std::string_view payload,
                  std::string_view signature) {
  if (signature.size() != 64)
    return false;
  auto pk = make_key(x, y, {});
  if (!pk)
    return false;
  std::unique_ptr<ECDSA_SIG, sig_free> sig{ECDSA_SIG_new()};
  BIGNUM* r = BN_bin2bn(u8(signature), 32, nullptr);
  BIGNUM* s = BN_bin2bn(u8(signature) + 32, 32, nullptr);
  if (!sig || !r || !s || ECDSA_SIG_set0(sig.get(), r, s) != 1) {
    BN_free(r);
    BN_free(s);
    return false;
  }
  unsigned char* der = nullptr;
  int len = i2d_ECDSA_SIG(sig.get(), &der);
  if (len <= 0)
    return false;
  std::unique_ptr<unsigned char, void (*)(unsigned char*)> der_guard{
    der, [](unsigned char* p) { OPENSSL_free(p); }};
  std::unique_ptr<EVP_MD_CTX, mdctx_free> md{EVP_MD_CTX_new()};
  return md && EVP_DigestVerifyInit(md.get(), nullptr, EVP_sha256(), nullptr, pk.get()) == 1
         && EVP_DigestVerify(md.get(), der, static_cast<size_t>(len), u8(payload), payload.size()) == 1;
}

std::string base64url_encode(std::string_view bytes) {
  std::string out(4 * ((bytes.size() + 2) / 3) + 1, '\0');
  int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()), u8(bytes),
                          static_cast<int>(bytes.size()));
  out.resize(static_cast<size_t>(n));
  while (!out.empty() && out.back() == '=')
    out.pop_back();
  for (auto& c : out)
    c = c == '+' ? '-' : c == '/' ? '_' : c;
  return out;
}

std::optional<std::string> base64url_decode(std::string_view text) {
  if (text.size() > 4096)
    return std::nullopt;
  std::string in{text};
  for (auto& c : in) {
    if (c == '-')
      c = '+';
    else if (c == '_')
      c = '/';
    else if (!std::isalnum(static_cast<unsigned char>(c)))
      return std::nullopt; // no padding, whitespace or standard-alphabet characters
  }
  if (in.size() % 4 == 1)
    return std::nullopt;
  size_t pad = (4 - in.size() % 4) % 4;
  in.append(pad, '=');
  std::string out(in.size() / 4 * 3, '\0');
  int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()), u8(in),
                          static_cast<int>(in.size()));
  if (n < 0)
    return std::nullopt;
  out.resize(static_cast<size_t>(n) - pad);
  return out;
}

std::optional<double> parse_iso8601(std::string_view t) {
  // YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)
  auto digits = [&](size_t at, size_t n, int& v) {
    if (at + n > t.size())
      return false;
    v = 0;
    for (size_t i = at; i < at + n; ++i) {
      if (t[i] < '0' || t[i] > '9')
        return false;
      v = v * 10 + (t[i] - '0');
    }
    return true;
  };
  int Y, M, D, h, m, s;
  if (t.size() < 20 || !digits(0, 4, Y) || t[4] != '-' || !digits(5, 2, M) || t[7] != '-'
      || !digits(8, 2, D) || (t[10] != 'T' && t[10] != ' ') || !digits(11, 2, h) || t[13] != ':'
      || !digits(14, 2, m) || t[16] != ':' || !digits(17, 2, s))
    return std::nullopt;
  if (M < 1 || M > 12 || D < 1 || D > 31 || h > 23 || m > 59 || s > 60)
    return std::nullopt;
  size_t i = 19;
  double frac = 0;
  if (i < t.size() && t[i] == '.') {
    double scale = 0.1;
    ++i;
    size_t start = i;
    while (i < t.size() && t[i] >= '0' && t[i] <= '9' && i - start < 9) {
      frac += (t[i] - '0') * scale;
      scale /= 10;
      ++i;
    }
    if (i == start)
      return std::nullopt;
  }
  int offset = 0;
  if (i < t.size() && t[i] == 'Z' && i + 1 == t.size()) {
    offset = 0;
  } else if (i + 6 == t.size() && (t[i] == '+' || t[i] == '-') && t[i + 3] == ':') {
    int oh, om;
    if (!digits(i + 1, 2, oh) || !digits(i + 4, 2, om) || oh > 23 || om > 59)
      return std::nullopt;
    offset = (oh * 60 + om) * 60 * (t[i] == '-' ? -1 : 1);
  } else {
    return std::nullopt;
  }
  std::tm tm{};
  tm.tm_year = Y - 1900;
  tm.tm_mon = M - 1;
  tm.tm_mday = D;
  tm.tm_hour = h;
  tm.tm_min = m;
  tm.tm_sec = s;
  auto secs = ::timegm(&tm);
  return static_cast<double>(secs) - offset + frac;
}

std::string iso8601(double unix_seconds) {
  auto t = static_cast<std::time_t>(std::floor(unix_seconds));
  std::tm tm{};
  ::gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::string signed_pubkey_eth(std::string_view wallet_secret, const p256_key& key,
                              std::string_view domain, double expires) {
  auto address = crypto::eth_address(wallet_secret);
  if (!address)
    return {};
  auto payload = signed_pubkey_payload(key, domain, expires, *address, "ETH");
  return header_of(payload, crypto::eth_personal_sign(wallet_secret, payload));
}

std::string signed_pubkey_sol(const crypto::ed25519_key& wallet, const p256_key& key,
                              std::string_view domain, double expires) {
  auto payload = signed_pubkey_payload(key, domain, expires,
                                       crypto::base58_encode(wallet.public_key), "SOL");
  return header_of(payload, crypto::to_hex(crypto::ed25519_sign(wallet, payload)));
}

std::string signed_operation(const p256_key& key, std::string_view method, std::string_view path,
                             std::string_view domain, double time) {
  auto payload =
    json{{"time", iso8601(time)}, {"method", method}, {"path", path}, {"domain", domain}}.dump();
  return header_of(payload, crypto::to_hex(es256_sign(key, payload)));
}

outcome verify(std::string_view signed_pubkey, std::string_view signed_op,
               std::string_view method, std::string_view path, std::string_view domain,
               double now) {
  outcome out;
  std::string key_payload, key_sig, op_payload, op_sig;
  json key_doc, op_doc;
  if (auto e = unpack(signed_pubkey, "X-SignedPubKey", key_payload, key_doc, key_sig); !e.empty())
    return {std::nullopt, e};
  if (auto e = unpack(signed_op, "X-SignedOperation", op_payload, op_doc, op_sig); !e.empty())
    return {std::nullopt, e};
  // The ephemeral key, signed by the owner's wallet.
  auto address = text_field(key_doc, "address");
  auto chain = text_field(key_doc, "chain");
  if (chain.empty())
    chain = "ETH";
  if (address.empty())
    return {std::nullopt, "X-SignedPubKey: no address"};
  auto expires = parse_iso8601(text_field(key_doc, "expires"));
  if (!expires)
    return {std::nullopt, "X-SignedPubKey: expires must be an ISO-8601 time with a zone"};
  if (now > *expires)
    return {std::nullopt, "X-SignedPubKey: the key expired at " + iso8601(*expires)};
  if (auto d = text_field(key_doc, "domain"); d != domain)
    return {std::nullopt, d.empty() ? "X-SignedPubKey: no domain"
                                    : "X-SignedPubKey: the key is for " + d + ", not " + std::string{domain}};
  if (auto alg = text_field(key_doc, "alg"); !alg.empty() && alg != "ECDSA")
    return {std::nullopt, "X-SignedPubKey: alg must be ECDSA"};
  if (crypto::is_evm_chain(chain)) {
    auto signer = crypto::eth_recover(key_payload, key_sig);
    if (!signer || *signer != crypto::ascii_lower(address))
      return {std::nullopt, "X-SignedPubKey: not signed by " + address};
    address = crypto::ascii_lower(address);
  } else if (crypto::is_svm_chain(chain)) {
    auto pub = crypto::base58_decode(address);
    auto sig = crypto::from_hex(key_sig);
    if (!sig || sig->size() != 64)
      sig = crypto::base58_decode(key_sig);
    if (!pub || !sig || !crypto::ed25519_verify(*pub, key_payload, *sig))
      return {std::nullopt, "X-SignedPubKey: not signed by " + address};
  } else {
    return {std::nullopt, "X-SignedPubKey: wallets of chain " + chain + " are not supported"};
  }
  const auto& jwk = key_doc.contains("pubkey") ? key_doc["pubkey"] : json{};
  if (!jwk.is_object() || text_field(jwk, "kty") != "EC" || text_field(jwk, "crv") != "P-256")
    return {std::nullopt, "X-SignedPubKey: pubkey must be a P-256 EC JWK"};
  auto x = base64url_decode(text_field(jwk, "x"));
  auto y = base64url_decode(text_field(jwk, "y"));
  if (!x || !y || x->size() != 32 || y->size() != 32)
    return {std::nullopt, "X-SignedPubKey: pubkey x and y must be 32 bytes of base64url"};
  // The operation, signed by that key.
  auto sig = crypto::from_hex(op_sig);
  if (!sig || !es256_verify(*x, *y, op_payload, *sig))
    return {std::nullopt, "X-SignedOperation: not signed by the key of X-SignedPubKey"};
  auto time = parse_iso8601(text_field(op_doc, "time"));
  if (!time)
    return {std::nullopt, "X-SignedOperation: time must be an ISO-8601 time with a zone"};
  if (std::fabs(now - *time) > max_skew_seconds)
    return {std::nullopt, "X-SignedOperation: signed at " + iso8601(*time)
                            + ", more than 2 minutes from this node's clock"};
  if (text_field(op_doc, "method") != method)
    return {std::nullopt, "X-SignedOperation: signed for method " + text_field(op_doc, "method")};
  if (text_field(op_doc, "path") != path)
    return {std::nullopt, "X-SignedOperation: signed for another path"};
  if (text_field(op_doc, "domain") != domain)
    return {std::nullopt, "X-SignedOperation: signed for domain " + text_field(op_doc, "domain")
                            + ", this node is " + std::string{domain}};
  verified v;
  v.address = address;
  v.chain = chain;
  // Keyed on what was signed, not on the signature: (r, n - s) verifies as well as (r, s).
  v.operation = crypto::to_hex(crypto::sha256(*x + *y + op_payload));
  v.valid_until = *time + max_skew_seconds;
  return {v, {}};
}

bool same_owner(std::string_view address, const verified& who) {
  return crypto::is_evm_chain(who.chain) ? crypto::ascii_lower(address) == who.address
                                         : address == who.address;
}

bool replay_guard::first_use(const std::string& key, double until, double now) {
  std::lock_guard lock{mu_};
  while (!expiries_.empty() && expiries_.begin()->first < now) {
    seen_.erase(expiries_.begin()->second);
    expiries_.erase(expiries_.begin());
  }
  if (seen_.size() >= max_entries)
    return false; // flooded: refuse rather than grow without bound
  if (!seen_.insert(key).second)
    return false;
  expiries_.emplace(until, key);
  return true;
}

} // namespace alephd::owner_auth
