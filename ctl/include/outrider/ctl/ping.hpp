#pragma once
// Ping: the liveness round trip, single or repeated, and its statistics.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "outrider/ctl/command_client.hpp"

namespace outrider::ctl {

struct PingStats {
  std::uint64_t sent = 0;
  std::uint64_t ok = 0;
  // Round-trip times of the successful pings in ms; all 0 when none succeeded.
  double minMs = 0, p50Ms = 0, p90Ms = 0, p99Ms = 0, maxMs = 0;
  /// The first failure ("timeout: ...", "rejected: ...", or a connection error), empty if none.
  std::string firstError;
};

/// Statistics over `rttsMs` (successful pings only) of `sent` pings. Percentiles by nearest rank.
PingStats computeStats(std::vector<double> rttsMs, std::uint64_t sent);

/// A Ping body for `node` holding for `holdMs`.
v1::CommandBody makePing(const CommandClient& client, std::string_view node, std::uint32_t holdMs);

/// Send `count` pings one after another and collect statistics. A ping that fails, is rejected or times
/// out is counted and the run goes on; a lost connection ends the run early (sent counts what was tried).
PingStats pingMany(CommandClient& client, std::string_view node, std::uint64_t count, std::uint32_t holdMs);

/// "sent 10, ok 10, rtt ms min 0.31 p50 0.35 p90 0.41 p99 0.52 max 0.52", or the JSON object.
std::string formatPingStats(const PingStats& stats, bool json);

}  // namespace outrider::ctl
