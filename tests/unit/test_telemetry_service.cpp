// The service without sockets, on a real io_context with a fake clock and an in-memory sink: batches
// per window with loss counters, splitting at the size limit, the daily byte budget switching to coarser
// rollups instead of stopping, seq persistence across a restart, and the [telemetry] config keys.
#include <doctest/doctest.h>

#include <boost/asio/io_context.hpp>
#include <deque>
#include <map>

#include "outrider/agent/telemetry_service.hpp"
#include "support/process.hpp"

using namespace outrider;
using namespace outrider::agent;
namespace fs = std::filesystem;

namespace {

struct FakeClock final : Clock {
  std::int64_t now = 1'700'002'800'000;  // an hour boundary
  std::int64_t nowMs() const override { return now; }
};

/// Acks every publish on the next loop turn while online; records what it got.
struct MemorySink final : TelemetrySink {
  boost::asio::io_context& io;
  bool up = true;
  std::vector<v1::TelemetryBatch> got;
  explicit MemorySink(boost::asio::io_context& i) : io(i) {}
  bool online() const override { return up; }
  void publish(std::string payload, std::function<void(bool)> done) override {
    v1::TelemetryBatch b;
    REQUIRE(b.ParseFromString(payload));
    if (up) got.push_back(b);
    done(up);
  }
};

TelemetryConfig baseConfig(const fs::path& spool) {
  TelemetryConfig c;
  c.udpListen = "";
  c.unixSocket = "";
  c.host = false;
  c.spool.dir = spool;
  c.spool.reserveBytes = 0;
  c.spool.reservePercent = 0;
  return c;
}

void settle(boost::asio::io_context& io) {
  io.restart();
  io.poll();
}

}  // namespace

