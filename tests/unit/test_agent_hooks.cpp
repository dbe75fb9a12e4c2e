// The agent's side of hooks: the `hook` command's checks, [hooks] in agent.toml, and how a run is turned
// into the reply's HookRunResult and the hook.result event detail.
#include <doctest/doctest.h>

#include "outrider/agent/config.hpp"
#include "outrider/agent/hook_report.hpp"
#include "outrider/agent/processor.hpp"
#include "outrider/common/config.hpp"

using namespace outrider;
using namespace outrider::agent;
using namespace std::chrono_literals;

namespace {

const std::string kBase = R"(
[node]
id = "n1"
[hub]
brokers = ["mqtts://hub-a:8883"]
cafile = "/etc/outrider/ca.crt"
certfile = "/etc/outrider/node.crt"
keyfile = "/var/lib/outrider/node.key"
[commands]
operator_keys = ["ed25519:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="]
)";

std::string errorOf(const std::string& text) {
  try {
    (void)AgentConfig::parse(text, "agent.toml");
  } catch (const ConfigError& e) {
    return e.what();
  }
  return {};
}

hooks::HookResult hook(std::string name, int exit, std::string output, std::chrono::milliseconds took = 12ms) {
  hooks::HookResult h;
  h.name = std::move(name);
  h.exitCode = exit;
  h.output = std::move(output);
  h.duration = took;
  return h;
}

}  // namespace

TEST_CASE("[hooks] dir and timeout_s, with defaults and bounds") {
  auto d = AgentConfig::parse(kBase, "agent.toml");
  CHECK(d.hooksDir == "/etc/outrider/hooks");
  CHECK(d.hookTimeout == 60s);
  auto c = AgentConfig::parse(kBase + "[hooks]\ndir = \"/srv/hooks\"\ntimeout_s = 5\n", "agent.toml");
  CHECK(c.hooksDir == "/srv/hooks");
  CHECK(c.hookTimeout == 5s);
  CHECK(errorOf(kBase + "[hooks]\ndir = \"hooks\"\n").find("hooks.dir") != std::string::npos);
  CHECK(errorOf(kBase + "[hooks]\ntimeout_s = 0\n").find("hooks.timeout_s") != std::string::npos);
  CHECK(errorOf(kBase + "[hooks]\ntimeout = 5\n").find("hooks.timeout") != std::string::npos);  // unknown key
}

TEST_CASE("[boot]: off by default, the backends and their paths, and bad values refused by name") {
  auto d = AgentConfig::parse(kBase, "agent.toml");
  CHECK_FALSE(d.boot.enabled());
  CHECK(d.boot.dir == "/var/lib/outrider/agent/boot");
  auto g = AgentConfig::parse(kBase + "[boot]\nbackend = \"grub\"\ngrubenv = \"/boot/efi/grubenv\"\n"
                                      "health_deadline_s = 60\nreboot_command = [\"/usr/sbin/reboot\"]\n",
                              "agent.toml");
  CHECK(g.boot.enabled());
  CHECK(g.boot.slots.grubenv == "/boot/efi/grubenv");
  CHECK_FALSE(g.boot.countBoots);  // GRUB counts itself
  CHECK(g.boot.healthDeadline == 60s);
  CHECK(g.boot.rebootCommand == std::vector<std::string>{"/usr/sbin/reboot"});
  auto n = AgentConfig::parse(kBase + "[boot]\nbackend = \"none\"\n", "agent.toml");
  CHECK(n.boot.countBoots);  // nothing else counts
  CHECK(n.boot.slots.stateFile == "/var/lib/outrider/agent/boot-slots");
  CHECK(errorOf(kBase + "[boot]\nbackend = \"lilo\"\n").find("boot.backend") != std::string::npos);
  CHECK(errorOf(kBase + "[boot]\nbackend = \"grub\"\ngrubenv = \"grubenv\"\n").find("boot.grubenv") !=
        std::string::npos);
  CHECK(errorOf(kBase + "[boot]\nhealth_deadline_s = 5\n").find("boot.health_deadline_s") != std::string::npos);
  CHECK(errorOf(kBase + "[boot]\nreboot_command = [\"reboot\"]\n").find("boot.reboot_command") !=
        std::string::npos);
  CHECK(errorOf(kBase + "[boot]\ncount = true\n").find("boot.count") != std::string::npos);  // unknown key
  CHECK(errorOf(kBase + "[update]\nroot_dir = \"updater\"\n").find("update.root_dir") != std::string::npos);
  CHECK(errorOf(kBase + "[update]\nprovisioning_key = \"prov.pub\"\n").find("update.provisioning_key") !=
        std::string::npos);
}

TEST_CASE("a hook command is checked before it runs: a known event, OUTRIDER_* variables") {
  v1::CommandBody b;
  b.mutable_hook()->set_event("boot-ok");
  CHECK(checkCommand(b));
  (*b.mutable_hook()->mutable_env())["OUTRIDER_REASON"] = "test";
  CHECK(checkCommand(b));
  b.mutable_hook()->set_event("reboot");
  REQUIRE_FALSE(checkCommand(b));
  CHECK(checkCommand(b).error().message.find("unknown hook event \"reboot\"") != std::string::npos);
  b.mutable_hook()->set_event("pre-update");
  (*b.mutable_hook()->mutable_env())["LD_PRELOAD"] = "/tmp/x.so";
  REQUIRE_FALSE(checkCommand(b));
  CHECK(checkCommand(b).error().message.find("LD_PRELOAD") != std::string::npos);
  // Hooks change the node: journaled with fsync before they run.
  CHECK(changesNode(HookCommand{}));
}

TEST_CASE("a run becomes the reply's HookRunResult; outputs share a budget; names are made printable") {
  hooks::RunResult run;
  run.event = hooks::Event::preUpdate;
  run.hooks.push_back(hook("10-a", 0, std::string(100, 'a')));
  run.hooks.push_back(hook("20-b", 3, std::string(100, 'b') + "\nno space left\n", 40ms));
  run.skipped.push_back({std::string("x\xff\n.sh"), "name does not match [A-Za-z0-9_-]+"});
  run.aborted = true;
  run.abortReason = "aborted by 20-b: exit 3";

  auto p = toProto(run, 150);
  CHECK(p.event() == "pre-update");
  REQUIRE(p.hooks_size() == 2);
  CHECK(p.hooks(0).name() == "10-a");
  CHECK(p.hooks(0).status() == "exit 0");
  CHECK(p.hooks(0).output().size() == 100);
  CHECK_FALSE(p.hooks(0).truncated());
  CHECK(p.hooks(1).exit_code() == 3);
  CHECK(p.hooks(1).duration_ms() == 40);
  CHECK(p.hooks(1).output() == std::string(50, 'b'));
  CHECK(p.hooks(1).truncated());
  REQUIRE(p.skipped_size() == 1);
  CHECK(p.skipped(0).name() == "x??.sh");
  CHECK(p.aborted());
  CHECK(p.summary() == "pre-update: 2 ran, 1 skipped, aborted by 20-b: exit 3");
  v1::HookRunResult back;
  CHECK(back.ParseFromString(p.SerializeAsString()));

  CHECK(hookEventDetail(run.hooks[0]) == "exit 0 in 12 ms: " + std::string(100, 'a'));
  CHECK(hookEventDetail(run.hooks[1]) == "exit 3 in 40 ms: no space left");
  CHECK(hookEventDetail(hook("30-c", 0, "")) == "exit 0 in 12 ms");
}
