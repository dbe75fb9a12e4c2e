// outriderctl telemetry watch output: the table and the one-line JSON of a TelemetryBatch.
#include <doctest/doctest.h>

#include "outrider/ctl/telemetry_format.hpp"

using namespace outrider;

namespace {
v1::TelemetryBatch sample() {
  v1::TelemetryBatch b;
  b.set_node_id("edge-1");
  b.set_seq(42);
  b.set_part(0);
  b.set_parts(2);
  b.set_mode(v1::TELEMETRY_MODE_BUDGET_15M);
  b.set_created_ms(1'700'000'000'000);
  b.set_samples(7);
  b.mutable_loss()->set_malformed_lines(3);
  b.mutable_loss()->set_spool_dropped_records(1);
  auto* st = b.add_streams();
  st->set_stream(v1::TELEMETRY_STREAM_HOST);
  st->set_series(1);
  st->set_samples(7);
  st->set_bytes(120);
  auto* w = b.add_windows();
  w->set_start_ms(1'699'999'200'000);
  w->set_duration_ms(900'000);
  w->set_rollup(v1::TELEMETRY_ROLLUP_15M);
  auto* s = w->add_series();
  s->set_stream(v1::TELEMETRY_STREAM_HOST);
  s->set_measurement("cpu");
  auto* t = s->add_tags();
  t->set_key("cpu");
  t->set_value("cpu \"0\"");
  s->set_field("usage_busy");
  s->set_count(7);
  s->set_sum(70.5);
  s->set_min(1.25);
  s->set_max(20);
  s->set_last(3);
  s->mutable_sketch()->set_relative_accuracy(0.01);
  s->set_p50(9.5);
  s->set_p90(18);
  s->set_p99(19.9);
  auto* s2 = w->add_series();
  s2->set_stream(v1::TELEMETRY_STREAM_VM);
  s2->set_measurement("vm");
  s2->set_field("mem");
  s2->set_count(1);
  return b;
}
}  // namespace

TEST_CASE("table: a summary line with the non-zero loss, then one row per series") {
  auto text = ctl::formatTelemetryTable("", sample());
  CHECK(text.find("edge-1 seq=42 part=1/2 mode=budget-15m samples=7 malformed_lines=3 spool_dropped_records=1\n") == 0);
  CHECK(text.find("nan_or_inf") == std::string::npos);
  CHECK(text.find("WINDOW") != std::string::npos);
  CHECK(text.find("2023-11-14T22:00:00Z") != std::string::npos);
  CHECK(text.find("15m") != std::string::npos);
  CHECK(text.find("cpu,cpu=cpu \"0\" usage_busy") != std::string::npos);
  CHECK(text.find("70.5") != std::string::npos);
  CHECK(text.find("19.9") != std::string::npos);
  // A series without a sketch shows no quantiles.
  auto vmLine = text.substr(text.find("vm mem"));
  CHECK(vmLine.find(" - ") != std::string::npos);
  // The topic's node wins over the batch's.
  CHECK(ctl::formatTelemetryTable("other", sample()).find("other seq=42") == 0);
}

TEST_CASE("json: one line, every part of the batch, escaped strings") {
  auto j = ctl::formatTelemetryJson("", sample());
  CHECK(j.find('\n') == std::string::npos);
  CHECK(j.find(R"({"node":"edge-1","seq":42,"seq_through":42,"part":0,"parts":2,"mode":"budget-15m",)") == 0);
  CHECK(j.find(R"("loss":{"malformed_lines":3,"nan_or_inf":0,)") != std::string::npos);
  CHECK(j.find(R"("streams":[{"stream":"host","series":1,"samples":7,"bytes":120}])") != std::string::npos);
  CHECK(j.find(R"("windows":[{"start_ms":1699999200000,"duration_ms":900000,"rollup":"15m","series":[)") !=
        std::string::npos);
  CHECK(j.find(R"("tags":{"cpu":"cpu \"0\""},"field":"usage_busy","count":7,"sum":70.5,"min":1.25,"max":20,"last":3,"p50":9.5,"p90":18,"p99":19.9})") !=
        std::string::npos);
  CHECK(j.find(R"("measurement":"vm","tags":{},"field":"mem","count":1,"sum":0,"min":0,"max":0,"last":0,"p50":null,"p90":null,"p99":null})") !=
        std::string::npos);
  CHECK(j.back() == '}');
}
