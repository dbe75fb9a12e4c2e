// Aggregation per series: exact count/sum/min/max/last, series identity (sorted tags, streams), the
// series cap and its counters, bad input (garbage, 64 KiB lines, 100,000 series, NaN/inf, type
// conflicts), rollups that keep count, sum, min and max exact, and the series lookup against a plain
// model of it.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <random>
#include <string>
#include <vector>

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

// ---- The series lookup against a plain model ----
// The aggregator finds a series by parts (the line's own bytes when its tags are in order), tries the
// slot after the previous field's first, and compares only the field when that slot was created for the
// same line. The model below does what the aggregator is specified to do the plain way, one std::map
// keyed by the whole series key; on random traffic both must give the same windows and counters.

namespace {

class Model {
 public:
  explicit Model(AggregatorLimits limits)
      : limits_(limits), mapping_(limits.relativeAccuracy),
        maxBuckets_(std::clamp<std::size_t>(limits.maxBuckets, 16, std::size_t{1} << BucketPool::kMaxLog2)) {}

  void ingest(std::string_view buffer, outrider::v1::TelemetryStream stream) {
    forEachLine(buffer, [&](std::string_view line) {
      ParsedLine p;
      if (parseLine(line, p) != nullptr) {
        ++counters.malformedLines;
        return;
      }
      addLine(p, stream);
    });
  }

  void addLine(const ParsedLine& p, outrider::v1::TelemetryStream stream) {
    auto tags = p.tags;
    auto less = [](const LineTag& a, const LineTag& b) { return a.key < b.key; };
    if (!std::is_sorted(tags.begin(), tags.end(), less)) std::sort(tags.begin(), tags.end(), less);
    std::string head(p.measurement);
    std::vector<std::pair<std::string, std::string>> plainTags;
    for (const auto& t : tags) {
      head += "," + std::string(t.key) + "=" + std::string(t.value);
      plainTags.emplace_back(unescapeName(t.key), unescapeName(t.value));
    }
    std::size_t longest = 0;
    for (const auto& f : p.fields) longest = std::max(longest, f.key.size());
    if (head.size() + 2 + longest > limits_.maxKeyBytes) {
      ++counters.malformedLines;
      return;
    }
    ++counters.lines;
    for (const auto& f : p.fields) {
      const std::string key = std::to_string(stream) + head + " " + std::string(f.key);
      if (f.type == FieldType::String || f.type == FieldType::Boolean) {
        ++(index_.count(key) ? counters.typeConflicts : counters.nonNumeric);
        continue;
      }
      if (!f.numericOk) {
        ++counters.nanOrInf;
        continue;
      }
      addValue(key, stream, unescapeName(p.measurement), plainTags, unescapeName(f.key), f.value);
    }
  }

  void add(const Sample& s) {
    if (!std::isfinite(s.value)) {
      ++counters.nanOrInf;
      return;
    }
    std::string head;
    appendEscaped(head, s.measurement, true);
    auto tags = s.tags;
    std::sort(tags.begin(), tags.end());
    for (const auto& [k, v] : tags) {
      head += ",";
      appendEscaped(head, k, false);
      head += "=";
      appendEscaped(head, v, false);
    }
    std::string field;
    appendEscaped(field, s.field, false);
    if (s.measurement.empty() || s.field.empty() || head.size() + field.size() + 2 > limits_.maxKeyBytes) {
      ++counters.malformedLines;
      return;
    }
    addValue(std::to_string(s.stream) + head + " " + field, s.stream, s.measurement, tags, s.field, s.value);
  }

