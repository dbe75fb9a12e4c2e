#pragma once
// The hub side of enrollment (`outriderctl enroll serve`): the token store that `provision image` fills,
// the record of enrolled nodes and spent tokens, the fleet CA that signs the nodes' CSRs, and the decision
// for one request. The MQTT loop around it is in enroll.cpp. See docs/provisioning.md.
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "outrider/common/clock.hpp"
#include "outrider/common/result.hpp"
#include "outrider/v1/provision.pb.h"

namespace outrider::ctl {

/// One enrollment token, as `provision image` registers it. The secret is kept because the node proves
/// it holds the token with an HMAC keyed by it; the file is therefore mode 0600.
struct TokenRecord {
  std::string id;      // hex of the first 8 bytes of SHA-256(secret)
  std::string secret;  // 32 raw bytes (hex in the file)
  std::string node;
  std::string bundleId;
  std::int64_t createdAtMs = 0;
  std::int64_t expiresAtMs = 0;
};

/// The token store (TOML, [[token]] tables). Readers take it as it is; writers hold FILE.lock (flock) for
/// read-modify-write and replace the file atomically.
class TokenStore {
 public:
  /// A missing file is an empty store.
  static Result<std::vector<TokenRecord>> read(const std::filesystem::path& file);
  /// Add one token, dropping tokens that expired more than a day before `nowMs`.
  static Status add(const std::filesystem::path& file, const TokenRecord& token, std::int64_t nowMs);
};

/// A spent token, kept until it expires (after that the expiry check refuses it anyway).
struct SpentToken {
  std::string id;
  std::string node;
  std::string publicKeySha256;  // of the key it enrolled: the same key asking again gets the same answer
  std::int64_t usedAtMs = 0;
  std::int64_t expiresAtMs = 0;
};

struct EnrolledNode {
  std::string node;
  std::int64_t enrolledAtMs = 0;
  std::string tokenId, bundleId;
  std::string serial;             // hex
  std::string certificateSha256;  // of the DER
  std::string publicKeySha256;    // of the SubjectPublicKeyInfo DER
  std::string wireguardPublicKey;
  std::string certificatePem;
};

/// What enroll serve has done (TOML: [[node]] and [[spent]] tables), replaced atomically under FILE.lock.
struct EnrollDb {
  std::vector<EnrolledNode> nodes;
  std::vector<SpentToken> spent;
  static Result<EnrollDb> read(const std::filesystem::path& file);
  Status write(const std::filesystem::path& file) const;
};

/// An exclusive flock on PATH.lock for the lifetime of the object.
class FileLock {
 public:
  static Result<FileLock> acquire(const std::filesystem::path& path);
  FileLock(FileLock&&) noexcept;
  FileLock& operator=(FileLock&&) = delete;
  ~FileLock();

 private:
  explicit FileLock(int fd) : fd_(fd) {}
  int fd_ = -1;
};

struct IssuedCertificate {
  std::string pem;
  std::string serial;             // hex
  std::string certificateSha256;
  std::string publicKeySha256;
};

/// The fleet CA: its certificate and private key (EC, RSA or Ed25519), loaded once.
class FleetCa {
 public:
  static Result<FleetCa> load(const std::filesystem::path& certFile, const std::filesystem::path& keyFile);
  FleetCa(FleetCa&&) noexcept;
  FleetCa& operator=(FleetCa&&) noexcept;
  ~FleetCa();

  /// Check a CSR (DER): it verifies with its own key, CN is `node`, the key is P-256 or Ed25519.
  /// Ok gives the SHA-256 (hex) of the request's SubjectPublicKeyInfo.
  Result<std::string> checkRequest(std::string_view csrDer, std::string_view node) const;
  /// Sign a client certificate for `node` valid `days` days from now (a 5 minute allowance for clock
  /// skew before). The request must have passed checkRequest.
  Result<IssuedCertificate> issue(std::string_view csrDer, std::string_view node, int days) const;

 private:
  struct Impl;
  explicit FleetCa(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

/// `pem` is exactly one X.509 CA certificate.
Status checkCaPem(std::string_view pem);
/// HMAC-SHA256 proof as the node computes it (agent/provision_x509): constant-time comparison.
bool checkEnrollProof(std::string_view secret, std::string_view node, std::string_view requestId,
                      std::string_view csrDer, std::string_view proof);
/// Hex of the first 8 bytes of SHA-256(secret).
std::string tokenIdOf(std::string_view secret);

struct EnrollServiceOptions {
  std::filesystem::path tokens;
  std::filesystem::path db;
  int certDays = 365;
};

/// One request in, one answer out (or none when the topic is not an enrollment request topic).
struct EnrollDecision {
  std::optional<outrider::v1::EnrollResponse> response;
  std::string topic;    // where the response goes
  std::string summary;  // one line for the log: "enrolled n1 ..." / "refused n1: ..."
  bool issued = false;
};

class EnrollService {
 public:
  EnrollService(FleetCa ca, EnrollServiceOptions opts, const Clock& clock);
  EnrollDecision handle(std::string_view topic, std::string_view payload);

 private:
  EnrollDecision decide(const std::string& node, const outrider::v1::EnrollRequest& req);
  FleetCa ca_;
  EnrollServiceOptions opts_;
  const Clock& clock_;
};

}  // namespace outrider::ctl
