// Host-independent checks of a TunnelSpec. Resolving endpoints and checking the interface against the
// host's links is netd's job at apply time.
#include "outrider/common/tunnel_spec.hpp"

#include <arpa/inet.h>

#include <array>
#include <charconv>
#include <cstdint>
#include <cstring>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "outrider/common/crypto.hpp"
#include "outrider/common/names.hpp"

namespace outrider {

namespace {

struct Prefix {
  int family = 0;  // AF_INET or AF_INET6
  std::array<std::uint8_t, 16> addr{};
  unsigned bits = 0;
  std::string text;
};

std::optional<Prefix> parseIp(std::string_view s) {
  Prefix p;
  std::string str(s);
  if (::inet_pton(AF_INET, str.c_str(), p.addr.data()) == 1) {
    p.family = AF_INET;
    p.bits = 32;
  } else if (::inet_pton(AF_INET6, str.c_str(), p.addr.data()) == 1) {
    p.family = AF_INET6;
    p.bits = 128;
  } else {
    return std::nullopt;
  }
  p.text = str;
  return p;
}

/// "ADDR/BITS"; the prefix length is required.
std::optional<Prefix> parseCidr(std::string_view s, std::string& why) {
  auto slash = s.find('/');
  if (slash == std::string_view::npos) {
    why = "'" + std::string(s) + "' is not a CIDR (ADDRESS/PREFIX)";
    return std::nullopt;
  }
  auto ip = parseIp(s.substr(0, slash));
  if (!ip) {
    why = "'" + std::string(s) + "': not an IPv4 or IPv6 address";
    return std::nullopt;
  }
  auto len = s.substr(slash + 1);
  unsigned bits = 0;
  auto [end, ec] = std::from_chars(len.data(), len.data() + len.size(), bits);
  unsigned max = ip->family == AF_INET ? 32 : 128;
  if (len.empty() || ec != std::errc() || end != len.data() + len.size() || bits > max) {
    why = "'" + std::string(s) + "': prefix length must be 0-" + std::to_string(max);
    return std::nullopt;
  }
  ip->bits = bits;
  ip->text = std::string(s);
  return ip;
}

bool hostBitsSet(const Prefix& p) {
  unsigned total = p.family == AF_INET ? 32 : 128;
  for (unsigned i = p.bits; i < total; ++i)
    if (p.addr[i / 8] & (0x80u >> (i % 8))) return true;
  return false;
}

/// Whether two prefixes share any address.
bool overlaps(const Prefix& a, const Prefix& b) {
  if (a.family != b.family) return false;
  unsigned n = std::min(a.bits, b.bits);
  for (unsigned i = 0; i < n; ++i) {
    bool x = a.addr[i / 8] & (0x80u >> (i % 8));
    bool y = b.addr[i / 8] & (0x80u >> (i % 8));
    if (x != y) return false;
  }
  return true;
}

bool same(const Prefix& a, const Prefix& b) { return overlaps(a, b) && a.bits == b.bits; }

bool validInterfaceName(std::string_view n) {
  if (n.empty() || n.size() > 15 || n == "." || n == ".." || n.front() == '-') return false;
  for (char c : n) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '.' ||
              c == '-';
    if (!ok) return false;
  }
  return true;
}

bool validHostName(std::string_view h) {
  if (h.empty() || h.size() > 253 || h.front() == '-' || h.front() == '.') return false;
  for (char c : h) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '-';
    if (!ok) return false;
  }
  return true;
}

/// Empty when `ep` is "host:port" or "[v6]:port" with a port of 1-65535; otherwise why not.
std::string checkEndpoint(std::string_view ep) {
  std::string_view host, port;
  if (!ep.empty() && ep.front() == '[') {
    auto close = ep.find(']');
    if (close == std::string_view::npos || close + 1 >= ep.size() || ep[close + 1] != ':')
      return "'" + std::string(ep) + "' is not [IPV6]:PORT";
    host = ep.substr(1, close - 1);
    port = ep.substr(close + 2);
    auto ip = parseIp(host);
    if (!ip || ip->family != AF_INET6) return "'" + std::string(host) + "' is not an IPv6 address";
  } else {
    auto colon = ep.rfind(':');
    if (colon == std::string_view::npos) return "'" + std::string(ep) + "' is not HOST:PORT";
    host = ep.substr(0, colon);
    port = ep.substr(colon + 1);
    if (host.find(':') != std::string_view::npos) return "'" + std::string(ep) + "': write an IPv6 host as [ADDRESS]:PORT";
    if (!validHostName(host)) return "'" + std::string(ep) + "': '" + std::string(host) + "' is not a host name or address";
  }
  unsigned p = 0;
  auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), p);
  if (port.empty() || ec != std::errc() || end != port.data() + port.size() || p == 0 || p > 65535)
    return "'" + std::string(ep) + "': port must be 1-65535";
  return {};
}

