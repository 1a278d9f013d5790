#include "runtime/crypto.hpp"

#include <array>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <set>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cryptopp/keccak.h>
#include <nlohmann/json.hpp>
#include <secp256k1.h>
#include <secp256k1_recovery.h>
#include <sodium.h>

namespace alephd::crypto {

namespace {

const unsigned char* bytes_of(std::string_view s) {
  return reinterpret_cast<const unsigned char*>(s.data());
}

void sodium_ready() {
  static const bool ok = sodium_init() >= 0;
  (void)ok;
}

// One context for the process: libsecp256k1 contexts are safe to share once made.
const secp256k1_context* secp() {
  static secp256k1_context* ctx = [] {
    auto* c = secp256k1_context_create(SECP256K1_CONTEXT_SIGN | SECP256K1_CONTEXT_VERIFY);
    std::array<unsigned char, 32> seed{};
    sodium_ready();
    randombytes_buf(seed.data(), seed.size());
    if (secp256k1_context_randomize(c, seed.data()) != 1)
      std::abort(); // only fails on a broken library
    return c;
  }();
  return ctx;
}

constexpr std::string_view base58_alphabet =
  "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";

std::string personal_digest(std::string_view text) {
  std::string prefixed = "\x19" "Ethereum Signed Message:\n" + std::to_string(text.size());
  prefixed.append(text);
  return keccak256(prefixed);
}

std::string address_of(const secp256k1_pubkey& pub) {
  std::array<unsigned char, 65> out{};
  size_t len = out.size();
  secp256k1_ec_pubkey_serialize(secp(), out.data(), &len, &pub, SECP256K1_EC_UNCOMPRESSED);
  auto digest = keccak256(std::string_view{reinterpret_cast<const char*>(out.data()) + 1, 64});
  return "0x" + to_hex(std::string_view{digest}.substr(12));
}

} // namespace

std::string ascii_lower(std::string_view s) {
  std::string out{s};
  for (auto& c : out)
    if (c >= 'A' && c <= 'Z')
      c = static_cast<char>(c - 'A' + 'a');
  return out;
}

std::string to_hex(std::string_view bytes) {
  static constexpr char digits[] = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char c : bytes) {
    out.push_back(digits[c >> 4]);
    out.push_back(digits[c & 15]);
  }
  return out;
}

std::optional<std::string> from_hex(std::string_view text) {
  if (text.size() >= 2 && text[0] == '0' && (text[1] == 'x' || text[1] == 'X'))
    text.remove_prefix(2);
  if (text.size() % 2 != 0)
    return std::nullopt;
  auto nibble = [](char c) -> int {
    if (c >= '0' && c <= '9')
      return c - '0';
    if (c >= 'a' && c <= 'f')
      return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
      return c - 'A' + 10;
    return -1;
  };
  std::string out;
  out.reserve(text.size() / 2);
  for (size_t i = 0; i < text.size(); i += 2) {
    int hi = nibble(text[i]), lo = nibble(text[i + 1]);
    if (hi < 0 || lo < 0)
      return std::nullopt;
    out.push_back(static_cast<char>(hi * 16 + lo));
  }
  return out;
}

std::string base58_encode(std::string_view bytes) {
  size_t zeros = 0;
  while (zeros < bytes.size() && bytes[zeros] == 0)
    ++zeros;
  // Big-endian base-58 digits of the number, built by repeated multiply-and-add.
  std::vector<unsigned char> digits;
  for (size_t i = zeros; i < bytes.size(); ++i) {
    unsigned carry = static_cast<unsigned char>(bytes[i]);
    for (auto& d : digits) {
      carry += static_cast<unsigned>(d) << 8;
      d = static_cast<unsigned char>(carry % 58);
      carry /= 58;
    }
    while (carry > 0) {
      digits.push_back(static_cast<unsigned char>(carry % 58));
      carry /= 58;
    }
  }
  std::string out(zeros, '1');
  for (auto i = digits.rbegin(); i != digits.rend(); ++i)
    out.push_back(base58_alphabet[*i]);
  return out;
}

std::optional<std::string> base58_decode(std::string_view text) {
  if (text.size() > 256)
    return std::nullopt;
  size_t ones = 0;
  while (ones < text.size() && text[ones] == '1')
    ++ones;
  std::vector<unsigned char> bytes; // little-endian
  for (size_t i = ones; i < text.size(); ++i) {
    auto pos = base58_alphabet.find(text[i]);
    if (pos == std::string_view::npos)
      return std::nullopt;
    unsigned carry = static_cast<unsigned>(pos);
    for (auto& b : bytes) {
      carry += static_cast<unsigned>(b) * 58;
      b = static_cast<unsigned char>(carry & 0xff);
      carry >>= 8;
    }
    while (carry > 0) {
      bytes.push_back(static_cast<unsigned char>(carry & 0xff));
      carry >>= 8;
    }
  }
  std::string out(ones, '\0');
  for (auto i = bytes.rbegin(); i != bytes.rend(); ++i)
    out.push_back(static_cast<char>(*i));
  return out;
}

