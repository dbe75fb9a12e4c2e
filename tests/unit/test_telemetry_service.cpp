// The service without sockets, on a real io_context with a fake clock and an in-memory sink: batches
// per window with loss counters, splitting at the size limit, the daily byte budget switching to coarser
// rollups instead of stopping, seq persistence across a restart, and the [telemetry] config keys.
#include <doctest/doctest.h>

#include <boost/asio/io_context.hpp>
#include <deque>
#include <map>

#include "outrider/agent/telemetry_service.hpp"
#include "outrider/common/atomic_file.hpp"
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

/// A budget that puts these windows in 15 min rollups: about 100 windows' worth for the rest of the day.
struct BudgetRun {
  boost::asio::io_context& io;
  FakeClock& clock;
  std::string line;
  std::uint64_t budget = 0;
  BudgetRun(boost::asio::io_context& i, FakeClock& c) : io(i), clock(c) {
    clock.now = 1'700'006'400'000 / 86'400'000 * 86'400'000 + 12 * 3'600'000;  // noon UTC
    for (int k = 0; k < 20; ++k) line += "m,k=" + std::to_string(k) + " v=1\n";
    test::TempDir d("tsvc-w");
    MemorySink s(io);
    FakeClock ck = clock;
    TelemetryService svc(io, "n", config(d / "spool", 0), s, ck);
    REQUIRE(svc.start());
    svc.ingest(line);
    ck.now += 60'000;
    svc.flushWindow();
    settle(io);
    REQUIRE(s.got.size() == 1);
    budget = s.got[0].ByteSizeLong() * 100;
  }
  TelemetryConfig config(const fs::path& spool, std::uint64_t b) const {
    auto c = baseConfig(spool);
    c.dailyBudgetBytes = b;
    return c;
  }
  void windows(TelemetryService& svc, int n) {
    for (int w = 0; w < n; ++w) {
      svc.ingest(line);
      clock.now += 60'000;
      svc.flushWindow();
      settle(io);
    }
  }
};

std::vector<v1::TelemetryBatch> newBatches(const MemorySink& sink, std::uint64_t after) {
  std::vector<v1::TelemetryBatch> out;
  for (const auto& b : sink.got)
    if (b.seq() > after) out.push_back(b);
  return out;
}

/// What a kill -9 leaves: the files as they are, while the service still runs.
void snapshot(const fs::path& from, const fs::path& to) {
  fs::copy(from, to, fs::copy_options::recursive);
}

}  // namespace

TEST_CASE("the day's budget use and the rollup being built survive a kill; the rollup goes on after it") {
  test::TempDir dir("tsvc");
  boost::asio::io_context io;
  FakeClock clock;
  BudgetRun run(io, clock);
  std::uint64_t used = 0, lastSeq = 0;
  {
    MemorySink sink(io);
    TelemetryService svc(io, "n", run.config(dir / "spool", run.budget), sink, clock);
    REQUIRE(svc.start());
    run.windows(svc, 15 + 7);  // one quarter sent, seven windows of the next one waiting
    REQUIRE(sink.got.size() == 1);
    CHECK(sink.got[0].mode() == v1::TELEMETRY_MODE_BUDGET_15M);
    lastSeq = sink.got[0].seq();
    used = svc.counters().budgetUsedBytes;
    CHECK(used > 0);
    snapshot(dir / "spool", dir / "killed");
  }
  MemorySink sink(io);
  TelemetryService svc(io, "n", run.config(dir / "killed", run.budget), sink, clock);
  REQUIRE(svc.start());
  CHECK(svc.counters().budgetUsedBytes == used);  // not a fresh day's budget
  run.windows(svc, 8);
  // What the hub had acknowledged may come again (the spool's cursor lags its acks; the hub
  // de-duplicates on seq); after it, one new batch.
  auto fresh = newBatches(sink, lastSeq);
  REQUIRE(fresh.size() == 1);
  CHECK(fresh[0].seq() == lastSeq + 1);
  REQUIRE(fresh[0].windows_size() == 1);
  const auto& w = fresh[0].windows(0);
  CHECK(w.rollup() == v1::TELEMETRY_ROLLUP_15M);
  CHECK(w.series_size() == 20);
  for (const auto& s : w.series()) {
    CHECK(s.count() == 15);  // seven windows from before the kill and eight after, nothing lost or doubled
    CHECK(s.sum() == 15);
    CHECK(s.has_sketch());
  }
  CHECK(svc.counters().budgetUsedBytes > used);
}