  /// Compare with the aggregator's window (and counters), then start a new window.
  void check(Aggregator& agg) {
    TelemetryWindow w;
    const std::uint64_t samples = agg.closeWindow(w);
    std::uint64_t want = 0;
    REQUIRE(static_cast<std::size_t>(w.series_size()) == series_.size());
    for (std::size_t i = 0; i < series_.size(); ++i) {
      const Series& m = series_[i];
      const TelemetrySeries& g = w.series(static_cast<int>(i));
      INFO("series ", i, ": ", m.key);
      CHECK(g.stream() == m.stream);
      CHECK(g.measurement() == m.measurement);
      REQUIRE(static_cast<std::size_t>(g.tags_size()) == m.tags.size());
      for (std::size_t t = 0; t < m.tags.size(); ++t) {
        CHECK(g.tags(static_cast<int>(t)).key() == m.tags[t].first);
        CHECK(g.tags(static_cast<int>(t)).value() == m.tags[t].second);
      }
      CHECK(g.field() == m.field);
      CHECK(g.count() == m.count);
      CHECK(g.sum() == m.sum);
      CHECK(g.min() == m.min);
      CHECK(g.max() == m.max);
      CHECK(g.last() == m.last);
      // The same sketch (the pooled form, as the aggregator keeps it), hence the same quantiles.
      const DDSketch sk = m.sketch.toSketch(mapping_, pool_, maxBuckets_);
      outrider::v1::TelemetrySketch proto;
      sk.toProto(proto);
      CHECK(g.sketch().SerializeAsString() == proto.SerializeAsString());
      TelemetrySeries q;
      q.set_min(m.min);
      q.set_max(m.max);
      setQuantiles(q, sk);
      CHECK(g.p50() == q.p50());
      CHECK(g.p90() == q.p90());
      CHECK(g.p99() == q.p99());
      want += m.count;
    }
    CHECK(samples == want);
    const IngestCounters& c = agg.counters();
    CHECK(c.lines == counters.lines);
    CHECK(c.malformedLines == counters.malformedLines);
    CHECK(c.samples == counters.samples);
    CHECK(c.nanOrInf == counters.nanOrInf);
    CHECK(c.nonNumeric == counters.nonNumeric);
    CHECK(c.typeConflicts == counters.typeConflicts);
    CHECK(c.overCapSamples == counters.overCapSamples);
    series_.clear();
    index_.clear();
    pool_.reset();
  }

  IngestCounters counters;

 private:
  struct Series {
    std::string key;
    outrider::v1::TelemetryStream stream;
    std::string measurement;
    std::vector<std::pair<std::string, std::string>> tags;
    std::string field;
    std::uint64_t count = 0;
    double sum = 0, min = INFINITY, max = -INFINITY, last = 0;
    CompactSketch sketch;
  };

  void addValue(const std::string& key, outrider::v1::TelemetryStream stream, std::string measurement,
                std::vector<std::pair<std::string, std::string>> tags, std::string field, double v) {
    auto it = index_.find(key);
    if (it == index_.end()) {
      if (series_.size() >= limits_.maxSeries) {
        ++counters.overCapSamples;
        return;
      }
      it = index_.emplace(key, series_.size()).first;
      Series& n = series_.emplace_back();
      n.key = key;
      n.stream = stream;
      n.measurement = std::move(measurement);
      n.tags = std::move(tags);
      n.field = std::move(field);
    }
    Series& s = series_[it->second];
    ++s.count;
    s.sum += v;
    s.min = std::min(s.min, v);
    s.max = std::max(s.max, v);
    s.last = v;
    s.sketch.add(v, mapping_, pool_, maxBuckets_);
    ++counters.samples;
  }

