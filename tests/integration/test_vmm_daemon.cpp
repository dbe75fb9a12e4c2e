// The real outrider-vmm binary serving the local API.
#include <doctest/doctest.h>

#include "integration/test_ipc_daemon_fixture.hpp"
#include "outrider/vmm/service.hpp"

using namespace outrider::test;

namespace {
const std::string kName(outrider::vmm::kDaemonName);
}

TEST_CASE("outrider-vmm answers health, and SIGTERM exits 0 and removes its socket") {
  checkHealthAndCleanStop(kName, "libvirt ");
}

TEST_CASE("outrider-vmm refuses a config with a typo'd key: exit 2, log names file:line and key") {
  checkTypoExits2(kName);
}

TEST_CASE("outrider-vmm refuses a missing --config file and a second instance on a live socket") {
  checkSecondInstanceAndMissingConfig(kName);
}
