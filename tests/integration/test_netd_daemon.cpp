// The real outrider-netd binary serving the local API.
#include <doctest/doctest.h>

#include "integration/test_ipc_daemon_fixture.hpp"
#include "outrider/netd/service.hpp"

using namespace outrider::test;

namespace {
const std::string kName(outrider::netd::kDaemonName);
}

TEST_CASE("outrider-netd answers health, and SIGTERM exits 0 and removes its socket") {
  checkHealthAndCleanStop(kName, "no tunnels configured yet");
}

TEST_CASE("outrider-netd refuses a config with a typo'd key: exit 2, log names file:line and key") {
  checkTypoExits2(kName);
}

TEST_CASE("outrider-netd refuses a missing --config file and a second instance on a live socket") {
  DaemonFixture first(kName);
  REQUIRE(first.health().ok());
  // Same config, same socket: the second must not steal the first one's socket.
  Process second({binary(kName).string(), "--config", first.config().string()},
                 first.config().parent_path() / "second.log");
  auto st = second.wait(std::chrono::seconds(10));
  REQUIRE(st);
  CHECK(WIFEXITED(*st));
  CHECK(WEXITSTATUS(*st) != 0);
  CHECK(second.log().find("another server is listening") != std::string::npos);
  CHECK(first.health().ok());

  Process missing({binary(kName).string(), "--config", (first.config().parent_path() / "nope.toml").string()},
                  first.config().parent_path() / "missing.log");
  auto ms = missing.wait(std::chrono::seconds(10));
  REQUIRE(ms);
  CHECK(WEXITSTATUS(*ms) == 2);
  CHECK(missing.log().find("nope.toml") != std::string::npos);
}
