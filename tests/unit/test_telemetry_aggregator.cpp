// Aggregation per series: exact count/sum/min/max/last, series identity (sorted tags, streams), the
// series cap and its counters, bad input (garbage, 64 KiB lines, 100,000 series, NaN/inf, type
// conflicts), and rollups that keep count, sum, min and max exact.
#include <doctest/doctest.h>

#include <cmath>
#include <map>
#include <random>
#include <string>

#include "outrider/agent/telemetry_aggregator.hpp"

using namespace outrider::agent;
using outrider::v1::TelemetrySeries;
using outrider::v1::TelemetryWindow;

namespace {

std::map<std::string, TelemetrySeries> byName(const TelemetryWindow& w) {
  std::map<std::string, TelemetrySeries> m;
  for (const auto& s : w.series()) {
    std::string k = std::to_string(s.stream()) + ":" + s.measurement();
    for (const auto& t : s.tags()) k += "," + t.key() + "=" + t.value();
    k += " " + s.field();
    m[k] = s;
  }
  return m;
}

}  // namespace

TEST_CASE("count, sum, min, max and last per series; tag order does not make a new series") {
  Aggregator a;
  a.ingest("cpu,host=a,core=1 user=10,sys=1i\ncpu,core=1,host=a user=30,sys=3i\ncpu,host=a,core=1 user=20 5\n");
  TelemetryWindow w;
  CHECK(a.closeWindow(w) == 5);
  auto m = byName(w);
  REQUIRE(m.size() == 2);
  const auto& u = m.at("4:cpu,core=1,host=a user");
  CHECK(u.count() == 3);
  CHECK(u.sum() == 60);
  CHECK(u.min() == 10);
  CHECK(u.max() == 30);
  CHECK(u.last() == 20);
  CHECK(u.p50() == doctest::Approx(20).epsilon(0.01));
  REQUIRE(u.tags_size() == 2);
  CHECK(u.tags(0).key() == "core");  // sorted
  const auto& s = m.at("4:cpu,core=1,host=a sys");
  CHECK(s.count() == 2);
  CHECK(s.sum() == 4);
  // The window is reset.
  CHECK(a.seriesCount() == 0);
  TelemetryWindow empty;
  CHECK(a.closeWindow(empty) == 0);
  CHECK(empty.series_size() == 0);
}

TEST_CASE("escaped names come out plain; samples from sources are their own series per stream") {
  Aggregator a;
  a.ingest(R"(my\ m,t\,k=v\=1 f\ x=2)");
  Sample s;
  s.stream = outrider::v1::TELEMETRY_STREAM_VM;
  s.measurement = "my m";
  s.tags = {{"t,k", "v=1"}};
  s.field = "f x";
  s.value = 4;
  a.add(s);
  TelemetryWindow w;
  a.closeWindow(w);
  auto m = byName(w);
  REQUIRE(m.size() == 2);
  CHECK(m.at("4:my m,t,k=v=1 f x").sum() == 2);
  CHECK(m.at("1:my m,t,k=v=1 f x").sum() == 4);
}

TEST_CASE("bad lines are counted and skipped; the rest of the buffer still counts") {
  Aggregator a;
  a.ingest("good v=1\nbad line here\n\x01\x02\xff garbage\ngood v=2\nm,t= v=1\ngood v=3");
  CHECK(a.counters().malformedLines == 3);
  CHECK(a.counters().samples == 3);
  TelemetryWindow w;
  a.closeWindow(w);
  REQUIRE(w.series_size() == 1);
  CHECK(w.series(0).count() == 3);
  CHECK(w.series(0).sum() == 6);
}

TEST_CASE("random garbage never crashes and never creates bogus numbers") {
  Aggregator a(AggregatorLimits{1000});
  std::mt19937_64 rng(9);
  std::string buf;
  for (int round = 0; round < 2000; ++round) {
    buf.assign(rng() % 600, '\0');
    for (auto& c : buf) c = static_cast<char>(rng() % 4 ? rng() % 128 : rng() % 256);
    a.ingest(buf);
  }
  TelemetryWindow w;
  a.closeWindow(w);
  for (const auto& s : w.series()) {
    CHECK(std::isfinite(s.sum()));
    CHECK(s.min() <= s.max());
  }
}

TEST_CASE("NaN and infinities are refused and counted; other fields of the line still count") {
  Aggregator a;
  a.ingest("m a=nan,b=1\nm a=inf,b=2\nm a=-inf\nm a=1e500\nm a=5");
  Sample s;
  s.measurement = "m";
  s.field = "c";
  s.value = std::nan("");
  a.add(s);
  s.value = INFINITY;
  a.add(s);
  CHECK(a.counters().nanOrInf == 6);
  TelemetryWindow w;
  a.closeWindow(w);
  auto m = byName(w);
  CHECK(m.at("4:m a").count() == 1);
  CHECK(m.at("4:m a").sum() == 5);
  CHECK(m.at("4:m b").count() == 2);
}

TEST_CASE("strings and booleans are not aggregated; for a numeric field they are a type conflict") {
  Aggregator a;
  a.ingest("m v=1,s=\"x\",b=true\nm v=\"oops\"\nm v=t\nm v=2i\nm v=3u\nm s2=\"x\"\nm s2=4");
  CHECK(a.counters().typeConflicts == 2);
  CHECK(a.counters().nonNumeric == 3);  // s, b, first s2
  TelemetryWindow w;
  a.closeWindow(w);
  auto m = byName(w);
  CHECK(m.at("4:m v").count() == 3);  // float, integer and unsigned are all numbers
  CHECK(m.at("4:m v").sum() == 6);
  CHECK(m.at("4:m s2").count() == 1);
  CHECK(m.count("4:m s") == 0);
}

