#pragma once
// The WireGuard device model shared by both data-plane backends (kernel generic netlink, wireguard-go
// UAPI): what netd sets, and what it reads back.
#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "outrider/common/result.hpp"

namespace outrider::netd {

using WgKey = std::array<std::uint8_t, 32>;

WgKey keyFromBytes(std::string_view raw32);
std::string keyBase64(const WgKey& k);
std::string keyHex(const WgKey& k);
Result<WgKey> keyFromBase64(std::string_view b64);
Result<WgKey> keyFromHex(std::string_view hex);

/// An IPv4 or IPv6 prefix.
struct Cidr {
  int family = 0;  // AF_INET or AF_INET6
  std::array<std::uint8_t, 16> addr{};
  std::uint8_t bits = 0;

  static Result<Cidr> parse(std::string_view text);  // "10.0.0.0/24"; a bare address is a host prefix
  std::string str() const;                            // "10.0.0.0/24"
  std::string address() const;                        // "10.0.0.0"
  bool operator==(const Cidr&) const = default;
  bool operator<(const Cidr& o) const { return str() < o.str(); }
};

/// A numeric endpoint: "1.2.3.4:51820" or "[fd00::1]:51820".
struct Endpoint {
  int family = 0;
  std::array<std::uint8_t, 16> addr{};
  std::uint16_t port = 0;

  static Result<Endpoint> parse(std::string_view numeric);
  std::string str() const;
  bool operator==(const Endpoint&) const = default;
};

/// One peer in a set request.
struct WgPeerConfig {
  WgKey publicKey{};
  bool remove = false;
  bool updateOnly = false;
  std::optional<Endpoint> endpoint;
  std::optional<std::uint16_t> keepaliveS;
  bool replaceAllowedIps = false;
  std::vector<Cidr> allowedIps;
};

/// A set request: only the fields present change (peers not named stay as they are).
struct WgDeviceConfig {
  std::optional<WgKey> privateKey;
  std::optional<std::uint16_t> listenPort;
  bool replacePeers = false;
  std::vector<WgPeerConfig> peers;
};

struct WgPeerState {
  WgKey publicKey{};
  std::optional<Endpoint> endpoint;
  std::int64_t lastHandshakeMs = 0;  // Unix ms; 0 = never
  std::uint64_t rxBytes = 0;
  std::uint64_t txBytes = 0;
  std::uint16_t keepaliveS = 0;
  std::vector<Cidr> allowedIps;
};

struct WgDeviceState {
  std::optional<WgKey> publicKey;
  std::uint16_t listenPort = 0;
  std::vector<WgPeerState> peers;
  const WgPeerState* peer(const WgKey& k) const {
    for (const auto& p : peers)
      if (p.publicKey == k) return &p;
    return nullptr;
  }
};

}  // namespace outrider::netd
