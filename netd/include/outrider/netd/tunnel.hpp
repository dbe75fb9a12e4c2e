#pragma once
// One tunnel: its WireGuard device, addresses and routes, its hubs' health and the active hub. Runs on
// the daemon's loop: a timer ticks once per probe interval (faster while the device is starting); probe
// replies are handled as they arrive, so a failover happens on the probe that crosses the threshold.
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "outrider/common/clock.hpp"
#include "outrider/netd/backend.hpp"
#include "outrider/netd/failover.hpp"
#include "outrider/netd/prober.hpp"
#include "outrider/netd/wg_key.hpp"
#include "outrider/v1/tunnel.pb.h"

namespace outrider::netd {

/// publish(kind, subject, detail), e.g. ("tunnel.failover", "wg0", "home -> backup: home missed 3 probes").
using EventSink = std::function<void(std::string kind, std::string subject, std::string detail)>;

struct TunnelDeps {
  boost::asio::io_context& io;
  WireGuardBackend& backend;
  LinkConfigurator& links;
  Prober& prober;
  const Clock& clock;
  WgKeyPair key;
  EventSink publish;
};

/// The spec's defaults filled in (0 means default in the contract).
struct TunnelParams {
  std::uint32_t keepaliveS = 25;
  std::uint32_t probeIntervalMs = 1000;
  std::uint32_t missThreshold = 3;
  std::uint32_t holddownS = 30;
  std::uint32_t standbys = 1;
  static TunnelParams of(const outrider::v1::TunnelSpec& spec);
};

class Tunnel {
 public:
  /// `endpoints` are the hubs' endpoints resolved to numbers, in the spec's hub order.
  Tunnel(outrider::v1::TunnelSpec spec, std::vector<Endpoint> endpoints, TunnelDeps deps);
  ~Tunnel();
  Tunnel(const Tunnel&) = delete;
  Tunnel& operator=(const Tunnel&) = delete;

  /// Start ticking on the loop. The device is adopted if it exists (same active hub, no teardown).
  void start();
  /// Stop ticking; the device, addresses and routes stay as they are.
  void stop();
  /// Stop, then remove the device (the tunnel is no longer wanted).
  void teardown();

  /// One round: make sure the device exists and is configured, read counters and handshakes, decide,
  /// send probes. start() calls it from a timer; unit tests call it with a fake clock.
  void tick();

  outrider::v1::TunnelStatus status() const;
  const outrider::v1::TunnelSpec& spec() const { return spec_; }
  const std::string& name() const { return spec_.interface(); }
  bool up() const { return up_; }
  std::optional<std::string> activeHub() const;
  const FailoverPolicy& policy() const { return policy_; }

 private:
  void schedule(std::chrono::milliseconds after);
  /// Push the whole desired peer set, addresses and routes (idempotent; one UAPI set for the peers).
  Status reconcile(bool initial);
  void readDevice();
  void onProbe(std::size_t hub, std::uint64_t generation, const ProbeResult& r);
  void evaluate(const std::string& trigger);
  void setError(std::string e);
  std::int64_t now() const { return deps_.clock.nowMs(); }

  outrider::v1::TunnelSpec spec_;
  std::vector<Endpoint> endpoints_;
  std::vector<WgKey> hubKeys_;
  std::vector<Cidr> addresses_;
  std::vector<std::vector<Cidr>> allowed_;
  std::vector<Cidr> probes_;
  TunnelParams params_;
  TunnelDeps deps_;
  FailoverPolicy policy_;
  std::optional<std::size_t> active_;
  bool configured_ = false;
  bool up_ = false;
  bool running_ = false;
  std::uint64_t generation_ = 0;  // bumped when the device is recreated: older probe replies are stale
  std::uint64_t failovers_ = 0;
  std::int64_t lastFailoverMs_ = 0;
  std::string lastError_;
  std::vector<WgPeerState> peerState_;  // per hub, from the last device read
  std::vector<std::int64_t> lastHandshake_;
  std::vector<Cidr> installedRoutes_;
  std::unique_ptr<boost::asio::steady_timer> timer_;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace outrider::netd
