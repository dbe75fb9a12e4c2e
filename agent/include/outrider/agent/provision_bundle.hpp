#pragma once
// The provisioning bundle as the node reads it from the stick: the signed envelope, its signature
// against the fleet provisioning key, and every field checked before anything is written. The format is
// in proto/outrider/v1/provision.proto and docs/provisioning.md; outriderctl writes it (ctl/provision).
#include <cstdint>
#include <string>
#include <string_view>

#include "outrider/common/crypto.hpp"
#include "outrider/common/result.hpp"
#include "outrider/v1/provision.pb.h"

namespace outrider::agent::provision {

/// The file on the stick's root.
inline constexpr std::string_view kBundleFileName = "outrider-bundle.bin";
inline constexpr std::string_view kEnvelopeMagic = "ORPB";
inline constexpr std::uint32_t kEnvelopeFormat = 1;
inline constexpr std::uint32_t kBundleFormat = 1;
/// magic (4) + format (4) + key id (8) + signature (64).
inline constexpr std::size_t kEnvelopeHeaderBytes = 80;
inline constexpr std::size_t kMaxBundleBytes = 1u << 20;
inline constexpr std::size_t kTokenBytes = 32;

/// Why a bundle is refused, in Error::code, so callers and tests can tell the cases apart.
enum BundleErrc : int {
  kBundleMalformed = 1,   // not an envelope, unknown format, fields that do not decode or check
  kBundleForeignKey = 2,  // signed by a key other than the trusted provisioning key
  kBundleBadSignature = 3,  // the right key id, but the signature does not verify: changed after signing
  kBundleExpired = 4,
};

struct VerifiedBundle {
  outrider::v1::ProvisioningBundle bundle;
  std::string fileSha256;  // hex of SHA-256 of the whole file
  /// "<bundle_id> sha256:<fileSha256>": what provisioned.toml's node.provisioned_by records, so the same
  /// stick inserted again is recognised.
  std::string record() const;
};

/// Check the envelope and signature with `trusted`, then the bundle's own fields (format, node id, broker
/// URLs, CA, token, manifest, operator keys). Expiry is separate (checkBundleTime). Nothing here touches
/// the disk.
Result<VerifiedBundle> verifyBundle(std::string_view file, const crypto::VerifyKey& trusted);

/// Refuses a bundle whose expiry has passed at `nowMs` (kBundleExpired).
Status checkBundleTime(const VerifiedBundle& b, std::int64_t nowMs);

/// The bytes the signature covers: everything in the file but the signature itself.
std::string bundleSignedPart(std::string_view keyId8, std::string_view payload);

}  // namespace outrider::agent::provision
