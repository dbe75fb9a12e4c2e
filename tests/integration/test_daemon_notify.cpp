// sd_notify as systemd sees it: a real daemon started with NOTIFY_SOCKET and WATCHDOG_USEC sends READY=1,
// then WATCHDOG=1 from its loop's timer, and STOPPING=1 on SIGTERM before it exits 0.
#include <doctest/doctest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <fstream>

#include "support/notify_socket.hpp"
#include "support/process.hpp"
#include "support/sandbox_config.hpp"

using namespace outrider::test;
using namespace std::chrono_literals;

TEST_CASE("a daemon tells systemd READY, pings the watchdog from its loop, and says STOPPING on SIGTERM") {
  TempDir dir{"notify"};
  NotifySocket notify(dir / "notify.sock");
  // Everything vmm keeps goes into the test's directory, never the host's /var/lib/outrider.
  std::ofstream(dir / "vmm.toml") << "[api]\nsocket = \"" << (dir / "vmm.sock").string() << "\"\ngroup = \"\"\n"
                                  << vmmSandboxConfig(dir.path());
  Process vmm({binary("outrider-vmm").string(), "--config", (dir / "vmm.toml").string()}, dir / "vmm.log",
              {{"NOTIFY_SOCKET", notify.path.string()}, {"WATCHDOG_USEC", "200000"}});
  CHECK_MESSAGE(notify.next(10s) == "READY=1", vmm.log());
  // Pings at half the interval: several arrive within a second.
  int pings = 0;
  for (int i = 0; i < 3; ++i) pings += notify.waitFor("WATCHDOG=1", 1s);
  CHECK(pings == 3);
  vmm.signal(SIGTERM);
  CHECK(notify.waitFor("STOPPING=1", 5s));
  auto st = vmm.wait(5s);
  REQUIRE(st);
  CHECK(WIFEXITED(*st));
  CHECK(WEXITSTATUS(*st) == 0);
}
