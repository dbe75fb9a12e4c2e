#pragma once
// `outriderctl telemetry watch` output: a TelemetryBatch as a table, or as one line of JSON per batch
// (--json). Pure functions of the batch.
#include <string>
#include <string_view>

#include "outrider/v1/telemetry.pb.h"

namespace outrider::ctl {

/// "host", "vm", "ct", "tunnel", "ingest", "agent".
std::string telemetryStreamName(v1::TelemetryStream s);
/// "full", "budget-15m", "budget-1h", "spool-rollup".
std::string telemetryModeName(v1::TelemetryMode m);
/// "raw", "15m", "1h", "1h-no-sketch".
std::string telemetryRollupName(v1::TelemetryRollup r);

/// A summary line (node, seq, part, mode, samples, the non-zero loss counters), then a table:
/// WINDOW, LEN, STREAM, SERIES (measurement,tags field), COUNT, SUM, MIN, MAX, LAST, P50, P90, P99.
/// `node` is from the topic; the batch's node_id is used when it is empty.
std::string formatTelemetryTable(std::string_view node, const v1::TelemetryBatch& batch);
/// One line of JSON (no newline): node, seq, seq_through, part, parts, mode, created_ms, samples,
/// budget_bytes, budget_used_bytes, loss{...}, streams[...], windows[{start_ms, duration_ms, rollup,
/// series[{stream, measurement, tags{}, field, count, sum, min, max, last, p50, p90, p99}]}].
std::string formatTelemetryJson(std::string_view node, const v1::TelemetryBatch& batch);

}  // namespace outrider::ctl
