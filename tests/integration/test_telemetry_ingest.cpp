// A real TelemetryService on a real io_context with real UDP and unix datagram sockets on loopback and a
// test sink: exact summaries of 10,000 samples, a sink that goes offline and comes back (every seq
// arrives, in order, no gap), bad input over the wire, and a child process killed with SIGKILL in the
// middle of a stream, restarted on the same spool: nothing the spool had accepted is lost, and the day's
// byte budget count goes on where it was.
#include <doctest/doctest.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/udp.hpp>
#include <boost/asio/local/datagram_protocol.hpp>
#include <boost/asio/steady_timer.hpp>
#include <csignal>
#include <fstream>
#include <map>
#include <random>
#include <sstream>

#include "outrider/agent/telemetry_service.hpp"
#include "support/process.hpp"

using namespace outrider;
using namespace outrider::agent;
using namespace std::chrono_literals;
namespace asio = boost::asio;
namespace fs = std::filesystem;

namespace {

/// Acknowledges each publish after a short delay on the loop, like a broker's PUBACK; going offline
/// fails every outstanding publish, as a dropped connection does.
struct LoopSink final : TelemetrySink {
  asio::io_context& io;
  bool up = true;
  std::vector<v1::TelemetryBatch> got;
  std::vector<std::shared_ptr<asio::steady_timer>> timers;
  std::map<std::uint64_t, std::function<void(bool)>> outstanding;
  std::uint64_t next = 0;
  explicit LoopSink(asio::io_context& i) : io(i) {}
  bool online() const override { return up; }
  void publish(std::string payload, std::function<void(bool)> done) override {
    if (!up) return done(false);
    v1::TelemetryBatch b;
    REQUIRE(b.ParseFromString(payload));
    const auto id = next++;
    outstanding[id] = std::move(done);
    auto t = std::make_shared<asio::steady_timer>(io, 5ms);
    timers.push_back(t);
    t->async_wait([this, id, b](boost::system::error_code ec) {
      if (ec) return;
      auto it = outstanding.find(id);
      if (it == outstanding.end()) return;
      got.push_back(b);
      auto d = std::move(it->second);
      outstanding.erase(it);
      d(true);
    });
  }
  void goOffline() {
    up = false;
    auto pending = std::move(outstanding);
    outstanding.clear();
    for (auto& [id, d] : pending) d(false);
  }
};

/// Run the loop until `cond` holds or `timeout` passes.
bool runUntil(asio::io_context& io, const std::function<bool()>& cond, std::chrono::milliseconds timeout) {
  const auto end = std::chrono::steady_clock::now() + timeout;
  while (!cond()) {
    if (std::chrono::steady_clock::now() > end) return false;
    io.restart();
    io.run_for(5ms);
  }
  return true;
}

TelemetryConfig config(const test::TempDir& dir) {
  TelemetryConfig c;
  c.windowMs = 3'600'000;  // the tests close windows themselves unless they say otherwise
  c.udpListen = "127.0.0.1:0";
  c.unixSocket = dir / "telemetry.sock";
  c.host = false;
  c.spool.dir = dir / "spool";
  c.spool.reserveBytes = 0;
  c.spool.reservePercent = 0;
  return c;
}

struct UdpSender {
  asio::io_context io;
  asio::ip::udp::socket s{io, asio::ip::udp::v4()};
  asio::ip::udp::endpoint to;
  explicit UdpSender(unsigned short port) : to(asio::ip::make_address("127.0.0.1"), port) {}
  void send(const std::string& d) { s.send_to(asio::buffer(d), to); }
};

struct UnixSender {
  int fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  explicit UnixSender(const fs::path& p) {
    addr.sun_family = AF_UNIX;
    std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", p.c_str());
  }
  ~UnixSender() { ::close(fd); }
  ssize_t send(const std::string& d) {
    return ::sendto(fd, d.data(), d.size(), 0, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  }
};

}  // namespace

TEST_CASE("10,000 samples over UDP and the unix socket: count, sum, min and max are exact") {
  test::TempDir dir("tel-int");
  asio::io_context io;
  LoopSink sink(io);
  SystemClock clock;
  TelemetryService svc(io, "node-a", config(dir), sink, clock);
  REQUIRE(svc.start());
  REQUIRE(svc.udpPort() != 0);
  UdpSender udp(svc.udpPort());
  UnixSender ux(dir / "telemetry.sock");
  std::mt19937_64 rng(11);
  struct Exact {
    std::uint64_t n = 0;
    double sum = 0, min = INFINITY, max = -INFINITY;
  };
  std::map<std::string, Exact> exact;
  std::uint64_t datagrams = 0;
  for (int d = 0; d < 200; ++d) {
    std::string dg;
    for (int i = 0; i < 50; ++i) {
      const int host = static_cast<int>(rng() % 8);
      const long v = static_cast<long>(rng() % 2'000'001) - 1'000'000;  // integers: sums stay exact
      dg += "req,host=h" + std::to_string(host) + " latency=" + std::to_string(v) + "i\n";
      auto& e = exact["h" + std::to_string(host)];
      ++e.n;
      e.sum += static_cast<double>(v);
      e.min = std::min(e.min, static_cast<double>(v));
      e.max = std::max(e.max, static_cast<double>(v));
    }
    if (d % 2)
      udp.send(dg);
    else
      REQUIRE(ux.send(dg) == static_cast<ssize_t>(dg.size()));
    ++datagrams;
    // One datagram in flight at a time: loopback UDP may drop under a burst, and exactness is the point.
    REQUIRE(runUntil(io, [&] { return svc.counters().datagrams == datagrams; }, 5s));
  }
  CHECK(svc.counters().ingest.samples == 10'000);
  svc.flushWindow();
  REQUIRE(runUntil(io, [&] { return !sink.got.empty() && svc.counters().spool.records == 0; }, 10s));
  REQUIRE(sink.got.size() == 1);
  const auto& w = sink.got[0].windows(0);
  REQUIRE(w.series_size() == 8);
  std::uint64_t total = 0;
  for (const auto& s : w.series()) {
    REQUIRE(s.tags_size() == 1);
    const auto& e = exact.at(s.tags(0).value());
    CHECK(s.count() == e.n);
    CHECK(s.sum() == e.sum);
    CHECK(s.min() == e.min);
    CHECK(s.max() == e.max);
    CHECK(s.stream() == v1::TELEMETRY_STREAM_INGEST);
    CHECK(s.p50() >= e.min);
    CHECK(s.p99() <= e.max);
    total += s.count();
  }
  CHECK(total == 10'000);
  CHECK(sink.got[0].samples() == 10'000);
}

TEST_CASE("bad input over the wire is counted, the rest still counts, and the service keeps serving") {
  test::TempDir dir("tel-int");
  asio::io_context io;
  LoopSink sink(io);
  SystemClock clock;
  TelemetryService svc(io, "node-a", config(dir), sink, clock);
  REQUIRE(svc.start());
  UdpSender udp(svc.udpPort());
  UnixSender ux(dir / "telemetry.sock");
  std::string garbage(1000, '\0');
  std::mt19937_64 rng(3);
  for (auto& c : garbage) c = static_cast<char>(rng());
  udp.send(garbage);
  udp.send("m v=2\nm v=nan\nm v=inf,w=1\nm v=\"str\"\n");
  // A datagram longer than any line may be (over the unix socket, which carries it): its complete lines
  // count, the cut one is malformed.
  std::string big = "m v=3\n" + std::string("m,t=") + std::string(70'000, 'x') + " v=1\n";
  REQUIRE(ux.send(big) == static_cast<ssize_t>(big.size()));
  // 100,000 distinct series against the default cap of 10,000.
  std::string dg;
  for (int i = 0; i < 100'000; ++i) {
    dg += "many,id=" + std::to_string(i) + " v=1\n";
    if (dg.size() > 30'000 || i == 99'999) {
      REQUIRE(ux.send(dg) == static_cast<ssize_t>(dg.size()));
      dg.clear();
      const auto sent = svc.counters().datagrams;
      REQUIRE(runUntil(io, [&] { return svc.counters().datagrams > sent; }, 5s));
    }
  }
  REQUIRE(runUntil(io, [&] { return svc.counters().ingest.samples + svc.counters().ingest.overCapSamples >= 100'003; }, 5s));
  auto c = svc.counters();
  CHECK(c.ingest.nanOrInf == 2);
  CHECK(c.ingest.typeConflicts == 1);
  CHECK(c.ingest.malformedLines >= 2);
  CHECK(c.truncatedDatagrams == 1);
  // Two series existed before ("m v", "m w"): 9,998 of the new ones fit, 90,002 samples are over the cap.
  CHECK(c.ingest.overCapSamples == 90'002);
  CHECK(c.seriesActive == 10'000);
  svc.flushWindow();
  REQUIRE(runUntil(io, [&] { return !sink.got.empty() && svc.counters().spool.records == 0; }, 10s));
  const auto& loss = sink.got[0].loss();
  CHECK(loss.over_cap_samples() == c.ingest.overCapSamples);
  CHECK(loss.nan_or_inf() == 2);
  CHECK(loss.truncated_datagrams() == 1);
  // Still serving.
  udp.send("after v=1");
  REQUIRE(runUntil(io, [&] { return svc.counters().ingest.samples == c.ingest.samples + 1; }, 5s));
}

TEST_CASE("the sink goes offline for a while and comes back: every seq arrives, in order, no gap") {
  test::TempDir dir("tel-int");
  asio::io_context io;
  LoopSink sink(io);
  SystemClock clock;
  auto cfg = config(dir);
  cfg.windowMs = 1000;  // real aligned windows
  cfg.maxInflight = 3;
  TelemetryService svc(io, "node-a", cfg, sink, clock);
  REQUIRE(svc.start());
  UdpSender udp(svc.udpPort());
  auto feed = [&](std::chrono::milliseconds d) {
    const auto end = std::chrono::steady_clock::now() + d;
    int i = 0;
    while (std::chrono::steady_clock::now() < end) {
      udp.send("load,n=" + std::to_string(i++ % 5) + " v=1");
      io.restart();
      io.run_for(10ms);
    }
  };
  feed(2500ms);
  const auto before = sink.got.size();
  CHECK(before >= 1);
  sink.goOffline();
  feed(3500ms);  // about three windows spooled while offline
  CHECK(sink.got.size() == before);
  CHECK(svc.counters().spool.records >= 3);
  sink.up = true;
  svc.notifyOnline();
  feed(1500ms);
  const auto windows = svc.counters().windows;
  REQUIRE(runUntil(io, [&] { return svc.counters().spool.records == 0 && sink.outstanding.empty(); }, 10s));
  REQUIRE(sink.got.size() >= windows);
  for (std::size_t i = 0; i < sink.got.size(); ++i) CHECK(sink.got[i].seq() == i + 1);
  CHECK(svc.counters().publishFailures >= 0);
}

TEST_CASE("SIGKILL in the middle of a stream, restart on the same spool: nothing accepted is lost") {
  test::TempDir dir("tel-kill");
  const fs::path spool = dir / "spool";
  const fs::path portFile = dir / "port";
  const fs::path out = dir / "published";
  test::Process child({test::binary("test_telemetry_child").string(), spool.string(), portFile.string(), "hold"},
                      dir / "child1.log");
  REQUIRE(test::waitFor([&] { return fs::exists(portFile); }, 10s));
  const auto port = static_cast<unsigned short>(std::stoi(*[&] {
    std::ifstream in(portFile);
    static std::string s;
    in >> s;
    return &s;
  }()));
  UdpSender udp(port);
  auto lastAccepted = [&](std::uint64_t& records, std::uint64_t& samples) {
    std::istringstream in(child.log());
    std::string word;
    records = samples = 0;
    while (in >> word)
      if (word == "accepted") in >> records >> samples;
  };
  // Stream until the spool has accepted at least three windows, then kill it while still streaming.
  std::uint64_t records = 0, samples = 0;
  const auto end = std::chrono::steady_clock::now() + 30s;
  int i = 0;
  while (std::chrono::steady_clock::now() < end) {
    udp.send("stream,i=" + std::to_string(i % 10) + " v=" + std::to_string(i) + "i");
    ++i;
    if (i % 50 == 0) {
      lastAccepted(records, samples);
      if (records >= 3) break;
      ::usleep(2000);
    }
  }
  REQUIRE(records >= 3);
  for (int k = 0; k < 200; ++k) udp.send("stream,i=0 v=1i");
  child.signal(SIGKILL);
  REQUIRE(child.wait(10s));
  lastAccepted(records, samples);  // what it reported before it died
  REQUIRE(records >= 3);

  test::Process again({test::binary("test_telemetry_child").string(), spool.string(), portFile.string(), "publish",
                       out.string()},
                      dir / "child2.log");
  std::map<std::uint64_t, std::uint64_t> got;
  auto readOut = [&] {
    got.clear();
    std::ifstream in(out);
    std::uint64_t seq, n;
    while (in >> seq >> n) got[seq] = n;
    return got.size() >= records;
  };
  REQUIRE_MESSAGE(test::waitFor(readOut, 20s), again.log());
  std::uint64_t s = 0;
  for (std::uint64_t seq = 1; seq <= records; ++seq) {
    CAPTURE(seq);
    REQUIRE(got.count(seq) == 1);
    s += got[seq];
  }
  CHECK(s == samples);
  // And the restarted process continues the sequence with no gap.
  REQUIRE(test::waitFor([&] { readOut(); return got.size() >= records + 1 && got.rbegin()->first > records; }, 10s));
  std::uint64_t expect = 1;
  for (const auto& [seq, n] : got) CHECK(seq == expect++);
  again.stop();
}

TEST_CASE("SIGKILL with a daily byte budget: the restarted process goes on with the day's byte count") {
  test::TempDir dir("tel-kill-budget");
  const fs::path spool = dir / "spool";
  const fs::path portFile = dir / "port";
  auto words = [](const test::Process& p, const std::string& key) {
    std::vector<std::uint64_t> v;
    std::istringstream in(p.log());
    std::string word;
    while (in >> word)
      if (word == key) {
        std::uint64_t n;
        if (in >> n) v.push_back(n);
      }
    return v;
  };
  auto today = [] { return std::chrono::system_clock::now().time_since_epoch() / std::chrono::hours(24); };
  const auto dayBefore = today();
  test::Process child({test::binary("test_telemetry_child").string(), spool.string(), portFile.string(), "hold",
                       "budget=1000000000"},
                      dir / "child1.log");
  REQUIRE(test::waitFor([&] { return fs::exists(portFile); }, 10s));
  std::ifstream portIn(portFile);
  unsigned port = 0;
  portIn >> port;
  REQUIRE(port > 0);
  UdpSender udp(static_cast<unsigned short>(port));
  // Stream until three windows (1 s each) went into the spool, and were counted.
  const auto end = std::chrono::steady_clock::now() + 30s;
  for (int i = 0; std::chrono::steady_clock::now() < end; ++i) {
    udp.send("metered,i=" + std::to_string(i % 10) + " v=" + std::to_string(i));
    if (i % 50 == 0) {
      if (words(child, "accepted").size() >= 3 * 2) break;  // "accepted RECORDS SAMPLES" per window
      ::usleep(2000);
    }
  }
  REQUIRE(words(child, "accepted").size() >= 6);
  child.signal(SIGKILL);
  REQUIRE(child.wait(10s));
  const auto before = words(child, "budget");
  REQUIRE(!before.empty());
  const std::uint64_t used = before.back();
  REQUIRE(used > 0);

  fs::remove(portFile);
  test::Process again({test::binary("test_telemetry_child").string(), spool.string(), portFile.string(), "hold",
                       "budget=1000000000"},
                      dir / "child2.log");
  REQUIRE_MESSAGE(test::waitFor([&] { return !words(again, "budget").empty(); }, 10s), again.log());
  const std::uint64_t restored = words(again, "budget").front();
  if (today() == dayBefore) {
    // At least what it had counted when it was killed (a window may have closed after the last report).
    CHECK(restored >= used);
  } else {
    MESSAGE("a UTC day boundary passed during the test: the count started from zero, as it should");
    CHECK(restored == 0);
  }
  again.stop();
}
