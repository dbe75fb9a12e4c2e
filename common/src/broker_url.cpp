#include "outrider/common/broker_url.hpp"

#include <cerrno>
#include <charconv>

namespace outrider {

std::string BrokerUrl::text() const {
  std::string h = host.find(':') != std::string::npos ? "[" + host + "]" : host;
  return (tls ? "mqtts://" : "mqtt://") + h + ":" + std::to_string(port);
}

Result<BrokerUrl> BrokerUrl::parse(std::string_view url) {
  auto bad = [&](std::string_view why) {
    return Error{"invalid broker URL '" + std::string(url) + "': " + std::string(why), EINVAL};
  };
  BrokerUrl b;
  std::string_view rest;
  if (url.starts_with("mqtts://")) {
    b.tls = true;
    b.port = 8883;
    rest = url.substr(8);
  } else if (url.starts_with("mqtt://")) {
    b.tls = false;
    b.port = 1883;
    rest = url.substr(7);
  } else {
    return bad("expected mqtt://host:port or mqtts://host:port");
  }
  if (!rest.empty() && rest.back() == '/') rest.remove_suffix(1);
  std::string_view portText;
  if (rest.starts_with("[")) {
    auto close = rest.find(']');
    if (close == std::string_view::npos) return bad("unclosed '['");
    b.host = std::string(rest.substr(1, close - 1));
    auto after = rest.substr(close + 1);
    if (!after.empty()) {
      if (after.front() != ':') return bad("unexpected text after ']'");
      portText = after.substr(1);
      if (portText.empty()) return bad("empty port");
    }
  } else {
    auto colon = rest.rfind(':');
    if (colon != std::string_view::npos) {
      portText = rest.substr(colon + 1);
      rest = rest.substr(0, colon);
      if (portText.empty()) return bad("empty port");
    }
    b.host = std::string(rest);
  }
  if (b.host.empty()) return bad("no host");
  if (b.host.find_first_of("/?#@ ") != std::string::npos) return bad("unexpected character in host");
  if (!portText.empty()) {
    int port = 0;
    auto [p, ec] = std::from_chars(portText.data(), portText.data() + portText.size(), port);
    if (ec != std::errc() || p != portText.data() + portText.size() || port < 1 || port > 65535)
      return bad("port must be 1..65535");
    b.port = port;
  }
  return b;
}

}  // namespace outrider
