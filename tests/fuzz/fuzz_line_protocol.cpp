// libFuzzer target: the line-protocol parser and the aggregator on arbitrary datagrams. Every input is
// also closed into a window and encoded, so the key round-trip (escaped names back to plain text) and
// the sketch export run on whatever the parser accepted.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "outrider/agent/telemetry_aggregator.hpp"
#include "outrider/agent/telemetry_line.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  outrider::agent::ParsedLine line;
  outrider::agent::forEachLine(in, [&](std::string_view l) {
    if (outrider::agent::parseLine(l, line) == nullptr) {
      // What the parser accepted is well-formed: names are non-empty views into the line.
      if (line.measurement.empty() || line.fields.empty()) std::abort();
      for (const auto& f : line.fields)
        if (f.numericOk && f.type != outrider::agent::FieldType::String && !std::isfinite(f.value)) std::abort();
    }
  });
  outrider::agent::Aggregator agg(outrider::agent::AggregatorLimits{64});
  agg.ingest(in);
  outrider::v1::TelemetryWindow w;
  const auto samples = agg.closeWindow(w);
  std::uint64_t counted = 0;
  for (const auto& s : w.series()) {
    counted += s.count();
    if (!(s.min() <= s.max())) std::abort();
  }
  if (counted != samples || samples != agg.counters().samples) std::abort();
  (void)w.SerializeAsString();
  return 0;
}