TEST_CASE("a clean stop keeps the rollup being built for the next run; a new day counts from zero") {
  test::TempDir dir("tsvc");
  boost::asio::io_context io;
  FakeClock clock;
  BudgetRun run(io, clock);
  const auto cfg = run.config(dir / "spool", run.budget);
  std::uint64_t used = 0;
  {
    MemorySink sink(io);
    TelemetryService svc(io, "n", cfg, sink, clock);
    REQUIRE(svc.start());
    run.windows(svc, 15 + 5);
    used = svc.counters().budgetUsedBytes;
    svc.ingest(run.line);  // a partial window: into the rollup at the stop
    svc.stop();
    CHECK(sink.got.size() == 1);
  }
  {
    MemorySink sink(io);
    TelemetryService svc(io, "n", cfg, sink, clock);
    REQUIRE(svc.start());
    CHECK(svc.counters().budgetUsedBytes == used);
    run.windows(svc, 10);
    REQUIRE(sink.got.size() == 1);
    for (const auto& s : sink.got[0].windows(0).series()) CHECK(s.count() == 16);  // 5 + the partial one + 10
    run.windows(svc, 3);
    used = svc.counters().budgetUsedBytes;
  }
  // The next day: the count starts again, and the rollup whose quarter ended while the agent was down
  // is sent at once.
  clock.now += 86'400'000;
  MemorySink sink(io);
  TelemetryService svc(io, "n", cfg, sink, clock);
  REQUIRE(svc.start());
  settle(io);
  REQUIRE(sink.got.size() == 1);
  for (const auto& s : sink.got[0].windows(0).series()) CHECK(s.count() == 3);
  CHECK(svc.counters().budgetUsedBytes > 0);
  CHECK(svc.counters().budgetUsedBytes < used);
}

TEST_CASE("a clock stepped back across midnight keeps the day's count; a clock far back starts a new one") {
  test::TempDir dir("tsvc");
  boost::asio::io_context io;
  FakeClock clock;
  BudgetRun run(io, clock);
  const auto cfg = run.config(dir / "spool", run.budget * 100);  // roomy: full windows
  const std::int64_t midnight = clock.now / 86'400'000 * 86'400'000 + 86'400'000;
  clock.now = midnight + 30 * 60'000;  // 00:30
  std::uint64_t used = 0;
  {
    MemorySink sink(io);
    TelemetryService svc(io, "n", cfg, sink, clock);
    REQUIRE(svc.start());
    run.windows(svc, 3);
    used = svc.counters().budgetUsedBytes;
    REQUIRE(used > 0);
  }
  clock.now = midnight - 30 * 60'000;  // back to 23:30 of the day before, as NTP may set it
  {
    MemorySink sink(io);
    TelemetryService svc(io, "n", cfg, sink, clock);
    REQUIRE(svc.start());
    CHECK(svc.counters().budgetUsedBytes == used);
    run.windows(svc, 2);
    CHECK(svc.counters().budgetUsedBytes > used);  // still the same day's count
  }
  clock.now = midnight - 3 * 86'400'000;  // a clock reset far back
  MemorySink sink(io);
  TelemetryService svc(io, "n", cfg, sink, clock);
  REQUIRE(svc.start());
  CHECK(svc.counters().budgetUsedBytes == 0);
  run.windows(svc, 1);
  REQUIRE(sink.got.size() == 1);
  CHECK(svc.counters().budgetUsedBytes < used);
}