std::string keccak256(std::string_view bytes) {
  CryptoPP::Keccak_256 h;
  h.Update(bytes_of(bytes), bytes.size());
  std::string out(32, '\0');
  h.Final(reinterpret_cast<unsigned char*>(out.data()));
  return out;
}

std::string sha256(std::string_view bytes) {
  sodium_ready();
  std::string out(crypto_hash_sha256_BYTES, '\0');
  crypto_hash_sha256(reinterpret_cast<unsigned char*>(out.data()), bytes_of(bytes), bytes.size());
  return out;
}

std::optional<std::string> eth_address(std::string_view secret) {
  secp256k1_pubkey pub;
  if (secret.size() != 32 || secp256k1_ec_pubkey_create(secp(), &pub, bytes_of(secret)) != 1)
    return std::nullopt;
  return address_of(pub);
}

std::string eth_personal_sign(std::string_view secret, std::string_view text) {
  if (secret.size() != 32 || secp256k1_ec_seckey_verify(secp(), bytes_of(secret)) != 1)
    return {};
  auto digest = personal_digest(text);
  secp256k1_ecdsa_recoverable_signature sig;
  if (secp256k1_ecdsa_sign_recoverable(secp(), &sig, bytes_of(digest), bytes_of(secret), nullptr,
                                       nullptr)
      != 1)
    return {};
  std::string compact(65, '\0');
  int recid = 0;
  secp256k1_ecdsa_recoverable_signature_serialize_compact(
    secp(), reinterpret_cast<unsigned char*>(compact.data()), &recid, &sig);
  compact[64] = static_cast<char>(27 + recid);
  return "0x" + to_hex(compact);
}

std::optional<std::string> eth_recover(std::string_view text, std::string_view signature_hex) {
  auto sig = from_hex(signature_hex);
  if (!sig || sig->size() != 65)
    return std::nullopt;
  int v = static_cast<unsigned char>((*sig)[64]);
  if (v >= 27)
    v -= 27;
  if (v != 0 && v != 1)
    return std::nullopt;
  secp256k1_ecdsa_recoverable_signature rsig;
  if (secp256k1_ecdsa_recoverable_signature_parse_compact(secp(), &rsig, bytes_of(*sig), v) != 1)
    return std::nullopt;
  auto digest = personal_digest(text);
  secp256k1_pubkey pub;
  if (secp256k1_ecdsa_recover(secp(), &pub, &rsig, bytes_of(digest)) != 1)
    return std::nullopt;
  return address_of(pub);
}

ed25519_key ed25519_generate() {
  sodium_ready();
  ed25519_key k;
  k.public_key.resize(crypto_sign_PUBLICKEYBYTES);
  k.secret_key.resize(crypto_sign_SECRETKEYBYTES);
  crypto_sign_keypair(reinterpret_cast<unsigned char*>(k.public_key.data()),
                      reinterpret_cast<unsigned char*>(k.secret_key.data()));
  return k;
}

std::optional<ed25519_key> ed25519_from_seed(std::string_view seed) {
  sodium_ready();
  if (seed.size() != crypto_sign_SEEDBYTES)
    return std::nullopt;
  ed25519_key k;
  k.public_key.resize(crypto_sign_PUBLICKEYBYTES);
  k.secret_key.resize(crypto_sign_SECRETKEYBYTES);
  crypto_sign_seed_keypair(reinterpret_cast<unsigned char*>(k.public_key.data()),
                           reinterpret_cast<unsigned char*>(k.secret_key.data()), bytes_of(seed));
  return k;
}

std::string ed25519_sign(const ed25519_key& key, std::string_view text) {
  sodium_ready();
  if (key.secret_key.size() != crypto_sign_SECRETKEYBYTES)
    return {};
  std::string sig(crypto_sign_BYTES, '\0');
  crypto_sign_detached(reinterpret_cast<unsigned char*>(sig.data()), nullptr, bytes_of(text),
                       text.size(), bytes_of(key.secret_key));
  return sig;
}

bool ed25519_verify(std::string_view public_key, std::string_view text, std::string_view signature) {
  sodium_ready();
  if (public_key.size() != crypto_sign_PUBLICKEYBYTES || signature.size() != crypto_sign_BYTES)
    return false;
  return crypto_sign_verify_detached(bytes_of(signature), bytes_of(text), text.size(),
                                     bytes_of(public_key))
         == 0;
}

std::string message_verification_text(std::string_view chain, std::string_view sender,
                                      std::string_view type, std::string_view item_hash) {
  std::string out;
  out.reserve(chain.size() + sender.size() + type.size() + item_hash.size() + 3);
  out.append(chain).append("\n").append(sender).append("\n").append(type).append("\n").append(item_hash);
  return out;
}

bool is_evm_chain(std::string_view chain) {
  // The chains aleph verifies with its EVM (EIP-191) verifier.
  static const std::set<std::string_view> evm = {
    "ETH",   "ARB",   "AURORA", "BASE",     "BLAST", "BOB",   "BSC",      "CYBER",
    "ETHERLINK", "FRAXTAL", "HYPE", "INK", "LENS", "LINEA", "LISK", "METIS",
    "MODE",  "OPTIMISM", "POL", "SONIC", "UNICHAIN", "WORLDCHAIN", "ZORA"};
  return evm.count(chain) > 0;
}

