#include "outrider/netd/service.hpp"

namespace outrider::netd {

LocalDaemonSpec daemonSpec() {
  LocalDaemonSpec spec;
  spec.name = std::string(kDaemonName);
  spec.defaultConfig = std::string(kDefaultConfig);
  spec.defaultSocket = std::string(kDefaultSocket);
  spec.setup = [](ConfigReader&, LocalService& service) {
    // The tunnel manager and hub prober register their request handlers here.
    service.setHealth([] { return Health{true, "no tunnels configured yet"}; });
  };
  return spec;
}

int run(int argc, char** argv) { return runLocalDaemon(daemonSpec(), argc, argv); }

}  // namespace outrider::netd
