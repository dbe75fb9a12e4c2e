// The broker fixture against the real Mosquitto: mutual TLS, the ACL (checked by delivery, because
// Mosquitto grants the SUBACK for forbidden filters and drops at delivery), and restart on the same port.
#include <doctest/doctest.h>

#include <algorithm>

#include "support/mqtt_fixture.hpp"
#include "support/process.hpp"

using namespace outrider::test;
using namespace std::chrono_literals;

namespace {

// libmosquitto's process-wide init, once for this test program (doctest owns main).
const MosquittoLib kMosquitto;

struct Env {
  TempDir tmp{"broker"};
  TestCa ca{tmp / "pki"};
  Broker broker{tmp / "broker", ca, BrokerOptions{.plainListener = true}};
  CertPair hubCert = ca.issueClient("hub");
  CertPair n1Cert = ca.issueClient("n1");
  CertPair n2Cert = ca.issueClient("n2");

  std::unique_ptr<MqttClient> client(const CertPair& cert) {
    auto c = std::make_unique<MqttClient>(kMosquitto, MqttClientOptions{.caFile = ca.caFile(), .cert = cert});
    REQUIRE_MESSAGE(c->connect("127.0.0.1", broker.port()), c->lastError() << "\n" << broker.log());
    return c;
  }
};

bool hasTopic(const std::vector<MqttMessage>& msgs, std::string_view topic) {
  return std::any_of(msgs.begin(), msgs.end(), [&](const MqttMessage& m) { return m.topic == topic; });
}

}  // namespace

TEST_CASE_FIXTURE(Env, "a node publishes on its own topic over mutual TLS and the hub receives it") {
  CHECK(broker.url() == "mqtts://127.0.0.1:" + std::to_string(broker.port()));
  auto hub = client(hubCert);
  auto n1 = client(n1Cert);
  REQUIRE(hub->subscribe("outrider/v1/#"));
  REQUIRE(n1->publish("outrider/v1/nodes/n1/telemetry", "t-1"));
  auto m = hub->waitMessage("outrider/v1/nodes/n1/telemetry");
  REQUIRE(m);
  CHECK(m->payload == "t-1");
}

TEST_CASE_FIXTURE(Env, "a node's publish on another node's topic is dropped by the ACL") {
  auto hub = client(hubCert);
  auto n1 = client(n1Cert);
  REQUIRE(hub->subscribe("outrider/v1/#"));
  // MQTT 3.1.1 has no negative PUBACK: the broker acknowledges and drops.
  REQUIRE(n1->publish("outrider/v1/nodes/n2/cmd", "forbidden"));
  REQUIRE(n1->publish("outrider/v1/nodes/n1/events", "control"));
  // Same publisher, same QoS: delivery is in order, so once the control message is here the forbidden one
  // would have been here too.
  REQUIRE(hub->waitMessage("outrider/v1/nodes/n1/events"));
  CHECK_FALSE(hasTopic(hub->received(), "outrider/v1/nodes/n2/cmd"));
}

TEST_CASE_FIXTURE(Env, "a node subscribed to another node's topics receives nothing of them") {
  auto hub = client(hubCert);
  auto n1 = client(n1Cert);
  auto n2 = client(n2Cert);
  REQUIRE(n1->subscribe("outrider/v1/nodes/n2/#"));  // granted by Mosquitto; filtered at delivery
  REQUIRE(n1->subscribe("outrider/v1/nodes/n1/#"));
  REQUIRE(n2->subscribe("outrider/v1/nodes/n2/#"));
  REQUIRE(hub->publish("outrider/v1/nodes/n2/cmd", "secret"));
  REQUIRE(hub->publish("outrider/v1/nodes/n1/cmd", "control"));
  auto secret = n2->waitMessage("outrider/v1/nodes/n2/cmd");  // it was published and is deliverable
  REQUIRE(secret);
  CHECK(secret->payload == "secret");
  REQUIRE(n1->waitMessage("outrider/v1/nodes/n1/cmd"));
  CHECK_FALSE(hasTopic(n1->received(), "outrider/v1/nodes/n2/cmd"));
}

TEST_CASE_FIXTURE(Env, "a client without a certificate, or with one from another CA, cannot connect") {
  MqttClient noCert(kMosquitto, MqttClientOptions{.caFile = ca.caFile()});
  CHECK_FALSE(noCert.connect("127.0.0.1", broker.port()));
  CHECK_FALSE(noCert.connected());

  TestCa other(tmp / "other-pki");
  MqttClient foreign(kMosquitto, MqttClientOptions{.caFile = ca.caFile(), .cert = other.issueClient("n1")});
  CHECK_FALSE(foreign.connect("127.0.0.1", broker.port()));
  CHECK_FALSE(foreign.connected());

  // Anonymous plain TCP is refused on the TLS port but allowed on the plain listener.
  MqttClient plainOnTls(kMosquitto);
  CHECK_FALSE(plainOnTls.connect("127.0.0.1", broker.port(), 5s));
  MqttClient plain(kMosquitto);
  CHECK(plain.connect("127.0.0.1", broker.plainPort()));
  CHECK(broker.plainUrl() == "mqtt://127.0.0.1:" + std::to_string(broker.plainPort()));
}

TEST_CASE_FIXTURE(Env, "restart keeps the port and clients reconnect") {
  auto hub = client(hubCert);
  REQUIRE(hub->subscribe("outrider/v1/#"));
  const int port = broker.port();
  const pid_t firstPid = broker.pid();

  broker.restart();
  CHECK(broker.port() == port);
  CHECK(broker.pid() != firstPid);
  CHECK(broker.running());
  // The existing client's network thread reconnects by itself and subscribes again.
  REQUIRE_MESSAGE(hub->waitConnectCount(2, 15s), hub->lastError());
  auto n1 = client(n1Cert);
  REQUIRE(n1->publish("outrider/v1/nodes/n1/status", "after-restart"));
  auto m = hub->waitMessage("outrider/v1/nodes/n1/status");
  REQUIRE(m);
  CHECK(m->payload == "after-restart");

  SUBCASE("and after kill -9 as well") {
    broker.kill9();
    CHECK_FALSE(broker.running());
    broker.restart();
    CHECK(broker.port() == port);
    REQUIRE_MESSAGE(hub->waitConnectCount(3, 15s), hub->lastError() << "\n" << hub->libraryLog() << broker.log());
    auto n2 = client(n2Cert);
    REQUIRE(n2->publish("outrider/v1/nodes/n2/status", "after-kill"));
    CHECK(hub->waitMessage("outrider/v1/nodes/n2/status"));
  }
}
