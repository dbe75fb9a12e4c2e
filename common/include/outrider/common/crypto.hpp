#pragma once
// Ed25519 keys, signatures and small helpers over OpenSSL 3. The only header that knows the key
// format on disk: PEM (PKCS#8 private, SubjectPublicKeyInfo public), as `openssl genpkey -algorithm
// ed25519` writes them, so operators can also make keys with stock tools.
#include <array>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "outrider/common/result.hpp"

namespace outrider::crypto {

using Bytes = std::string;  // binary-safe byte string
using Sha256 = std::array<std::uint8_t, 32>;

Sha256 sha256(std::string_view data);
std::string hex(std::string_view data);
std::string hex(std::span<const std::uint8_t> data);
std::string base64(std::string_view data);
Result<Bytes> unbase64(std::string_view text);

/// An Ed25519 public key that verifies signatures. Cheap to copy (shared handle).
class VerifyKey {
 public:
  /// From the raw 32-byte key.
  static Result<VerifyKey> fromRaw(std::string_view raw32);
  /// From PEM text (SubjectPublicKeyInfo).
  static Result<VerifyKey> fromPem(std::string_view pem);
  /// "ed25519:<base64 of raw 32 bytes>" inline, or otherwise a path to a PEM public key file.
  static Result<VerifyKey> parse(std::string_view spec);

  bool verify(std::string_view message, std::string_view signature) const;
  /// Hex of the first 8 bytes of SHA-256 of the raw key: the key id used in CommandEnvelope.
  const std::string& id() const { return id_; }
  const Bytes& raw() const { return raw_; }
  std::string toPem() const;

 private:
  struct Handle;
  std::shared_ptr<Handle> h_;
  Bytes raw_;
  std::string id_;
};

/// An Ed25519 private key that signs.
class SigningKey {
 public:
  static Result<SigningKey> generate();
  static Result<SigningKey> fromPem(std::string_view pem);
  static Result<SigningKey> loadFile(const std::filesystem::path& path);
  /// PEM (PKCS#8), written atomically with mode 0600.
  Status saveFile(const std::filesystem::path& path) const;
  std::string toPem() const;

  Bytes sign(std::string_view message) const;  // 64 bytes
  const VerifyKey& publicKey() const { return pub_; }

 private:
  struct Handle;
  std::shared_ptr<Handle> h_;
  VerifyKey pub_;
};

}  // namespace outrider::crypto
