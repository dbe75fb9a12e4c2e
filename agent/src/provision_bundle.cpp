#include "outrider/agent/provision_bundle.hpp"

#include <fmt/format.h>

#include <algorithm>

#include "outrider/agent/provision_x509.hpp"
#include "outrider/common/broker_url.hpp"
#include "outrider/common/manifest.hpp"
#include "outrider/common/topics.hpp"

namespace outrider::agent::provision {

namespace v1 = outrider::v1;

namespace {

Error malformed(std::string what) { return Error{"malformed bundle: " + std::move(what), kBundleMalformed}; }

std::uint32_t getLe32(std::string_view in) {
  std::uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= static_cast<std::uint32_t>(static_cast<unsigned char>(in[i])) << (8 * i);
  return v;
}

bool isHex(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

Status checkBrokers(const google::protobuf::RepeatedPtrField<std::string>& urls, const char* what) {
  if (urls.empty()) return malformed(fmt::format("no {}", what));
  for (const auto& u : urls) {
    auto b = BrokerUrl::parse(u);
    if (!b) return malformed(fmt::format("{}: {}", what, b.error().message));
    if (!b->tls) return malformed(fmt::format("{}: {} is not TLS (mqtts://)", what, u));
  }
  return {};
}

Status checkFields(const v1::ProvisioningBundle& b) {
  if (b.format_version() != kBundleFormat)
    return malformed(fmt::format("bundle format {} (this agent reads format {})", b.format_version(), kBundleFormat));
  if (b.bundle_id().size() != 32 || !isHex(b.bundle_id())) return malformed("bundle_id is not 32 hex digits");
  if (!topics::validNodeId(b.node_id())) return malformed(fmt::format("invalid node id '{}'", b.node_id()));
  if (b.expires_at_ms() <= b.issued_at_ms()) return malformed("expires before it was issued");
  if (auto s = checkBrokers(b.hub_brokers(), "hub broker"); !s) return s;
  if (auto s = checkBrokers(b.enroll_brokers(), "enrollment broker"); !s) return s;
  if (auto s = checkCaCertificate(b.ca_pem()); !s) return malformed("CA: " + s.error().message);
  if (b.enroll_token().size() != kTokenBytes) return malformed("the enrollment token is not 32 bytes");
  if (b.has_manifest())
    if (auto s = validateManifest(b.manifest()); !s) return malformed("manifest: " + s.error().message);
  if (b.operator_keys().empty()) return malformed("no trusted operator keys");
  for (const auto& k : b.operator_keys()) {
    // Inline keys only: a path would make the node read a file the bundle names.
    if (!k.starts_with("ed25519:")) return malformed(fmt::format("operator key '{}' is not ed25519:<base64>", k));
    if (auto v = crypto::VerifyKey::parse(k); !v) return malformed("operator key: " + v.error().message);
  }
  return {};
}

}  // namespace

std::string VerifiedBundle::record() const { return bundle.bundle_id() + " sha256:" + fileSha256; }

std::string bundleSignedPart(std::string_view keyId8, std::string_view payload) {
  std::string out(kEnvelopeMagic);
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((kEnvelopeFormat >> (8 * i)) & 0xff));
  out += keyId8;
  out += payload;
  return out;
}

Result<VerifiedBundle> verifyBundle(std::string_view file, const crypto::VerifyKey& trusted) {
  if (file.size() > kMaxBundleBytes) return malformed(fmt::format("larger than {} bytes", kMaxBundleBytes));
  if (file.size() < kEnvelopeHeaderBytes || file.substr(0, 4) != kEnvelopeMagic)
    return malformed("not an Outrider provisioning bundle (bad header)");
  if (auto f = getLe32(file.substr(4, 4)); f != kEnvelopeFormat)
    return malformed(fmt::format("envelope format {} (this agent reads format {})", f, kEnvelopeFormat));
  const std::string_view keyId = file.substr(8, 8);
  const std::string_view signature = file.substr(16, 64);
  const std::string_view payload = file.substr(kEnvelopeHeaderBytes);
  const std::string keyIdHex = crypto::hex(keyId);
  if (keyIdHex != trusted.id())
    return Error{fmt::format("signed by another key (key id {}; the trusted provisioning key is {})", keyIdHex,
                             trusted.id()),
                 kBundleForeignKey};
  if (!trusted.verify(bundleSignedPart(keyId, payload), signature))
    return Error{fmt::format("signature does not verify with the provisioning key {}: the bundle was changed after "
                             "signing",
                             trusted.id()),
                 kBundleBadSignature};
  VerifiedBundle v;
  if (!v.bundle.ParseFromArray(payload.data(), static_cast<int>(payload.size())))
    return malformed("the signed payload does not decode");
  if (auto s = checkFields(v.bundle); !s) return s.error();
  auto d = crypto::sha256(file);
  v.fileSha256 = crypto::hex(std::span<const std::uint8_t>(d.data(), d.size()));
  return v;
}

Status checkBundleTime(const VerifiedBundle& b, std::int64_t nowMs) {
  if (nowMs > b.bundle.expires_at_ms())
    return Error{fmt::format("bundle {} for node '{}' expired {} s ago", b.bundle.bundle_id(), b.bundle.node_id(),
                             (nowMs - b.bundle.expires_at_ms()) / 1000),
                 kBundleExpired};
  return {};
}

}  // namespace outrider::agent::provision
