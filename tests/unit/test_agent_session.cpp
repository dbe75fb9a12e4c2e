#include <doctest/doctest.h>

#include "outrider/agent/config.hpp"
#include "outrider/agent/hub_session.hpp"
#include "outrider/agent/mqtt.hpp"
#include "outrider/common/config.hpp"
#include "support/process.hpp"

#include <fstream>

using namespace outrider::agent;

TEST_CASE("broker URLs") {
  auto a = BrokerUrl::parse("mqtts://hub1.example.net:8884");
  REQUIRE(a.ok());
  CHECK(a->host == "hub1.example.net");
  CHECK(a->port == 8884);
  CHECK(a->tls);
  auto b = BrokerUrl::parse("mqtt://127.0.0.1");
  REQUIRE(b.ok());
  CHECK(b->port == 1883);
  CHECK_FALSE(b->tls);
  CHECK(BrokerUrl::parse("mqtts://[::1]:9000")->host == "::1");
  CHECK(BrokerUrl::parse("mqtts://h")->port == 8883);
  for (const char* bad : {"http://h:1", "mqtts://", "mqtts://h:0", "mqtts://h:70000", "mqtts://h:x", "mqtts://h/p", "h:1"})
    CHECK_MESSAGE(!BrokerUrl::parse(bad).ok(), bad);
}

TEST_CASE("backoff: full jitter under an exponential cap") {
  std::mt19937_64 rng(42);
  using ms = std::chrono::milliseconds;
  for (unsigned attempt = 0; attempt < 20; ++attempt) {
    ms cap = std::min<ms>(ms(500) * (1ll << std::min(attempt, 20u)), ms(60'000));
    ms maxSeen{0};
    for (int i = 0; i < 200; ++i) {
      auto d = backoffDelay(attempt, ms(500), ms(60'000), rng);
      CHECK(d >= ms(0));
      CHECK(d <= cap);
      maxSeen = std::max(maxSeen, d);
    }
    CHECK(maxSeen > cap / 2);  // jitter spans the range, not a fixed value
  }
}

namespace {
const char* kGood = R"(
[node]
id = "n1"
state_dir = "/var/lib/outrider"
[hub]
brokers = ["mqtts://hub-a:8883", "mqtts://hub-b:8883"]
cafile = "/etc/outrider/ca.crt"
certfile = "/etc/outrider/node.crt"
keyfile = "/var/lib/outrider/node.key"
backoff_max_s = 30
[commands]
operator_keys = ["ed25519:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="]
)";
std::string errorOf(const std::string& text) {
  try {
    (void)AgentConfig::parse(text, "agent.toml");
  } catch (const outrider::ConfigError& e) {
    return e.what();
  }
  return {};
}
}  // namespace

TEST_CASE("agent config") {
  auto c = AgentConfig::parse(kGood, "agent.toml");
  CHECK(c.nodeId == "n1");
  CHECK(c.hub.brokers.size() == 2);
  CHECK(c.hub.backoffMax == std::chrono::seconds(30));
  CHECK(c.hub.backoffInitial == std::chrono::milliseconds(500));

  std::string typo = kGood;
  typo.replace(typo.find("backoff_max_s"), 13, "backof_max_s");
  auto e = errorOf(typo);
  CHECK(e.find("agent.toml:10") != std::string::npos);
  CHECK(e.find("hub.backof_max_s") != std::string::npos);

  std::string wrongType = kGood;
  wrongType.replace(wrongType.find("30"), 2, "\"30\"");
  e = errorOf(wrongType);
  CHECK(e.find("agent.toml:10") != std::string::npos);
  CHECK(e.find("hub.backoff_max_s") != std::string::npos);

  std::string plain = kGood;
  plain.replace(plain.find("mqtts://hub-a"), 13, "mqtt://hub-a");
  CHECK(errorOf(plain).find("not TLS") != std::string::npos);

  std::string badNode = kGood;
  badNode.replace(badNode.find("\"n1\""), 4, "\"n/1\"");
  CHECK(errorOf(badNode).find("node.id") != std::string::npos);
}

TEST_CASE("node config: unprovisioned until provisioned.toml completes it; the package's file wins") {
  outrider::test::TempDir dir("nodecfg");
  auto write = [](const std::filesystem::path& p, const std::string& text) {
    std::ofstream(p) << text;
  };
  auto agentToml = dir / "agent.toml";
  write(agentToml, "[node]\nstate_dir = \"" + dir.path().string() + "\"\n[hub]\nkeepalive_s = 45\n[log]\nlevel = \"info\"\n");
  CHECK_FALSE(loadNodeConfig(agentToml).has_value());

  // A typo in the package's file is refused even while waiting.
  write(dir / "typo.toml", "[node]\nstate_dir = \"" + dir.path().string() + "\"\n[hub]\nkeepalive = 45\n");
  CHECK_THROWS_AS((void)loadNodeConfig(dir / "typo.toml"), outrider::ConfigError);

  write(provisionedFile(dir.path()),
        "[node]\nid = \"edge-7\"\nprovisioned_by = \"bundle:abc\"\n[hub]\nbrokers = [\"mqtts://hub-a:8883\"]\n"
        "cafile = \"/x/ca.crt\"\ncertfile = \"/x/node.crt\"\nkeyfile = \"/x/node.key\"\nkeepalive_s = 90\n"
        "[commands]\noperator_keys = [\"ed25519:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\"]\n");
  auto c = loadNodeConfig(agentToml);
  REQUIRE(c.has_value());
  CHECK(c->nodeId == "edge-7");
  CHECK(c->hub.keepaliveS == 45);  // agent.toml's own value
  CHECK(c->hub.brokers.size() == 1);
  CHECK(c->stateDir == dir.path());

  // A provisioned file that leaves out the operator keys is an error naming the missing key.
  write(provisionedFile(dir.path()), "[node]\nid = \"edge-7\"\n[hub]\nbrokers = [\"mqtt://127.0.0.1:1\"]\nallow_plaintext = true\n");
  try {
    (void)loadNodeConfig(agentToml);
    FAIL("operator keys are required once the node has an id");
  } catch (const outrider::ConfigError& e) {
    CHECK(std::string(e.what()).find("commands.operator_keys") != std::string::npos);
  }
  // A bad value in the provisioned file names that file.
  write(provisionedFile(dir.path()), "[node]\nid = \"bad id!\"\n");
  try {
    (void)loadNodeConfig(agentToml);
    FAIL("a bad node id must be refused");
  } catch (const outrider::ConfigError& e) {
    CHECK(std::string(e.what()).find("provisioned.toml:2") != std::string::npos);
  }
}
