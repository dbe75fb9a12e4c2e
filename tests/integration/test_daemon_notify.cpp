// sd_notify as systemd sees it: a real daemon started with NOTIFY_SOCKET and WATCHDOG_USEC sends READY=1,
// then WATCHDOG=1 from its loop's timer, and STOPPING=1 on SIGTERM before it exits 0.
#include <doctest/doctest.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <cstring>
#include <fstream>

#include "support/process.hpp"

using namespace outrider::test;
using namespace std::chrono_literals;

namespace {
/// A datagram socket bound in a temp dir, standing in for systemd's notify socket.
struct NotifySocket {
  int fd = -1;
  std::filesystem::path path;
  explicit NotifySocket(std::filesystem::path p) : path(std::move(p)) {
    fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::strncpy(a.sun_path, path.c_str(), sizeof a.sun_path - 1);
    REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  }
  ~NotifySocket() { ::close(fd); }
  /// Next datagram within `timeout`, or "" on timeout.
  std::string next(std::chrono::milliseconds timeout) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(timeout.count())) != 1) return {};
    char buf[512];
    auto n = ::recv(fd, buf, sizeof buf, 0);
    return n > 0 ? std::string(buf, static_cast<std::size_t>(n)) : std::string();
  }
  /// Wait for a datagram equal to `want`, skipping others (e.g. extra WATCHDOG=1).
  bool waitFor(const std::string& want, std::chrono::milliseconds timeout) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      if (next(left) == want) return true;
    }
    return false;
  }
};
}  // namespace

TEST_CASE("a daemon tells systemd READY, pings the watchdog from its loop, and says STOPPING on SIGTERM") {
  TempDir dir{"notify"};
  NotifySocket notify(dir / "notify.sock");
  std::ofstream(dir / "vmm.toml") << "[api]\nsocket = \"" << (dir / "vmm.sock").string() << "\"\ngroup = \"\"\n";
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
