// `outriderctl hook run` end to end: the real outriderctl -> a real Mosquitto (mutual TLS + ACL) -> the
// real outrider-agent, which runs the hooks in a temporary hooks directory, replies with each result
// and publishes one hook.result NodeEvent per hook.
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>

#include "outrider/common/topics.hpp"
#include "outrider/v1/hub.pb.h"
#include "support/mqtt_fixture.hpp"
#include "support/node_fixture.hpp"
#include "support/process.hpp"

using namespace outrider;
using namespace outrider::test;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

MosquittoLib g_mosquitto;

void writeHook(const fs::path& dir, const std::string& name, const std::string& body) {
  fs::create_directories(dir);
  std::ofstream(dir / name) << "#!/bin/sh\n" << body << "\n";
  fs::permissions(dir / name, static_cast<fs::perms>(0755));
}

std::vector<v1::NodeEvent> hookEvents(const MqttClient& hub) {
  std::vector<v1::NodeEvent> out;
  for (const auto& m : hub.received()) {
    if (m.topic != topics::events("n1")) continue;
    v1::NodeEvent ev;
    if (ev.ParseFromString(m.payload) && ev.kind() == "hook.result") out.push_back(ev);
  }
  return out;
}

}  // namespace

TEST_CASE("hook run through the hub: per-hook results in the reply, pre-* abort, hook.result events") {
  TempDir hooks("hookdir");
  auto marker = hooks / "30-ran";
  writeHook(hooks / "boot-ok.d", "10-hello", "echo \"hello from $OUTRIDER_NODE: $OUTRIDER_REASON ($OUTRIDER_EVENT)\"");
  writeHook(hooks / "boot-ok.d", "20-not.run", "exit 1");  // skipped: a dot in the name
  writeHook(hooks / "pre-update.d", "10-ok", "echo ok");
  writeHook(hooks / "pre-update.d", "20-fail", "echo 'no space left' >&2\nexit 3");
  writeHook(hooks / "pre-update.d", "30-after", "touch " + marker.string());

  // [hooks] goes after the fixture's [telemetry] keys, as a table of its own.
  NodeFixture n(NodeFixtureOptions{.telemetryExtra = "[hooks]\ndir = \"" + hooks.path().string() + "\"\ntimeout_s = 10\n"});
  MqttClient hub{g_mosquitto, MqttClientOptions{.caFile = n.ca.caFile(), .cert = n.hubCert()}};
  REQUIRE(hub.connect("127.0.0.1", n.broker.port()));
  REQUIRE(hub.subscribe(topics::events("n1")));
  REQUIRE(hub.subscribe(topics::status("n1")));
  n.startAgent();
  REQUIRE_MESSAGE(waitFor(
                      [&] {
                        for (const auto& m : hub.received())
                          if (m.topic == topics::status("n1") && !m.payload.empty()) return true;
                        return false;
                      },
                      20s),
                  n.diagnostics());

  {
    auto [rc, out] = n.ctl({"hook", "run", "n1", "boot-ok", "OUTRIDER_REASON=e2e test"});
    INFO(out);
    INFO(n.diagnostics());
    CHECK(rc == 0);
    CHECK(out.find("10-hello") != std::string::npos);
    CHECK(out.find("exit 0") != std::string::npos);
    CHECK(out.find("hello from n1: e2e test (boot-ok)") != std::string::npos);
    CHECK(out.find("skipped: 20-not.run (name does not match [A-Za-z0-9_-]+)") != std::string::npos);
    CHECK(out.find("boot-ok: 1 ran, 1 skipped, ok") != std::string::npos);
  }
  {
    auto [rc, out] = n.ctl({"--json", "hook", "run", "n1", "pre-update", "OUTRIDER_VERSION_TO=9.9"});
    INFO(out);
    CHECK(rc == 1);
    CHECK(out.find("\"aborted\":true") != std::string::npos);
    CHECK(out.find("\"summary\":\"pre-update: 2 ran, aborted by 20-fail: exit 3\"") != std::string::npos);
    CHECK(out.find("\"output\":\"no space left\\n\"") != std::string::npos);
    CHECK_FALSE(fs::exists(marker));  // the hook after the failing one did not run
  }
  {
    // Checked before anything is signed or sent.
    auto [rc, out] = n.ctl({"hook", "run", "n1", "pre-install"});
    CHECK(rc == 2);
    CHECK(out.find("unknown hook event \"pre-install\"") != std::string::npos);
    auto [rc2, out2] = n.ctl({"hook", "run", "n1", "boot-ok", "PATH=/tmp"});
    CHECK(rc2 == 2);
    CHECK(out2.find("names must be OUTRIDER_") != std::string::npos);
  }

  // One hook.result event per hook that ran: 10-hello, then 10-ok and 20-fail.
  REQUIRE_MESSAGE(waitFor([&] { return hookEvents(hub).size() >= 3; }, 10s), n.diagnostics());
  auto evs = hookEvents(hub);
  REQUIRE(evs.size() == 3);
  CHECK(evs[0].subject() == "boot-ok/10-hello");
  CHECK(evs[0].source() == "agent");
  CHECK(evs[0].detail().rfind("exit 0 in ", 0) == 0);
  CHECK(evs[0].detail().find(": hello from n1: e2e test (boot-ok)") != std::string::npos);
  CHECK(evs[1].subject() == "pre-update/10-ok");
  CHECK(evs[2].subject() == "pre-update/20-fail");
  CHECK(evs[2].detail().rfind("exit 3 in ", 0) == 0);
  CHECK(evs[2].detail().find("no space left") != std::string::npos);
}