TEST_CASE("a rollup already in the spool when the agent died is not taken up again") {
  test::TempDir dir("tsvc");
  boost::asio::io_context io;
  FakeClock clock;
  BudgetRun run(io, clock);
  std::uint64_t lastSeq = 0;
  {
    MemorySink sink(io);
    TelemetryService svc(io, "n", run.config(dir / "spool", run.budget), sink, clock);
    REQUIRE(svc.start());
    run.windows(svc, 15 + 7);
    REQUIRE(sink.got.size() == 1);
    lastSeq = sink.got[0].seq();
    snapshot(dir / "spool", dir / "killed");
  }
  // As if the agent died after the spool took the rollup and before the state file was rewritten: the
  // state says the spool's next seq was lower.
  auto bytes = readFile(dir / "killed" / "budget");
  REQUIRE(bytes);
  auto state = decodeBudgetState(*bytes);
  REQUIRE(state);
  REQUIRE(state->pending_size() == 1);
  REQUIRE(state->spool_next_seq() > 1);
  state->set_spool_next_seq(state->spool_next_seq() - 1);
  REQUIRE(writeFileAtomic(dir / "killed" / "budget", encodeBudgetState(*state)));
  MemorySink sink(io);
  TelemetryService svc(io, "n", run.config(dir / "killed", run.budget), sink, clock);
  REQUIRE(svc.start());
  run.windows(svc, 8);
  auto fresh = newBatches(sink, lastSeq);
  REQUIRE(fresh.size() == 1);
  for (const auto& s : fresh[0].windows(0).series()) CHECK(s.count() == 8);
}

TEST_CASE("a damaged budget state file is refused by name and set aside; the service runs on") {
  test::TempDir dir("tsvc");
  boost::asio::io_context io;
  FakeClock clock;
  BudgetRun run(io, clock);
  {
    MemorySink sink(io);
    TelemetryService svc(io, "n", run.config(dir / "spool", run.budget), sink, clock);
    REQUIRE(svc.start());
    run.windows(svc, 15 + 3);
  }
  auto good = readFile(dir / "spool" / "budget");
  REQUIRE(good);
  REQUIRE(decodeBudgetState(*good));
  // Every cut and every flipped byte is caught.
  for (std::size_t n = 0; n < good->size(); ++n) CHECK_FALSE(decodeBudgetState(std::string_view(*good).substr(0, n)));
  for (std::size_t i = 0; i < good->size(); ++i) {
    std::string bad = *good;
    bad[i] = static_cast<char>(bad[i] ^ 0x20);
    CHECK_FALSE(decodeBudgetState(bad));
  }
  CHECK(decodeBudgetState("garbage").error().message == "not a telemetry budget state file");
  {
    v1::TelemetryBudgetState s;
    s.set_level(v1::TELEMETRY_ROLLUP_RAW);
    s.add_pending();
    CHECK(decodeBudgetState(encodeBudgetState(s)).error().message == "bad values in the state");
  }
  std::string flipped = *good;
  flipped.back() = static_cast<char>(flipped.back() ^ 1);
  for (const std::string& bad : {std::string(), std::string("garbage\n"), flipped, good->substr(0, good->size() / 2)}) {
    CAPTURE(bad.size());
    const auto d = dir / ("bad" + std::to_string(bad.size()));
    snapshot(dir / "spool", d);
    REQUIRE(writeFileAtomic(d / "budget", bad));
    MemorySink sink(io);
    TelemetryService svc(io, "n", run.config(d, run.budget), sink, clock);
    REQUIRE(svc.start());
    CHECK(svc.counters().budgetUsedBytes == 0);
    svc.ingest("m v=5");
    clock.now += 60'000;
    svc.flushWindow();
    svc.stop();
    // The next state file is whole again.
    auto again = readFile(d / "budget");
    REQUIRE(again);
    CHECK(decodeBudgetState(*again));
  }
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
