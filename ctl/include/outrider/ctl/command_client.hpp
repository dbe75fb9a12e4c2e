#pragma once
// The signed command round trip of the hub <-> node contract: build and sign a CommandEnvelope, publish it
// on outrider/v1/nodes/{node}/cmd, and follow the node's CommandReply stream on .../reply until the final
// reply (SUCCEEDED, FAILED or REJECTED). Every hub-side command (ping, vm, ct, tunnel, apply, update) goes
// through CommandClient.
#include <chrono>
#include <cstdint>
#include <functional>
#include <set>
#include <string>
#include <string_view>

#include "outrider/common/clock.hpp"
#include "outrider/common/crypto.hpp"
#include "outrider/common/topics.hpp"
#include "outrider/common/result.hpp"
#include "outrider/ctl/hub_client.hpp"
#include "outrider/v1/hub.pb.h"

namespace outrider::ctl {

/// "ctl-" followed by 16 random lowercase hex digits.
std::string newCommandId();
/// The contract's rule for command ids: 1..128 chars of [A-Za-z0-9._:-].
using topics::validCommandId;

/// A body for `node` with a fresh command id, issued at `nowMs`, expiring `timeout` later, and a run-time
/// deadline of `timeout`. The caller sets the command (ping, ...).
v1::CommandBody makeCommandBody(std::string_view node, std::chrono::milliseconds timeout, std::int64_t nowMs);
/// Serialize `body` and sign exactly those bytes; key_id is the signing key's public key id.
v1::CommandEnvelope signEnvelope(const v1::CommandBody& body, const crypto::SigningKey& key);

/// The final reply to a command and the round-trip time from the publish call to its receipt.
struct CommandResult {
  v1::CommandReply reply;  // kind SUCCEEDED, FAILED or REJECTED
  std::chrono::nanoseconds rtt{0};

  bool succeeded() const { return reply.kind() == v1::CommandReply::SUCCEEDED; }
  /// "" when succeeded, else "failed: <message>" or "rejected: <REASON>: <message>".
  std::string failureText() const;
};

class CommandClient {
 public:
  /// Called for each ACCEPTED and PROGRESS reply, in arrival order.
  using ProgressFn = std::function<void(const v1::CommandReply&)>;

  /// `timeout` bounds each command: subscribe, publish and the wait for the final reply; it is also the
  /// command's validity (expires_at - issued_at) and run-time deadline. `clock` (not owned; null = system
  /// clock) gives issued_at.
  CommandClient(HubClient& hub, crypto::SigningKey key, std::chrono::milliseconds timeout,
                const Clock* clock = nullptr);

  /// makeCommandBody(node, timeout(), now).
  v1::CommandBody newBody(std::string_view node) const;

  /// Subscribe to the node's reply topic (once per node, waiting for the SUBACK), sign and publish the
  /// command, stream ACCEPTED/PROGRESS replies to `onProgress`, and return the final reply. A final
  /// FAILED or REJECTED reply is a successful round trip (see CommandResult::failureText). Errors: no final
  /// reply in time (code kHubTimeout, "timeout: no reply from NODE after Ns"), or the connection failed.
  Result<CommandResult> execute(const v1::CommandBody& body, const ProgressFn& onProgress = {});

  std::chrono::milliseconds timeout() const { return timeout_; }
  const crypto::SigningKey& signingKey() const { return key_; }
  HubClient& hub() { return hub_; }

 private:
  Status ensureSubscribed(const std::string& node);

  HubClient& hub_;
  crypto::SigningKey key_;
  std::chrono::milliseconds timeout_;
  SystemClock systemClock_;
  const Clock* clock_;
  std::set<std::string> subscribed_;
};

}  // namespace outrider::ctl
