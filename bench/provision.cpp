// provision: time from `outrider-agent provision --from DIR` to the node's first `online` status at the
// hub, with the real pieces (outriderctl provision image + enroll serve, Mosquitto with mutual TLS and the
// enrollment listener, the real agent waiting unprovisioned). Baseline, measured in the same run: an
// agent configured by hand with its certificate, from start to its first `online` status.
//
// update: time from `outriderctl update NODE PACKAGE.deb` to the node's commit reply, with the package
// installed for real on this machine (root; the benchmark refuses when outrider is already installed, and
// purges what it installed), the installed daemons under a supervisor and the updater spawned by the agent.
// Baseline, in the same run: `dpkg --install` of a package of the same size by hand.
//
// Usage: bench_provision [ROUNDS]   (default 3)
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "outrider/common/crypto.hpp"
#include "outrider/common/topics.hpp"
#include "outrider/v1/hub.pb.h"
#include "support/mqtt_fixture.hpp"
#include "support/node_fixture.hpp"
#include "support/packages.hpp"
#include "support/process.hpp"
#include "support/sandbox_config.hpp"
#include "support/update_node.hpp"

using namespace outrider;
using namespace outrider::test;
using namespace std::chrono_literals;
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

std::string slurp(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string quoted(const fs::path& p) { return "\"" + p.string() + "\""; }

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

double msSince(Clock::time_point t0) { return std::chrono::duration<double, std::milli>(Clock::now() - t0).count(); }

bool online(MqttClient& hub, const std::string& node) {
  for (const auto& m : hub.received()) {
    v1::NodeStatus s;
    if (m.topic == topics::status(node) && s.ParseFromString(m.payload) && s.online()) return true;
  }
  return false;
}

int fail(const std::string& why) {
  std::fprintf(stderr, "bench_provision: %s\n", why.c_str());
  std::printf("RESULT provision.provision_to_online value=0 unit=ms baseline=- ratio=- goal=<=5000ms FAIL\n");
  return 1;
}

int updateFail(const std::string& why) {
  std::fprintf(stderr, "bench_provision: update: %s\n", why.c_str());
  std::printf("RESULT provision.update_commit value=0 unit=ms baseline=- ratio=- goal=<=120000ms FAIL\n");
  return 1;
}

struct PurgeAtEnd {
  const TempDir& scratch;
  ~PurgeAtEnd() {
    if (!installedOutriderVersion(scratch).empty()) (void)runCapture({"dpkg", "--purge", "outrider"}, scratch);
  }
};

int benchUpdate() {
  if (::getuid() != 0) return updateFail("needs root (it installs the package)");
  TempDir scratch("bench-update");
  if (!installedOutriderVersion(scratch).empty())
    return updateFail("outrider is installed on this machine; the benchmark installs and purges it, so it leaves it alone");
  std::string why;
  auto arch = runCapture({"dpkg", "--print-architecture"}, scratch).text;
  arch = arch.substr(0, arch.find('\n'));
  auto debs = makePackages(scratch, arch, OUTRIDER_BIN_DIR, {}, why);
  if (!debs) return updateFail("scripts/package: " + why);
  auto v1 = runCapture({"dpkg-deb", "--field", debs->node.string(), "Version"}, scratch).text;
  v1 = v1.substr(0, v1.find('\n'));
  auto v2 = restampPackage(debs->node, v1 + "+bench1", scratch, why);
  if (!v2) return updateFail("restamp: " + why);
  PurgeAtEnd purge{scratch};
  if (auto r = runCapture({"apt-get", "install", "-y", "--no-install-recommends", debs->node.string()}, scratch); r.rc != 0)
    return updateFail("apt-get install: " + r.text);

  TempDir tools("bench-update-tools");
  writeExecutable(tools / "supervise", kSuperviseScript);
  NodeFixtureOptions o;
  o.logLevel = "warning";
  o.binDir = "/usr/sbin";
  o.supervisor = tools / "supervise";
  o.libvirtUri = "test:///default";
  o.telemetryExtra = "[update]\nlauncher = \"spawn\"\nhealth_deadline_s = 120\nroot_dir = \"" +
                     (tools / "updater").string() + "\"\nrestart_command = [\"" +
                     (tools / "restart").string() + "\"]\n";
  NodeFixture n(o);
  writeExecutable(tools / "restart", "for f in " + (n / "agent.pid").string() + " " + (n / "netd.pid").string() + " " +
                                         (n / "vmm.pid").string() + "; do kill -TERM \"$(cat \"$f\")\"; done");
  n.startAll();
  if (!waitFor([&] { return n.ctl({"ping", "n1"}, 5).first == 0; }, 30s)) return updateFail("n1 did not come online: " + n.diagnostics());
  auto t0 = Clock::now();
  auto [rc, out] = n.ctl({"update", "n1", v2->string()}, 60);
  const double value = msSince(t0);
  if (rc != 0 || out.find("committed") == std::string::npos) return updateFail("update did not commit: " + out + n.diagnostics());
  std::printf("update %s -> %s committed after %.0f ms:\n%s", v1.c_str(), (v1 + "+bench1").c_str(), value, out.c_str());
  // Baseline: dpkg installing a package of that size by hand (back to the first version).
  auto b0 = Clock::now();
  if (auto r = runCapture({"dpkg", "--install", debs->node.string()}, scratch); r.rc != 0)
    return updateFail("dpkg --install: " + r.text);
  const double baseline = msSince(b0);
  std::printf("RESULT provision.update_commit value=%.1f unit=ms baseline=%.1f ratio=%.3f goal=<=120000ms %s\n", value,
              baseline, value / baseline, value <= 120000 ? "PASS" : "FAIL");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const int rounds = argc > 1 ? std::max(1, std::atoi(argv[1])) : 3;
  MosquittoLib lib;
  TempDir dir("bench-prov");
  TestCa ca(dir / "pki");
  std::vector<std::string> nodes;
  for (int i = 0; i < rounds; ++i) {
    nodes.push_back("prov-" + std::to_string(i));
    nodes.push_back("base-" + std::to_string(i));
  }
  Broker broker(dir / "broker", ca, BrokerOptions{.nodes = nodes, .enrollListener = true});
  CertPair hubCert = ca.issueClient("hub");
  const std::string ctl = binary("outriderctl").string();
  if (run({ctl, "keys", "gen", "--out", (dir / "prov").string()}, dir / "keys.log") != 0 ||
      run({ctl, "keys", "gen", "--out", (dir / "op").string()}, dir / "keys.log") != 0)
    return fail("outriderctl keys gen failed: " + slurp(dir / "keys.log"));
  const std::vector<std::string> hubArgs{ctl, "--broker", broker.url(), "--cafile", ca.caFile().string(), "--cert",
                                         hubCert.cert.string(), "--key", hubCert.key.string()};
  auto serveArgs = hubArgs;
  for (const std::string a : {"enroll", "serve", "--ca-cert"}) serveArgs.push_back(a);
  serveArgs.insert(serveArgs.end(), {ca.caFile().string(), "--ca-key", (ca.dir() / "ca.key").string(), "--tokens",
                                     (dir / "tokens.toml").string(), "--db", (dir / "enrolled.toml").string()});
  Process serve(serveArgs, dir / "serve.log");
  if (!waitFor([&] { return slurp(dir / "serve.log").find("listening") != std::string::npos; }, 20s))
    return fail("enroll serve did not start: " + slurp(dir / "serve.log"));
  MqttClient hub(lib, MqttClientOptions{.caFile = ca.caFile(), .cert = hubCert});
  if (!hub.connect("127.0.0.1", broker.port()) || !hub.subscribe("outrider/v1/nodes/+/status"))
    return fail("hub client: " + hub.lastError());

  auto agentToml = [&](const std::string& name, const std::string& identity) {
    auto base = dir / name;
    fs::create_directories(base / "state");
    std::ofstream(base / "agent.toml") << "[node]\nstate_dir = " << quoted(base / "state") << "\n"
                                       << identity << "[daemons]\nvmm_socket = " << quoted(base / "vmm.sock")
                                       << "\nnetd_socket = " << quoted(base / "netd.sock") << "\n"
                                       << agentSandboxConfig(base);
    return base / "agent.toml";
  };

  std::vector<double> provMs, enrollMs, baseMs;
  const std::string opInline = "ed25519:" + crypto::base64(crypto::VerifyKey::parse((dir / "op.pub").string())->raw());
  for (int i = 0; i < rounds; ++i) {
    // Provisioned: a stick per node, an agent waiting for it.
    const std::string node = "prov-" + std::to_string(i);
    auto img = dir / (node + ".img");
    auto imgArgs = hubArgs;
    imgArgs.insert(imgArgs.end(), {"provision", "image", "--node", node, "--hub", broker.url(), "--enroll",
                                   broker.enrollUrl(), "--ca", ca.caFile().string(), "--operator-key",
                                   (dir / "op.pub").string(), "--sign-key", (dir / "prov.key").string(), "--tokens",
                                   (dir / "tokens.toml").string(), "--out", img.string()});
    if (run(imgArgs, dir / "image.log") != 0) return fail("provision image: " + slurp(dir / "image.log"));
    auto stick = dir / (node + "-stick");
    fs::create_directories(stick);
    if (run({"env", "MTOOLS_SKIP_CHECK=1", "mcopy", "-i", img.string(), "::/outrider-bundle.bin", stick.string()},
            dir / "mcopy.log") != 0)
      return fail("mcopy: " + slurp(dir / "mcopy.log"));
    auto cfg = agentToml(node, "");
    Process agent({binary("outrider-agent").string(), "--config", cfg.string()}, dir / (node + ".log"));
    if (!waitFor([&] { return slurp(dir / (node + ".log")).find("not provisioned") != std::string::npos; }, 10s))
      return fail("the agent did not start waiting: " + slurp(dir / (node + ".log")));
    auto t0 = Clock::now();
    Process prov({binary("outrider-agent").string(), "provision", "--from", stick.string(), "--config", cfg.string(),
                  "--pubkey", (dir / "prov.pub").string()},
                 dir / (node + "-provision.log"));
    auto st = prov.wait(60s);
    if (!st || !WIFEXITED(*st) || WEXITSTATUS(*st) != 0)
      return fail("provision failed: " + slurp(dir / (node + "-provision.log")));
    enrollMs.push_back(msSince(t0));
    if (!waitFor([&] { return online(hub, node); }, 30s))
      return fail(node + " did not come online: " + slurp(dir / (node + ".log")));
    provMs.push_back(msSince(t0));
    agent.stop();

    // Baseline: the same agent configured by hand with a certificate.
    const std::string bnode = "base-" + std::to_string(i);
    CertPair cert = ca.issueClient(bnode);
    auto bcfg = agentToml(bnode, "[hub]\nbrokers = [\"" + broker.url() + "\"]\ncafile = " + quoted(ca.caFile()) +
                                     "\ncertfile = " + quoted(cert.cert) + "\nkeyfile = " + quoted(cert.key) +
                                     "\n[commands]\noperator_keys = [\"" + opInline + "\"]\n");
    // node.id goes into [node]: rewrite the first line.
    auto text = slurp(bcfg);
    text.insert(text.find('\n') + 1, "id = \"" + bnode + "\"\n");
    std::ofstream(bcfg, std::ios::trunc) << text;
    auto b0 = Clock::now();
    Process base({binary("outrider-agent").string(), "--config", bcfg.string()}, dir / (bnode + ".log"));
    if (!waitFor([&] { return online(hub, bnode); }, 30s))
      return fail(bnode + " did not come online: " + slurp(dir / (bnode + ".log")));
    baseMs.push_back(msSince(b0));
    base.stop();
    std::printf("round %d: provision exits after %.0f ms, online after %.0f ms; hand-configured agent online after %.0f ms\n",
                i + 1, enrollMs.back(), provMs.back(), baseMs.back());
  }
  const double value = median(provMs), baseline = median(baseMs), enroll = median(enrollMs);
  std::printf("provisioning (%d rounds, median): `provision --from` exits after %.0f ms (enrolled, state written); the "
              "waiting agent, which looks for provisioned.toml every 2 s, is online after %.0f ms\n",
              rounds, enroll, value);
  std::printf("RESULT provision.provision_to_online value=%.1f unit=ms baseline=%.1f ratio=%.3f goal=<=5000ms %s\n", value,
              baseline, value / baseline, value <= 5000 ? "PASS" : "FAIL");
  std::printf("RESULT provision.enroll value=%.1f unit=ms baseline=- ratio=- goal=- PASS\n", enroll);
  return benchUpdate();
}
