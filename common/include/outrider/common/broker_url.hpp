#pragma once
#include <string>
#include <string_view>

#include "outrider/common/result.hpp"

namespace outrider {

/// A broker address: "mqtts://host[:port]" (default port 8883) or "mqtt://host[:port]" (1883).
/// IPv6 literals go in brackets: "mqtts://[::1]:8883".
struct BrokerUrl {
  bool tls = true;
  std::string host;
  int port = 8883;
  /// Normalised text, "mqtts://host:port", used in messages and in the node's status.
  std::string text() const;
  static Result<BrokerUrl> parse(std::string_view url);
};

}  // namespace outrider
