#include "outrider/vmm/service.hpp"

namespace outrider::vmm {

LocalDaemonSpec daemonSpec() {
  LocalDaemonSpec spec;
  spec.name = std::string(kDaemonName);
  spec.defaultConfig = std::string(kDefaultConfig);
  spec.defaultSocket = std::string(kDefaultSocket);
  spec.setup = [](ConfigReader&, LocalService& service) {
    // Guest and container managers register their request handlers here.
    service.setHealth([] { return Health{true, "no workloads managed yet"}; });
  };
  return spec;
}

int run(int argc, char** argv) { return runLocalDaemon(daemonSpec(), argc, argv); }

}  // namespace outrider::vmm
