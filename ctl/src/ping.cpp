#include "outrider/ctl/ping.hpp"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>

namespace outrider::ctl {

namespace {
double nearestRank(const std::vector<double>& sorted, double pct) {
  auto n = static_cast<double>(sorted.size());
  auto rank = static_cast<std::size_t>(std::ceil(pct / 100.0 * n));
  rank = std::clamp<std::size_t>(rank, 1, sorted.size());
  return sorted[rank - 1];
}
}  // namespace

PingStats computeStats(std::vector<double> rttsMs, std::uint64_t sent) {
  PingStats s;
  s.sent = sent;
  s.ok = rttsMs.size();
  if (rttsMs.empty()) return s;
  std::sort(rttsMs.begin(), rttsMs.end());
  s.minMs = rttsMs.front();
  s.maxMs = rttsMs.back();
  s.p50Ms = nearestRank(rttsMs, 50);
  s.p90Ms = nearestRank(rttsMs, 90);
  s.p99Ms = nearestRank(rttsMs, 99);
  return s;
}

v1::CommandBody makePing(const CommandClient& client, std::string_view node, std::uint32_t holdMs) {
  v1::CommandBody body = client.newBody(node);
  body.mutable_ping()->set_hold_ms(holdMs);
  return body;
}

PingStats pingMany(CommandClient& client, std::string_view node, std::uint64_t count, std::uint32_t holdMs) {
  std::vector<double> rtts;
  rtts.reserve(static_cast<std::size_t>(std::min<std::uint64_t>(count, 1u << 20)));
  std::uint64_t sent = 0;
  std::string firstError;
  for (std::uint64_t i = 0; i < count; ++i) {
    ++sent;
    auto r = client.execute(makePing(client, node, holdMs));
    if (!r) {
      if (firstError.empty()) firstError = r.error().message;
      if (r.error().code == kHubDisconnected || r.error().code == kHubFailed) break;
      continue;
    }
    if (!r->succeeded()) {
      if (firstError.empty()) firstError = r->failureText();
      continue;
    }
    rtts.push_back(std::chrono::duration<double, std::milli>(r->rtt).count());
  }
  PingStats s = computeStats(std::move(rtts), sent);
  s.firstError = std::move(firstError);
  return s;
}

std::string formatPingStats(const PingStats& s, bool json) {
  if (json)
    return fmt::format(
        "{{\"sent\":{},\"ok\":{},\"min_ms\":{:.3f},\"p50_ms\":{:.3f},\"p90_ms\":{:.3f},\"p99_ms\":{:.3f},"
        "\"max_ms\":{:.3f}}}\n",
        s.sent, s.ok, s.minMs, s.p50Ms, s.p90Ms, s.p99Ms, s.maxMs);
  std::string out = fmt::format("sent {}, ok {}\n", s.sent, s.ok);
  if (s.ok > 0)
    out += fmt::format("rtt ms: min {:.2f}  p50 {:.2f}  p90 {:.2f}  p99 {:.2f}  max {:.2f}\n", s.minMs, s.p50Ms,
                       s.p90Ms, s.p99Ms, s.maxMs);
  return out;
}

}  // namespace outrider::ctl
