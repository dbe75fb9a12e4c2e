#pragma once
// The node's TLS identity during provisioning, over OpenSSL 3: a P-256 key and a PKCS#10 request made on
// the node (the private key never leaves it), the check of the certificate the hub returns, and the
// enrollment proof that shows the node holds the one-time token without sending it.
#include <string>
#include <string_view>

#include "outrider/common/result.hpp"

namespace outrider::agent::provision {

struct NodeKey {
  std::string keyPem;  // PKCS#8, unencrypted (written 0600)
  std::string csrDer;  // CN = node id, signed with the key (SHA-256)
};

/// A fresh P-256 key and a CSR for `nodeId`.
Result<NodeKey> makeNodeKey(std::string_view nodeId);
/// A CSR for `nodeId` from a key made earlier (`keyPem` as makeNodeKey wrote it): a provisioning run that
/// was cut before the hub's answer asks again with the same key, and the hub answers with the same
/// certificate instead of refusing the spent token.
Result<NodeKey> nodeKeyFrom(std::string_view keyPem, std::string_view nodeId);

/// `pem` holds exactly one X.509 certificate usable as a CA (basicConstraints CA:TRUE).
Status checkCaCertificate(std::string_view pem);

/// The certificate the hub returned: it verifies against `caPem` now, is for `nodeId` (CN), is usable for
/// TLS client authentication, and holds the public half of `keyPem`.
Status checkNodeCertificate(std::string_view certPem, std::string_view caPem, std::string_view keyPem,
                            std::string_view nodeId);

/// Hex of the first 8 bytes of SHA-256(token): how the hub finds the token without it being sent.
std::string enrollTokenId(std::string_view token);

/// HMAC-SHA256(token, "outrider-enroll-v1\n" nodeId "\n" requestId "\n" csrDer).
std::string enrollProof(std::string_view token, std::string_view nodeId, std::string_view requestId,
                        std::string_view csrDer);

/// `n` random bytes from the OS.
std::string randomBytes(std::size_t n);

}  // namespace outrider::agent::provision
