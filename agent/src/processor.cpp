#include "outrider/agent/processor.hpp"

#include <cerrno>

#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

#include "outrider/common/log.hpp"
#include "outrider/common/manifest.hpp"
#include "outrider/common/names.hpp"
#include "outrider/common/version.hpp"
#include "outrider/hooks/runner.hpp"

namespace outrider::agent {

namespace asio = boost::asio;
using Reply = outrider::v1::CommandReply;

bool changesNode(const Command& c) {
  return std::visit(
      [](const auto& cmd) {
        using T = std::decay_t<decltype(cmd)>;
        if constexpr (std::is_same_v<T, VmCommand>)
          return cmd.op.op() != outrider::v1::VmCommand::LIST && cmd.op.op() != outrider::v1::VmCommand::CONSOLE;
        else if constexpr (std::is_same_v<T, ContainerCommand>)
          return cmd.op.op() != outrider::v1::ContainerCommand::LIST && cmd.op.op() != outrider::v1::ContainerCommand::LOGS;
        else if constexpr (std::is_same_v<T, UpdateCommand>)
          return cmd.op.op() == outrider::v1::UpdateCommand::OFFER || cmd.op.op() == outrider::v1::UpdateCommand::INSTALL;
        else
          return !(std::is_same_v<T, PingCommand> || std::is_same_v<T, GetStatusCommand> ||
                   std::is_same_v<T, TunnelCommand>);
      },
      c);
}

Status checkCommand(const outrider::v1::CommandBody& b) {
  using outrider::v1::CommandBody;
  auto needName = [](const std::string& name, bool needed, const char* what) -> Status {
    if (!needed) {
      if (!name.empty()) return Error{std::string(what) + " list takes no name"};
      return {};
    }
    if (!validWorkloadName(name))
      return Error{std::string(what) + " name '" + name.substr(0, 64) +
                   "' is invalid: 1-64 characters of [A-Za-z0-9_.-], not starting with '.' or '-'"};
    return {};
  };
  switch (b.command_case()) {
    case CommandBody::kVm:
      if (b.vm().op() == outrider::v1::VmCommand::OP_UNSPECIFIED || !outrider::v1::VmCommand::Op_IsValid(b.vm().op()))
        return Error{"vm command without a known operation"};
      return needName(b.vm().name(), b.vm().op() != outrider::v1::VmCommand::LIST, "vm");
    case CommandBody::kCt:
      if (b.ct().op() == outrider::v1::ContainerCommand::OP_UNSPECIFIED ||
          !outrider::v1::ContainerCommand::Op_IsValid(b.ct().op()))
        return Error{"ct command without a known operation"};
      return needName(b.ct().name(), b.ct().op() != outrider::v1::ContainerCommand::LIST, "container");
    case CommandBody::kApply:
      if (!b.apply().has_manifest()) return Error{"apply without a manifest"};
      if (auto s = validateManifest(b.apply().manifest()); !s) return Error{"manifest: " + s.error().message};
      return {};
    case CommandBody::kTunnel:
      if (b.tunnel().op() != outrider::v1::TunnelCommand::STATUS) return Error{"tunnel command without a known operation"};
      return {};
    case CommandBody::kHook: {
      if (auto e = hooks::parseEvent(b.hook().event()); !e) return e.error();
      hooks::HookEnv env(b.hook().env().begin(), b.hook().env().end());
      return hooks::validateHookEnv(env);
    }
    case CommandBody::kUpdate: {
      const auto& u = b.update();
      using U = outrider::v1::UpdateCommand;
      if (u.op() == U::OP_UNSPECIFIED || !U::Op_IsValid(u.op())) return Error{"update command without a known operation"};
      if (u.op() != U::STATUS && u.sha256().size() != 32) return Error{"update: sha256 must be 32 bytes"};
      if (u.op() == U::OFFER && u.size() == 0) return Error{"update offer without a size"};
      if (u.op() == U::CHUNK && u.data().empty()) return Error{"update chunk without data"};
      if (u.health_deadline_s() > 3600) return Error{"update: health_deadline_s is at most 3600"};
      return {};
    }
    default:
      return {};
  }
}

namespace {
Command toCommand(const outrider::v1::CommandBody& b) {
  switch (b.command_case()) {
    case outrider::v1::CommandBody::kPing: return PingCommand{b.ping().hold_ms(), b.ping().payload()};
    case outrider::v1::CommandBody::kGetStatus: return GetStatusCommand{};
    case outrider::v1::CommandBody::kVm: return VmCommand{b.vm()};
    case outrider::v1::CommandBody::kCt: return ContainerCommand{b.ct()};
    case outrider::v1::CommandBody::kApply: return ApplyCommand{b.apply().manifest()};
    case outrider::v1::CommandBody::kTunnel: return TunnelCommand{b.tunnel()};
    case outrider::v1::CommandBody::kHook: return HookCommand{b.hook()};
    case outrider::v1::CommandBody::kUpdate: return UpdateCommand{b.update()};
    default: return GetStatusCommand{};  // unreachable: the verifier refuses an unset command
  }
}
}  // namespace

/// One accepted command while it runs.
struct CommandProcessor::Run {
  std::string id;
  Command cmd;
  std::uint32_t seq = 0;
  bool done = false;
  asio::steady_timer deadline;
  asio::steady_timer work;  // for commands that wait (ping hold)
  std::chrono::steady_clock::time_point began = std::chrono::steady_clock::now();
  Run(asio::io_context& io, std::string i, Command c) : id(std::move(i)), cmd(std::move(c)), deadline(io), work(io) {}
};

CommandProcessor::CommandProcessor(asio::io_context& io, std::string nodeId, const CommandVerifier& verifier,
                                   CommandJournal& journal, const Clock& clock, ProcessorOptions opts,
                                   PublishFn publish, StatusFn status, WorkFn work)
    : io_(io),
      nodeId_(std::move(nodeId)),
      verifier_(verifier),
      journal_(journal),
      clock_(clock),
      opts_(opts),
      publishFn_(std::move(publish)),
      statusFn_(std::move(status)),
      workFn_(std::move(work)) {}

CommandProcessor::~CommandProcessor() {
  for (auto& [id, run] : running_) {
    run->done = true;
    run->deadline.cancel();
    run->work.cancel();
  }
}

void CommandProcessor::publish(Reply r) {
  r.set_node_id(nodeId_);
  r.set_at_ms(clock_.nowMs());
  publishFn_(r);
}

void CommandProcessor::handle(std::string_view payload) {
  ++counters_.received;
  Verdict v = verifier_.verify(payload);
  if (v.accepted()) {
    // Signed and addressed to us: a redelivery of a command we know gets its recorded outcome, even
    // after its expiry; the same id with a different body is a replay.
    if (const auto* e = journal_.find(v.commandId)) {
      if (e->bodySha256 != v.bodyDigest) {
        v.reason = Reply::REPLAYED;
        v.message = "command id " + v.commandId + " was already used for a different command";
      } else if (e->state == JournalEntry::State::Finished) {
        ++counters_.redelivered;
        Reply recorded;
        if (recorded.ParseFromString(e->reply)) {
          LOG_INFO("command {}: redelivered, answering with the recorded {}", v.commandId,
                   Reply::Kind_Name(recorded.kind()));
          publishFn_(recorded);
        }
        return;
      } else if (running_.count(v.commandId) || adopted_.count(v.commandId)) {
        ++counters_.redelivered;
        LOG_DEBUG("command {}: redelivered while running, ignoring", v.commandId);
        return;
      } else {
        // Accepted before a restart and never finished: at most once, so report instead of re-running.
        Reply r;
        r.set_command_id(v.commandId);
        r.set_kind(Reply::FAILED);
        r.set_message("interrupted by an agent restart; not run again");
        r.set_node_id(nodeId_);
        r.set_at_ms(clock_.nowMs());
        if (auto s = journal_.recordFinished(v.commandId, r.SerializeAsString(), Durability::Sync); !s)
          LOG_ERR("command {}: journal: {}", v.commandId, s.error().message);
        ++counters_.failed;
        publishFn_(r);
        return;
      }
    }
  }
  if (v.accepted()) v = verifier_.checkTime(std::move(v));
  if (v.accepted()) {
    if (auto s = checkCommand(v.body); !s) {
      v.reason = Reply::MALFORMED;
      v.message = s.error().message;
    }
  }
  if (v.accepted() && running_.size() >= opts_.maxInFlight) {
    v.reason = Reply::BUSY;
    v.message = std::to_string(running_.size()) + " commands already running";
  }
  if (!v.accepted()) {
    ++counters_.rejected;
    LOG_WARN("command {}: rejected: {}: {}", v.commandId.empty() ? "(unknown)" : v.commandId,
             Reply::RejectReason_Name(v.reason), v.message);
    Reply r;
    r.set_command_id(v.commandId);
    r.set_kind(Reply::REJECTED);
    r.set_reason(v.reason);
    r.set_message(v.message);
    publish(std::move(r));
    return;
  }
  start(std::move(v), payload);
}

void CommandProcessor::start(Verdict v, std::string_view payload) {
  Command cmd = toCommand(v.body);
  if (auto* u = std::get_if<UpdateCommand>(&cmd); u && u->op.op() == outrider::v1::UpdateCommand::INSTALL)
    u->signedCommand = std::string(payload);
  auto durability = changesNode(cmd) ? Durability::Sync : Durability::Buffered;
  if (auto s = journal_.recordAccepted(v.commandId, v.bodyDigest, v.body.expires_at_ms(), durability); !s) {
    // Without a journal record there is no replay protection: refuse rather than run unprotected.
    Reply r;
    r.set_command_id(v.commandId);
    if (s.error().code == ENOSPC) {
      // Full of unexpired commands: the hub is sending faster than commands expire. Retryable.
      LOG_WARN("command {}: rejected: BUSY: command journal full", v.commandId);
      r.set_kind(Reply::REJECTED);
      r.set_reason(Reply::BUSY);
      r.set_message("command journal full of unexpired commands; retry later");
      ++counters_.rejected;
    } else {
      LOG_ERR("command {}: journal: {}", v.commandId, s.error().message);
      r.set_kind(Reply::FAILED);
      r.set_message("cannot record the command in the journal: " + s.error().message);
      ++counters_.failed;
    }
    publish(std::move(r));
    return;
  }
  auto run = std::make_shared<Run>(io_, v.commandId, cmd);
  running_[run->id] = run;

  auto deadline = v.body.deadline_ms() ? std::chrono::milliseconds(v.body.deadline_ms()) : opts_.defaultDeadline;
  deadline = std::min(deadline, opts_.maxDeadline);
  run->deadline.expires_after(deadline);
  run->deadline.async_wait([this, run, deadline](const boost::system::error_code& ec) {
    if (ec || run->done) return;
    run->work.cancel();
    Reply r;
    r.set_command_id(run->id);
    r.set_kind(Reply::FAILED);
    r.set_message("deadline of " + std::to_string(deadline.count()) + " ms exceeded");
    finish(run, std::move(r));
  });

  std::visit(
      [&](const auto& c) {
        using T = std::decay_t<decltype(c)>;
        if constexpr (std::is_same_v<T, PingCommand>) {
          auto pong = [this, run, c] {
            Reply r;
            r.set_command_id(run->id);
            r.set_kind(Reply::SUCCEEDED);
            auto* p = r.mutable_pong();
            p->set_version(std::string(outrider::version()));
            p->set_node_time_ms(clock_.nowMs());
            p->set_uptime_s(static_cast<std::uint64_t>(
                std::chrono::duration_cast<std::chrono::seconds>(std::chrono::steady_clock::now() - started_).count()));
            p->set_payload(c.payload);
            finish(run, std::move(r));
          };
          if (c.holdMs == 0) return pong();
          // A held ping reports progress about once a second until it answers.
          auto step = std::chrono::milliseconds(std::min<std::uint32_t>(1000, std::max<std::uint32_t>(c.holdMs / 2, 1)));
          auto tick = std::make_shared<std::function<void()>>();
          *tick = [this, run, c, step, pong, tick] {
            auto elapsed = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - run->began);
            if (elapsed.count() >= c.holdMs) {
              *tick = nullptr;  // break the self-reference
              return pong();
            }
            Reply p;
            p.set_command_id(run->id);
            p.set_kind(Reply::PROGRESS);
            p.set_seq(run->seq++);
            p.set_progress_pct(static_cast<std::uint32_t>(100 * elapsed.count() / c.holdMs));
            p.set_message("holding, " + std::to_string(elapsed.count()) + " of " + std::to_string(c.holdMs) + " ms");
            publish(std::move(p));
            auto left = std::chrono::milliseconds(c.holdMs) - elapsed;
            run->work.expires_after(std::min(step, left));
            run->work.async_wait([tick](const boost::system::error_code& ec) {
              if (!ec && *tick) (*tick)();
            });
          };
          run->work.expires_after(step);
          run->work.async_wait([tick](const boost::system::error_code& ec) {
            if (!ec && *tick) (*tick)();
          });
        } else if constexpr (std::is_same_v<T, GetStatusCommand>) {
          Reply r;
          r.set_command_id(run->id);
          r.set_kind(Reply::SUCCEEDED);
          *r.mutable_status() = statusFn_();
          finish(run, std::move(r));
        } else {
          if (!workFn_) {
            Reply r;
            r.set_command_id(run->id);
            r.set_kind(Reply::FAILED);
            r.set_message("this agent runs no workloads");
            return finish(run, std::move(r));
          }
          workFn_(run->id, run->cmd, [this, run](Reply r) {
            if (run->done) return;  // the deadline answered first, or the processor is gone
            r.set_command_id(run->id);
            finish(run, std::move(r));
          });
        }
      },
      cmd);
  // A command that finished at once has already sent its final reply; one that keeps running says
  // ACCEPTED now, before any PROGRESS (their timers fire later, from the loop).
  if (!run->done) {
    Reply accepted;
    accepted.set_command_id(run->id);
    accepted.set_kind(Reply::ACCEPTED);
    accepted.set_seq(run->seq++);
    publish(accepted);
  }
}

