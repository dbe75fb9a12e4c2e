#include "support/node_fixture.hpp"
#include "support/sandbox_config.hpp"

#include <unistd.h>

#include <fstream>
#include <sstream>

namespace outrider::test {

namespace fs = std::filesystem;

namespace {

std::string quoted(const fs::path& p) { return "\"" + p.string() + "\""; }

std::string slurp(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string tail(const std::string& s, std::size_t bytes) {
  return s.size() <= bytes ? s : "..." + s.substr(s.size() - bytes);
}

}  // namespace

NodeFixture::NodeFixture(NodeFixtureOptions opts) : opts_(std::move(opts)) {
  if (auto s = op_.saveFile(opKey_); !s) throw std::runtime_error("cannot save the operator key: " + s.error().message);
  writeConfigs();
}

void NodeFixture::writeConfigs() {
  const std::string level = "[log]\nlevel = \"" + opts_.logLevel + "\"\n";
  std::ofstream(dir_ / "agent.toml") << "[node]\nid = \"" << opts_.node << "\"\nstate_dir = " << quoted(dir_ / "agent-state")
                                     << "\n[hub]\nbrokers = [\"" << broker.url() << "\"]\n"
                                     << "cafile = " << quoted(ca.caFile()) << "\ncertfile = " << quoted(nodeCert_.cert)
                                     << "\nkeyfile = " << quoted(nodeCert_.key) << "\n"
                                     << "backoff_initial_ms = 100\nbackoff_max_s = 2\nconnect_timeout_s = 3\n"
                                     << "[commands]\noperator_keys = [\"ed25519:" << crypto::base64(op_.publicKey().raw())
                                     << "\"]\n[daemons]\nvmm_socket = " << quoted(dir_ / "vmm.sock")
                                     << "\nnetd_socket = " << quoted(dir_ / "netd.sock") << "\nhealth_interval_s = 1\n"
                                     << level << agentSandboxConfig(dir_.path(), opts_.telemetryUdpPort, opts_.telemetryExtra);
  // Containers: runtime state, images and logs under the directory, and a cgroup parent of this process
  // alone, so nothing here meets a real node's containers.
  std::ofstream(dir_ / "vmm.toml") << "[api]\nsocket = " << quoted(dir_ / "vmm.sock") << "\ngroup = \"\"\n"
                                   << level << "[vms]\nuri = \"" << opts_.libvirtUri << "\"\naccel = \"tcg\"\n"
                                   << "state_dir = " << quoted(vmStateDir()) << "\nlog_dir = " << quoted(vmLogDir())
                                   << "\nstop_timeout_s = " << opts_.vmStopTimeoutS << "\n"
                                   << "[containers]\nruntime_root = " << quoted(dir_ / "ct-run")
                                   << "\nimages_dir = " << quoted(dir_ / "images") << "\nstate_dir = "
                                   << quoted(dir_ / "containers") << "\ncgroup_parent = \"outrider-e2e-" << ::getpid()
                                   << "\"\n";
  std::ofstream(dir_ / "netd.toml") << "[api]\nsocket = " << quoted(dir_ / "netd.sock") << "\ngroup = \"\"\n"
                                    << level << "[wireguard]\nkey_file = " << quoted(dir_ / "netd" / "wg.key")
                                    << "\nstate_dir = " << quoted(dir_ / "netd") << "\nuapi_dir = "
                                    << quoted(dir_ / "wg-uapi") << "\n";
}

std::vector<std::string> NodeFixture::daemonArgv(const std::string& name) const {
  const std::string exe = "outrider-" + name;
  std::vector<std::string> argv;
  if (!opts_.supervisor.empty()) argv = {opts_.supervisor.string(), (dir_ / (name + ".pid")).string()};
  argv.push_back(opts_.binDir.empty() ? binary(exe).string() : (opts_.binDir / exe).string());
  argv.push_back("--config");
  argv.push_back((dir_ / (name + ".toml")).string());
  return argv;
}

void NodeFixture::startVmm() { vmm = Process(daemonArgv("vmm"), dir_ / "vmm.log"); }

void NodeFixture::startNetd() { netd = Process(daemonArgv("netd"), dir_ / "netd.log"); }

void NodeFixture::startAgent() { agent = Process(daemonArgv("agent"), dir_ / "agent.log"); }

void NodeFixture::startAll() {
  startVmm();
  startNetd();
  startAgent();
}

bool NodeFixture::waitDaemonSockets(std::chrono::milliseconds timeout) const {
  return waitFor([&] { return fs::exists(dir_ / "vmm.sock") && fs::exists(dir_ / "netd.sock"); }, timeout);
}

std::pair<int, std::string> NodeFixture::ctl(const std::vector<std::string>& args, int timeoutS) {
  std::vector<std::string> argv{binary("outriderctl").string(),
                                "--broker",
                                broker.url(),
                                "--cafile",
                                ca.caFile().string(),
                                "--cert",
                                hubCert_.cert.string(),
                                "--key",
                                hubCert_.key.string(),
                                "--sign-key",
                                opKey_.string(),
                                "--timeout",
                                std::to_string(timeoutS)};
  argv.insert(argv.end(), args.begin(), args.end());
  auto log = dir_ / ("ctl-" + std::to_string(++ctlRuns_) + ".log");
  int rc = run(argv, log);
  return {rc, slurp(log)};
}

std::string NodeFixture::diagnostics() const {
  std::string out;
  for (const char* name : {"agent", "vmm", "netd"})
    out += std::string("--- ") + name + " log:\n" + tail(slurp(dir_ / (std::string(name) + ".log")), 6000) + "\n";
  out += "--- broker log:\n" + tail(broker.log(), 2000) + "\n";
  return out;
}

}  // namespace outrider::test
