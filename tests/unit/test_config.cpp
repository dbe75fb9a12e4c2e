#include <doctest/doctest.h>

#include "outrider/common/config.hpp"

using outrider::ConfigError;
using outrider::ConfigReader;

namespace {
std::string errorOf(std::string_view text, auto&& use) {
  try {
    auto r = ConfigReader::parse(text, "agent.toml");
    use(r);
    r.finish();
  } catch (const ConfigError& e) {
    return e.what();
  }
  return {};
}
}  // namespace

TEST_CASE("config values with defaults and bounds") {
  auto r = ConfigReader::parse("[hub]\nbrokers = [\"mqtts://a:1\", \"mqtts://b:2\"]\nkeepalive_s = 30\n", "x.toml");
  CHECK(r.strList("hub.brokers", {}) == std::vector<std::string>{"mqtts://a:1", "mqtts://b:2"});
  CHECK(r.integer("hub.keepalive_s", 60, 5, 3600) == 30);
  CHECK(r.integer("hub.missing", 7, 0, 10) == 7);
  CHECK(r.str("node.id", "dflt") == "dflt");
  r.finish();
}

TEST_CASE("a typo'd key names file, line and key") {
  auto msg = errorOf("[hub]\nkeepalive_s = 30\nbrokerz = [\"x\"]\n", [](ConfigReader& r) {
    (void)r.integer("hub.keepalive_s", 60, 5, 3600);
    (void)r.strList("hub.brokers", {});
  });
  CHECK(msg.find("agent.toml:3") != std::string::npos);
  CHECK(msg.find("hub.brokerz") != std::string::npos);
  CHECK(msg.find("unknown key") != std::string::npos);
}

TEST_CASE("an unknown section is refused") {
  auto msg = errorOf("[hubb]\nx = 1\n", [](ConfigReader&) {});
  CHECK(msg.find("agent.toml:") != std::string::npos);
  CHECK(msg.find("hubb") != std::string::npos);
}

TEST_CASE("a wrong type names file, line and key") {
  auto msg = errorOf("\n[hub]\nkeepalive_s = \"thirty\"\n", [](ConfigReader& r) {
    (void)r.integer("hub.keepalive_s", 60, 5, 3600);
  });
  CHECK(msg.find("agent.toml:3") != std::string::npos);
  CHECK(msg.find("hub.keepalive_s") != std::string::npos);
  CHECK(msg.find("expected an integer") != std::string::npos);
}

TEST_CASE("out of range and wrong element type") {
  CHECK(errorOf("[hub]\nkeepalive_s = 1\n", [](ConfigReader& r) { (void)r.integer("hub.keepalive_s", 60, 5, 3600); })
            .find("out of range") != std::string::npos);
  CHECK(errorOf("[hub]\nbrokers = [1]\n", [](ConfigReader& r) { (void)r.strList("hub.brokers", {}); })
            .find("agent.toml:2") != std::string::npos);
}

TEST_CASE("syntax error names file and line") {
  auto msg = errorOf("[hub]\nkeepalive_s = = 3\n", [](ConfigReader&) {});
  CHECK(msg.rfind("agent.toml:2:", 0) == 0);
}

TEST_CASE("missing required key") {
  auto msg = errorOf("[hub]\n", [](ConfigReader& r) { (void)r.requireStr("node.id"); });
  CHECK(msg.find("node.id") != std::string::npos);
  CHECK(msg.find("required") != std::string::npos);
}

TEST_CASE("a value the caller refuses is reported with its line") {
  auto msg = errorOf("[node]\n\nid = \"a/b\"\n", [](ConfigReader& r) {
    if (r.str("node.id", "") == "a/b") r.fail("node.id", "bad characters");
  });
  CHECK(msg == "agent.toml:3: key 'node.id': bad characters");
  auto missing = errorOf("[node]\n", [](ConfigReader& r) { r.fail("node.id", "required"); });
  CHECK(missing == "agent.toml: key 'node.id': required");
}

TEST_CASE("fillFrom takes what the upper document does not set, and names the lower file in errors") {
  auto upper = ConfigReader::parse("[hub]\nkeepalive_s = 30\n", "agent.toml");
  upper.fillFrom(ConfigReader::parse("[node]\nid = \"n1\"\n[hub]\nkeepalive_s = 99\nbrokers = [\"a\"]\nbackoff_max_s = \"x\"\n",
                                     "provisioned.toml"));
  CHECK(upper.str("node.id", "") == "n1");
  CHECK(upper.integer("hub.keepalive_s", 60, 5, 3600) == 30);  // the upper file wins
  CHECK(upper.strList("hub.brokers", {}) == std::vector<std::string>{"a"});
  try {
    (void)upper.integer("hub.backoff_max_s", 60, 1, 3600);
    FAIL("a string where an integer belongs must be refused");
  } catch (const ConfigError& e) {
    CHECK(std::string(e.what()).find("provisioned.toml:6") != std::string::npos);
  }
}
