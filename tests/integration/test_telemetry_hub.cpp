// Telemetry end to end: line protocol over UDP into the real outrider-agent, summaries over a real
// Mosquitto (mutual TLS + ACL) to a hub-side subscriber; store and forward through the broker going away
// (with the agent SIGKILLed meanwhile), and a spool on a file system too small for what arrives.
#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <map>
#include <thread>

#include "outrider/common/topics.hpp"
#include "outrider/v1/telemetry.pb.h"
#include "support/mqtt_fixture.hpp"
#include "support/node_fixture.hpp"
#include "support/process.hpp"

using namespace outrider;
using namespace outrider::test;
using namespace std::chrono_literals;

namespace {

MosquittoLib g_mosquitto;

struct Totals {
  std::uint64_t count = 0;
  double sum = 0, min = 1e300, max = -1e300;
};

// Sends datagrams of line protocol to the agent's UDP port on loopback.
class UdpSender {
 public:
  explicit UdpSender(unsigned port) : fd_(::socket(AF_INET, SOCK_DGRAM, 0)) {
    addr_.sin_family = AF_INET;
    addr_.sin_port = htons(static_cast<std::uint16_t>(port));
    addr_.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  }
  ~UdpSender() { ::close(fd_); }
  bool send(const std::string& d) {
    return ::sendto(fd_, d.data(), d.size(), 0, reinterpret_cast<const sockaddr*>(&addr_), sizeof addr_) ==
           static_cast<ssize_t>(d.size());
  }

 private:
  int fd_;
  sockaddr_in addr_{};
};

}  // namespace

