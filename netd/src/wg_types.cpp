#include "outrider/netd/wg_types.hpp"

#include <arpa/inet.h>

#include <charconv>
#include <cstring>

#include "outrider/common/crypto.hpp"

namespace outrider::netd {

WgKey keyFromBytes(std::string_view raw32) {
  WgKey k{};
  std::memcpy(k.data(), raw32.data(), std::min(raw32.size(), k.size()));
  return k;
}

std::string keyBase64(const WgKey& k) {
  return crypto::base64(std::string_view(reinterpret_cast<const char*>(k.data()), k.size()));
}

std::string keyHex(const WgKey& k) { return crypto::hex(std::span<const std::uint8_t>(k.data(), k.size())); }

Result<WgKey> keyFromBase64(std::string_view b64) {
  auto raw = crypto::unbase64(b64);
  if (!raw || raw->size() != 32) return Error{"not base64 of a 32-byte key", EINVAL};
  return keyFromBytes(*raw);
}

Result<WgKey> keyFromHex(std::string_view hex) {
  if (hex.size() != 64) return Error{"not hex of a 32-byte key", EINVAL};
  WgKey k{};
  for (std::size_t i = 0; i < 32; ++i) {
    unsigned v = 0;
    auto [end, ec] = std::from_chars(hex.data() + 2 * i, hex.data() + 2 * i + 2, v, 16);
    if (ec != std::errc() || end != hex.data() + 2 * i + 2) return Error{"not hex of a 32-byte key", EINVAL};
    k[i] = static_cast<std::uint8_t>(v);
  }
  return k;
}

Result<Cidr> Cidr::parse(std::string_view text) {
  Cidr c;
  auto slash = text.find('/');
  std::string addr(text.substr(0, slash));
  if (::inet_pton(AF_INET, addr.c_str(), c.addr.data()) == 1) {
    c.family = AF_INET;
    c.bits = 32;
  } else if (::inet_pton(AF_INET6, addr.c_str(), c.addr.data()) == 1) {
    c.family = AF_INET6;
    c.bits = 128;
  } else {
    return Error{"'" + std::string(text) + "': not an IP address", EINVAL};
  }
  if (slash != std::string_view::npos) {
    auto len = text.substr(slash + 1);
    unsigned bits = 0;
    auto [end, ec] = std::from_chars(len.data(), len.data() + len.size(), bits);
    if (len.empty() || ec != std::errc() || end != len.data() + len.size() || bits > c.bits)
      return Error{"'" + std::string(text) + "': bad prefix length", EINVAL};
    c.bits = static_cast<std::uint8_t>(bits);
  }
  return c;
}

std::string Cidr::address() const {
  char buf[INET6_ADDRSTRLEN] = {};
  ::inet_ntop(family, addr.data(), buf, sizeof buf);
  return buf;
}

std::string Cidr::str() const { return address() + "/" + std::to_string(bits); }

Result<Endpoint> Endpoint::parse(std::string_view s) {
  Endpoint e;
  std::string host;
  std::string_view port;
  if (!s.empty() && s.front() == '[') {
    auto close = s.find(']');
    if (close == std::string_view::npos || close + 1 >= s.size() || s[close + 1] != ':')
      return Error{"'" + std::string(s) + "': not [IPV6]:PORT", EINVAL};
    host = std::string(s.substr(1, close - 1));
    port = s.substr(close + 2);
  } else {
    auto colon = s.rfind(':');
    if (colon == std::string_view::npos) return Error{"'" + std::string(s) + "': not ADDRESS:PORT", EINVAL};
    host = std::string(s.substr(0, colon));
    port = s.substr(colon + 1);
  }
  if (::inet_pton(AF_INET, host.c_str(), e.addr.data()) == 1)
    e.family = AF_INET;
  else if (::inet_pton(AF_INET6, host.c_str(), e.addr.data()) == 1)
    e.family = AF_INET6;
  else
    return Error{"'" + std::string(s) + "': not a numeric address", EINVAL};
  unsigned p = 0;
  auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), p);
  if (port.empty() || ec != std::errc() || end != port.data() + port.size() || p > 65535)
    return Error{"'" + std::string(s) + "': bad port", EINVAL};
  e.port = static_cast<std::uint16_t>(p);
  return e;
}

std::string Endpoint::str() const {
  char buf[INET6_ADDRSTRLEN] = {};
  ::inet_ntop(family, addr.data(), buf, sizeof buf);
  if (family == AF_INET6) return "[" + std::string(buf) + "]:" + std::to_string(port);
  return std::string(buf) + ":" + std::to_string(port);
}

}  // namespace outrider::netd