  AggregatorLimits limits_;
  SketchMapping mapping_;
  std::size_t maxBuckets_;
  BucketPool pool_;
  std::vector<Series> series_;
  std::map<std::string, std::size_t> index_;
};

/// A random line: a few measurements and tag sets (so series repeat), tags in any order, fields in any
/// subset and order (so a line's series were created apart, or by another line), every value type, now
/// and then a duplicate field, an escape or a bad line.
std::string randomLine(std::mt19937_64& rng) {
  auto pick = [&](const auto& v) { return v[rng() % std::size(v)]; };
  const char* measurements[] = {"cpu", "mem", "http_requests", "my\\ m", "disk"};
  const char* tagKeys[] = {"host", "cpu", "zone", "a\\,b", "path"};
  const char* tagValues[] = {"edge-01", "edge-02", "cpu0", "cpu1", "eu", "/api/v1/items", "x\\ y"};
  const char* fields[] = {"usage_user", "usage_system", "a", "b", "c", "bytes", "f\\=x"};
  const char* odd[] = {"nan", "inf", "-inf", "1e500", "\"text\"", "true", "F", "1x", "\"a b,c\""};
  std::string line = pick(measurements);
  std::vector<std::string> keys(std::begin(tagKeys), std::end(tagKeys));
  std::shuffle(keys.begin(), keys.end(), rng);
  for (unsigned t = rng() % 4; t > 0; --t) line += "," + keys[t] + "=" + pick(tagValues);
  line += ' ';
  std::vector<std::string> names(std::begin(fields), std::end(fields));
  std::shuffle(names.begin(), names.end(), rng);
  const unsigned n = 1 + rng() % 4;
  for (unsigned f = 0; f < n; ++f) {
    if (f) line += ',';
    line += (rng() % 20 == 0 && f ? names[f - 1] : names[f]) + "=";
    switch (rng() % 8) {
      case 0: line += std::to_string(static_cast<long long>(rng() % 20000) - 10000) + "i"; break;
      case 1: line += std::to_string(rng() % 1'000'000) + "u"; break;
      case 2: line += rng() % 4 ? std::to_string(std::lognormal_distribution<double>(2, 2)(rng)) : "0"; break;
      case 3: line += pick(odd); break;
      default: {
        char buf[40];
        std::snprintf(buf, sizeof buf, "%.3f", std::normal_distribution<double>(50, 30)(rng));
        line += buf;
      }
    }
  }
  if (rng() % 2) line += " 1700000000000000000";
  return line;
}

void checkAgainstModel(AggregatorLimits limits, unsigned seed) {
  std::mt19937_64 rng(seed);
  Aggregator agg(limits);
  Model model(limits);
  for (int window = 0; window < 4; ++window) {
    for (int op = 0; op < 1500; ++op) {
      switch (rng() % 6) {
        case 0: {  // a line parsed elsewhere, for another stream
          const std::string line = randomLine(rng);
          ParsedLine p;
          if (parseLine(line, p) == nullptr) {
            agg.addLine(p, outrider::v1::TELEMETRY_STREAM_VM);
            model.addLine(p, outrider::v1::TELEMETRY_STREAM_VM);
          }
          break;
        }
        case 1: {  // a sample from a source
          Sample s;
          s.stream = rng() % 2 ? outrider::v1::TELEMETRY_STREAM_HOST : outrider::v1::TELEMETRY_STREAM_INGEST;
          s.measurement = rng() % 2 ? "cpu" : "my m";
          if (rng() % 2) s.tags = {{"host", "edge-01"}, {rng() % 2 ? "cpu" : "zone", "cpu0"}};
          s.field = rng() % 2 ? "usage_user" : "a";
          s.value = rng() % 50 ? static_cast<double>(rng() % 1000) / 8 : NAN;
          agg.add(s);
          model.add(s);
          break;
        }
        default: {  // a datagram of lines
          std::string buf;
          for (unsigned l = 1 + rng() % 8; l > 0; --l) buf += randomLine(rng) + "\n";
          agg.ingest(buf);
          model.ingest(buf, outrider::v1::TELEMETRY_STREAM_INGEST);
        }
      }
    }
    model.check(agg);
  }
}

}  // namespace

TEST_CASE("series lookup by parts agrees with a plain model: windows, order of series, counters") {
  SUBCASE("default limits") { checkAgainstModel(AggregatorLimits{}, 21); }
  SUBCASE("a series cap that is reached") { checkAgainstModel(AggregatorLimits{40}, 22); }
  SUBCASE("a key limit that cuts some lines, few buckets") { checkAgainstModel(AggregatorLimits{10'000, 0.02, 32, 40}, 23); }
}
