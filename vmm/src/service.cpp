#include "outrider/vmm/service.hpp"

#include "outrider/vmm/component.hpp"

namespace outrider::vmm {

LocalDaemonSpec daemonSpec() {
  LocalDaemonSpec spec;
  spec.name = std::string(kDaemonName);
  spec.defaultConfig = std::string(kDefaultConfig);
  spec.defaultSocket = std::string(kDefaultSocket);
  spec.setup = [](ConfigReader& cfg, LocalService& service) {
    auto vms = setupVms(cfg, service);
    auto cts = setupContainers(cfg, service);
    service.setHealth([vms, cts] {
      Health v = vms->health(), c = cts->health();
      return Health{v.healthy && c.healthy, v.detail + "; " + c.detail};
    });
  };
  return spec;
}

int run(int argc, char** argv) { return runLocalDaemon(daemonSpec(), argc, argv); }

}  // namespace outrider::vmm
