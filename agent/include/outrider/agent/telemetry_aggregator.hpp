#pragma once
// Per-series aggregation of one window: count, sum, min, max, last and a quantile sketch, for at most
// maxSeries series (measurement + sorted tags + field, per stream). Samples for new series beyond the
// cap are counted, never silently dropped. Memory is a few flat arrays (series slots, key bytes, an
// open-addressing index, pooled sketch buckets), about 150-200 bytes per active series; a window close
// gives it all back.
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "outrider/agent/telemetry_line.hpp"
#include "outrider/agent/telemetry_sketch.hpp"
#include "outrider/v1/telemetry.pb.h"

namespace outrider::agent {

/// One value from a collector or a source (VM, container, tunnel, agent health). Names are plain text.
struct Sample {
  v1::TelemetryStream stream = v1::TELEMETRY_STREAM_HOST;
  std::string measurement;
  std::vector<std::pair<std::string, std::string>> tags;
  std::string field;
  double value = 0;
};

struct AggregatorLimits {
  std::size_t maxSeries = 10'000;
  double relativeAccuracy = 0.01;
  std::size_t maxBuckets = 2048;
  std::size_t maxKeyBytes = 1024;  // escaped measurement + tags + field; longer lines are malformed
};

/// Cumulative counts since start.
struct IngestCounters {
  std::uint64_t lines = 0;           // lines accepted (at least parsed)
  std::uint64_t malformedLines = 0;
  std::uint64_t samples = 0;         // numeric values aggregated
  std::uint64_t nanOrInf = 0;
  std::uint64_t nonNumeric = 0;      // string and boolean fields (not aggregated)
  std::uint64_t typeConflicts = 0;   // string/boolean value for a field that is numeric in this window
  std::uint64_t overCapSamples = 0;
};

class Aggregator {
 public:
  explicit Aggregator(AggregatorLimits limits = {});
  ~Aggregator();
  Aggregator(const Aggregator&) = delete;
  Aggregator& operator=(const Aggregator&) = delete;

  /// Parse and aggregate a buffer of lines; a malformed line is counted and skipped.
  void ingest(std::string_view buffer, v1::TelemetryStream stream = v1::TELEMETRY_STREAM_INGEST);
  /// Aggregate one parsed line.
  void addLine(const ParsedLine& line, v1::TelemetryStream stream = v1::TELEMETRY_STREAM_INGEST);
  /// Aggregate one sample (NaN/inf refused and counted).
  void add(const Sample& s);
  /// Count a line that did not parse (e.g. the cut tail of a truncated datagram).
  void countMalformed(std::uint64_t n = 1) { counters_.malformedLines += n; }

  /// The window's series (those with samples) into `out` (start/duration are the caller's), then reset.
  /// Returns the number of samples in it.
  std::uint64_t closeWindow(v1::TelemetryWindow& out);

  std::size_t seriesCount() const { return size_; }
  const IngestCounters& counters() const { return counters_; }
  const AggregatorLimits& limits() const { return limits_; }

 private:
  struct Slot;
  struct Key;
  void addFields(const ParsedLine& line, v1::TelemetryStream stream, bool contiguous);
  void addValue(const Key& key, std::uint64_t hash, double v, std::uint32_t& hint);
  void update(Slot& s, double v, std::int32_t bucket);
  bool isNumericSeries(const Key& key, std::uint64_t hash, std::uint32_t& hint);
  Slot* find(const Key& key, std::uint64_t hash, bool create, std::uint32_t& hint);
  void grow();
  std::uint32_t storeKey(const Key& key);
  std::string_view keyAt(const Slot& s) const;
  Slot& slot(std::uint32_t i);
  std::string_view buildHead(std::string_view measurement, const std::vector<LineTag>& tags, bool sorted);

  AggregatorLimits limits_;
  SketchMapping mapping_;
  IngestCounters counters_;
  std::vector<std::uint32_t> index_;  // 0 = empty, else slot number + 1
  std::vector<std::unique_ptr<Slot[]>> slots_;
  std::size_t size_ = 0;
  std::vector<std::unique_ptr<char[]>> keys_;
  std::uint32_t keysUsed_ = 0;  // in the last key chunk
  BucketPool pool_;
  // Scratch, reused.
  ParsedLine line_;
  std::string key_;
  std::vector<LineTag> sorted_;
};

/// Length in ms of a rollup level's windows (RAW: `rawMs`).
std::int64_t rollupDurationMs(v1::TelemetryRollup level, std::int64_t rawMs);

/// Merge windows into windows of `level` (starts aligned to its length): count, sum, min and max exact,
/// last from the latest window, sketches merged (none for 1H_NO_SKETCH), quantiles recomputed.
std::vector<v1::TelemetryWindow> rollupWindows(const std::vector<const v1::TelemetryWindow*>& in,
                                               v1::TelemetryRollup level, std::int64_t rawMs);

/// Fill p50/p90/p99 of a series from its sketch.
void setQuantiles(v1::TelemetrySeries& s, const DDSketch& sketch);

}  // namespace outrider::agent
