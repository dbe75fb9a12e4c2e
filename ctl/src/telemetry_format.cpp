#include "outrider/ctl/telemetry_format.hpp"

#include <fmt/format.h>

#include <cmath>
#include <utility>
#include <vector>

#include "outrider/ctl/format.hpp"

namespace outrider::ctl {
namespace {

/// Shortest text that reads back as the same double; "null" for what JSON cannot carry.
std::string num(double v) {
  if (!std::isfinite(v)) return "null";
  return fmt::format("{}", v);
}

/// Compact for the table: up to 6 significant digits.
std::string shortNum(double v) { return fmt::format("{:.6g}", v); }

std::string seriesName(const v1::TelemetrySeries& s) {
  std::string n = s.measurement();
  for (const auto& t : s.tags()) n += "," + t.key() + "=" + t.value();
  return n + " " + s.field();
}

std::vector<std::pair<const char*, std::uint64_t>> lossFields(const v1::TelemetryLoss& l) {
  return {{"malformed_lines", l.malformed_lines()},
          {"nan_or_inf", l.nan_or_inf()},
          {"non_numeric_fields", l.non_numeric_fields()},
          {"type_conflicts", l.type_conflicts()},
          {"over_cap_samples", l.over_cap_samples()},
          {"truncated_datagrams", l.truncated_datagrams()},
          {"spool_dropped_records", l.spool_dropped_records()},
          {"spool_dropped_samples", l.spool_dropped_samples()},
          {"spool_rolled_up_records", l.spool_rolled_up_records()},
          {"spool_corrupt_records", l.spool_corrupt_records()},
          {"source_errors", l.source_errors()}};
}

}  // namespace

std::string telemetryStreamName(v1::TelemetryStream s) {
  switch (s) {
    case v1::TELEMETRY_STREAM_HOST: return "host";
    case v1::TELEMETRY_STREAM_VM: return "vm";
    case v1::TELEMETRY_STREAM_CT: return "ct";
    case v1::TELEMETRY_STREAM_TUNNEL: return "tunnel";
    case v1::TELEMETRY_STREAM_INGEST: return "ingest";
    case v1::TELEMETRY_STREAM_AGENT: return "agent";
    default: return fmt::format("stream-{}", static_cast<int>(s));
  }
}

std::string telemetryModeName(v1::TelemetryMode m) {
  switch (m) {
    case v1::TELEMETRY_MODE_FULL: return "full";
    case v1::TELEMETRY_MODE_BUDGET_15M: return "budget-15m";
    case v1::TELEMETRY_MODE_BUDGET_1H: return "budget-1h";
    case v1::TELEMETRY_MODE_SPOOL_ROLLUP: return "spool-rollup";
    default: return fmt::format("mode-{}", static_cast<int>(m));
  }
}

std::string telemetryRollupName(v1::TelemetryRollup r) {
  switch (r) {
    case v1::TELEMETRY_ROLLUP_RAW: return "raw";
    case v1::TELEMETRY_ROLLUP_15M: return "15m";
    case v1::TELEMETRY_ROLLUP_1H: return "1h";
    case v1::TELEMETRY_ROLLUP_1H_NO_SKETCH: return "1h-no-sketch";
    default: return fmt::format("rollup-{}", static_cast<int>(r));
  }
}

std::string formatTelemetryTable(std::string_view node, const v1::TelemetryBatch& b) {
  std::string out = fmt::format("{} seq={}", node.empty() ? std::string_view(b.node_id()) : node, b.seq());
  if (b.seq_through() > b.seq()) out += fmt::format("..{}", b.seq_through());
  out += fmt::format(" part={}/{} mode={} samples={}", b.part() + 1, std::max<std::uint32_t>(b.parts(), 1),
                     telemetryModeName(b.mode()), b.samples());
  if (b.budget_bytes() > 0) out += fmt::format(" budget={}/{}", b.budget_used_bytes(), b.budget_bytes());
  for (const auto& [name, v] : lossFields(b.loss()))
    if (v) out += fmt::format(" {}={}", name, v);
  out += "\n";
  std::vector<std::vector<std::string>> rows{
      {"WINDOW", "LEN", "STREAM", "SERIES", "COUNT", "SUM", "MIN", "MAX", "LAST", "P50", "P90", "P99"}};
  for (const auto& w : b.windows())
    for (const auto& s : w.series()) {
      const bool q = s.has_sketch();
      rows.push_back({formatTimestamp(w.start_ms()), formatDuration(static_cast<std::uint64_t>(w.duration_ms() / 1000)),
                      telemetryStreamName(s.stream()), seriesName(s), std::to_string(s.count()), shortNum(s.sum()),
                      shortNum(s.min()), shortNum(s.max()), shortNum(s.last()), q ? shortNum(s.p50()) : "-",
                      q ? shortNum(s.p90()) : "-", q ? shortNum(s.p99()) : "-"});
    }
  return out + formatTable(rows);
}

std::string formatTelemetryJson(std::string_view node, const v1::TelemetryBatch& b) {
  std::string o = "{\"node\":" + jsonQuote(node.empty() ? std::string_view(b.node_id()) : node);
  o += fmt::format(",\"seq\":{},\"seq_through\":{},\"part\":{},\"parts\":{},\"mode\":{},\"created_ms\":{},\"samples\":{}",
                   b.seq(), std::max(b.seq(), b.seq_through()), b.part(), std::max<std::uint32_t>(b.parts(), 1),
                   jsonQuote(telemetryModeName(b.mode())), b.created_ms(), b.samples());
  o += fmt::format(",\"budget_bytes\":{},\"budget_used_bytes\":{},\"loss\":{{", b.budget_bytes(), b.budget_used_bytes());
  bool first = true;
  for (const auto& [name, v] : lossFields(b.loss())) {
    o += fmt::format("{}\"{}\":{}", first ? "" : ",", name, v);
    first = false;
  }
  o += "},\"streams\":[";
  for (int i = 0; i < b.streams_size(); ++i) {
    const auto& s = b.streams(i);
    o += fmt::format("{}{{\"stream\":{},\"series\":{},\"samples\":{},\"bytes\":{}}}", i ? "," : "",
                     jsonQuote(telemetryStreamName(s.stream())), s.series(), s.samples(), s.bytes());
  }
  o += "],\"windows\":[";
  for (int i = 0; i < b.windows_size(); ++i) {
    const auto& w = b.windows(i);
    o += fmt::format("{}{{\"start_ms\":{},\"duration_ms\":{},\"rollup\":{},\"series\":[", i ? "," : "", w.start_ms(),
                     w.duration_ms(), jsonQuote(telemetryRollupName(w.rollup())));
    for (int j = 0; j < w.series_size(); ++j) {
      const auto& s = w.series(j);
      o += fmt::format("{}{{\"stream\":{},\"measurement\":{},\"tags\":{{", j ? "," : "",
                       jsonQuote(telemetryStreamName(s.stream())), jsonQuote(s.measurement()));
      for (int k = 0; k < s.tags_size(); ++k)
        o += (k ? "," : "") + jsonQuote(s.tags(k).key()) + ":" + jsonQuote(s.tags(k).value());
      o += "},\"field\":" + jsonQuote(s.field());
      o += fmt::format(",\"count\":{},\"sum\":{},\"min\":{},\"max\":{},\"last\":{}", s.count(), num(s.sum()),
                       num(s.min()), num(s.max()), num(s.last()));
      if (s.has_sketch())
        o += fmt::format(",\"p50\":{},\"p90\":{},\"p99\":{}", num(s.p50()), num(s.p90()), num(s.p99()));
      else
        o += ",\"p50\":null,\"p90\":null,\"p99\":null";
      o += "}";
    }
    o += "]}";
  }
  return o + "]}";
}

}  // namespace outrider::ctl
