// telemetry_ingest: the telemetry engine's hot paths, each next to a floor measured in the same run.
//  - lines/s parsed and aggregated on one core (a realistic mix of measurements, tags and fields, a few
//    thousand series, in datagram-sized chunks), next to splitting the same chunks into lines with
//    memchr;
//  - spool write MB/s (records with header and CRC-32C, fdatasync every 16 records, segment files)
//    next to raw sequential writes of the same bytes with the same fdatasync policy;
//  - bytes of heap per active series with 100,000 series in one window (mallinfo2 deltas).
//
// Usage: bench_telemetry_ingest [LINES]   (default 2,000,000)
#include <fcntl.h>
#include <malloc.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "outrider/agent/telemetry_aggregator.hpp"
#include "outrider/agent/telemetry_spool.hpp"
#include "support/process.hpp"

using namespace outrider;
using namespace outrider::agent;
using Clock = std::chrono::steady_clock;

namespace {

double secondsSince(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

void result(const char* figure, double value, const char* unit, double baseline, const char* goal, bool pass) {
  if (baseline > 0)
    std::printf("RESULT telemetry_ingest.%s value=%.1f unit=%s baseline=%.1f ratio=%.3f goal=%s %s\n", figure, value,
                unit, baseline, value / baseline, goal, pass ? "PASS" : "FAIL");
  else
    std::printf("RESULT telemetry_ingest.%s value=%.1f unit=%s baseline=- ratio=- goal=%s %s\n", figure, value, unit,
                goal, pass ? "PASS" : "FAIL");
}

/// About 2,000 series: host metrics of 20 hosts (per CPU, per interface) and per-endpoint HTTP stats.
/// Values move the way such metrics do within a window: gauges jitter around a level, counters climb,
/// latencies and sizes spread over decades.
std::vector<std::string> makeChunks(std::size_t lines, std::size_t& totalLines) {
  std::mt19937_64 rng(1);
  std::vector<std::string> chunks;
  std::string cur;
  std::int64_t ts = 1'700'000'000'000'000'000;
  char buf[512];
  totalLines = 0;
  std::vector<double> memBase(20);
  for (auto& m : memBase) m = 2e9 + static_cast<double>(rng() % 4'000'000'000ull);
  std::vector<unsigned long long> rx(80), tx(80);
  auto jitter = [&](double base, double frac) {
    return base * (1 + frac * (static_cast<double>(rng() % 2001) / 1000.0 - 1));
  };
  for (std::size_t i = 0; i < lines; ++i) {
    const int host = static_cast<int>(rng() % 20);
    int n = 0;
    switch (rng() % 5) {
      case 0: {
        const double busy = 5 + static_cast<double>(rng() % 6000) / 100.0;
        n = std::snprintf(buf, sizeof buf,
                          "cpu,host=edge-%02d,cpu=cpu%d usage_user=%.2f,usage_system=%.2f,usage_idle=%.2f %lld\n", host,
                          static_cast<int>(rng() % 8), busy * 0.7, busy * 0.3, 100 - busy, static_cast<long long>(ts));
        break;
      }
      case 1: {
        const double used = jitter(memBase[host], 0.02);
        n = std::snprintf(buf, sizeof buf, "mem,host=edge-%02d used=%.0fi,free=%.0fi,cached=%.0fi %lld\n", host, used,
                          8e9 - used, jitter(1e9, 0.05), static_cast<long long>(ts));
        break;
      }
      case 2: {
        const int ifc = static_cast<int>(rng() % 4);
        auto& r = rx[host * 4 + ifc];
        auto& t = tx[host * 4 + ifc];
        r += rng() % 2'000'000;
        t += rng() % 500'000;
        n = std::snprintf(buf, sizeof buf, "net,host=edge-%02d,interface=eth%d rx_bytes=%llui,tx_bytes=%llui %lld\n",
                          host, ifc, 1'000'000'000'000ull + r, 500'000'000'000ull + t, static_cast<long long>(ts));
        break;
      }
      default: {
        static const char* methods[] = {"GET", "POST", "PUT"};
        static const char* paths[] = {"/api/v1/items", "/api/v1/users", "/health", "/metrics", "/login"};
        n = std::snprintf(buf, sizeof buf,
                          "http_requests,host=edge-%02d,method=%s,path=%s,status=%d latency_ms=%.3f,bytes=%di %lld\n",
                          host, methods[rng() % 3], paths[rng() % 5], rng() % 10 ? 200 : 500,
                          0.2 + std::exponential_distribution<double>(0.05)(rng), static_cast<int>(200 + rng() % 20000),
                          static_cast<long long>(ts));
      }
    }
    ts += 1000;
    if (cur.size() + static_cast<std::size_t>(n) > 8192) {
      chunks.push_back(std::move(cur));
      cur.clear();
    }
    cur.append(buf, static_cast<std::size_t>(n));
    ++totalLines;
  }
  if (!cur.empty()) chunks.push_back(std::move(cur));
  return chunks;
}

void ingestBench(std::size_t lines) {
  std::size_t total = 0;
  auto chunks = makeChunks(lines, total);
  // Floor: split every chunk into lines with memchr.
  double bestSplit = 1e30;
  std::size_t check = 0;
  for (int rep = 0; rep < 3; ++rep) {
    auto t0 = Clock::now();
    for (const auto& c : chunks) {
      const char* p = c.data();
      const char* end = p + c.size();
      while (p < end) {
        const void* nl = std::memchr(p, '\n', static_cast<std::size_t>(end - p));
        const char* e = nl ? static_cast<const char*>(nl) : end;
        check += static_cast<std::size_t>(e - p) > 0;
        p = e + 1;
      }
    }
    bestSplit = std::min(bestSplit, secondsSince(t0));
  }
  // Parse and aggregate, one window per pass.
  Aggregator agg;
  double bestAgg = 1e30;
  std::size_t series = 0;
  for (int rep = 0; rep < 3; ++rep) {
    auto t0 = Clock::now();
    for (const auto& c : chunks) agg.ingest(c);
    series = agg.seriesCount();
    v1::TelemetryWindow w;
    agg.closeWindow(w);
    bestAgg = std::min(bestAgg, secondsSince(t0));
  }
  const double splitRate = static_cast<double>(total) / bestSplit;
  const double aggRate = static_cast<double>(total) / bestAgg;
  std::printf("ingest: %zu lines in %zu chunks, %zu series, malformed %llu (check %zu)\n", total, chunks.size(),
              series, static_cast<unsigned long long>(agg.counters().malformedLines), check);
  std::printf("ingest: parse+aggregate %.0f lines/s; memchr split %.0f lines/s\n", aggRate, splitRate);
  result("lines_per_s", aggRate, "lines/s", splitRate, ">=2000000_and_ratio>=0.5",
         aggRate >= 2'000'000 && aggRate >= 0.5 * splitRate);
}

void spoolBench() {
  test::TempDir dir("bench-spool");
  // Records of a realistic window: ~500 series with sketches.
  Aggregator agg;
  std::mt19937_64 rng(2);
  std::string lines;
  for (int i = 0; i < 20'000; ++i)
    lines += "http,host=edge-" + std::to_string(i % 50) + ",path=/p" + std::to_string(i % 10) +
             " latency=" + std::to_string(std::exponential_distribution<double>(0.05)(rng)) + "\n";
  agg.ingest(lines);
  v1::TelemetryBatch batch;
  batch.set_node_id("bench");
  batch.set_samples(agg.closeWindow(*batch.add_windows()));
  const std::size_t records = 400;
  const std::uint64_t recBytes = batch.ByteSizeLong() + 40 + 10;  // header and the seq fields
  SpoolOptions o;
  o.maxBytes = 1ull << 34;
  o.segmentBytes = 4 << 20;
  o.reserveBytes = 0;
  o.reservePercent = 0;
  o.syncEveryRecords = 16;
  const std::string payload = batch.SerializeAsString();
  std::string bytes(recBytes, 'x');
  // fdatasync times vary from run to run on a shared disk: three alternating rounds, best of each.
  double spoolS = 1e30, rawS = 1e30;
  for (int round = 0; round < 3; ++round) {
    o.dir = dir / ("spool" + std::to_string(round));
    {
      auto s = Spool::open(o);
      if (!s) {
        std::fprintf(stderr, "spool: %s\n", s.error().message.c_str());
        return;
      }
      auto t0 = Clock::now();
      // The batch is serialized once, as the service does before it spools; the spool adds its header,
      // the seq fields and the CRC, writes, and syncs by its policy.
      for (std::size_t i = 0; i < records; ++i)
        if (!(*s)->appendSerialized(payload, batch.samples())) std::abort();
      if (!(*s)->sync()) std::abort();
      spoolS = std::min(spoolS, secondsSince(t0));
    }
    // Floor: the same bytes, written sequentially to segment files of the same size, same fdatasync policy.
    const auto rawDir = dir / ("raw" + std::to_string(round));
    std::filesystem::create_directories(rawDir);
    auto t0 = Clock::now();
    int fd = -1;
    std::uint64_t inFile = 0;
    int segment = 0;
    for (std::size_t i = 0; i < records; ++i) {
      if (fd < 0 || inFile + recBytes > o.segmentBytes) {
        if (fd >= 0) {
          ::fdatasync(fd);
          ::close(fd);
        }
        fd = ::open((rawDir / std::to_string(segment++)).c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
        inFile = 0;
      }
      if (::write(fd, bytes.data(), bytes.size()) != static_cast<ssize_t>(bytes.size())) std::abort();
      inFile += recBytes;
      if ((i + 1) % 16 == 0) ::fdatasync(fd);
    }
    ::fdatasync(fd);
    ::close(fd);
    rawS = std::min(rawS, secondsSince(t0));
  }
  const double mb = static_cast<double>(records * recBytes) / 1e6;
  std::printf("spool: %zu records of %llu bytes (%.1f MB): spool %.1f MB/s, raw %.1f MB/s\n", records,
              static_cast<unsigned long long>(recBytes), mb, mb / spoolS, mb / rawS);
  result("spool_mb_per_s", mb / spoolS, "MB/s", mb / rawS, "ratio>=0.7", spoolS > 0 && rawS / spoolS >= 0.7);
}

void memoryBench() {
  const int n = 100'000;
  // The input is built first and freed before measuring; only what the aggregator holds counts.
  std::vector<std::string> chunks;
  std::string cur;
  std::mt19937_64 rng(3);
  for (int i = 0; i < n; ++i) {
    cur += "svc_latency,host=edge-" + std::to_string(i % 100) + ",instance=i" + std::to_string(i) +
           " ms=" + std::to_string(rng() % 1000) + "\n";
    if (cur.size() > 8000) chunks.push_back(std::move(cur)), cur.clear();
  }
  chunks.push_back(cur);
  malloc_trim(0);
  const auto before = mallinfo2().uordblks;
  std::size_t series = 0, after = 0;
  {
    Aggregator agg(AggregatorLimits{static_cast<std::size_t>(n)});
    for (int pass = 0; pass < 3; ++pass)  // three samples per series: a few sketch buckets each
      for (const auto& c : chunks) agg.ingest(c);
    series = agg.seriesCount();
    after = mallinfo2().uordblks;
  }
  const double perSeries = static_cast<double>(after - before) / static_cast<double>(series);
  std::printf("memory: %zu series, %zu bytes allocated, %.1f bytes per series\n", series, after - before, perSeries);
  result("bytes_per_series", perSeries, "bytes", 0, "<=200", perSeries <= 200);
}

}  // namespace

int main(int argc, char** argv) {
  const std::size_t lines = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 2'000'000;
  ingestBench(lines);
  spoolBench();
  memoryBench();
  return 0;
}