bool is_svm_chain(std::string_view chain) {
  return chain == "SOL" || chain == "ECLIPSE";
}

std::optional<std::string> verify_message_signature(std::string_view chain, std::string_view sender,
                                                    std::string_view type,
                                                    std::string_view item_hash,
                                                    std::string_view signature) {
  if (signature.empty())
    return "the message has no signature";
  auto text = message_verification_text(chain, sender, type, item_hash);
  if (is_evm_chain(chain)) {
    auto signer = eth_recover(text, signature);
    if (!signer)
      return "the signature is not a valid " + std::string{chain} + " signature (65 bytes, hex)";
    if (*signer != ascii_lower(sender))
      return "the signature is by " + *signer + ", not by the sender " + std::string{sender};
    return std::nullopt;
  }
  if (is_svm_chain(chain)) {
    auto doc = nlohmann::json::parse(signature, nullptr, false);
    if (!doc.is_object() || !doc.contains("signature") || !doc["signature"].is_string())
      return std::string{"a "} + std::string{chain}
             + " signature must be JSON {\"signature\": base58, \"publicKey\": base58}";
    if (doc.contains("publicKey")
        && (!doc["publicKey"].is_string() || doc["publicKey"].get<std::string>() != sender))
      return "the signature's publicKey is not the sender";
    auto pub = base58_decode(sender);
    if (!pub || pub->size() != 32)
      return "the sender is not a base58 ed25519 public key";
    auto sig = base58_decode(doc["signature"].get<std::string>());
    if (!sig || sig->size() != 64)
      return "the signature is not 64 bytes of base58";
    if (!ed25519_verify(*pub, text, *sig))
      return "the signature does not verify for the sender " + std::string{sender};
    return std::nullopt;
  }
  return "signatures on chain " + std::string{chain} + " cannot be verified by this node";
}

std::string sol_signature_field(const ed25519_key& key, std::string_view text) {
  return nlohmann::json{{"signature", base58_encode(ed25519_sign(key, text))},
                        {"publicKey", base58_encode(key.public_key)}}
    .dump();
}

std::string node_id_of(std::string_view public_key) {
  return to_hex(sha256(public_key));
}

std::optional<ed25519_key> load_or_create_node_key(const std::string& dir, std::string& err) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) {
    err = "cannot create data dir " + dir + ": " + ec.message();
    return std::nullopt;
  }
  auto path = dir + "/node.key";
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd >= 0) {
    struct stat st{};
    std::string text(200, '\0');
    ssize_t n = -1;
    if (::fstat(fd, &st) == 0 && S_ISREG(st.st_mode))
      n = ::read(fd, text.data(), text.size());
    ::close(fd);
    if (n < 0) {
      err = "cannot read node key " + path;
      return std::nullopt;
    }
    if ((st.st_mode & 077) != 0) {
      err = "node key " + path + " is readable by other users (mode "
            + std::to_string((st.st_mode >> 6) & 7) + std::to_string((st.st_mode >> 3) & 7)
            + std::to_string(st.st_mode & 7) + "); chmod 600 it";
      return std::nullopt;
    }
    text.resize(static_cast<size_t>(n));
    while (!text.empty() && (text.back() == '\n' || text.back() == ' ' || text.back() == '\r'))
      text.pop_back();
    auto seed = from_hex(text);
    std::optional<ed25519_key> key;
    if (seed)
      key = ed25519_from_seed(*seed);
    if (!key) {
      err = "node key " + path + " is malformed (expected 64 hex digits)";
      return std::nullopt;
    }
    return key;
  }
  if (errno != ENOENT) {
    err = "cannot open node key " + path + ": " + std::strerror(errno);
    return std::nullopt;
  }
  sodium_ready();
  std::string seed(crypto_sign_SEEDBYTES, '\0');
  randombytes_buf(seed.data(), seed.size());
  auto key = ed25519_from_seed(seed);
  auto text = to_hex(seed) + "\n";
  sodium_memzero(seed.data(), seed.size());
  // Written whole to a file of our own, then linked into place: a crash leaves no half key, and
  // of two processes starting on one data dir only one key wins (the other reads it).
  auto tmp = path + ".tmp." + std::to_string(::getpid()) + "." + std::to_string(randombytes_random());
  fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  int e = fd < 0 ? errno : 0;
  if (fd >= 0) {
    auto n = ::write(fd, text.data(), text.size());
    if (n != static_cast<ssize_t>(text.size()))
      e = n < 0 ? errno : EIO;
    else if (::fsync(fd) != 0)
      e = errno;
    ::close(fd);
  }
  sodium_memzero(text.data(), text.size());
  if (e == 0 && ::link(tmp.c_str(), path.c_str()) != 0)
    e = errno;
  ::unlink(tmp.c_str());
  if (e == EEXIST)
    return load_or_create_node_key(dir, err); // another process made it first
  if (e != 0) {
    err = "cannot write node key " + path + ": " + std::strerror(e);
    return std::nullopt;
  }
  return key;
}

} // namespace alephd::crypto
