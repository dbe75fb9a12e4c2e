// Test-only executable: a TelemetryService on a real io_context with a 1 s window, UDP on an ephemeral
// loopback port (written to PORT_FILE), and a sink that either holds everything ("hold": offline) or
// records each published batch as "SEQ SAMPLES" lines in OUT_FILE and acknowledges it ("publish").
// Prints "accepted RECORDS SAMPLES" whenever the spool made more records durable, so a test that kills
// it with SIGKILL knows what the spool had accepted. With budget=BYTES (a daily byte budget) it also
// prints "budget USED" after start and whenever the day's count changes.
//
// Usage: test_telemetry_child SPOOL_DIR PORT_FILE hold|publish [OUT_FILE] [budget=BYTES]
#include <csignal>
#include <cstdio>
#include <fstream>
#include <string>

#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>

#include "outrider/agent/telemetry_service.hpp"
#include "outrider/common/atomic_file.hpp"

using namespace outrider;
using namespace outrider::agent;

namespace {

struct ChildSink final : TelemetrySink {
  bool publishMode = false;
  std::FILE* out = nullptr;
  bool online() const override { return publishMode; }
  void publish(std::string payload, std::function<void(bool)> done) override {
    v1::TelemetryBatch b;
    if (!publishMode || !b.ParseFromString(payload)) return done(false);
    std::fprintf(out, "%llu %llu\n", static_cast<unsigned long long>(b.seq()),
                 static_cast<unsigned long long>(b.samples()));
    std::fflush(out);
    done(true);
  }
};

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: %s SPOOL_DIR PORT_FILE hold|publish [OUT_FILE]\n", argv[0]);
    return 2;
  }
  std::setvbuf(stdout, nullptr, _IONBF, 0);
  boost::asio::io_context io;
  SystemClock clock;
  ChildSink sink;
  sink.publishMode = std::string(argv[3]) == "publish";
  std::uint64_t budget = 0;
  if (std::string last = argv[argc - 1]; last.rfind("budget=", 0) == 0) {
    budget = std::stoull(last.substr(7));
    --argc;
  }
  if (sink.publishMode) {
    if (argc < 5) return 2;
    sink.out = std::fopen(argv[4], "a");
    if (!sink.out) return 1;
  }
  TelemetryConfig cfg;
  cfg.windowMs = 1000;
  cfg.collectMs = 1000;
  cfg.udpListen = "127.0.0.1:0";
  cfg.unixSocket = "";
  cfg.host = false;
  cfg.spool.dir = argv[1];
  cfg.spool.reserveBytes = 0;
  cfg.spool.reservePercent = 0;
  cfg.spool.syncEveryRecords = 1;
  cfg.dailyBudgetBytes = budget;
  TelemetryService svc(io, "child", cfg, sink, clock);
  if (auto st = svc.start(); !st) {
    std::fprintf(stderr, "start: %s\n", st.error().message.c_str());
    return 1;
  }
  if (auto st = writeFileAtomic(argv[2], std::to_string(svc.udpPort())); !st) return 1;
  boost::asio::signal_set signals(io, SIGTERM, SIGINT);
  signals.async_wait([&](auto, int) {
    svc.stop();
    io.stop();
  });
  boost::asio::steady_timer report(io);
  std::uint64_t lastRecords = 0, lastBudget = ~std::uint64_t{0};
  std::function<void()> tick = [&] {
    auto c = svc.counters();
    if (budget > 0 && c.budgetUsedBytes != lastBudget) {
      lastBudget = c.budgetUsedBytes;
      std::printf("budget %llu\n", static_cast<unsigned long long>(c.budgetUsedBytes));
    }
    if (c.spool.acceptedRecords != lastRecords) {
      lastRecords = c.spool.acceptedRecords;
      std::printf("accepted %llu %llu\n", static_cast<unsigned long long>(c.spool.acceptedRecords),
                  static_cast<unsigned long long>(c.spool.acceptedSamples));
    }
    report.expires_after(std::chrono::milliseconds(20));
    report.async_wait([&](boost::system::error_code ec) {
      if (!ec) tick();
    });
  };
  tick();
  io.run();
  return 0;
}