TEST_CASE("one batch per window, seq numbered, with the loss of that window") {
  test::TempDir dir("tsvc");
  boost::asio::io_context io;
  FakeClock clock;
  MemorySink sink(io);
  TelemetryService svc(io, "node-1", baseConfig(dir / "spool"), sink, clock);
  REQUIRE(svc.start());
  svc.ingest("m v=1\nm v=3\nbad\nm v=nan\nm s=\"x\"\n");
  clock.now += 60'000;
  svc.flushWindow();
  settle(io);
  svc.ingest("m v=5");
  clock.now += 60'000;
  svc.flushWindow();
  settle(io);
  REQUIRE(sink.got.size() == 2);
  const auto& b = sink.got[0];
  CHECK(b.node_id() == "node-1");
  CHECK(b.seq() == 1);
  CHECK(sink.got[1].seq() == 2);
  CHECK(b.parts() == 1);
  CHECK(b.mode() == v1::TELEMETRY_MODE_FULL);
  REQUIRE(b.windows_size() == 1);
  CHECK(b.windows(0).start_ms() == 1'700'002'800'000);
  CHECK(b.windows(0).duration_ms() == 60'000);
  REQUIRE(b.windows(0).series_size() == 1);
  CHECK(b.windows(0).series(0).count() == 2);
  CHECK(b.windows(0).series(0).sum() == 4);
  CHECK(b.loss().malformed_lines() == 1);
  CHECK(b.loss().nan_or_inf() == 1);
  CHECK(b.loss().non_numeric_fields() == 1);
  CHECK(b.samples() == 2);
  REQUIRE(b.streams_size() == 1);
  CHECK(b.streams(0).stream() == v1::TELEMETRY_STREAM_INGEST);
  CHECK(b.streams(0).samples() == 2);
  CHECK(b.streams(0).bytes() > 0);
  // Loss is a delta: the second window had none.
  CHECK(sink.got[1].loss().malformed_lines() == 0);
  CHECK(sink.got[1].windows(0).start_ms() == 1'700'002'860'000);
  auto c = svc.counters();
  CHECK(c.acked == 2);
  CHECK(c.forwardedSamples == 3);
  CHECK(c.spool.records == 0);
}

TEST_CASE("a window larger than the size limit is split into parts, each under the limit") {
  test::TempDir dir("tsvc");
  boost::asio::io_context io;
  FakeClock clock;
  MemorySink sink(io);
  auto cfg = baseConfig(dir / "spool");
  cfg.batchBytes = 64 * 1024;
  cfg.maxSeries = 100'000;
  TelemetryService svc(io, "n", cfg, sink, clock);
  REQUIRE(svc.start());
  std::string buf;
  for (int i = 0; i < 5000; ++i) {
    buf += "svc,instance=i" + std::to_string(i) + " latency=" + std::to_string(i % 97) + ",errors=1i\n";
    if (buf.size() > 50'000) svc.ingest(buf), buf.clear();
  }
  svc.ingest(buf);
  clock.now += 60'000;
  svc.flushWindow();
  for (int i = 0; i < 100 && sink.got.size() < 2; ++i) settle(io);
  while (svc.counters().spool.records > 0) settle(io);
  REQUIRE(sink.got.size() > 2);
  std::uint64_t series = 0, samples = 0;
  for (std::size_t i = 0; i < sink.got.size(); ++i) {
    const auto& b = sink.got[i];
    CHECK(b.ByteSizeLong() <= cfg.batchBytes);
    CHECK(b.part() == i);
    CHECK(b.parts() == sink.got.size());
    CHECK(b.seq() == i + 1);
    REQUIRE(b.windows_size() == 1);
    CHECK(b.windows(0).start_ms() == 1'700'002'800'000);
    series += static_cast<std::uint64_t>(b.windows(0).series_size());
    samples += b.samples();
  }
  CHECK(series == 10'000);
  CHECK(samples == 10'000);
  std::uint64_t streamSeries = 0;
  for (const auto& s : sink.got[0].streams()) streamSeries += s.series();
  CHECK(streamSeries == 10'000);
}

TEST_CASE("the daily byte budget: full windows while the pace fits, then 15 min rollups, then 1 h without sketches") {
  test::TempDir dir("tsvc");
  boost::asio::io_context io;
  FakeClock clock;
  clock.now = 1'700'006'400'000 / 86'400'000 * 86'400'000 + 12 * 3'600'000;  // noon UTC
  MemorySink sink(io);
  auto cfg = baseConfig(dir / "spool");
  // About 2 KiB per window: 720 windows left today need ~1.5 MB at full resolution.
  std::string line;
  for (int i = 0; i < 20; ++i) line += "m,k=" + std::to_string(i) + " v=1\n";
  auto run = [&](std::uint64_t budget) {
    test::TempDir d("tsvc-b");
    auto c = cfg;
    c.spool.dir = d / "spool";
    c.dailyBudgetBytes = budget;
    MemorySink s(io);
    FakeClock ck = clock;
    TelemetryService svc(io, "n", c, s, ck);
    REQUIRE(svc.start());
    for (int w = 0; w < 60; ++w) {
      svc.ingest(line);
      ck.now += 60'000;
      svc.flushWindow();
      settle(io);
    }
    return s.got;
  };
  auto full = run(0);
  REQUIRE(full.size() == 60);
  const auto perWindow = full[5].ByteSizeLong();
  for (const auto& b : full) CHECK(b.mode() == v1::TELEMETRY_MODE_FULL);

  auto roomy = run(perWindow * 800);
  CHECK(roomy.size() == 60);
  CHECK(roomy.back().mode() == v1::TELEMETRY_MODE_FULL);

  auto quarter = run(perWindow * 100);  // 48 quarters left: fits at 15 min
  REQUIRE(quarter.size() == 4);
  for (const auto& b : quarter) {
    CHECK(b.mode() == v1::TELEMETRY_MODE_BUDGET_15M);
    REQUIRE(b.windows_size() == 1);
    CHECK(b.windows(0).rollup() == v1::TELEMETRY_ROLLUP_15M);
    CHECK(b.windows(0).duration_ms() == 900'000);
    for (const auto& s : b.windows(0).series()) {
      CHECK(s.count() == 15);  // fifteen windows merged, exactly
      CHECK(s.has_sketch());
    }
  }
  CHECK(quarter[0].budget_bytes() == perWindow * 100);

  auto hourly = run(perWindow * 10);  // far over pace: 1 h, no sketches; never stops
  REQUIRE(hourly.size() == 1);
  CHECK(hourly[0].mode() == v1::TELEMETRY_MODE_BUDGET_1H);
  CHECK(hourly[0].windows(0).rollup() == v1::TELEMETRY_ROLLUP_1H_NO_SKETCH);
  for (const auto& s : hourly[0].windows(0).series()) {
    CHECK(s.count() == 60);
    CHECK_FALSE(s.has_sketch());
  }
}

TEST_CASE("seq continues after a restart on the same spool; what was not acknowledged is sent again") {
  test::TempDir dir("tsvc");
  boost::asio::io_context io;
  FakeClock clock;
  auto cfg = baseConfig(dir / "spool");
  std::uint64_t lastSeq = 0;
  {
    MemorySink sink(io);
    TelemetryService svc(io, "n", cfg, sink, clock);
    REQUIRE(svc.start());
    for (int i = 0; i < 3; ++i) {
      svc.ingest("m v=1");
      clock.now += 60'000;
      svc.flushWindow();
      settle(io);
    }
    REQUIRE(sink.got.size() == 3);
    lastSeq = sink.got.back().seq();
    sink.up = false;
    svc.ingest("m v=2");
    clock.now += 60'000;
    svc.flushWindow();
    settle(io);
    CHECK(sink.got.size() == 3);
    CHECK(svc.counters().spool.records == 1);
  }
  MemorySink sink(io);
  TelemetryService svc(io, "n", cfg, sink, clock);
  REQUIRE(svc.start());
  settle(io);
  REQUIRE(sink.got.size() == 1);
  CHECK(sink.got[0].seq() == lastSeq + 1);
  CHECK(sink.got[0].windows(0).series(0).sum() == 2);
  svc.ingest("m v=3");
  clock.now += 60'000;
  svc.flushWindow();
  settle(io);
  REQUIRE(sink.got.size() == 2);
  CHECK(sink.got[1].seq() == lastSeq + 2);
}

TEST_CASE("a clean stop puts the partial window in the spool") {
  test::TempDir dir("tsvc");
  boost::asio::io_context io;
  FakeClock clock;
  auto cfg = baseConfig(dir / "spool");
  {
    MemorySink sink(io);
    sink.up = false;
    TelemetryService svc(io, "n", cfg, sink, clock);
    REQUIRE(svc.start());
    svc.ingest("m v=7");
    svc.stop();
  }
  MemorySink sink(io);
  TelemetryService svc(io, "n", cfg, sink, clock);
  REQUIRE(svc.start());
  settle(io);
  REQUIRE(sink.got.size() == 1);
  CHECK(sink.got[0].windows(0).series(0).sum() == 7);
}

namespace {
struct SlowSource final : TelemetrySource {
  TelemetrySource::Done held;
  int asked = 0;
  std::string name() const override { return "slow"; }
  void collect(Done done) override {
    ++asked;
    held = std::move(done);
  }
};
}  // namespace

TEST_CASE("sources answer asynchronously; one that does not answer is not asked again and is counted") {
  test::TempDir dir("tsvc");
  boost::asio::io_context io;
  FakeClock clock;
  MemorySink sink(io);
  TelemetryService svc(io, "n", baseConfig(dir / "spool"), sink, clock);
  auto src = std::make_shared<SlowSource>();
  svc.addSource(src);
  REQUIRE(svc.start());
  svc.collectNow();
  svc.collectNow();
  CHECK(src->asked == 1);
  CHECK(svc.counters().sourceErrors == 1);
  Sample s;
  s.stream = v1::TELEMETRY_STREAM_VM;
  s.measurement = "vm";
  s.tags = {{"name", "web"}};
  s.field = "cpu_percent";
  s.value = 42;
  src->held(true, {s});
  svc.collectNow();
  CHECK(src->asked == 2);
  clock.now += 60'000;
  svc.flushWindow();
  settle(io);
  REQUIRE(sink.got.size() == 1);
  REQUIRE(sink.got[0].windows(0).series_size() == 1);
  CHECK(sink.got[0].windows(0).series(0).stream() == v1::TELEMETRY_STREAM_VM);
  CHECK(sink.got[0].loss().source_errors() == 1);
}

TEST_CASE("[telemetry] config: defaults, values, and refused values naming the key") {
  {
    auto r = ConfigReader::parse("", "agent.toml");
    auto c = readTelemetryConfig(r);
    CHECK(c.windowMs == 60'000);
    CHECK(c.udpListen == "127.0.0.1:8094");
    CHECK(c.unixSocket == "/run/outrider/telemetry.sock");
    CHECK(c.maxSeries == 10'000);
    CHECK(c.batchBytes == 256 * 1024);
    CHECK(c.dailyBudgetBytes == 0);
    CHECK(c.spool.dir == "/var/lib/outrider/agent/spool");
    CHECK(c.spool.maxBytes == 64ull << 20);
    CHECK(c.spool.reserveBytes == 64ull << 20);
    CHECK(c.spool.reservePercent == 5);
    r.finish();
  }
  {
    auto r = ConfigReader::parse(
        "[telemetry]\nwindow_seconds = 10\ncollect_seconds = 5\nudp_listen = \"[::1]:0\"\nunix_socket = \"\"\n"
        "max_series = 500\ndaily_budget_bytes = 1000000\nspool_dir = \"/tmp/x\"\nspool_sync_every = 1\n",
        "agent.toml");
    auto c = readTelemetryConfig(r);
    CHECK(c.windowMs == 10'000);
    CHECK(c.collectMs == 5'000);
    CHECK(c.udpListen == "[::1]:0");
    CHECK(c.unixSocket.empty());
    CHECK(c.maxSeries == 500);
    CHECK(c.dailyBudgetBytes == 1'000'000);
    CHECK(c.spool.syncEveryRecords == 1);
    r.finish();
  }
  const char* bad[][2] = {
      {"window_seconds = 0", "window_seconds"},
      {"window_seconds = 10\ncollect_seconds = 20", "collect_seconds"},
      {"udp_listen = \"localhost:8094\"", "udp_listen"},
      {"udp_listen = \"127.0.0.1:99999\"", "udp_listen"},
      {"unix_socket = \"relative.sock\"", "unix_socket"},
      {"max_series = 0", "max_series"},
      {"batch_bytes = 100", "batch_bytes"},
      {"spool_dir = \"spool\"", "spool_dir"},
      {"spool_max_bytes = 2000000\nspool_segment_bytes = 4000000", "spool_segment_bytes"},
      {"sketch_accuracy = 0.5", "sketch_accuracy"},
      {"mounts = [\"data\"]", "mounts"},
  };
  for (auto& [text, key] : bad) {
    auto r = ConfigReader::parse(std::string("[telemetry]\n") + text + "\n", "agent.toml");
    try {
      (void)readTelemetryConfig(r);
      FAIL("accepted: ", text);
    } catch (const ConfigError& e) {
      CHECK_MESSAGE(std::string(e.what()).find(key) != std::string::npos, e.what());
      CHECK_MESSAGE(std::string(e.what()).find("agent.toml:") == 0, e.what());
    }
  }
}