TEST_CASE("the series cap: samples for new series beyond it are counted, existing series keep counting") {
  Aggregator a(AggregatorLimits{3});
  a.ingest("m,i=1 v=1\nm,i=2 v=1\nm,i=3 v=1\nm,i=4 v=1\nm,i=5 v=1\nm,i=1 v=1\nm,i=4 v=1");
  CHECK(a.seriesCount() == 3);
  CHECK(a.counters().overCapSamples == 3);
  CHECK(a.counters().samples == 4);
  TelemetryWindow w;
  a.closeWindow(w);
  CHECK(w.series_size() == 3);
  // A new window has room again.
  a.ingest("m,i=9 v=1");
  CHECK(a.seriesCount() == 1);
}

TEST_CASE("100,000 distinct series with the default cap: bounded, counted") {
  Aggregator a;
  std::string buf;
  for (int i = 0; i < 100'000; ++i) {
    buf += "svc,id=" + std::to_string(i) + " v=" + std::to_string(i) + "\n";
    if (buf.size() > 60'000) {
      a.ingest(buf);
      buf.clear();
    }
  }
  a.ingest(buf);
  CHECK(a.seriesCount() == 10'000);
  CHECK(a.counters().samples == 10'000);
  CHECK(a.counters().overCapSamples == 90'000);
  TelemetryWindow w;
  a.closeWindow(w);
  CHECK(w.series_size() == 10'000);
}

TEST_CASE("64 KiB lines: a long string field is fine, an over-long series key is malformed") {
  Aggregator a;
  std::string longString = "m s=\"" + std::string(65'000, 'x') + "\",v=1";
  a.ingest(longString);
  CHECK(a.counters().samples == 1);
  std::string longTag = "m,t=" + std::string(60'000, 'y') + " v=1";
  a.ingest(longTag);
  CHECK(a.counters().malformedLines == 1);
  std::string tooLong = "m v=1" + std::string(kMaxLineBytes, ' ');
  a.ingest(tooLong);
  CHECK(a.counters().malformedLines == 2);
  CHECK(a.counters().samples == 1);
}

TEST_CASE("rollups keep count, sum, min and max exact and merge sketches") {
  std::mt19937_64 rng(5);
  std::vector<TelemetryWindow> windows;
  std::map<std::string, std::vector<double>> all;
  Aggregator a;
  const std::int64_t t0 = 1'700'000'000'000 / 3'600'000 * 3'600'000;
  for (int wi = 0; wi < 30; ++wi) {
    for (int i = 0; i < 500; ++i) {
      int k = static_cast<int>(rng() % 4);
      double v = std::lognormal_distribution<double>(k, 1)(rng) * (k == 3 ? -1 : 1);
      if (wi % 7 == 3 && k == 0) continue;  // a series absent from some windows
      a.ingest("m,k=" + std::to_string(k) + " v=" + std::to_string(v));
      // What went in, as the parser read it back.
      all[std::to_string(k)].push_back(std::stod(std::to_string(v)));
    }
    TelemetryWindow w;
    a.closeWindow(w);
    w.set_start_ms(t0 + wi * 60'000);
    w.set_duration_ms(60'000);
    windows.push_back(std::move(w));
  }
  std::vector<const TelemetryWindow*> in;
  for (const auto& w : windows) in.push_back(&w);
  auto q = rollupWindows(in, outrider::v1::TELEMETRY_ROLLUP_15M, 60'000);
  REQUIRE(q.size() == 2);  // 30 minutes from an hour boundary: two quarters
  CHECK(q[0].start_ms() == t0);
  CHECK(q[1].start_ms() == t0 + 900'000);
  CHECK(q[0].duration_ms() == 900'000);
  std::vector<const TelemetryWindow*> qin{&q[0], &q[1]};
  auto h = rollupWindows(qin, outrider::v1::TELEMETRY_ROLLUP_1H, 60'000);
  REQUIRE(h.size() == 1);
  for (const auto& s : h[0].series()) {
    const auto& vals = all.at(s.tags(0).value());
    double sum = 0, mn = INFINITY, mx = -INFINITY;
    for (double v : vals) sum += v, mn = std::min(mn, v), mx = std::max(mx, v);
    CHECK(s.count() == vals.size());
    CHECK(s.sum() == doctest::Approx(sum).epsilon(1e-12));
    CHECK(s.min() == mn);
    CHECK(s.max() == mx);
    REQUIRE(s.has_sketch());
    DDSketch sk;
    REQUIRE(sk.fromProto(s.sketch()));
    CHECK(sk.count() == vals.size());
    std::vector<double> sorted = vals;
    std::sort(sorted.begin(), sorted.end());
    double exact = sorted[static_cast<std::size_t>(0.9 * static_cast<double>(sorted.size() - 1))];
    CHECK(std::fabs(s.p90() - exact) <= 0.0101 * std::fabs(exact));
  }
  auto ns = rollupWindows(qin, outrider::v1::TELEMETRY_ROLLUP_1H_NO_SKETCH, 60'000);
  REQUIRE(ns.size() == 1);
  for (const auto& s : ns[0].series()) {
    CHECK_FALSE(s.has_sketch());
    CHECK(s.count() == all.at(s.tags(0).value()).size());
  }
}
