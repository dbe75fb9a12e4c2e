#include "outrider/ctl/command_client.hpp"

#include <fmt/format.h>

#include "outrider/common/topics.hpp"

namespace outrider::ctl {

std::string newCommandId() { return "ctl-" + randomHex(8); }


v1::CommandBody makeCommandBody(std::string_view node, std::chrono::milliseconds timeout, std::int64_t nowMs) {
  v1::CommandBody body;
  body.set_node_id(std::string(node));
  body.set_command_id(newCommandId());
  body.set_issued_at_ms(nowMs);
  body.set_expires_at_ms(nowMs + timeout.count());
  body.set_deadline_ms(static_cast<std::uint32_t>(std::min<std::int64_t>(timeout.count(), UINT32_MAX)));
  return body;
}

v1::CommandEnvelope signEnvelope(const v1::CommandBody& body, const crypto::SigningKey& key) {
  v1::CommandEnvelope env;
  std::string bytes = body.SerializeAsString();
  env.set_signature(key.sign(bytes));
  env.set_key_id(key.publicKey().id());
  env.set_body(std::move(bytes));
  return env;
}

std::string CommandResult::failureText() const {
  switch (reply.kind()) {
    case v1::CommandReply::SUCCEEDED:
      return {};
    case v1::CommandReply::FAILED:
      return "failed: " + (reply.message().empty() ? std::string("(no message)") : reply.message());
    case v1::CommandReply::REJECTED: {
      std::string reason = v1::CommandReply::RejectReason_Name(reply.reason());
      if (reason.empty()) reason = std::to_string(static_cast<int>(reply.reason()));
      return "rejected: " + reason + (reply.message().empty() ? std::string() : ": " + reply.message());
    }
    default:
      return "unexpected reply kind " + std::to_string(static_cast<int>(reply.kind()));
  }
}

CommandClient::CommandClient(HubClient& hub, crypto::SigningKey key, std::chrono::milliseconds timeout,
                             const Clock* clock)
    : hub_(hub), key_(std::move(key)), timeout_(timeout), clock_(clock ? clock : &systemClock_) {}

v1::CommandBody CommandClient::newBody(std::string_view node) const {
  return makeCommandBody(node, timeout_, clock_->nowMs());
}

Status CommandClient::ensureSubscribed(const std::string& node) {
  if (subscribed_.count(node)) return {};
  if (auto st = hub_.subscribe(topics::reply(node), timeout_); !st) return st;
  subscribed_.insert(node);
  return {};
}

Result<CommandResult> CommandClient::execute(const v1::CommandBody& body, const ProgressFn& onProgress) {
  using SteadyClock = std::chrono::steady_clock;
  const std::string& node = body.node_id();
  if (auto st = ensureSubscribed(node); !st) return st.error();

  const std::string payload = signEnvelope(body, key_).SerializeAsString();
  const std::string replyTopic = topics::reply(node);
  const auto sentAt = SteadyClock::now();
  const auto deadline = sentAt + timeout_;
  if (auto st = hub_.publish(topics::cmd(node), payload, false, timeout_); !st) return st.error();

  for (;;) {
    auto msg = hub_.nextMessage(deadline);
    if (!msg) {
      if (msg.error().code == kHubTimeout)
        return Error{fmt::format("timeout: no reply from {} after {:g}s", node, timeout_.count() / 1000.0), kHubTimeout};
      return msg.error();
    }
    if (msg->topic != replyTopic) continue;
    v1::CommandReply reply;
    if (!reply.ParseFromString(msg->payload)) continue;  // not ours to judge; the node logs its own bugs
    // A node that cannot decode the body rejects it without a command id; with one command in flight
    // per client that rejection is ours.
    bool ours = reply.command_id() == body.command_id() ||
                (reply.command_id().empty() && reply.kind() == v1::CommandReply::REJECTED);
    if (!ours) continue;  // a late reply to an earlier command
    switch (reply.kind()) {
      case v1::CommandReply::ACCEPTED:
      case v1::CommandReply::PROGRESS:
        if (onProgress) onProgress(reply);
        break;
      case v1::CommandReply::SUCCEEDED:
      case v1::CommandReply::FAILED:
      case v1::CommandReply::REJECTED: {
        CommandResult result;
        result.rtt = std::chrono::duration_cast<std::chrono::nanoseconds>(msg->receivedAt - sentAt);
        result.reply = std::move(reply);
        return result;
      }
      default:
        break;
    }
  }
}

}  // namespace outrider::ctl
