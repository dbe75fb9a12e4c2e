#pragma once
#include <chrono>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "outrider/agent/boot.hpp"
#include "outrider/agent/mqtt.hpp"
#include "outrider/agent/processor.hpp"
#include "outrider/agent/telemetry_service.hpp"
#include "outrider/agent/update.hpp"
#include "outrider/agent/verifier.hpp"
#include "outrider/common/log.hpp"

namespace outrider::agent {

struct HubConfig {
  std::vector<BrokerUrl> brokers;  // tried in order: home region first
  std::string cafile, certfile, keyfile;
  int keepaliveS = 30;
  std::chrono::milliseconds connectTimeout{10'000};
  std::chrono::milliseconds backoffInitial{500};
  std::chrono::milliseconds backoffMax{60'000};
};

struct AgentConfig {
  std::string nodeId;
  std::filesystem::path stateDir = "/var/lib/outrider/agent";
  HubConfig hub;
  std::vector<std::string> operatorKeys;  // specs for crypto::VerifyKey::parse
  VerifierLimits limits;
  ProcessorOptions processor;
  /// Commands remembered until expiry + skew (about 230 bytes each): bounds the agent's memory under a
  /// flood of commands; beyond it new commands are rejected BUSY.
  std::size_t journalMaxEntries = 20'000;
  std::filesystem::path vmmSocket = "/run/outrider/vmm.sock";
  std::filesystem::path netdSocket = "/run/outrider/netd.sock";
  std::chrono::milliseconds healthInterval{5'000};
  /// How often the desired state is handed to vmm and netd again even when nothing changed.
  std::chrono::milliseconds resyncInterval{300'000};
  log::Level logLevel = log::Level::info;
  /// [telemetry]; the spool defaults to state_dir/spool.
  TelemetryConfig telemetry;
  /// [hooks]: <dir>/<event>.d/ holds the hooks (docs/hooks.md); each runs at most hookTimeout.
  std::filesystem::path hooksDir = "/etc/outrider/hooks";
  std::chrono::milliseconds hookTimeout{60'000};
  /// [update]: the package update (docs/updates.md); dir defaults to state_dir/update.
  update::UpdateConfig update;
  /// [boot]: A/B boot slots (docs/hooks.md); off unless a backend is set. dir is state_dir/boot.
  boot::BootConfig boot;
  /// The file this configuration came from (the spawned updater reads it again).
  std::filesystem::path configFile;

  /// Throws ConfigError naming file, line and key. The node's identity (node.id, hub.brokers,
  /// commands.operator_keys) is required.
  static AgentConfig load(const std::filesystem::path& file);
  static AgentConfig parse(std::string_view text, std::string source);
};

/// Where `outrider-agent provision` writes the node's identity and hub settings: STATE_DIR/provisioned.toml.
std::filesystem::path provisionedFile(const std::filesystem::path& stateDir);

/// The configuration the daemon runs with: FILE (the package's /etc/outrider/agent.toml), and, when FILE sets
/// no node.id, the keys of provisionedFile(node.state_dir) that FILE does not set. nullopt when the node is
/// not provisioned yet (no node.id in either); everything present is still checked. Throws ConfigError.
std::optional<AgentConfig> loadNodeConfig(const std::filesystem::path& file);

}  // namespace outrider::agent