void CommandProcessor::progress(const std::string& commandId, std::string message, std::uint32_t pct) {
  Reply p;
  p.set_command_id(commandId);
  p.set_kind(Reply::PROGRESS);
  p.set_message(std::move(message));
  p.set_progress_pct(pct);
  if (auto it = running_.find(commandId); it != running_.end()) {
    p.set_seq(it->second->seq++);
  } else if (auto a = adopted_.find(commandId); a != adopted_.end()) {
    p.set_seq(a->second++);
  } else {
    return;
  }
  publish(std::move(p));
}

void CommandProcessor::adopt(const std::string& commandId) {
  // Replies of the earlier run came first: continue their numbering far above them.
  adopted_.emplace(commandId, 1000);
}

void CommandProcessor::finishAdopted(const std::string& commandId, Reply r) {
  r.set_command_id(commandId);
  if (auto it = running_.find(commandId); it != running_.end()) return finish(it->second, std::move(r));
  auto a = adopted_.find(commandId);
  r.set_seq(a != adopted_.end() ? a->second : 1000);
  if (a != adopted_.end()) adopted_.erase(a);
  r.set_node_id(nodeId_);
  r.set_at_ms(clock_.nowMs());
  r.kind() == Reply::SUCCEEDED ? ++counters_.succeeded : ++counters_.failed;
  if (auto s = journal_.recordFinished(commandId, r.SerializeAsString(), Durability::Sync); !s)
    LOG_ERR("command {}: journal: {}", commandId, s.error().message);
  if (r.kind() != Reply::SUCCEEDED) LOG_WARN("command {}: failed: {}", commandId, r.message());
  publishFn_(r);
}

void CommandProcessor::finish(const std::shared_ptr<Run>& run, Reply r) {
  if (run->done) return;
  run->done = true;
  run->deadline.cancel();
  run->work.cancel();
  r.set_seq(run->seq++);
  r.set_node_id(nodeId_);
  r.set_at_ms(clock_.nowMs());
  bool ok = r.kind() == Reply::SUCCEEDED;
  ok ? ++counters_.succeeded : ++counters_.failed;
  auto durability = changesNode(run->cmd) ? Durability::Sync : Durability::Buffered;
  if (auto s = journal_.recordFinished(run->id, r.SerializeAsString(), durability); !s)
    LOG_ERR("command {}: journal: {}", run->id, s.error().message);
  if (!ok) LOG_WARN("command {}: failed: {}", run->id, r.message());
  running_.erase(run->id);
  publishFn_(r);
}

}  // namespace outrider::agent
