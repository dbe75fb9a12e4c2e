#pragma once
// The one dispatcher for hub commands: verify, consult the journal (replay protection and idempotency),
// turn the body into one typed command, run it with a deadline, and publish replies
// (accepted, progress, succeeded, failed, rejected). Runs on the agent's io_context.
#include <boost/asio/io_context.hpp>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <variant>

#include "outrider/agent/journal.hpp"
#include "outrider/agent/verifier.hpp"
#include "outrider/v1/hub.pb.h"

namespace outrider::agent {

/// Typed commands, one per CommandBody case.
struct PingCommand {
  std::uint32_t holdMs = 0;
  std::string payload;
};
struct GetStatusCommand {};
struct VmCommand {
  outrider::v1::VmCommand op;
};
struct ContainerCommand {
  outrider::v1::ContainerCommand op;
};
struct ApplyCommand {
  outrider::v1::NodeManifest manifest;
};
struct TunnelCommand {
  outrider::v1::TunnelCommand op;
};
struct HookCommand {
  outrider::v1::HookCommand op;
};
struct UpdateCommand {
  outrider::v1::UpdateCommand op;
  /// INSTALL: the signed command as it arrived, for the root updater to check again itself.
  std::string signedCommand;
};
using Command = std::variant<PingCommand, GetStatusCommand, VmCommand, ContainerCommand, ApplyCommand, TunnelCommand,
                             HookCommand, UpdateCommand>;

/// Field checks of a signed body beyond what the verifier does: an operation is set, names are valid,
/// a manifest passes validateManifest, a hook event and its variables are valid. A failure is a MALFORMED rejection, and nothing runs.
Status checkCommand(const outrider::v1::CommandBody& body);

/// Read-only commands are journaled without fsync (a replay after power loss is harmless); commands
/// that change the node are fsynced before they run.
bool changesNode(const Command& c);

struct ProcessorOptions {
  std::chrono::milliseconds defaultDeadline{60'000};
  std::chrono::milliseconds maxDeadline{3'600'000};
  std::size_t maxInFlight = 32;
};

class CommandProcessor {
 public:
  using PublishFn = std::function<void(const outrider::v1::CommandReply&)>;
  using StatusFn = std::function<outrider::v1::NodeStatus()>;
  /// Runs the commands that need the local daemons (vm, ct, apply, tunnel) or other work (hook). It calls `done` once with
  /// the final reply (kind SUCCEEDED or FAILED, message, result); a call after the deadline is ignored.
  using DoneFn = std::function<void(outrider::v1::CommandReply)>;
  using WorkFn = std::function<void(const std::string& commandId, const Command&, DoneFn done)>;

  CommandProcessor(boost::asio::io_context& io, std::string nodeId, const CommandVerifier& verifier,
                   CommandJournal& journal, const Clock& clock, ProcessorOptions opts, PublishFn publish,
                   StatusFn status, WorkFn work = {});
  ~CommandProcessor();

  /// One payload from the cmd topic. Never throws; every outcome is a reply.
  void handle(std::string_view payload);
  std::size_t inFlight() const { return running_.size(); }

  /// A PROGRESS reply for a command that runs here, or for one adopted after a restart.
  void progress(const std::string& commandId, std::string message, std::uint32_t pct = 0);
  /// A command accepted by an earlier run of the agent that this run carries on (an update, across the
  /// restart it causes): a redelivery is ignored instead of answered "interrupted".
  void adopt(const std::string& commandId);
  /// The final reply of an adopted command (or of one running here): journaled, then published.
  void finishAdopted(const std::string& commandId, outrider::v1::CommandReply r);
  /// Counters for status and telemetry.
  struct Counters {
    std::uint64_t received = 0, rejected = 0, succeeded = 0, failed = 0, redelivered = 0;
  };
  const Counters& counters() const { return counters_; }

 private:
  struct Run;
  void start(Verdict v, std::string_view payload);
  void publish(outrider::v1::CommandReply r);
  void finish(const std::shared_ptr<Run>& run, outrider::v1::CommandReply r);

  boost::asio::io_context& io_;
  std::string nodeId_;
  const CommandVerifier& verifier_;
  CommandJournal& journal_;
  const Clock& clock_;
  ProcessorOptions opts_;
  PublishFn publishFn_;
  StatusFn statusFn_;
  WorkFn workFn_;
  std::map<std::string, std::shared_ptr<Run>> running_;
  std::map<std::string, std::uint32_t> adopted_;  // id -> next reply seq
  Counters counters_;
  std::chrono::steady_clock::time_point started_ = std::chrono::steady_clock::now();
};

}  // namespace outrider::agent
