// A/B boot slots on a node: the boot watcher (`outrider-agent boot-watch`) over the real `none` backend (a
// checksummed state file), with this test playing the agent's verdict, and the agent's BootCheck against
// fakes of the rest of the agent. Boots are told apart by the boot-id file the test writes.
#include <doctest/doctest.h>

#include <boost/asio/io_context.hpp>
#include <fstream>
#include <thread>

#include "outrider/agent/boot.hpp"
#include "outrider/agent/boot_check.hpp"
#include "outrider/common/atomic_file.hpp"
#include "support/process.hpp"

using namespace outrider;
using namespace outrider::agent;
using namespace outrider::test;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

std::int64_t nowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

void executable(const fs::path& p, const std::string& body) {
  fs::create_directories(p.parent_path());
  std::ofstream(p) << "#!/bin/sh\n" << body << "\n";
  fs::permissions(p, fs::perms::owner_all);
}

std::string slurp(const fs::path& p) {
  auto r = readFile(p);
  return r ? *r : std::string();
}

struct Node {
  TempDir dir{"boot"};
  boot::WatchOptions opts;

  Node(unsigned limit = 3, bool count = true) {
    opts.cfg.slots.backend = "none";
    opts.cfg.slots.stateFile = dir / "state" / "boot-slots";
    opts.cfg.dir = dir / "state" / "boot";
    opts.cfg.bootIdFile = dir / "boot_id";
    opts.cfg.countBoots = count;
    opts.cfg.healthDeadline = 2s;
    opts.hooksDir = dir / "hooks";
    opts.hookTimeout = 5s;
    opts.node = "edge-1";
    opts.verdictGrace = 0ms;
    opts.poll = 10ms;
    fs::create_directories(dir / "state");
    // Each hook appends "<event> <slot>" to a record.
    for (const char* ev : {"boot-ok", "rollback", "pre-reboot"})
      executable(dir / "hooks" / (std::string(ev) + ".d") / "10-record",
                 "echo \"$OUTRIDER_EVENT ${OUTRIDER_SLOT:-} ${OUTRIDER_REASON:-}\" >> " + (dir / "hooks.log").string());
    executable(dir / "reboot", "echo reboot >> " + (dir / "hooks.log").string());
    opts.cfg.rebootCommand = {(dir / "reboot").string()};
    auto slots = hooks::makeBootSlots(opts.cfg.slots);
    REQUIRE(slots);
    REQUIRE((*slots)->initialize(hooks::Slot::a, limit));
  }

  std::unique_ptr<hooks::BootSlots> slots() { return std::move(*hooks::makeBootSlots(opts.cfg.slots)); }
  hooks::BootState state() { return *slots()->read(); }
  void boot(const std::string& id) { std::ofstream(dir / "boot_id") << id << "\n"; }

  /// The watcher for one boot; `verdict` (healthy or not) is written as the agent would once the trial
  /// file appears, or never when nullopt.
  int watch(std::optional<bool> verdict) {
    std::atomic<bool> done{false};
    int rc = -1;
    std::thread t([&] {
      rc = boot::runBootWatch(opts);
      done = true;
    });
    while (verdict && !done) {
      auto trial = boot::readTrial(boot::trialFile(opts.cfg.dir));
      if (trial && *trial) {
        update::Verdict v;
        v.commandId = boot::verdictKey((*trial)->bootId);
        v.healthy = *verdict;
        v.reason = *verdict ? "" : "netd UNREACHABLE";
        v.healthMs = 1200;
        REQUIRE(update::writeState(boot::verdictFile(opts.cfg.dir), v.encode()));
        break;
      }
      std::this_thread::sleep_for(5ms);
    }
    t.join();
    return rc;
  }

  std::optional<boot::Outcome> last() {
    auto o = boot::readOutcome(boot::lastFile(opts.cfg.dir));
    REQUIRE(o);
    return *o;
  }
  std::string hooksLog() { return slurp(dir / "hooks.log"); }
};

}  // namespace

TEST_CASE("the trial and outcome files round-trip, and damaged ones are refused") {
  boot::Trial t{"0b1d", "b", "a", false, "trial boot of slot b (1 of 3)", 100, 200};
  auto back = boot::Trial::decode(t.encode());
  REQUIRE(back);
  CHECK(back->bootId == "0b1d");
  CHECK(back->slot == "b");
  CHECK(back->previous == "a");
  CHECK(back->deadlineAtMs == 200);
  CHECK_FALSE(boot::Trial::decode("format=1\nboot=x\nslot=c\nprevious=a\n"));  // no slot c
  CHECK_FALSE(boot::Trial::decode("format=1\nslot=a\nprevious=b\n"));          // no boot id
  CHECK_FALSE(boot::Trial::decode("format=2\nboot=x\nslot=a\nprevious=b\n"));
  CHECK_FALSE(boot::Trial::decode("format=1\nboot=x\nslot=a\nprevious=b\ndeadline_at_ms=soon\n"));
  boot::Outcome o{"0b1d", "committed", "b", "slot b committed\nsecond line", "boot-ok: 1 ran, ok"};
  auto ob = boot::Outcome::decode(o.encode());
  REQUIRE(ob);
  CHECK(ob->message == o.message);
  CHECK_FALSE(boot::Outcome::decode("format=1\nkind=maybe\n"));
}

