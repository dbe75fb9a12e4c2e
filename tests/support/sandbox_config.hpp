#pragma once
// Config sections that keep a daemon started by a test inside the test's own directory: no state under
// /var/lib/outrider, no logs under /var/log, no cgroups or interfaces shared with anything else.
#include <filesystem>
#include <string>
#include <unistd.h>

namespace outrider::test {

/// [vms] and [containers] for outrider-vmm; VMs run with TCG (KVM cannot run a stock guest here).
inline std::string vmmSandboxConfig(const std::filesystem::path& dir) {
  auto q = [](const std::filesystem::path& p) { return "\"" + p.string() + "\""; };
  return "[vms]\nstate_dir = " + q(dir / "vms") + "\nlog_dir = " + q(dir / "vm-logs") + "\naccel = \"tcg\"\n" +
         "[containers]\nruntime_root = " + q(dir / "crun") + "\nimages_dir = " + q(dir / "images") +
         "\nstate_dir = " + q(dir / "containers") + "\ncgroup_parent = \"outrider-test-" + std::to_string(::getpid()) +
         "\"\n";
}

/// [telemetry] for outrider-agent: an ephemeral UDP port, the unix socket and the spool in `dir`.
/// `udpPort` 0 lets the kernel choose; `extra` adds [telemetry] keys (e.g. "window_seconds = 1\n").
inline std::string agentSandboxConfig(const std::filesystem::path& dir, unsigned udpPort = 0,
                                      const std::string& extra = "") {
  return "[telemetry]\nudp_listen = \"127.0.0.1:" + std::to_string(udpPort) + "\"\nunix_socket = \"" +
         (dir / "telemetry.sock").string() + "\"\nspool_dir = \"" + (dir / "spool").string() + "\"\n" + extra;
}

/// [wireguard] for outrider-netd: its key and state in `dir`.
inline std::string netdSandboxConfig(const std::filesystem::path& dir) {
  return "[wireguard]\nkey_file = \"" + (dir / "wg.key").string() + "\"\nstate_dir = \"" + (dir / "netd").string() +
         "\"\n";
}

}  // namespace outrider::test
