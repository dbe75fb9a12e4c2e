#include "outrider/agent/config.hpp"

#include <algorithm>

#include "outrider/common/config.hpp"
#include "outrider/common/topics.hpp"

namespace outrider::agent {

namespace {
// identity: node.id, hub.brokers and commands.operator_keys are required (a provisioned node); without
// it they may all be absent (a node waiting for provisioning), but whatever is present is still checked.
AgentConfig fromReader(ConfigReader& r, bool identity) {
  AgentConfig c;
  if (identity || r.has("node.id")) {
    c.nodeId = r.requireStr("node.id");
    if (!topics::validNodeId(c.nodeId))
      r.fail("node.id", "must be 1-64 characters of [A-Za-z0-9._-]");
  }
  const bool required = !c.nodeId.empty();
  c.stateDir = r.str("node.state_dir", c.stateDir);
  if (!c.stateDir.is_absolute()) r.fail("node.state_dir", "must be an absolute path");
  (void)r.str("node.provisioned_by", "");  // written by `outrider-agent provision`: which bundle

  for (const auto& u : r.strList("hub.brokers", {})) {
    auto b = BrokerUrl::parse(u);
    if (!b) r.fail("hub.brokers", b.error().message);
    c.hub.brokers.push_back(*b);
  }
  if (c.hub.brokers.empty() && required) r.fail("hub.brokers", "at least one broker URL is required");
  bool allowPlain = r.boolean("hub.allow_plaintext", false);
  for (const auto& b : c.hub.brokers)
    if (!b.tls && !allowPlain)
      r.fail("hub.brokers", b.text() + " is not TLS; use mqtts:// (or set hub.allow_plaintext = true for a lab)");
  c.hub.cafile = r.str("hub.cafile", "");
  c.hub.certfile = r.str("hub.certfile", "");
  c.hub.keyfile = r.str("hub.keyfile", "");
  bool anyTls = std::any_of(c.hub.brokers.begin(), c.hub.brokers.end(), [](const BrokerUrl& b) { return b.tls; });
  if (anyTls && (c.hub.cafile.empty() || c.hub.certfile.empty() || c.hub.keyfile.empty()))
    r.fail("hub.cafile", "hub.cafile, hub.certfile and hub.keyfile are required for mqtts:// brokers");
  c.hub.keepaliveS = static_cast<int>(r.integer("hub.keepalive_s", 30, 5, 3600));
  c.hub.connectTimeout = std::chrono::seconds(r.integer("hub.connect_timeout_s", 10, 1, 300));
  c.hub.backoffInitial = std::chrono::milliseconds(r.integer("hub.backoff_initial_ms", 500, 10, 60'000));
  c.hub.backoffMax = std::chrono::seconds(r.integer("hub.backoff_max_s", 60, 1, 3600));

  c.operatorKeys = r.strList("commands.operator_keys", {});
  if (c.operatorKeys.empty() && required)
    r.fail("commands.operator_keys", "at least one trusted operator key is required");
  c.limits.maxPayloadBytes = static_cast<std::size_t>(r.integer("commands.max_payload_bytes", 64 * 1024, 1024, 16 << 20));
  c.limits.clockSkewMs = r.integer("commands.clock_skew_s", 300, 0, 86400) * 1000;
  c.limits.maxValidityMs = r.integer("commands.max_validity_s", 86400, 10, 30 * 86400) * 1000;
  c.processor.defaultDeadline = std::chrono::seconds(r.integer("commands.default_deadline_s", 60, 1, 86400));
  c.processor.maxDeadline = std::chrono::seconds(r.integer("commands.max_deadline_s", 3600, 1, 7 * 86400));
  c.journalMaxEntries = static_cast<std::size_t>(r.integer("commands.journal_max_entries", 20'000, 100, 1'000'000));
  c.processor.maxInFlight = static_cast<std::size_t>(r.integer("commands.max_in_flight", 32, 1, 1024));

  c.vmmSocket = r.str("daemons.vmm_socket", c.vmmSocket);
  c.netdSocket = r.str("daemons.netd_socket", c.netdSocket);
  c.healthInterval = std::chrono::seconds(r.integer("daemons.health_interval_s", 5, 1, 3600));
  c.resyncInterval = std::chrono::seconds(r.integer("daemons.resync_s", 300, 5, 86400));

  c.telemetry = readTelemetryConfig(r);
  if (!r.has("telemetry.spool_dir")) c.telemetry.spool.dir = c.stateDir / "spool";

  c.hooksDir = r.str("hooks.dir", c.hooksDir);
  if (!c.hooksDir.is_absolute()) r.fail("hooks.dir", "must be an absolute path");
  c.hookTimeout = std::chrono::seconds(r.integer("hooks.timeout_s", 60, 1, 3600));

  c.update.dir = r.str("update.dir", (c.stateDir / "update").string());
  if (!c.update.dir.is_absolute()) r.fail("update.dir", "must be an absolute path");
  c.update.package = r.str("update.package", c.update.package);
  c.update.healthDeadline = std::chrono::seconds(r.integer("update.health_deadline_s", 120, 5, 3600));
  c.update.reserveBytes = static_cast<std::uint64_t>(r.integer("update.reserve_mb", 32, 0, 1 << 20)) << 20;
  c.update.maxPackageBytes = static_cast<std::uint64_t>(r.integer("update.max_package_mb", 512, 1, 1 << 16)) << 20;
  c.update.launcher = r.str("update.launcher", c.update.launcher);
  if (c.update.launcher != "systemd" && c.update.launcher != "spawn")
    r.fail("update.launcher", "must be \"systemd\" (outrider-update.path) or \"spawn\"");
  c.update.rootDir = r.str("update.root_dir", c.update.rootDir.string());
  if (!c.update.rootDir.is_absolute()) r.fail("update.root_dir", "must be an absolute path");
  c.update.provisioningKey = r.str("update.provisioning_key", c.update.provisioningKey.string());
  if (!c.update.provisioningKey.is_absolute()) r.fail("update.provisioning_key", "must be an absolute path");
  c.update.restartCommand = r.strList("update.restart_command", {});
  if (!c.update.restartCommand.empty() && c.update.restartCommand.front().find('/') != 0)
    r.fail("update.restart_command", "the program must be an absolute path");

  c.boot.dir = c.stateDir / "boot";
  c.boot.slots.backend = r.str("boot.backend", "");
  const auto& backend = c.boot.slots.backend;
  if (!backend.empty() && backend != "grub" && backend != "uboot" && backend != "none")
    r.fail("boot.backend", "must be \"grub\", \"uboot\" or \"none\" (or unset: no A/B boot slots)");
  c.boot.slots.grubenv = r.str("boot.grubenv", "/boot/grub/grubenv");
  c.boot.slots.ubootConfig = r.str("boot.uboot_config", "/etc/fw_env.config");
  c.boot.slots.ubootDefaultEnv = r.str("boot.uboot_default_env", "");
  c.boot.slots.stateFile = r.str("boot.state_file", (c.stateDir / "boot-slots").string());
  for (const char* k : {"boot.grubenv", "boot.uboot_config", "boot.state_file"})
    if (!std::filesystem::path(r.str(k, "/")).is_absolute()) r.fail(k, "must be an absolute path");
  c.boot.countBoots = r.boolean("boot.count_boots", backend == "none");
  c.boot.healthDeadline = std::chrono::seconds(r.integer("boot.health_deadline_s", 300, 10, 3600));
  c.boot.rebootCommand = r.strList("boot.reboot_command", {});
  if (!c.boot.rebootCommand.empty() && c.boot.rebootCommand.front().find('/') != 0)
    r.fail("boot.reboot_command", "the program must be an absolute path");

  auto level = r.str("log.level", "info");
  if (!log::parseLevel(level, c.logLevel))
    r.fail("log.level", "unknown level '" + level + "' (err, warning, notice, info, debug)");
  r.finish();
  return c;
}
}  // namespace

AgentConfig AgentConfig::load(const std::filesystem::path& file) {
  auto r = ConfigReader::load(file);
  auto c = fromReader(r, true);
  c.configFile = file;
  return c;
}

AgentConfig AgentConfig::parse(std::string_view text, std::string source) {
  auto r = ConfigReader::parse(text, std::move(source));
  return fromReader(r, true);
}

std::filesystem::path provisionedFile(const std::filesystem::path& stateDir) { return stateDir / "provisioned.toml"; }

std::optional<AgentConfig> loadNodeConfig(const std::filesystem::path& file) {
  auto r = ConfigReader::load(file);
  std::filesystem::path stateDir = r.str("node.state_dir", AgentConfig{}.stateDir.string());
  if (!r.has("node.id")) {
    std::error_code ec;
    auto prov = provisionedFile(stateDir);
    if (std::filesystem::exists(prov, ec)) r.fillFrom(ConfigReader::load(prov));
  }
  auto c = fromReader(r, false);
  c.configFile = file;
  if (c.nodeId.empty()) return std::nullopt;
  return c;
}

}  // namespace outrider::agent
