#include "outrider/agent/verifier.hpp"

namespace outrider::agent {

using Reply = outrider::v1::CommandReply;


CommandVerifier::CommandVerifier(std::string nodeId, std::map<std::string, crypto::VerifyKey> trustedById,
                                 VerifierLimits limits, const Clock& clock)
    : nodeId_(std::move(nodeId)), keys_(std::move(trustedById)), limits_(limits), clock_(clock) {}

namespace {
Verdict reject(Verdict v, Reply::RejectReason r, std::string msg) {
  v.reason = r;
  v.message = std::move(msg);
  return v;
}
}  // namespace

Verdict CommandVerifier::verify(std::string_view payload) const {
  Verdict v;
  if (payload.empty()) return reject(std::move(v), Reply::MALFORMED, "empty payload");
  if (payload.size() > limits_.maxPayloadBytes)
    return reject(std::move(v), Reply::OVERSIZED,
                  "payload of " + std::to_string(payload.size()) + " bytes exceeds the limit of " +
                      std::to_string(limits_.maxPayloadBytes));
  outrider::v1::CommandEnvelope env;
  if (!env.ParseFromArray(payload.data(), static_cast<int>(payload.size())))
    return reject(std::move(v), Reply::MALFORMED, "envelope does not decode");
  if (env.body().empty()) return reject(std::move(v), Reply::MALFORMED, "envelope has no body");
  // Decode the body before checking the signature only to name the command in the rejection; nothing in it
  // is trusted until the signature checks out.
  if (!v.body.ParseFromString(env.body())) return reject(std::move(v), Reply::MALFORMED, "command body does not decode");
  if (validCommandId(v.body.command_id())) v.commandId = v.body.command_id();

  auto key = keys_.find(env.key_id());
  if (key == keys_.end()) {
    std::string shown = env.key_id().size() <= 64 ? env.key_id() : env.key_id().substr(0, 64) + "...";
    return reject(std::move(v), Reply::UNKNOWN_KEY, "key '" + shown + "' is not a trusted operator key");
  }
  if (!key->second.verify(env.body(), env.signature()))
    return reject(std::move(v), Reply::BAD_SIGNATURE, "signature does not verify with key " + env.key_id());

  if (v.body.node_id() != nodeId_) return reject(std::move(v), Reply::WRONG_NODE, "command is addressed to another node");
  if (!validCommandId(v.body.command_id()))
    return reject(std::move(v), Reply::MALFORMED, "command id must be 1-128 characters of [A-Za-z0-9._:-]");
  if (v.body.command_case() == outrider::v1::CommandBody::COMMAND_NOT_SET)
    return reject(std::move(v), Reply::UNSUPPORTED, "no command in body (or one this node version does not know)");
  v.bodyDigest = crypto::sha256(env.body());
  return v;
}

Verdict CommandVerifier::checkTime(Verdict v) const {
  const auto& b = v.body;
  std::int64_t now = clock_.nowMs();
  if (b.issued_at_ms() <= 0 || b.expires_at_ms() <= b.issued_at_ms())
    return reject(std::move(v), Reply::MALFORMED, "issued_at and expires_at must be set, expiry after issue");
  if (b.expires_at_ms() - b.issued_at_ms() > limits_.maxValidityMs)
    return reject(std::move(v), Reply::VALIDITY_TOO_LONG,
                  "command valid for longer than " + std::to_string(limits_.maxValidityMs / 1000) + " s");
  if (b.issued_at_ms() > now + limits_.clockSkewMs)
    return reject(std::move(v), Reply::NOT_YET_VALID,
                  "issued " + std::to_string((b.issued_at_ms() - now) / 1000) + " s in the future (skew allowed: " +
                      std::to_string(limits_.clockSkewMs / 1000) + " s)");
  if (b.expires_at_ms() + limits_.clockSkewMs < now)
    return reject(std::move(v), Reply::EXPIRED,
                  "expired " + std::to_string((now - b.expires_at_ms()) / 1000) + " s ago");
  return v;
}

Result<std::map<std::string, crypto::VerifyKey>> parseOperatorKeys(const std::vector<std::string>& specs) {
  std::map<std::string, crypto::VerifyKey> keys;
  for (const auto& spec : specs) {
    auto k = crypto::VerifyKey::parse(spec);
    if (!k) return Error{"operator key " + spec + ": " + k.error().message};
    keys.emplace(k->id(), *k);
  }
  return keys;
}

}  // namespace outrider::agent
