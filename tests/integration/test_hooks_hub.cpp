// `outriderctl hook run` end to end: the real outriderctl -> a real Mosquitto (mutual TLS + ACL) -> the
// real outrider-agent, which runs the hooks in a temporary hooks directory, replies with each result
// and publishes one hook.result NodeEvent per hook. And a trial boot: the real boot watcher over a real
// GRUB environment block (grub-editenv) waits for the real agent's health verdict.
#include <doctest/doctest.h>

#include <sys/wait.h>

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

std::vector<v1::NodeEvent> eventsOf(const MqttClient& hub, std::string_view kindPrefix) {
  std::vector<v1::NodeEvent> out;
  for (const auto& m : hub.received()) {
    if (m.topic != topics::events("n1")) continue;
    v1::NodeEvent ev;
    if (ev.ParseFromString(m.payload) && ev.kind().starts_with(kindPrefix)) out.push_back(ev);
  }
  return out;
}

std::vector<v1::NodeEvent> hookEvents(const MqttClient& hub) { return eventsOf(hub, "hook.result"); }

std::string slurp(const fs::path& p) {
  std::ifstream in(p);
  return std::string(std::istreambuf_iterator<char>(in), {});
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

namespace {

// A GRUB environment block in the middle of a trial boot of slot b (the boot loader counted 1 of 3).
fs::path trialGrubenv(const TempDir& dir) {
  auto env = dir / "grubenv";
  REQUIRE(run({"grub-editenv", env.string(), "create"}, dir / "grub.log") == 0);
  REQUIRE(run({"grub-editenv", env.string(), "set", "saved_entry=keep-me", "outrider_slot=b", "outrider_prev_slot=a",
               "upgrade_available=1", "boot_count=1", "boot_limit=3"},
              dir / "grub.log") == 0);
  return env;
}

std::string grubList(const fs::path& env) {
  auto log = env.parent_path() / "list.out";
  fs::remove(log);
  REQUIRE(run({"grub-editenv", env.string(), "list"}, log) == 0);
  return slurp(log);
}

}  // namespace

TEST_CASE("a trial boot: the boot watcher commits the GRUB slot on the agent's healthy verdict, and the hub hears it") {
  TempDir dir("boot-ok");
  auto env = trialGrubenv(dir);
  writeHook(dir / "hooks" / "boot-ok.d", "10-record", "echo \"$OUTRIDER_EVENT slot $OUTRIDER_SLOT\" > " + (dir / "ran").string());
  NodeFixture n(NodeFixtureOptions{.telemetryExtra = "[hooks]\ndir = \"" + (dir / "hooks").string() +
                                                     "\"\n[boot]\nbackend = \"grub\"\ngrubenv = \"" + env.string() +
                                                     "\"\nhealth_deadline_s = 60\n"});
  MqttClient hub{g_mosquitto, MqttClientOptions{.caFile = n.ca.caFile(), .cert = n.hubCert()}};
  REQUIRE(hub.connect("127.0.0.1", n.broker.port()));
  REQUIRE(hub.subscribe(topics::events("n1")));
  n.startAll();
  Process watch({binary("outrider-agent").string(), "boot-watch", "--config", (n / "agent.toml").string()},
                dir / "watch.log");
  auto st = watch.wait(90s);
  REQUIRE_MESSAGE(st.has_value(), slurp(dir / "watch.log"), n.diagnostics());
  CHECK_MESSAGE((WIFEXITED(*st) && WEXITSTATUS(*st) == 0), slurp(dir / "watch.log"), n.diagnostics());
  CHECK(slurp(dir / "watch.log").find("trial boot of slot b") != std::string::npos);

  auto list = grubList(env);
  CHECK(list.find("outrider_slot=b") != std::string::npos);
  CHECK(list.find("upgrade_available=0") != std::string::npos);
  CHECK(list.find("boot_count=0") != std::string::npos);
  CHECK(list.find("saved_entry=keep-me") != std::string::npos);  // the rest of the block is left alone
  CHECK(slurp(dir / "ran") == "boot-ok slot b\n");
  REQUIRE_MESSAGE(waitFor([&] { return !eventsOf(hub, "boot.").empty(); }, 15s), n.diagnostics());
  auto ev = eventsOf(hub, "boot.").front();
  CHECK(ev.kind() == "boot.committed");
  CHECK(ev.subject() == "slot b");
  CHECK(ev.detail().find("slot b committed: healthy") != std::string::npos);
  CHECK(ev.detail().find("boot-ok: 1 ran, ok") != std::string::npos);
}

TEST_CASE("a trial boot whose netd never answers stays uncommitted, and the hub hears why") {
  TempDir dir("boot-bad");
  auto env = trialGrubenv(dir);
  NodeFixture n(NodeFixtureOptions{.telemetryExtra = "[boot]\nbackend = \"grub\"\ngrubenv = \"" + env.string() +
                                                     "\"\nhealth_deadline_s = 10\n"});
  MqttClient hub{g_mosquitto, MqttClientOptions{.caFile = n.ca.caFile(), .cert = n.hubCert()}};
  REQUIRE(hub.connect("127.0.0.1", n.broker.port()));
  REQUIRE(hub.subscribe(topics::events("n1")));
  n.startVmm();
  n.startAgent();  // and no netd
  Process watch({binary("outrider-agent").string(), "boot-watch", "--config", (n / "agent.toml").string()},
                dir / "watch.log");
  auto st = watch.wait(90s);
  REQUIRE_MESSAGE(st.has_value(), slurp(dir / "watch.log"), n.diagnostics());
  CHECK_MESSAGE((WIFEXITED(*st) && WEXITSTATUS(*st) == 1), slurp(dir / "watch.log"), n.diagnostics());
  auto list = grubList(env);
  CHECK(list.find("upgrade_available=1") != std::string::npos);  // the boot loader's counter decides next boot
  CHECK(list.find("boot_count=1") != std::string::npos);
  REQUIRE_MESSAGE(waitFor([&] { return !eventsOf(hub, "boot.").empty(); }, 15s), n.diagnostics());
  auto ev = eventsOf(hub, "boot.").front();
  CHECK(ev.kind() == "boot.unhealthy");
  CHECK_MESSAGE(ev.detail().find("netd UNREACHABLE") != std::string::npos, ev.detail());
  CHECK(ev.detail().find("the boot counter decides at the next boot") != std::string::npos);
}
