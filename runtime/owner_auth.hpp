#pragma once
// Owner authentication for a CRN's control routes, as aleph-vm and its console speak it
// (aleph-vm doc/operator_auth.md):
//   X-SignedPubKey:    {"payload": hex(JSON {pubkey: P-256 JWK, alg, domain, address, expires,
//                       chain}), "signature": the owner's wallet signature of that JSON}
//   X-SignedOperation: {"payload": hex(JSON {time, method, path, domain}),
//                       "signature": hex(ES256 r||s of that JSON by the JWK)}
// The wallet signs the ephemeral key once (EIP-191 personal_sign for EVM chains, ed25519 for
// Solana); the key signs each operation. An operation is valid for ±2 minutes around its time,
// for one method, path and domain, and only once (replay_guard). No CAF here.

#include <map>
#include <set>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>

#include "runtime/crypto.hpp"

namespace alephd::owner_auth {

/// How far an operation's time may be from the node's clock.
inline constexpr double max_skew_seconds = 120;

/// An ephemeral P-256 key: the private scalar and the public point (32 bytes each).
struct p256_key {
  std::string d;
  std::string x;
  std::string y;
};

std::optional<p256_key> p256_generate();

/// ES256 of `payload`: r||s, 64 bytes. Empty on failure.
std::string es256_sign(const p256_key& key, std::string_view payload);

/// True when `signature` (r||s, 64 bytes) is the key (x, y)'s over `payload`.
bool es256_verify(std::string_view x, std::string_view y, std::string_view payload,
                  std::string_view signature);

std::string base64url_encode(std::string_view bytes);
std::optional<std::string> base64url_decode(std::string_view text);

/// Unix seconds of an ISO-8601 time with a zone ("2010-12-25T17:05:55Z", "…+02:00",
/// fractional seconds allowed); nullopt for anything else.
std::optional<double> parse_iso8601(std::string_view text);
std::string iso8601(double unix_seconds);

// ---- clients (the `alephd` verbs, tests) -------------------------------------------------------

/// X-SignedPubKey for `key`, signed by an EVM wallet's 32-byte secret, valid until `expires`.
std::string signed_pubkey_eth(std::string_view wallet_secret, const p256_key& key,
                              std::string_view domain, double expires);
/// The same, signed by a Solana wallet (ed25519).
std::string signed_pubkey_sol(const crypto::ed25519_key& wallet, const p256_key& key,
                              std::string_view domain, double expires);
/// X-SignedOperation for one request.
std::string signed_operation(const p256_key& key, std::string_view method, std::string_view path,
                             std::string_view domain, double time);

// ---- servers -----------------------------------------------------------------------------------

struct verified {
  std::string address;    ///< the wallet that signed the key (EVM: lowercase)
  std::string chain;      ///< "ETH", "SOL", …
  std::string operation;  ///< the operation's signature: the replay key
  double valid_until = 0; ///< after this the operation is refused anyway
};

struct outcome {
  std::optional<verified> ok;
  std::string error; ///< why not, for a 401
};

/// Checks both headers for a request `method path` to `domain` at `now` (unix seconds).
outcome verify(std::string_view signed_pubkey, std::string_view signed_operation,
               std::string_view method, std::string_view path, std::string_view domain,
               double now);

/// True when `address` (as the message says it) is `who` (as verify() gave it).
bool same_owner(std::string_view address, const verified& who);

/// Operation signatures seen while they are valid: each is accepted once.
class replay_guard {
public:
  /// At most this many operations are remembered (about 4,000 a second for their 4 minutes).
  static constexpr size_t max_entries = 1 << 20;

  /// False when `key` was already used (or the guard is full); remembers it until `until`.
  bool first_use(const std::string& key, double until, double now);

private:
  std::mutex mu_;
  std::set<std::string> seen_;                    ///< operations still valid
  std::multimap<double, std::string> expiries_; ///< when each is forgotten
};

} // namespace alephd::owner_auth
