#pragma once
// Signatures: aleph message signatures (EVM wallets: EIP-191 personal_sign, secp256k1 recovery,
// keccak-256; Solana wallets: ed25519 over base58 keys) and node identity (ed25519 key pairs,
// node id = sha256 of the public key). No CAF here. Every function is total: bad input gives
// an error or an empty result, never a throw or a crash.

#include <optional>
#include <string>
#include <string_view>

namespace alephd::crypto {

// ---- encodings ---------------------------------------------------------------------------------

/// Lowercase hex of bytes.
std::string to_hex(std::string_view bytes);

/// Bytes of a hex string (an optional "0x" prefix, either case); nullopt when it is not hex.
std::optional<std::string> from_hex(std::string_view text);

/// Bitcoin-alphabet base58, as Solana writes keys and signatures.
std::string base58_encode(std::string_view bytes);
std::optional<std::string> base58_decode(std::string_view text);

/// ASCII letters lowercased (EVM addresses compare this way).
std::string ascii_lower(std::string_view text);

/// The 32-byte keccak-256 digest (Ethereum's, not SHA3-256).
std::string keccak256(std::string_view bytes);

/// The 32-byte sha256 digest.
std::string sha256(std::string_view bytes);

// ---- EVM wallets -------------------------------------------------------------------------------

/// The 0x-prefixed lowercase address of a 32-byte secp256k1 secret; nullopt if invalid.
std::optional<std::string> eth_address(std::string_view secret);

/// EIP-191 personal_sign of `text`: "0x" + r, s, v (v = 27 or 28), 130 hex digits.
/// Empty when the secret is invalid.
std::string eth_personal_sign(std::string_view secret, std::string_view text);

/// The lowercase 0x address that signed `text` with personal_sign; nullopt when the signature is
/// malformed or recovers no key.
std::optional<std::string> eth_recover(std::string_view text, std::string_view signature_hex);

// ---- ed25519 (Solana wallets, node identity) ---------------------------------------------------

/// An ed25519 key pair: 32-byte public key, 64-byte libsodium secret key (seed + public key).
struct ed25519_key {
  std::string public_key;
  std::string secret_key;
};

/// A fresh random key pair, or the one a 32-byte seed determines.
ed25519_key ed25519_generate();
std::optional<ed25519_key> ed25519_from_seed(std::string_view seed);

/// The 64-byte detached signature of `text`.
std::string ed25519_sign(const ed25519_key& key, std::string_view text);

/// True when `signature` (64 bytes) is `public_key`'s (32 bytes) over `text`.
bool ed25519_verify(std::string_view public_key, std::string_view text, std::string_view signature);

// ---- aleph messages ----------------------------------------------------------------------------

/// What a wallet signs for a message: "chain\nsender\ntype\nitem_hash".
std::string message_verification_text(std::string_view chain, std::string_view sender,
                                      std::string_view type, std::string_view item_hash);

/// True for the chains whose wallets sign as Ethereum does (EIP-191), and for those that sign as
/// Solana does (ed25519, base58).
bool is_evm_chain(std::string_view chain);
bool is_svm_chain(std::string_view chain);

/// Checks a message's signature as the network does. Returns nullopt when it is valid, else the
/// reason (missing, malformed, signed by someone else, unsupported chain).
std::optional<std::string> verify_message_signature(std::string_view chain, std::string_view sender,
                                                    std::string_view type,
                                                    std::string_view item_hash,
                                                    std::string_view signature);

/// A Solana wallet's signature field: {"signature": base58, "publicKey": base58}.
std::string sol_signature_field(const ed25519_key& key, std::string_view text);

// ---- node identity -----------------------------------------------------------------------------

/// A node's id: the lowercase hex sha256 of its ed25519 public key.
std::string node_id_of(std::string_view public_key);

/// Loads `dir/node.key` (the 32-byte seed, hex, mode 0600), making it on first start. Refuses a
/// key file that others can read or that is malformed: `err` says why and the result is empty.
std::optional<ed25519_key> load_or_create_node_key(const std::string& dir, std::string& err);

} // namespace alephd::crypto
