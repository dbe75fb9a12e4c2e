#pragma once
// Checks a signed command from the hub before anything acts on it. Pure: no I/O, an injected clock,
// so the fuzzer and unit tests can drive it directly. The journal (replay and idempotency) is checked
// by the caller after the signature, so unauthenticated input never learns what the journal holds.
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "outrider/common/clock.hpp"
#include "outrider/common/crypto.hpp"
#include "outrider/common/topics.hpp"
#include "outrider/v1/hub.pb.h"

namespace outrider::agent {

struct VerifierLimits {
  std::size_t maxPayloadBytes = 64 * 1024;
  std::int64_t clockSkewMs = 5 * 60 * 1000;   // tolerated difference between hub and node clocks
  std::int64_t maxValidityMs = 24 * 3600 * 1000;  // longest expires_at - issued_at accepted
};

struct Verdict {
  outrider::v1::CommandReply::RejectReason reason = outrider::v1::CommandReply::REASON_NONE;
  std::string message;       // one line, for the rejected reply and the log
  std::string commandId;     // known once the body decoded
  outrider::v1::CommandBody body;
  crypto::Sha256 bodyDigest{};
  bool accepted() const { return reason == outrider::v1::CommandReply::REASON_NONE; }
};

class CommandVerifier {
 public:
  CommandVerifier(std::string nodeId, std::map<std::string, crypto::VerifyKey> trustedById, VerifierLimits limits,
                  const Clock& clock);

  /// Decode and check structure, key, signature, node id; then the validity window.
  Verdict verify(std::string_view payload) const;
  /// The time checks alone (expiry, not-yet-valid, validity length), for a body already verified.
  Verdict checkTime(Verdict v) const;
  const VerifierLimits& limits() const { return limits_; }

 private:
  std::string nodeId_;
  std::map<std::string, crypto::VerifyKey> keys_;
  VerifierLimits limits_;
  const Clock& clock_;
};

/// The trusted keys by id from operator key specs (commands.operator_keys: "ed25519:<base64>" or a PEM file);
/// an Error naming the first spec that does not parse.
Result<std::map<std::string, crypto::VerifyKey>> parseOperatorKeys(const std::vector<std::string>& specs);

using topics::validCommandId;

}  // namespace outrider::agent