TEST_CASE("no trial: the watcher changes nothing; no backend: it does nothing at all") {
  Node n;
  n.boot("boot-1");
  auto before = n.state();
  CHECK(n.watch(std::nullopt) == 0);
  CHECK(n.state() == before);
  CHECK_FALSE(fs::exists(boot::trialFile(n.opts.cfg.dir)));
  CHECK(n.hooksLog().empty());

  n.opts.cfg.slots.backend = "";
  CHECK(boot::runBootWatch(n.opts) == 0);
}

TEST_CASE("a healthy trial boot is committed and the boot-ok hooks run") {
  Node n(3, /*count=*/false);
  REQUIRE(n.slots()->beginUpgrade(hooks::Slot::b));
  n.boot("boot-1");
  CHECK(n.watch(true) == 0);
  auto s = n.state();
  CHECK(s.current == hooks::Slot::b);
  CHECK_FALSE(s.upgradeAvailable);
  auto o = n.last();
  REQUIRE(o);
  CHECK(o->kind == "committed");
  CHECK(o->message.find("slot b committed") != std::string::npos);
  CHECK(o->hooks.find("boot-ok: 1 ran, ok") != std::string::npos);
  CHECK(n.hooksLog() == "boot-ok b \n");
  CHECK_FALSE(fs::exists(boot::trialFile(n.opts.cfg.dir)));
  CHECK_FALSE(fs::exists(boot::verdictFile(n.opts.cfg.dir)));
}

TEST_CASE("an unhealthy trial stays uncommitted; counting boots, the limit rolls back and the next boot confirms it") {
  Node n(2);
  REQUIRE(n.slots()->beginUpgrade(hooks::Slot::b));

  // Boot 1 of 2 of slot b: unhealthy, so the watcher reboots to count another trial boot.
  n.boot("boot-1");
  CHECK(n.watch(false) == 1);
  auto s = n.state();
  CHECK(s.current == hooks::Slot::b);
  CHECK(s.upgradeAvailable);
  CHECK(s.bootCount == 1);
  CHECK(n.last()->kind == "unhealthy");
  CHECK(n.last()->message.find("netd UNREACHABLE") != std::string::npos);
  CHECK(n.hooksLog().find("pre-reboot") != std::string::npos);
  CHECK(n.hooksLog().ends_with("reboot\n"));

  // The watcher restarted within the same boot does not count it again.
  fs::remove(n.dir / "hooks.log");
  CHECK(n.watch(false) == 1);
  CHECK(n.state().bootCount == 1);

  // Boot 2 of 2: the limit; slot a is selected again and the node reboots into it, nothing is judged.
  fs::remove(n.dir / "hooks.log");
  n.boot("boot-2");
  CHECK(n.watch(std::nullopt) == 0);
  s = n.state();
  CHECK(s.current == hooks::Slot::a);
  CHECK_FALSE(s.upgradeAvailable);
  CHECK(s.rolledBack);
  CHECK(n.hooksLog().find("pre-reboot") != std::string::npos);
  CHECK(n.hooksLog().ends_with("reboot\n"));
  CHECK_FALSE(fs::exists(boot::trialFile(n.opts.cfg.dir)));
  // Again in that boot (a restarted watcher): still nothing, the failed slot is still running.
  CHECK(n.watch(std::nullopt) == 0);
  CHECK(n.state() == s);

  // Boot 3, back on slot a: the rollback hooks run, it is healthy, and the slot is confirmed.
  fs::remove(n.dir / "hooks.log");
  n.boot("boot-3");
  CHECK(n.watch(true) == 0);
  s = n.state();
  CHECK(s.current == hooks::Slot::a);
  CHECK_FALSE(s.rolledBack);
  auto o = n.last();
  CHECK(o->kind == "rolled-back");
  CHECK(o->message.find("back on slot a after a failed trial of slot b") != std::string::npos);
  CHECK(n.hooksLog().find("rollback a back on slot a") == 0);
  CHECK(n.hooksLog().find("boot-ok a") != std::string::npos);
  CHECK(n.hooksLog().find("reboot") == std::string::npos);
}

