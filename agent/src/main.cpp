#include "outrider/agent/main.hpp"

#include <cstdio>
#include <cstring>
#include <string>

#include "outrider/agent/agent.hpp"
#include "outrider/agent/mqtt.hpp"
#include "outrider/common/config.hpp"
#include "outrider/common/daemon.hpp"
#include "outrider/common/log.hpp"
#include "outrider/common/version.hpp"

namespace outrider::agent {

int runMain(int argc, char** argv) {
  std::string configPath = "/etc/outrider/agent.toml";
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--version") {
      std::printf("outrider-agent %s\n", std::string(outrider::version()).c_str());
      return 0;
    } else if (a == "--config" && i + 1 < argc) {
      configPath = argv[++i];
    } else if (a.rfind("--config=", 0) == 0) {
      configPath = a.substr(9);
    } else {
      std::fprintf(stderr, "usage: outrider-agent [--config FILE] [--version]\n");
      return 2;
    }
  }
  AgentConfig cfg;
  try {
    cfg = AgentConfig::load(configPath);
  } catch (const ConfigError& e) {
    LOG_ERR("{}", e.what());
    return 2;
  }
  log::setLevel(cfg.logLevel);
  MqttLibrary mqtt;
  SystemClock clock;
  DaemonRuntime rt("outrider-agent");
  Agent agent(rt.io(), std::move(cfg), clock);
  if (auto s = agent.start(); !s) {
    LOG_ERR("cannot start: {}", s.error().message);
    return 1;
  }
  rt.onStopAsync([&agent](std::function<void()> done) { agent.stop(std::move(done)); });
  return rt.run();
}

}  // namespace outrider::agent
