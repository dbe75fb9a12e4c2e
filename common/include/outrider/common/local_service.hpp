#pragma once
// The local API every root-side daemon (vmm, netd) serves to the agent, and the start-up they share:
// command line, the [api] and [log] config sections, the ipc::Server with its access policy, the
// built-in HealthRequest, and a table of per-request handlers that each module fills in.
#include <boost/asio/io_context.hpp>
#include <chrono>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "outrider/common/config.hpp"
#include "outrider/common/ipc.hpp"
#include "outrider/common/log.hpp"
#include "outrider/common/result.hpp"

namespace outrider {

/// The [api] and [log] sections of a daemon config.
struct LocalServiceConfig {
  std::filesystem::path socket;  // api.socket
  std::string group = "outrider";  // api.group; "" leaves the socket's group alone
  log::Level logLevel = log::Level::info;  // log.level
};

/// Read api.socket, api.group and log.level. Throws ConfigError (naming file, line and key) on a wrong
/// type or an unknown level; the caller reads its own keys and then calls finish().
LocalServiceConfig readLocalServiceConfig(ConfigReader& cfg, const std::filesystem::path& defaultSocket);

/// Answers one kind of request; it must call `reply` exactly once, possibly later from the loop.
using LocalHandler = ipc::RequestHandler;

struct Health {
  bool healthy = true;
  std::string detail;
};

class LocalService {
 public:
  /// `daemon` is the name reported in HealthReply and as the source of events, e.g. "outrider-vmm".
  LocalService(boost::asio::io_context& io, std::string daemon, LocalServiceConfig cfg);
  ~LocalService();
  LocalService(const LocalService&) = delete;
  LocalService& operator=(const LocalService&) = delete;

  /// Register the handler for one request type (the LocalRequest body case); a second registration
  /// replaces the first. HealthRequest is built in (see setHealth); SubscribeRequest is answered by the
  /// ipc::Server itself. Any type without a handler gets LocalError UNSUPPORTED.
  void handle(outrider::v1::LocalRequest::BodyCase which, LocalHandler handler);
  /// What HealthRequest reports; asked on every request.
  void setHealth(std::function<Health()> probe);
  /// Resolve the group, then bind and listen. Logs a warning if the group does not exist.
  Status start();
  /// Close every connection and remove the socket. Idempotent.
  void stop();
  /// Push an event to subscribers; fills seq, at_ms and source.
  void publish(std::string kind, std::string subject, std::string detail);

  const std::string& daemon() const { return daemon_; }
  const LocalServiceConfig& config() const { return cfg_; }
  boost::asio::io_context& io() { return io_; }
  /// The server, once started (for counters in tests and status).
  const ipc::Server* server() const { return server_.get(); }

 private:
  void dispatch(const ipc::PeerCred& peer, const outrider::v1::LocalRequest& req, ipc::Replier reply);

  boost::asio::io_context& io_;
  std::string daemon_;
  LocalServiceConfig cfg_;
  std::chrono::steady_clock::time_point started_;
  std::map<int, LocalHandler> handlers_;
  std::function<Health()> health_;
  std::unique_ptr<ipc::Server> server_;
  std::uint64_t seq_ = 0;
};

/// What a daemon built on LocalService supplies to runLocalDaemon.
struct LocalDaemonSpec {
  std::string name;                     // "outrider-vmm"
  std::filesystem::path defaultConfig;  // "/etc/outrider/vmm.toml"; missing means all defaults
  std::filesystem::path defaultSocket;  // "/run/outrider/vmm.sock"
  /// Reads the module's own config keys and registers its handlers on the service (state they need is
  /// owned by the handlers). May throw ConfigError. Runs before ConfigReader::finish().
  std::function<void(ConfigReader& cfg, LocalService& service)> setup;
};

/// The whole life of such a daemon: `NAME [--config PATH] [--version]`, config (a ConfigError is logged
/// and gives exit status 2), the local service on a DaemonRuntime loop until SIGTERM/SIGINT. Returns
/// the process exit status.
int runLocalDaemon(const LocalDaemonSpec& spec, int argc, char** argv);

}  // namespace outrider
