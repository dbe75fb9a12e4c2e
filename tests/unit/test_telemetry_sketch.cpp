// The quantile sketch against exact quantiles (relative error within the configured 1 %), merging, the
// bucket bound, negatives and zero, the wire form, and the pooled per-series form.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <random>
#include <vector>

#include "outrider/agent/telemetry_sketch.hpp"

using namespace outrider::agent;

namespace {

double exactQuantile(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  return v[static_cast<std::size_t>(q * static_cast<double>(v.size() - 1))];
}

void checkAccuracy(const DDSketch& s, const std::vector<double>& values, double accuracy) {
  for (double q : {0.0, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 1.0}) {
    const double exact = exactQuantile(values, q);
    const double got = s.quantile(q);
    INFO("q=", q, " exact=", exact, " got=", got);
    if (exact == 0)
      CHECK(got == 0);
    else
      CHECK(std::fabs(got - exact) <= accuracy * std::fabs(exact) * (1 + 1e-9));
  }
}

std::vector<double> draw(const std::function<double(std::mt19937_64&)>& gen, std::size_t n, unsigned seed) {
  std::mt19937_64 rng(seed);
  std::vector<double> v(n);
  for (auto& x : v) x = gen(rng);
  return v;
}

}  // namespace

TEST_CASE("relative error at most 1 % against exact quantiles, several distributions") {
  struct Dist {
    const char* name;
    std::function<double(std::mt19937_64&)> gen;
  };
  std::vector<Dist> dists = {
      {"uniform", [](auto& r) { return std::uniform_real_distribution<double>(0.5, 1000)(r); }},
      {"normal (with negatives)", [](auto& r) { return std::normal_distribution<double>(10, 50)(r); }},
      {"exponential", [](auto& r) { return std::exponential_distribution<double>(0.01)(r); }},
      {"lognormal (heavy tail)", [](auto& r) { return std::lognormal_distribution<double>(3, 2.5)(r); }},
      {"pareto alpha 1.1 (heavy tail)",
       [](auto& r) { return 1.0 / std::pow(std::uniform_real_distribution<double>(1e-12, 1)(r), 1 / 1.1); }},
      {"latency-like integers with zeros", [](auto& r) { return std::floor(std::exponential_distribution<double>(0.3)(r)); }},
  };
  for (const auto& d : dists) {
    SUBCASE(d.name) {
      auto values = draw(d.gen, 100'000, 42);
      DDSketch s(0.01);
      for (double v : values) s.add(v);
      CHECK(s.count() == values.size());
      checkAccuracy(s, values, 0.01);
    }
  }
}

TEST_CASE("merging two sketches equals one sketch of all values") {
  auto a = draw([](auto& r) { return std::lognormal_distribution<double>(0, 2)(r); }, 50'000, 1);
  auto b = draw([](auto& r) { return -std::exponential_distribution<double>(1)(r); }, 30'000, 2);
  DDSketch sa, sb, all;
  for (double v : a) sa.add(v), all.add(v);
  for (double v : b) sb.add(v), all.add(v);
  REQUIRE(sa.merge(sb));
  CHECK(sa.count() == all.count());
  for (double q : {0.0, 0.1, 0.37, 0.5, 0.9, 0.99, 1.0}) CHECK(sa.quantile(q) == all.quantile(q));
  std::vector<double> both = a;
  both.insert(both.end(), b.begin(), b.end());
  checkAccuracy(sa, both, 0.01);
  // Sketches of another accuracy do not merge.
  DDSketch other(0.02);
  other.add(1);
  CHECK_FALSE(sa.merge(other));
  CHECK(sa.count() == all.count());
}

TEST_CASE("the wire form round-trips and merges") {
  auto v = draw([](auto& r) { return std::normal_distribution<double>(0, 100)(r); }, 20'000, 7);
  DDSketch s;
  for (double x : v) s.add(x);
  s.add(0, 5);
  outrider::v1::TelemetrySketch p;
  s.toProto(p);
  CHECK(p.zero_count() >= 5);
  DDSketch back;
  REQUIRE(back.fromProto(p));
  CHECK(back.count() == s.count());
  for (double q : {0.01, 0.5, 0.99}) CHECK(back.quantile(q) == s.quantile(q));
  // A hostile proto is refused.
  outrider::v1::TelemetrySketch bad = p;
  bad.set_relative_accuracy(0);
  CHECK_FALSE(back.fromProto(bad));
  bad = p;
  for (int i = 0; i < 5000; ++i) bad.add_pos_counts(1);
  CHECK_FALSE(back.fromProto(bad));
}

TEST_CASE("the bucket bound collapses the lowest buckets and keeps the upper quantiles accurate") {
  DDSketch s(0.01, 128);
  std::vector<double> v;
  for (int i = 0; i < 10'000; ++i) v.push_back(std::pow(10.0, -6 + 12.0 * i / 10'000));  // 12 decades
  for (double x : v) s.add(x);
  outrider::v1::TelemetrySketch p;
  s.toProto(p);
  CHECK(p.pos_counts_size() <= 128);
  CHECK(s.count() == v.size());
  // 128 buckets of 2 % cover about 2.5 decades: the top quantiles stay within 1 %.
  for (double q : {0.99, 0.999, 1.0}) {
    double exact = exactQuantile(v, q);
    CHECK(std::fabs(s.quantile(q) - exact) <= 0.01 * exact * (1 + 1e-9));
  }
}

TEST_CASE("the pooled per-series sketch gives the same buckets as the general one") {
  BucketPool pool;
  SketchMapping m(0.01);
  std::vector<CompactSketch> series(50);
  std::vector<DDSketch> ref(50);
  std::mt19937_64 rng(3);
  for (int i = 0; i < 100'000; ++i) {
    std::size_t k = rng() % series.size();
    double x = std::lognormal_distribution<double>(static_cast<double>(k % 5), 1.5)(rng) - (k % 7 == 0 ? 50 : 0);
    if (k % 11 == 0) x = 0;
    series[k].add(x, m, pool, 2048);
    ref[k].add(x);
  }
  for (std::size_t k = 0; k < series.size(); ++k) {
    DDSketch s = series[k].toSketch(m, pool, 2048);
    CHECK(s.count() == ref[k].count());
    for (double q : {0.0, 0.5, 0.9, 0.99, 1.0}) CHECK(s.quantile(q) == ref[k].quantile(q));
  }
  // Collapsing works the same in the pooled form.
  CompactSketch c;
  DDSketch r(0.01, 64);
  for (int i = 0; i < 5000; ++i) {
    double x = std::pow(10.0, 8.0 * (i % 997) / 997.0);
    c.add(x, m, pool, 64);
    r.add(x);
  }
  DDSketch cs = c.toSketch(m, pool, 64);
  for (double q : {0.9, 0.99, 1.0}) CHECK(cs.quantile(q) == r.quantile(q));
}
