#include "outrider/agent/main.hpp"

#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include <boost/asio/steady_timer.hpp>

#include "outrider/agent/agent.hpp"
#include "outrider/agent/boot.hpp"
#include "outrider/agent/mqtt.hpp"
#include "outrider/agent/provision.hpp"
#include "outrider/agent/update.hpp"
#include "outrider/common/config.hpp"
#include "outrider/common/daemon.hpp"
#include "outrider/common/log.hpp"
#include "outrider/common/notify.hpp"
#include "outrider/common/version.hpp"

namespace outrider::agent {

namespace {
// The agent's privileged helpers (root, one run each), `outrider-agent NAME [--config FILE]`:
//  - update-apply: the privileged half of an update, started by outrider-update.path when the agent writes
//    its request, or spawned by the agent (launcher = "spawn");
//  - boot-watch: the boot slots at boot (outrider-boot.service): count, wait for the agent's verdict on a
//    trial boot, commit.
int runHelper(const char* name, int argc, char** argv) {
  std::string configPath = "/etc/outrider/agent.toml";
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--config" && i + 1 < argc) {
      configPath = argv[++i];
    } else {
      std::fprintf(stderr, "usage: outrider-agent %s [--config FILE]\n", name);
      return 2;
    }
  }
  std::optional<AgentConfig> cfg;
  try {
    cfg = loadNodeConfig(configPath);
  } catch (const ConfigError& e) {
    LOG_ERR("{}", e.what());
    return 2;
  }
  if (!cfg) {
    LOG_ERR("{}: the node is not provisioned; nothing to do", name);
    return 2;
  }
  log::setLevel(cfg->logLevel);
  if (std::strcmp(name, "boot-watch") == 0)
    return boot::runBootWatch(boot::WatchOptions{
        .cfg = cfg->boot, .hooksDir = cfg->hooksDir, .hookTimeout = cfg->hookTimeout, .node = cfg->nodeId});
  auto trusted = update::updaterKeys(configPath, cfg->stateDir / "identity" / "bundle.bin", cfg->update.provisioningKey,
                                     cfg->nodeId);
  if (!trusted) {
    LOG_ERR("update: {}", trusted.error().message);
    return 2;
  }
  return update::runUpdater(update::UpdaterOptions{.cfg = cfg->update,
                                                   .hooksDir = cfg->hooksDir,
                                                   .hookTimeout = cfg->hookTimeout,
                                                   .node = cfg->nodeId,
                                                   .trusted = std::move(*trusted),
                                                   .clockSkewMs = cfg->limits.clockSkewMs,
                                                   .maxValidityMs = cfg->limits.maxValidityMs});
}
}  // namespace

int runMain(int argc, char** argv) {
  if (argc > 1 && std::strcmp(argv[1], "provision") == 0) return provision::runProvision(argc - 1, argv + 1);
  for (const char* helper : {"update-apply", "boot-watch"})
    if (argc > 1 && std::strcmp(argv[1], helper) == 0) return runHelper(helper, argc - 1, argv + 1);
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
      std::fprintf(stderr, "usage: outrider-agent [--config FILE] [--version]\n       outrider-agent provision --from DIR [--config FILE] [--pubkey FILE]\n       outrider-agent update-apply [--config FILE]\n       outrider-agent boot-watch [--config FILE]\n");
      return 2;
    }
  }
  // The node's configuration: /etc/outrider/agent.toml, completed by provisioning. A node not provisioned yet
  // waits (READY to systemd, so the unit is healthy) and starts as soon as provisioning has written its part.
  std::optional<AgentConfig> cfg;
  try {
    configPath = std::filesystem::absolute(configPath).string();
    cfg = loadNodeConfig(configPath);
  } catch (const ConfigError& e) {
    LOG_ERR("{}", e.what());
    return 2;
  }
  MqttLibrary mqtt;
  SystemClock clock;
  DaemonRuntime rt("outrider-agent");
  std::unique_ptr<Agent> agent;
  auto startAgent = [&](AgentConfig c) -> bool {
    log::setLevel(c.logLevel);
    agent = std::make_unique<Agent>(rt.io(), std::move(c), clock);
    if (auto s = agent->start(); !s) {
      LOG_ERR("cannot start: {}", s.error().message);
      return false;
    }
    return true;
  };
  boost::asio::steady_timer waitTimer(rt.io());
  std::string lastError;
  std::function<void()> waitForProvisioning = [&] {
    waitTimer.expires_after(std::chrono::milliseconds(500));
    waitTimer.async_wait([&](const boost::system::error_code& ec) {
      if (ec) return;
      try {
        if (auto c = loadNodeConfig(configPath)) {
          LOG_NOTICE("provisioned as node '{}': starting", c->nodeId);
          notify::send("STATUS=provisioned, starting");
          if (!startAgent(std::move(*c))) rt.stop();
          return;
        }
      } catch (const ConfigError& e) {
        if (lastError != e.what()) LOG_ERR("provisioned configuration refused, still waiting: {}", e.what());
        lastError = e.what();
      }
      waitForProvisioning();
    });
  };
  if (cfg) {
    if (!startAgent(std::move(*cfg))) return 1;
  } else {
    LOG_NOTICE("not provisioned: no node.id in {} or in provisioned.toml under node.state_dir; waiting for "
               "provisioning (outrider-agent provision, run when a stick labelled OUTRIDER is inserted)",
               configPath);
    notify::send("STATUS=waiting for provisioning");
    waitForProvisioning();
  }
  rt.onStopAsync([&](std::function<void()> done) {
    waitTimer.cancel();
    if (agent) agent->stop(std::move(done));
    else done();
  });
  return rt.run();
}

}  // namespace outrider::agent
