// The real outrider-netd binary serving the local API.
#include <doctest/doctest.h>

#include "integration/test_ipc_daemon_fixture.hpp"
#include "outrider/netd/service.hpp"

using namespace outrider::test;

namespace {
const std::string kName(outrider::netd::kDaemonName);
}

TEST_CASE("outrider-netd answers health, and SIGTERM exits 0 and removes its socket") {
  checkHealthAndCleanStop(kName, "public key ");  // made at the first start, before any tunnel
}

TEST_CASE("outrider-netd refuses a config with a typo'd key: exit 2, log names file:line and key") {
  checkTypoExits2(kName);
}

TEST_CASE("outrider-netd refuses a missing --config file and a second instance on a live socket") {
  checkSecondInstanceAndMissingConfig(kName);
}
