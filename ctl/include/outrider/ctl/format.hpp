#pragma once
// Human-readable tables and JSON for node status. Pure functions of their inputs (`nowMs` is passed in),
// so they are tested without a broker.
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "outrider/v1/hub.pb.h"

namespace outrider::ctl {

/// Left-aligned columns two spaces apart, no trailing blanks; rows[0] is the header.
std::string formatTable(const std::vector<std::vector<std::string>>& rows);
/// A JSON string literal with the needed escapes.
std::string jsonQuote(std::string_view text);

/// Age of `atMs` at `nowMs`: "3s ago", "5m ago", "2h ago", "4d ago"; "-" when atMs is 0.
std::string formatAge(std::int64_t atMs, std::int64_t nowMs);
/// "45s", "12m 3s", "3h 12m", "2d 4h".
std::string formatDuration(std::uint64_t seconds);
/// "2024-05-01T12:00:00Z" (UTC), "-" when 0.
std::string formatTimestamp(std::int64_t ms);
/// healthy, degraded, unreachable, unknown.
std::string daemonStateName(v1::DaemonHealth::State state);
/// "agent:ok vmm:degraded netd:down", "-" when there are none.
std::string daemonSummary(const v1::NodeStatus& status);

/// A node seen in a retained status message. `status` is empty when the payload did not decode.
struct NodeEntry {
  std::string node;  // from the topic
  std::optional<v1::NodeStatus> status;
};

/// NODE, STATE, VERSION, BROKER, SEEN, DAEMONS; entries sorted by node; a header only when empty.
std::string formatNodesTable(std::vector<NodeEntry> nodes, std::int64_t nowMs);
/// A JSON array of node objects (see statusJson), sorted by node.
std::string formatNodesJson(std::vector<NodeEntry> nodes);

/// The detail view of one node: fields, then a daemon table.
std::string formatStatus(std::string_view node, const v1::NodeStatus& status, std::int64_t nowMs);
/// {"node","state","online","version","hostname","arch","uptime_s","broker","at_ms","daemons":[...]}.
std::string statusJson(std::string_view node, const v1::NodeStatus& status);

}  // namespace outrider::ctl