bool validKey(std::string_view b64) {
  auto raw = crypto::unbase64(b64);
  return raw && raw->size() == 32;
}

}  // namespace

Status validateTunnelSpec(const outrider::v1::TunnelSpec& spec) {
  const std::string t = "tunnel '" + spec.interface() + "': ";
  if (!validInterfaceName(spec.interface()))
    return Error{t + "interface: must be 1-15 characters of [A-Za-z0-9_.-], not starting with '-'", EINVAL};
  if (spec.addresses().empty()) return Error{t + "addresses: at least one address (CIDR) is needed", EINVAL};
  for (const auto& a : spec.addresses()) {
    std::string why;
    if (!parseCidr(a, why)) return Error{t + "addresses: " + why, EINVAL};
  }
  if (spec.listen_port() > 65535) return Error{t + "listen_port: must be 0-65535", EINVAL};
  if (spec.keepalive_s() > 65535) return Error{t + "keepalive_s: must be 0-65535", EINVAL};
  if (spec.probe_interval_ms() != 0 && (spec.probe_interval_ms() < 100 || spec.probe_interval_ms() > 60000))
    return Error{t + "probe_interval_ms: must be 100-60000 (or 0 for the default 1000)", EINVAL};
  if (spec.miss_threshold() > 100) return Error{t + "miss_threshold: must be 1-100 (or 0 for the default 3)", EINVAL};
  if (spec.holddown_s() > 86400) return Error{t + "holddown_s: must be at most 86400", EINVAL};
  if (spec.standbys() > 16) return Error{t + "standbys: must be at most 16", EINVAL};
  if (spec.hubs().empty()) return Error{t + "hub: at least one hub is needed", EINVAL};
  if (spec.hubs().size() > 64) return Error{t + "hub: at most 64 hubs", EINVAL};

  struct HubPrefixes {
    std::string name;
    std::vector<Prefix> prefixes;
  };
  std::vector<HubPrefixes> seen;
  std::set<std::string> names, keys, probes;
  for (const auto& h : spec.hubs()) {
    const std::string th = t + "hub '" + h.name() + "': ";
    if (!validWorkloadName(h.name()))
      return Error{th + "name: must be 1-64 characters of [A-Za-z0-9_.-], not starting with '.' or '-'", EINVAL};
    if (!names.insert(h.name()).second) return Error{th + "name: duplicate hub name", EINVAL};
    if (auto why = checkEndpoint(h.endpoint()); !why.empty()) return Error{th + "endpoint: " + why, EINVAL};
    if (!validKey(h.public_key())) return Error{th + "public_key: not base64 of 32 bytes", EINVAL};
    if (!keys.insert(h.public_key()).second)
      return Error{th + "public_key: the same key is already used by another hub of this tunnel", EINVAL};
    if (h.tier() > 2) return Error{th + "tier: must be 0, 1 or 2", EINVAL};
    if (h.probe_address().empty()) return Error{th + "probe_address: missing (an address of the hub inside the tunnel)", EINVAL};
    auto probe = parseIp(h.probe_address());
    if (!probe)
      return Error{th + "probe_address: '" + h.probe_address() + "' is not an IPv4 or IPv6 address", EINVAL};
    if (!probes.insert(h.probe_address()).second)
      return Error{th + "probe_address: already the probe address of another hub", EINVAL};

    HubPrefixes mine{h.name(), {}};
    for (const auto& a : h.allowed_ips()) {
      std::string why;
      auto p = parseCidr(a, why);
      if (!p) return Error{th + "allowed_ips: " + why, EINVAL};
      if (hostBitsSet(*p)) return Error{th + "allowed_ips: '" + a + "' has host bits set", EINVAL};
      for (const auto& q : mine.prefixes)
        if (overlaps(*p, q)) return Error{th + "allowed_ips: '" + a + "' overlaps '" + q.text + "'", EINVAL};
      mine.prefixes.push_back(*p);
    }
    // Hubs of one ring carry the same networks (that is what failover moves), so an identical prefix on
    // another hub is expected; a prefix that only partly overlaps another hub's would change the shape of
    // the routing on every failover, and is refused.
    for (const auto& other : seen)
      for (const auto& q : other.prefixes)
        for (const auto& p : mine.prefixes)
          if (overlaps(p, q) && !same(p, q))
            return Error{th + "allowed_ips: '" + p.text + "' overlaps '" + q.text + "' of hub '" + other.name +
                             "' (hubs of a tunnel carry identical or disjoint prefixes)",
                         EINVAL};
    seen.push_back(std::move(mine));
  }
  return {};
}

}  // namespace outrider
