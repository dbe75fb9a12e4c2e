#pragma once
// The WireGuard data plane behind one interface: kernel WireGuard (generic netlink) or wireguard-go
// (UAPI socket, a process netd starts and supervises). Links, addresses and routes are the
// LinkConfigurator's (rtnetlink), the same for both.
#include <chrono>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "outrider/common/result.hpp"
#include "outrider/netd/wg_types.hpp"

namespace outrider::netd {

class WireGuardBackend {
 public:
  virtual ~WireGuardBackend() = default;
  /// "kernel" or "wireguard-go", as reported in TunnelStatus.backend.
  virtual std::string name() const = 0;

  struct DeviceReady {
    bool ready = false;  // the device answers; configure() and device() may be called
    bool fresh = false;  // it was (re)created since the last call and holds no configuration
  };
  /// Make sure the device exists, adopting one that is already there (after a netd restart). Never
  /// blocks for long: while a device is still starting, answers ready=false; call again later. Also
  /// where a dead wireguard-go is noticed and restarted.
  virtual Result<DeviceReady> ensureDevice(const std::string& ifname) = 0;
  /// Apply a set request.
  virtual Status configure(const std::string& ifname, const WgDeviceConfig& cfg) = 0;
  /// The device's peers, counters and handshakes.
  virtual Result<WgDeviceState> device(const std::string& ifname) = 0;
  /// Tear the device down (a tunnel that is no longer wanted).
  virtual Status removeDevice(const std::string& ifname) = 0;
};

/// Links, addresses and routes of an interface, through rtnetlink.
class LinkConfigurator {
 public:
  virtual ~LinkConfigurator() = default;
  virtual Result<bool> linkExists(const std::string& ifname) = 0;
  /// A link of `kind` (e.g. "wireguard"); the error code is EOPNOTSUPP when the kernel lacks the kind.
  virtual Status createLink(const std::string& ifname, const std::string& kind) = 0;
  virtual Status deleteLink(const std::string& ifname) = 0;
  virtual Status setUp(const std::string& ifname) = 0;
  /// The addresses on the link (link-local IPv6 left out).
  virtual Result<std::vector<Cidr>> addresses(const std::string& ifname) = 0;
  virtual Status addAddress(const std::string& ifname, const Cidr& addr) = 0;
  virtual Status deleteAddress(const std::string& ifname, const Cidr& addr) = 0;
  /// Routes netd installed on the link (marked with its own route protocol number).
  virtual Result<std::vector<Cidr>> routes(const std::string& ifname) = 0;
  virtual Status replaceRoute(const std::string& ifname, const Cidr& dst) = 0;
  virtual Status deleteRoute(const std::string& ifname, const Cidr& dst) = 0;
};

/// Route protocol number that marks netd's routes (`ip route` shows it as "proto 86").
inline constexpr int kRouteProtocol = 86;

std::unique_ptr<LinkConfigurator> makeRtnlConfigurator();

struct BackendOptions {
  std::string mode = "auto";  // auto | kernel | userspace
  std::string wireguardGo = "wireguard-go";
  std::filesystem::path uapiDir = "/var/run/wireguard";
  std::chrono::milliseconds startTimeout{5000};  // wireguard-go must open its UAPI socket within this
};

/// Whether the kernel has WireGuard: the generic netlink family "wireguard" resolves.
bool kernelWireGuardAvailable();
/// The backend `opts.mode` asks for; "auto" takes the kernel when it has WireGuard, else wireguard-go.
/// `why` says how the choice was made (for the log).
Result<std::unique_ptr<WireGuardBackend>> makeBackend(const BackendOptions& opts, LinkConfigurator& links,
                                                      std::string& why);

}  // namespace outrider::netd
