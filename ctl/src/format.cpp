#include "outrider/ctl/format.hpp"

#include <algorithm>
#include <ctime>

#include <fmt/format.h>

namespace outrider::ctl {

namespace {
std::string orDash(const std::string& s) { return s.empty() ? "-" : s; }

const char* shortState(v1::DaemonHealth::State s) {
  switch (s) {
    case v1::DaemonHealth::HEALTHY: return "ok";
    case v1::DaemonHealth::DEGRADED: return "degraded";
    case v1::DaemonHealth::UNREACHABLE: return "down";
    default: return "unknown";
  }
}

void sortNodes(std::vector<NodeEntry>& nodes) {
  std::sort(nodes.begin(), nodes.end(), [](const NodeEntry& a, const NodeEntry& b) { return a.node < b.node; });
}
}  // namespace

std::string formatTable(const std::vector<std::vector<std::string>>& rows) {
  std::vector<std::size_t> widths;
  for (const auto& row : rows) {
    if (widths.size() < row.size()) widths.resize(row.size(), 0);
    for (std::size_t i = 0; i < row.size(); ++i) widths[i] = std::max(widths[i], row[i].size());
  }
  std::string out;
  for (const auto& row : rows) {
    std::string line;
    for (std::size_t i = 0; i < row.size(); ++i) {
      line += row[i];
      if (i + 1 < row.size()) line.append(widths[i] - row[i].size() + 2, ' ');
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
    out += line;
    out += '\n';
  }
  return out;
}

std::string jsonQuote(std::string_view text) {
  std::string out = "\"";
  for (unsigned char c : text) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20)
          out += fmt::format("\\u{:04x}", static_cast<unsigned>(c));
        else
          out += static_cast<char>(c);
    }
  }
  out += '"';
  return out;
}

std::string formatAge(std::int64_t atMs, std::int64_t nowMs) {
  if (atMs <= 0) return "-";
  std::int64_t s = std::max<std::int64_t>(0, (nowMs - atMs) / 1000);
  if (s < 120) return fmt::format("{}s ago", s);
  if (s < 2 * 3600) return fmt::format("{}m ago", s / 60);
  if (s < 2 * 86400) return fmt::format("{}h ago", s / 3600);
  return fmt::format("{}d ago", s / 86400);
}

std::string formatDuration(std::uint64_t s) {
  if (s < 60) return fmt::format("{}s", s);
  if (s < 3600) return fmt::format("{}m {}s", s / 60, s % 60);
  if (s < 86400) return fmt::format("{}h {}m", s / 3600, (s % 3600) / 60);
  return fmt::format("{}d {}h", s / 86400, (s % 86400) / 3600);
}

std::string formatTimestamp(std::int64_t ms) {
  if (ms <= 0) return "-";
  std::time_t t = static_cast<std::time_t>(ms / 1000);
  std::tm tm{};
  if (!gmtime_r(&t, &tm)) return "-";
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::string daemonStateName(v1::DaemonHealth::State state) {
  switch (state) {
    case v1::DaemonHealth::HEALTHY: return "healthy";
    case v1::DaemonHealth::DEGRADED: return "degraded";
    case v1::DaemonHealth::UNREACHABLE: return "unreachable";
    default: return "unknown";
  }
}

std::string daemonSummary(const v1::NodeStatus& status) {
  std::string out;
  for (const auto& d : status.daemons()) {
    if (!out.empty()) out += ' ';
    out += fmt::format("{}:{}", d.name(), shortState(d.state()));
  }
  return out.empty() ? "-" : out;
}

std::string formatNodesTable(std::vector<NodeEntry> nodes, std::int64_t nowMs) {
  sortNodes(nodes);
  std::vector<std::vector<std::string>> rows{{"NODE", "STATE", "VERSION", "BROKER", "SEEN", "DAEMONS"}};
  for (const auto& n : nodes) {
    if (!n.status) {
      rows.push_back({n.node, "invalid", "-", "-", "-", "-"});
      continue;
    }
    const auto& s = *n.status;
    rows.push_back({n.node, s.online() ? "online" : "offline", orDash(s.version()), orDash(s.broker()),
                    formatAge(s.at_ms(), nowMs), daemonSummary(s)});
  }
  return formatTable(rows);
}

std::string formatNodesJson(std::vector<NodeEntry> nodes) {
  sortNodes(nodes);
  std::string out = "[";
  for (std::size_t i = 0; i < nodes.size(); ++i) {
    if (i) out += ',';
    if (nodes[i].status)
      out += statusJson(nodes[i].node, *nodes[i].status);
    else
      out += fmt::format("{{\"node\":{},\"state\":\"invalid\"}}", jsonQuote(nodes[i].node));
  }
  out += "]\n";
  return out;
}

std::string formatStatus(std::string_view node, const v1::NodeStatus& s, std::int64_t nowMs) {
  std::string updated = s.at_ms() > 0 ? fmt::format("{} ({})", formatTimestamp(s.at_ms()), formatAge(s.at_ms(), nowMs))
                                      : std::string("-");
  std::string out = formatTable({
      {"node:", std::string(node)},
      {"state:", s.online() ? "online" : "offline"},
      {"version:", orDash(s.version())},
      {"hostname:", orDash(s.hostname())},
      {"arch:", orDash(s.arch())},
      {"uptime:", s.uptime_s() > 0 ? formatDuration(s.uptime_s()) : std::string("-")},
      {"broker:", orDash(s.broker())},
      {"manifest:", s.manifest_version() ? "version " + std::to_string(s.manifest_version()) : std::string("-")},
      {"wireguard key:", orDash(s.wireguard_public_key())},
      {"updated:", updated},
  });
  out += '\n';
  std::vector<std::vector<std::string>> rows{{"NAME", "STATE", "VERSION", "UPTIME", "DETAIL"}};
  for (const auto& d : s.daemons())
    rows.push_back({orDash(d.name()), daemonStateName(d.state()), orDash(d.version()),
                    d.uptime_s() > 0 ? formatDuration(d.uptime_s()) : std::string("-"), orDash(d.detail())});
  out += formatTable(rows);
  return out;
}

std::string statusJson(std::string_view node, const v1::NodeStatus& s) {
  std::string daemons = "[";
  for (int i = 0; i < s.daemons_size(); ++i) {
    const auto& d = s.daemons(i);
    if (i) daemons += ',';
    daemons += fmt::format(
        "{{\"name\":{},\"state\":{},\"version\":{},\"uptime_s\":{},\"detail\":{},\"checked_at_ms\":{}}}",
        jsonQuote(d.name()), jsonQuote(daemonStateName(d.state())), jsonQuote(d.version()), d.uptime_s(),
        jsonQuote(d.detail()), d.checked_at_ms());
  }
  daemons += ']';
  return fmt::format(
      "{{\"node\":{},\"state\":{},\"online\":{},\"version\":{},\"hostname\":{},\"arch\":{},\"uptime_s\":{},"
      "\"broker\":{},\"manifest_version\":{},\"wireguard_public_key\":{},\"at_ms\":{},\"daemons\":{}}}",
      jsonQuote(node), jsonQuote(s.online() ? "online" : "offline"), s.online() ? "true" : "false",
      jsonQuote(s.version()), jsonQuote(s.hostname()), jsonQuote(s.arch()), s.uptime_s(), jsonQuote(s.broker()),
      s.manifest_version(), jsonQuote(s.wireguard_public_key()), s.at_ms(), daemons);
}

}  // namespace outrider::ctl
