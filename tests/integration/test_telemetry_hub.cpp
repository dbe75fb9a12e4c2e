// Telemetry end to end: line protocol over UDP into the real outrider-agent, summaries over a real
// Mosquitto (mutual TLS + ACL) to a hub-side subscriber.
#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

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
