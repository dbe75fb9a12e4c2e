#pragma once
// All of netd's tunnels: the effective set (netd.toml's tunnels plus the manifest's, a manifest tunnel
// replacing a netd.toml one of the same interface name), the node's key, the backend, and the
// persisted copy of the last applied manifest tunnels.
#include <boost/asio/io_context.hpp>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "outrider/common/clock.hpp"
#include "outrider/common/local_service.hpp"
#include "outrider/netd/backend.hpp"
#include "outrider/netd/prober.hpp"
#include "outrider/netd/tunnel.hpp"
#include "outrider/v1/local.pb.h"

namespace outrider::netd {

struct NetdOptions {
  std::filesystem::path keyFile = "/var/lib/outrider/netd/wg.key";
  std::filesystem::path stateDir = "/var/lib/outrider/netd";
  BackendOptions backend;
};

/// "host:port" or "[v6]:port" to a numeric endpoint (getaddrinfo; the first address).
Result<Endpoint> resolveEndpoint(const std::string& hostPort);

/// The persisted manifest tunnels: a header line with a SHA-256 of the body, then the body (a serialized
/// TunnelApplyRequest). A file whose checksum does not match is refused.
std::string encodeTunnelState(const outrider::v1::TunnelApplyRequest& req);
Result<outrider::v1::TunnelApplyRequest> decodeTunnelState(std::string_view data);

class TunnelManager {
 public:
  TunnelManager(boost::asio::io_context& io, NetdOptions opts, std::vector<outrider::v1::TunnelSpec> configTunnels,
                EventSink publish);
  ~TunnelManager();

  /// Load the persisted manifest tunnels and bring the effective set up (errors are logged and shown in
  /// health; the daemon keeps serving).
  void start();
  /// Validate every tunnel, resolve every new or changed endpoint, persist, converge. Any error refuses
  /// the request as a whole and changes nothing; the Error's code is EINVAL for a bad request.
  Result<outrider::v1::ApplyResult> apply(const outrider::v1::TunnelApplyRequest& req);
  outrider::v1::TunnelStatusList status() const;
  Health health() const;

 private:
  Status ensureKey();
  Status ensureRuntime();
  std::map<std::string, outrider::v1::TunnelSpec> effective(
      const std::map<std::string, outrider::v1::TunnelSpec>& manifest) const;
  std::filesystem::path statePath() const { return opts_.stateDir / "manifest-tunnels.state"; }

  boost::asio::io_context& io_;
  NetdOptions opts_;
  std::vector<outrider::v1::TunnelSpec> configTunnels_;
  std::map<std::string, outrider::v1::TunnelSpec> manifestTunnels_;
  EventSink publish_;
  SystemClock clock_;
  std::unique_ptr<LinkConfigurator> links_;
  std::unique_ptr<WireGuardBackend> backend_;
  std::unique_ptr<Prober> prober_;
  std::optional<WgKeyPair> key_;
  std::string runtimeError_;
  std::map<std::string, std::string> startErrors_;
  std::map<std::string, std::unique_ptr<Tunnel>> tunnels_;
};

}  // namespace outrider::netd
