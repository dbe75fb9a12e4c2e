#pragma once
// The agent's side of workloads and tunnels: it holds the node's desired state (the last NodeManifest the
// hub applied, persisted in the state dir), hands it to vmm and netd, which reconcile continuously, and
// hands it again whenever one of them (re)starts or at every resync interval. It also turns the hub's
// vm, ct and tunnel commands into local requests and their replies into command results.
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>

#include "outrider/agent/daemon_monitor.hpp"
#include "outrider/agent/processor.hpp"
#include "outrider/common/result.hpp"
#include "outrider/v1/hub.pb.h"

namespace outrider::agent {

/// The persisted manifest: "ORMF", CRC-32C of the payload (little endian), the serialized NodeManifest.
std::string encodeManifestFile(const outrider::v1::NodeManifest& m);
Result<outrider::v1::NodeManifest> decodeManifestFile(std::string_view data);

struct WorkloadOptions {
  std::filesystem::path stateDir;
  std::chrono::milliseconds resync{std::chrono::minutes(5)};
  std::chrono::milliseconds applyTimeout{std::chrono::minutes(2)};  // per daemon request
  std::chrono::milliseconds queryTimeout{std::chrono::seconds(30)};
};

class Workloads {
 public:
  using ChangedFn = std::function<void()>;  // something NodeStatus shows changed

  Workloads(boost::asio::io_context& io, DaemonMonitor& daemons, WorkloadOptions opts, ChangedFn changed);
  /// Read the persisted manifest, if any. A damaged file is moved aside (manifest.pb.damaged) and the
  /// node keeps what vmm and netd hold themselves; that is logged, not fatal.
  Status load();
  /// Start the resync timer.
  void start();
  void stop();

  /// Run a vm, ct, apply or tunnel command (CommandProcessor's WorkFn).
  void run(const Command& cmd, CommandProcessor::DoneFn done);
  /// A daemon's health changed (DaemonMonitor's ChangeFn): when it is healthy again, hand it the
  /// desired state, and learn netd's public key.
  void daemonChanged(const outrider::v1::DaemonHealth& h);

  std::uint64_t manifestVersion() const { return manifest_ ? manifest_->version() : 0; }
  const std::optional<outrider::v1::NodeManifest>& manifest() const { return manifest_; }
  const std::string& wireguardPublicKey() const { return wgKey_; }

 private:
  void apply(const outrider::v1::NodeManifest& m, CommandProcessor::DoneFn done);
  /// Hand the desired state to one daemon ("vmm" or "netd"); `done` gets the per-item results or the error.
  void push(const std::string& daemon, std::function<void(Result<outrider::v1::ApplyResult>)> done);
  void pushAll(const char* why);
  void query(const std::string& daemon, outrider::v1::LocalRequest req, std::chrono::milliseconds timeout,
             std::function<void(outrider::v1::CommandReply& r, const outrider::v1::LocalReply& lr)> fill,
             CommandProcessor::DoneFn done);
  void learnWireguardKey();
  void armResync();

  boost::asio::io_context& io_;
  DaemonMonitor& daemons_;
  WorkloadOptions opts_;
  ChangedFn changed_;
  std::optional<outrider::v1::NodeManifest> manifest_;
  std::string wgKey_;
  boost::asio::steady_timer resync_;
  bool stopped_ = false;
};

}  // namespace outrider::agent
