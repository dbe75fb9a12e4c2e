#pragma once
// The agent's side of an update (docs/updates.md): receives the package (update offer/chunk), runs the
// pre-update hooks, hands the install to the privileged updater through DIR/request, and then, in
// whichever run of the agent is alive at the time, judges the node's health after the restart, writes
// the verdict, runs the boot-ok or rollback hooks and sends the command's final reply.
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "outrider/agent/processor.hpp"
#include "outrider/agent/update.hpp"
#include "outrider/common/result.hpp"
#include "outrider/hooks/runner.hpp"

namespace outrider::agent {

/// What the update needs from the rest of the agent; fakes in unit tests.
struct UpdateHost {
  std::function<bool()> hubConnected;
  std::function<std::vector<v1::DaemonHealth>()> daemons;
  std::function<std::optional<v1::NodeManifest>()> manifest;
  /// vm and container lists from vmm: "vm NAME" / "container NAME" -> state; an Error when vmm cannot say.
  std::function<void(std::function<void(Result<std::map<std::string, std::string>>)>)> guests;
  std::function<void(std::string event, hooks::HookEnv env, std::function<void(Result<hooks::RunResult>)>)> runHooks;
  std::function<void(const std::string& id, std::string message, std::uint32_t pct)> progress;
  std::function<void(const std::string& id)> adopt;
  std::function<void(const std::string& id, v1::CommandReply)> finishAdopted;
  /// Start the updater (spawn launcher); the systemd launcher needs nothing.
  std::function<Status()> launch;
  /// The package tools, replaceable in unit tests.
  std::function<Result<update::PackageInfo>(const std::filesystem::path&)> inspect = update::inspectPackage;
  std::function<Result<std::string>(const std::string&)> installedVersion = update::installedVersion;
  std::string arch;  // dpkg architecture of this node
};

/// An update's health rules (update::healthProblems) applied to the node now; `done(problems)` runs on the
/// loop, empty when healthy; nothing runs once `life` (the caller's, which owns `host`) has expired.
/// sinceUpdate: problems name the baseline as the state before an update.
void checkNodeHealth(const UpdateHost& host, std::weak_ptr<int> life, std::map<std::string, std::string> baseline,
                     bool sinceUpdate,
                     std::function<void(std::vector<std::string>)> done);

class UpdateService {
 public:
  UpdateService(boost::asio::io_context& io, update::UpdateConfig cfg, UpdateHost host,
                update::FreeSpaceFn free = update::freeSpace);
  /// Pick up an update an earlier run left in progress.
  void start();
  void stop();
  /// signedCommand: INSTALL's signed command as it arrived; it travels in the request to the updater.
  void run(const std::string& commandId, const v1::UpdateCommand& cmd, CommandProcessor::DoneFn done,
           std::string signedCommand = {});

  /// How often an update in progress is looked at.
  std::chrono::milliseconds tickInterval{500};

 private:
  void install(const std::string& id, const v1::UpdateCommand& cmd, CommandProcessor::DoneFn done,
               std::string signedCommand);
  void status(CommandProcessor::DoneFn done);
  void arm();
  void tick();
  void checkHealth(const update::UpdateState& s);
  void report(const update::UpdateState& s);
  void finishReport(const update::UpdateState& s, v1::CommandReply r);
  void reply(const std::string& id, v1::CommandReply r);
  v1::UpdateResult resultOf(const update::UpdateState& s) const;

  boost::asio::io_context& io_;
  update::UpdateConfig cfg_;
  UpdateHost host_;
  update::PackageStore store_;
  boost::asio::steady_timer timer_;
  bool active_ = false, busy_ = false, stopped_ = false;
  std::string activeId_;
  std::chrono::steady_clock::time_point requestedAt_{};
  std::map<std::string, CommandProcessor::DoneFn> pending_;
  std::shared_ptr<int> alive_ = std::make_shared<int>(0);
};

}  // namespace outrider::agent