TEST_CASE("no verdict from the agent: the trial stays open past the deadline, and a refusing pre-reboot hook keeps "
          "the node up") {
  Node n(3);
  executable(n.dir / "hooks" / "pre-reboot.d" / "05-busy", "echo busy >&2; exit 4");
  REQUIRE(n.slots()->beginUpgrade(hooks::Slot::b));
  n.boot("boot-1");
  auto t0 = nowMs();
  CHECK(n.watch(std::nullopt) == 1);
  CHECK(nowMs() - t0 >= 2000);  // it waited for the deadline
  CHECK(n.last()->message.find("no health verdict from the agent within 2 s") != std::string::npos);
  CHECK(n.state().upgradeAvailable);
  CHECK(n.hooksLog().find("reboot\n") == std::string::npos);  // refused by 05-busy
}

// ---------------------------------------------------------------- the agent's half

namespace {

struct FakeAgent {
  TempDir dir{"boot-check"};
  boost::asio::io_context io;
  bool hub = true;
  std::vector<v1::DaemonHealth> daemons;
  std::vector<std::string> events;

  FakeAgent() {
    for (const char* n : {"vmm", "netd"}) {
      v1::DaemonHealth h;
      h.set_name(n);
      h.set_state(v1::DaemonHealth::DEGRADED);  // answering, as vmm on a box without KVM
      daemons.push_back(h);
    }
  }
  boot::BootConfig cfg() {
    boot::BootConfig c;
    c.slots.backend = "none";
    c.dir = dir / "boot";
    return c;
  }
  UpdateHost host() {
    UpdateHost h;
    h.hubConnected = [this] { return hub; };
    h.daemons = [this] { return daemons; };
    h.manifest = [] { return std::optional<v1::NodeManifest>{}; };
    h.guests = [](auto done) { done(std::map<std::string, std::string>{}); };
    return h;
  }
  BootCheck::EventFn event() {
    return [this](const std::string& k, const std::string& s, const std::string& d) {
      events.push_back(k + " | " + s + " | " + d);
    };
  }
  void runFor(std::chrono::milliseconds d) {
    io.restart();
    io.run_for(d);
  }
  void trial(std::int64_t deadlineInMs) {
    boot::Trial t{"boot-7", "b", "a", false, "trial boot of slot b (1 of 3)", nowMs(), nowMs() + deadlineInMs};
    fs::create_directories(dir / "boot");
    REQUIRE(update::writeState(boot::trialFile(dir / "boot"), t.encode()));
  }
  std::optional<update::Verdict> verdict() {
    auto v = update::readVerdict(boot::verdictFile(dir / "boot"));
    REQUIRE(v);
    return *v;
  }
};

}  // namespace

TEST_CASE("the agent judges an open trial: healthy at once when the hub and the daemons answer") {
  FakeAgent a;
  a.trial(10'000);
  BootCheck check(a.io, a.cfg(), a.host(), a.event());
  check.tickInterval = 20ms;
  check.start();
  a.runFor(200ms);
  auto v = a.verdict();
  REQUIRE(v);
  CHECK(v->healthy);
  CHECK(v->commandId == "boot:boot-7");
  check.stop();
}

TEST_CASE("the agent waits for health until the deadline, then says what failed") {
  FakeAgent a;
  a.daemons[1].set_state(v1::DaemonHealth::UNREACHABLE);
  a.hub = false;
  a.trial(300);
  BootCheck check(a.io, a.cfg(), a.host(), a.event());
  check.tickInterval = 20ms;
  check.start();
  a.runFor(150ms);
  CHECK_FALSE(a.verdict());  // not yet: it may still come up
  a.runFor(400ms);
  auto v = a.verdict();
  REQUIRE(v);
  CHECK_FALSE(v->healthy);
  CHECK(v->reason.find("hub not reachable") != std::string::npos);
  CHECK(v->reason.find("netd UNREACHABLE") != std::string::npos);
  check.stop();
}

TEST_CASE("the watcher's outcome reaches the hub once, when the hub is reachable; without a backend nothing runs") {
  FakeAgent a;
  fs::create_directories(a.dir / "boot");
  boot::Outcome o{"boot-7", "committed", "b", "slot b committed: healthy 1.2 s after the check began", "boot-ok: 1 ran, ok"};
  REQUIRE(update::writeState(boot::lastFile(a.dir / "boot"), o.encode()));
  a.hub = false;
  BootCheck check(a.io, a.cfg(), a.host(), a.event());
  check.tickInterval = 20ms;
  check.start();
  a.runFor(100ms);
  CHECK(a.events.empty());
  a.hub = true;
  a.runFor(100ms);
  REQUIRE(a.events.size() == 1);
  CHECK(a.events[0] == "boot.committed | slot b | slot b committed: healthy 1.2 s after the check began; boot-ok: 1 ran, ok");
  a.runFor(100ms);
  CHECK(a.events.size() == 1);
  check.stop();

  FakeAgent off;
  auto cfg = off.cfg();
  cfg.slots.backend = "";
  BootCheck none(off.io, cfg, off.host(), off.event());
  none.start();
  off.runFor(50ms);
  CHECK_FALSE(fs::exists(off.dir / "boot"));
}
