#pragma once
// A whole node on a real broker, for end-to-end tests and benchmarks: Mosquitto with mutual TLS and an
// ACL, the real outrider-agent, outrider-vmm (VMs on libvirt with TCG, containers) and outrider-netd, an
// operator signing key the agent trusts, and outriderctl run as the hub. Every state path of every daemon
// lives under the fixture's temporary directory; the daemons are stopped (by PID) when it goes away.
// It makes no doctest assertions, so benchmarks can use it too: start-up problems are returned.
#include <chrono>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "outrider/common/crypto.hpp"
#include "support/mqtt_fixture.hpp"
#include "support/process.hpp"

namespace outrider::test {

struct NodeFixtureOptions {
  std::string node = "n1";
  std::string logLevel = "info";
  /// libvirt URI for vmm's [vms].
  std::string libvirtUri = "qemu:///system";
  /// vmm's [vms] stop_timeout_s: graceful stop, then destroy.
  int vmStopTimeoutS = 10;
  /// The agent's telemetry: its UDP ingest port (0 = the kernel's choice) and more [telemetry] keys.
  unsigned telemetryUdpPort = 0;
  std::string telemetryExtra;
  /// Where the daemons are run from; empty = this build. (The update test runs the installed package.)
  std::filesystem::path binDir;
  /// A supervisor that runs each daemon again when it ends, as systemd's Restart= would:
  /// `supervisor PIDFILE PROGRAM ARGS...`, keeping the daemon's current PID in PIDFILE (DIR/NAME.pid).
  std::filesystem::path supervisor;
  /// The broker keeps sessions across its restarts (BrokerOptions::persistence).
  bool brokerPersistence = false;
};

class NodeFixture {
 public:
  explicit NodeFixture(NodeFixtureOptions opts = {});
  NodeFixture(const NodeFixture&) = delete;
  NodeFixture& operator=(const NodeFixture&) = delete;

  /// Write agent.toml, vmm.toml and netd.toml (done by the constructor; again after changing options).
  void writeConfigs();
  void startVmm();
  void startNetd();
  void startAgent();
  /// vmm, netd, then the agent.
  void startAll();
  /// Until both daemon sockets exist; false after `timeout`.
  bool waitDaemonSockets(std::chrono::milliseconds timeout) const;

  /// Run outriderctl as the hub (hub certificate, operator key) with ARGS; exit code and its output.
  std::pair<int, std::string> ctl(const std::vector<std::string>& args, int timeoutS = 60);

  const std::string& node() const { return opts_.node; }
  const crypto::SigningKey& operatorKey() const { return op_; }
  const CertPair& hubCert() const { return hubCert_; }
  const std::filesystem::path& path() const { return dir_.path(); }
  std::filesystem::path operator/(std::string_view name) const { return dir_ / name; }
  /// vmm's [vms] state_dir and log_dir.
  std::filesystem::path vmStateDir() const { return dir_ / "vms"; }
  std::filesystem::path vmLogDir() const { return dir_ / "vm-log"; }
  /// The last lines of every daemon's log, for failure messages.
  std::string diagnostics() const;

 private:
  std::vector<std::string> daemonArgv(const std::string& name) const;
  NodeFixtureOptions opts_;
  TempDir dir_{"node"};

 public:
  // Declared in start-up order; destroyed in reverse, so the daemons stop before the broker and the
  // directory go.
  TestCa ca{dir_ / "pki"};
  Broker broker{dir_ / "broker", ca, BrokerOptions{.nodes = {opts_.node}, .persistence = opts_.brokerPersistence}};
  Process vmm, netd, agent;

 private:
  CertPair nodeCert_ = ca.issueClient(opts_.node);
  CertPair hubCert_ = ca.issueClient("hub");
  crypto::SigningKey op_ = *crypto::SigningKey::generate();
  std::filesystem::path opKey_ = dir_ / "operator.key";
  int ctlRuns_ = 0;
};

}  // namespace outrider::test