TEST_CASE("10,000 samples over UDP reach the hub with exact count, sum, min and max, in sequence") {
  const unsigned port = static_cast<unsigned>(freeLoopbackPort());
  NodeFixture n(NodeFixtureOptions{.telemetryUdpPort = port,
                                   .telemetryExtra = "window_seconds = 1\ncollect_seconds = 1\nhost = false\n"});
  MqttClient hub{g_mosquitto, MqttClientOptions{.caFile = n.ca.caFile(), .cert = n.hubCert()}};
  REQUIRE(hub.connect("127.0.0.1", n.broker.port()));
  REQUIRE(hub.subscribe(topics::telemetry("n1")));
  REQUIRE(hub.subscribe(topics::status("n1")));
  n.startAll();
  // Online: the agent's retained status has arrived (so its telemetry socket is bound).
  REQUIRE_MESSAGE(waitFor(
                      [&] {
                        for (const auto& m : hub.received())
                          if (m.topic == topics::status("n1") && !m.payload.empty()) return true;
                        return false;
                      },
                      20s),
                  n.diagnostics());

  // 100 datagrams of 100 lines: values 0..9999 of one series, plus a bad line in each datagram that must
  // be counted and skipped without losing the rest.
  UdpSender udp(port);
  for (int d = 0; d < 100; ++d) {
    std::string dg;
    for (int i = 0; i < 100; ++i) dg += "e2e,site=lab value=" + std::to_string(d * 100 + i) + "\n";
    dg += "this is not line protocol\n";
    REQUIRE(udp.send(dg));
    if (d % 10 == 9) std::this_thread::sleep_for(5ms);  // spread over the loop, no burst drops
  }

  Totals t;
  std::uint64_t malformed = 0;
  std::vector<std::uint64_t> seqs;
  std::size_t seen = 0;
  auto done = [&] { return t.count >= 10'000 && malformed >= 100 && seqs.size() >= 3; };
  auto deadline = std::chrono::steady_clock::now() + 30s;
  while (!done() && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(100ms);
    auto all = hub.received();
    for (; seen < all.size(); ++seen) {
      if (all[seen].topic != topics::telemetry("n1")) continue;
      v1::TelemetryBatch b;
      REQUIRE(b.ParseFromString(all[seen].payload));
      CHECK(b.node_id() == "n1");
      seqs.push_back(b.seq());
      malformed += b.loss().malformed_lines();
      for (const auto& w : b.windows())
        for (const auto& sr : w.series()) {
          if (sr.measurement() != "e2e" || sr.field() != "value") continue;
          t.count += sr.count();
          t.sum += sr.sum();
          t.min = std::min(t.min, sr.min());
          t.max = std::max(t.max, sr.max());
        }
    }
  }
  INFO(n.diagnostics());
  CHECK(t.count == 10'000);
  CHECK(t.sum == doctest::Approx(49'995'000.0).epsilon(1e-12));
  CHECK(t.min == 0);
  CHECK(t.max == 9999);
  CHECK(malformed == 100);
  // Sequence numbers go up by one, batch after batch (one part per window at this size).
  REQUIRE(seqs.size() >= 2);
  for (std::size_t i = 1; i < seqs.size(); ++i) CHECK(seqs[i] == seqs[i - 1] + 1);
}

namespace {

// Every TelemetryBatch the hub received so far, by seq (QoS 1 may deliver one twice; the hub keeps one).
struct HubView {
  std::map<std::uint64_t, v1::TelemetryBatch> bySeq;
  std::size_t seen = 0;
  void update(const MqttClient& hub) {
    auto all = hub.received();
    for (; seen < all.size(); ++seen) {
      if (all[seen].topic != topics::telemetry("n1")) continue;
      v1::TelemetryBatch b;
      if (b.ParseFromString(all[seen].payload)) bySeq.emplace(b.seq(), std::move(b));
    }
  }
  Totals totals() const {
    Totals t;
    for (const auto& [seq, b] : bySeq)
      for (const auto& w : b.windows())
        for (const auto& sr : w.series()) {
          if (sr.measurement() != "e2e" || sr.field() != "value") continue;
          t.count += sr.count();
          t.sum += sr.sum();
          t.min = std::min(t.min, sr.min());
          t.max = std::max(t.max, sr.max());
        }
    return t;
  }
};

// Someone (the agent) has bound 127.0.0.1:port: read from /proc/net/udp, never by binding it ourselves
// (that would race with the agent's own bind).
bool udpPortTaken(unsigned port) {
  std::ifstream in("/proc/net/udp");
  char want[16];
  std::snprintf(want, sizeof want, "0100007F:%04X", port);
  std::string line;
  while (std::getline(in, line))
    if (line.find(want) != std::string::npos) return true;
  return false;
}

void sendValues(UdpSender& udp, int from, int to) {
  for (int v = from; v < to; v += 100) {
    std::string dg;
    for (int i = v; i < std::min(v + 100, to); ++i) dg += "e2e,site=lab value=" + std::to_string(i) + "\n";
    REQUIRE(udp.send(dg));
    std::this_thread::sleep_for(2ms);
  }
}

}  // namespace

TEST_CASE("broker down and the agent killed with SIGKILL while batches wait in its spool: every seq arrives, in "
          "order, with no gap, and no sample is lost") {
  const unsigned port = static_cast<unsigned>(freeLoopbackPort());
  NodeFixture n(NodeFixtureOptions{.telemetryUdpPort = port,
                                   .telemetryExtra = "window_seconds = 1\ncollect_seconds = 1\nhost = false\n",
                                   .brokerPersistence = true});
  // The hub's subscriber has a persistent session, as a hub's ingest would: what the agent drains while
  // the subscriber is still reconnecting after the broker's restart waits for it at the broker.
  MqttClient hub{g_mosquitto, MqttClientOptions{.clientId = "hub-ingest-" + std::to_string(::getpid()),
                                                .caFile = n.ca.caFile(),
                                                .cert = n.hubCert(),
                                                .cleanSession = false}};
  REQUIRE(hub.connect("127.0.0.1", n.broker.port()));
  REQUIRE(hub.subscribe(topics::telemetry("n1")));
  n.startAll();
  HubView view;
  UdpSender udp(port);
  // Online and forwarding: the first 1,000 values arrive.
  auto until = [&](std::uint64_t count, std::chrono::seconds timeout) {
    return waitFor(
        [&] {
          view.update(hub);
          return view.totals().count >= count;
        },
        timeout);
  };
  REQUIRE_MESSAGE(waitFor([&] { return udpPortTaken(port); }, 20s), n.diagnostics());
  sendValues(udp, 0, 1000);
  REQUIRE_MESSAGE(until(1000, 30s), n.diagnostics());
  const std::uint64_t firstSeq = view.bySeq.begin()->first;

  // The broker goes away; 1,000 more values go into the spool, window by window.
  n.broker.stop();
  sendValues(udp, 1000, 2000);
  std::this_thread::sleep_for(3s);  // three windows close, each spooled with its fdatasync
  // The agent dies mid-stream, without a chance to flush anything, and comes back on the same spool.
  n.agent.signal(SIGKILL);
  n.agent.wait(10s);
  n.startAgent();
  REQUIRE_MESSAGE(waitFor([&] { return udpPortTaken(port); }, 20s), n.diagnostics());
  sendValues(udp, 2000, 3000);
  std::this_thread::sleep_for(3s);

  // The broker returns: the agent drains its spool, oldest first, a record removed only on its PUBACK.
  n.broker.restart();
  CHECK_MESSAGE(until(3000, 60s), n.diagnostics(), "\n--- broker:\n", n.broker.log());
  std::this_thread::sleep_for(2s);  // anything more would be a duplicate sample
  view.update(hub);
  auto t = view.totals();
  INFO(n.diagnostics());
  CHECK(t.count == 3000);
  CHECK(t.sum == doctest::Approx(4'498'500.0).epsilon(1e-12));  // 0 + 1 + ... + 2999
  CHECK(t.min == 0);
  CHECK(t.max == 2999);
  // No gap: every seq from the first to the last, each once.
  const std::uint64_t lastSeq = view.bySeq.rbegin()->first;
  CHECK(view.bySeq.size() == lastSeq - firstSeq + 1);
  CHECK(view.bySeq.begin()->first == firstSeq);
  // In order: the hub received them with rising seq (duplicates aside).
  std::uint64_t prev = 0;
  bool ordered = true;
  for (const auto& m : hub.received()) {
    if (m.topic != topics::telemetry("n1")) continue;
    v1::TelemetryBatch b;
    if (!b.ParseFromString(m.payload)) continue;
    if (b.seq() < prev) ordered = false;
    prev = std::max(prev, b.seq());
  }
  CHECK(ordered);
}

TEST_CASE("a spool on a 1 MiB file system fills while the hub is away: rollups, then counted drops, and the agent "
          "keeps running and reports them") {
  const unsigned port = static_cast<unsigned>(freeLoopbackPort());
  // Small segments, and a fifth of the file system kept free, so that a rollup of the oldest segments has
  // room to be written before they go.
  NodeFixture n(NodeFixtureOptions{.telemetryUdpPort = port,
                                   .telemetryExtra = "window_seconds = 1\ncollect_seconds = 1\nhost = false\n"
                                                     "spool_segment_bytes = 65536\nspool_reserve_percent = 20\n"});
  // The spool directory the fixture configures, on a tmpfs of its own.
  std::filesystem::create_directories(n / "spool");
  REQUIRE_MESSAGE(::mount("tmpfs", (n / "spool").c_str(), "tmpfs", 0, "size=1m,mode=0755") == 0, std::strerror(errno));
  struct Unmount {
    std::filesystem::path where;
    ~Unmount() { ::umount2(where.c_str(), MNT_DETACH); }
  } unmount{n / "spool"};
  MqttClient hub{g_mosquitto, MqttClientOptions{.caFile = n.ca.caFile(), .cert = n.hubCert()}};
  REQUIRE(hub.connect("127.0.0.1", n.broker.port()));
  REQUIRE(hub.subscribe(topics::telemetry("n1")));
  n.startAll();
  REQUIRE_MESSAGE(waitFor([&] { return udpPortTaken(port); }, 20s), n.diagnostics());

  // The hub away; every second 200 series seen in every window (merging windows into a rollup shrinks
  // them) and 1,000 seen only in that one (it cannot): 16 windows of about 100 KiB into 800 KiB.
  n.broker.stop();
  UdpSender udp(port);
  for (int w = 0; w < 16; ++w) {
    for (int d = 0; d < 12; ++d) {
      std::string dg;
      for (int i = 0; i < 100; ++i) {
        const int id = d * 100 + i;
        dg += (id < 200 ? "fill,id=s" + std::to_string(id)
                        : "fill,window=w" + std::to_string(w) + ",id=s" + std::to_string(id)) +
              " value=" + std::to_string(i) + "\n";
      }
      REQUIRE(udp.send(dg));
      std::this_thread::sleep_for(2ms);
    }
    std::this_thread::sleep_for(900ms);
    REQUIRE_MESSAGE(n.agent.running(), n.diagnostics());
  }
  struct statvfs fs {};
  REQUIRE(::statvfs((n / "spool").c_str(), &fs) == 0);
  CHECK(fs.f_bavail * fs.f_frsize > 0);  // the reserve: the spool never takes the last byte

  // The hub back: the loss is reported in the batches that follow, and the agent serves on.
  n.broker.restart();
  std::uint64_t rolledUp = 0, dropped = 0, droppedSamples = 0, batches = 0;
  std::size_t seen = 0;
  waitFor(
      [&] {
        auto all = hub.received();
        for (; seen < all.size(); ++seen) {
          v1::TelemetryBatch b;
          if (all[seen].topic != topics::telemetry("n1") || !b.ParseFromString(all[seen].payload)) continue;
          ++batches;
          rolledUp += b.loss().spool_rolled_up_records();
          dropped += b.loss().spool_dropped_records();
          droppedSamples += b.loss().spool_dropped_samples();
        }
        return rolledUp > 0 && dropped > 0;
      },
      60s);
  INFO(n.diagnostics());
  INFO("batches at the hub: ", batches, "; broker:\n", n.broker.log());
  CHECK(rolledUp > 0);
  CHECK(dropped > 0);
  CHECK(droppedSamples > 0);
  CHECK(n.agent.running());
  auto [rc, out] = n.ctl({"ping", "n1"}, 20);
  CHECK_MESSAGE(rc == 0, out);
}
