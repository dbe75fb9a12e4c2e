#pragma once
// Building signed commands in tests, the way the hub does.
#include <string>

#include "outrider/common/crypto.hpp"
#include "outrider/v1/hub.pb.h"

namespace outrider::test {

/// A ping for `node` issued at `nowMs`, valid for a minute.
inline outrider::v1::CommandBody pingBody(std::int64_t nowMs, std::string id, std::string node = "n1") {
  outrider::v1::CommandBody b;
  b.set_node_id(std::move(node));
  b.set_command_id(std::move(id));
  b.set_issued_at_ms(nowMs);
  b.set_expires_at_ms(nowMs + 60'000);
  b.mutable_ping();
  return b;
}

/// The serialized CommandEnvelope of `body` signed with `key`.
inline std::string seal(const outrider::v1::CommandBody& body, const crypto::SigningKey& key) {
  outrider::v1::CommandEnvelope e;
  e.set_body(body.SerializeAsString());
  e.set_key_id(key.publicKey().id());
  e.set_signature(key.sign(e.body()));
  return e.SerializeAsString();
}

}  // namespace outrider::test
