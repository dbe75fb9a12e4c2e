#pragma once
// The node's WireGuard key pair (X25519). Made on the node; the private key stays in one file (mode
// 0600, base64 like `wg genkey` writes it) and is never logged or sent anywhere.
#include <filesystem>

#include "outrider/common/result.hpp"
#include "outrider/netd/wg_types.hpp"

namespace outrider::netd {

struct WgKeyPair {
  WgKey privateKey{};
  WgKey publicKey{};
};

/// A fresh key pair from OpenSSL's X25519.
Result<WgKeyPair> generateKeyPair();
/// The public key of a private key.
Result<WgKey> publicKeyOf(const WgKey& privateKey);
/// Read the key file; make a new key (directory 0700, file 0600, atomic write) only when it does not
/// exist. A file that exists but does not hold a key is an error, never replaced: replacing it would
/// silently cut the node off from every hub that knows the old key.
Result<WgKeyPair> loadOrCreateKey(const std::filesystem::path& file);

}  // namespace outrider::netd
