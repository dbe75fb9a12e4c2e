// Zero-touch provisioning end to end with the real pieces: `outriderctl provision image` makes a FAT
// image, mtools reads it back, `outriderctl enroll serve` runs against a real Mosquitto (mutual TLS for
// the hub, the server-auth enrollment listener for the node), the real agent waits unprovisioned, and
// `outrider-agent provision --from DIR` enrolls it; `outriderctl ping` then reaches it with its new
// certificate. Refused sticks leave nothing in the state dir.
#include <doctest/doctest.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <csignal>
#include <fstream>
#include <map>

#include "outrider/agent/workloads.hpp"
#include "outrider/common/crypto.hpp"
#include "outrider/common/topics.hpp"
#include "outrider/ctl/provision.hpp"
#include "outrider/v1/hub.pb.h"
#include "support/mqtt_fixture.hpp"
#include "support/process.hpp"
#include "support/sandbox_config.hpp"

using namespace outrider;
using namespace outrider::test;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

MosquittoLib g_mosquitto;

std::string slurp(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string quoted(const fs::path& p) { return "\"" + p.string() + "\""; }

// Everything under `dir`, with contents, for "nothing changed" checks.
std::map<std::string, std::string> snapshot(const fs::path& dir) {
  std::map<std::string, std::string> out;
  std::error_code ec;
  if (!fs::exists(dir, ec)) return out;
  for (const auto& e : fs::recursive_directory_iterator(dir))
    out[fs::relative(e.path(), dir).string()] = e.is_regular_file() ? slurp(e.path()) : "<dir>";
  return out;
}

struct World {
  TempDir dir{"prov"};
  TestCa ca{dir / "pki"};
  Broker broker{dir / "broker", ca, BrokerOptions{.nodes = {"edge-1", "edge-2"}, .enrollListener = true}};
  CertPair hubCert = ca.issueClient("hub");
  fs::path provKey = dir / "prov.key", provPub = dir / "prov.pub";
  fs::path opKey = dir / "operator.key", opPub = dir / "operator.pub";
  fs::path tokens = dir / "tokens.toml", db = dir / "enrolled.toml";
  Process serve;
  int runs = 0;

  World() {
    // Keys made the way an operator makes them.
    REQUIRE(run({binary("outriderctl").string(), "keys", "gen", "--out", (dir / "prov").string()}, dir / "keys.log") == 0);
    REQUIRE(run({binary("outriderctl").string(), "keys", "gen", "--out", (dir / "operator").string()}, dir / "keys.log") ==
            0);
  }

  std::vector<std::string> hubArgs() const {
    return {binary("outriderctl").string(), "--broker", broker.url(), "--cafile", ca.caFile().string(), "--cert",
            hubCert.cert.string(), "--key", hubCert.key.string(), "--timeout", "20"};
  }

  /// outriderctl with ARGS; exit code and output.
  std::pair<int, std::string> ctl(std::vector<std::string> args) {
    auto argv = hubArgs();
    argv.insert(argv.end(), args.begin(), args.end());
    auto log = dir / ("ctl-" + std::to_string(++runs) + ".log");
    int rc = run(argv, log);
    return {rc, slurp(log)};
  }

  /// A stick image for `node`; the image's path.
  fs::path image(const std::string& node, const std::string& ttl = "1h", fs::path signKey = {},
                 std::vector<std::string> extra = {}) {
    auto out = dir / (node + "-" + std::to_string(runs + 1) + ".img");
    std::vector<std::string> args{"provision", "image", "--node", node, "--hub", broker.url(), "--enroll",
                                  broker.enrollUrl(), "--ca", ca.caFile().string(), "--token-ttl", ttl,
                                  "--operator-key", opPub.string(), "--sign-key",
                                  (signKey.empty() ? provKey : signKey).string(), "--tokens", tokens.string(),
                                  "--out", out.string()};
    args.insert(args.end(), extra.begin(), extra.end());
    auto [rc, text] = ctl(args);
    REQUIRE_MESSAGE(rc == 0, text);
    CHECK(text.find("label OUTRIDER") != std::string::npos);
    return out;
  }

  /// Read the image back with mtools (no mount needed) into a fresh directory, as the unit would see it.
  fs::path readBack(const fs::path& img) {
    auto stick = dir / ("stick-" + std::to_string(++runs));
    fs::create_directories(stick);
    auto log = dir / ("mtools-" + std::to_string(runs) + ".log");
    REQUIRE_MESSAGE(run({"env", "MTOOLS_SKIP_CHECK=1", "mlabel", "-i", img.string(), "-s", "::"}, log) == 0, slurp(log));
    CHECK(slurp(log).find("OUTRIDER") != std::string::npos);
    // fsck.fat lives in sbin, which a non-root PATH may lack.
    REQUIRE_MESSAGE(run({"sh", "-c", "PATH=\"$PATH:/usr/sbin:/sbin\" exec fsck.fat -n \"$0\"", img.string()}, log) == 0,
                    slurp(log));
    REQUIRE_MESSAGE(run({"env", "MTOOLS_SKIP_CHECK=1", "mcopy", "-i", img.string(), "::/outrider-bundle.bin",
                         "::/README.TXT", stick.string()},
                        log) == 0,
                    slurp(log));
    return stick;
  }

  void startServe() {
    auto argv = hubArgs();
    for (std::string a : std::vector<std::string>{"enroll", "serve", "--ca-cert", ca.caFile().string(), "--ca-key",
                                                  (ca.dir() / "ca.key").string(), "--tokens", tokens.string(), "--db",
                                                  db.string()})
      argv.push_back(a);
    serve = Process(argv, dir / "serve.log");
    REQUIRE_MESSAGE(waitFor([&] { return slurp(dir / "serve.log").find("listening") != std::string::npos; }, 20s),
                    slurp(dir / "serve.log"));
  }

  /// agent.toml of a node as the package ships it: no identity, only where things live.
  fs::path agentConfig(const std::string& name) {
    auto base = dir / name;
    fs::create_directories(base / "state");
    auto cfg = base / "agent.toml";
    std::ofstream(cfg) << "[node]\nstate_dir = " << quoted(base / "state") << "\n"
                       << "[hub]\nbackoff_initial_ms = 100\nbackoff_max_s = 2\nconnect_timeout_s = 3\n"
                       << "[daemons]\nvmm_socket = " << quoted(base / "vmm.sock") << "\nnetd_socket = "
                       << quoted(base / "netd.sock") << "\nhealth_interval_s = 1\n"
                       << "[hooks]\ndir = " << quoted(base / "hooks") << "\n"
                       << agentSandboxConfig(base);
    // A `provisioned` hook that records what it was told.
    fs::create_directories(base / "hooks" / "provisioned.d");
    auto hook = base / "hooks" / "provisioned.d" / "10-record";
    std::ofstream(hook) << "#!/bin/sh\necho \"$OUTRIDER_EVENT $OUTRIDER_NODE $OUTRIDER_BUNDLE_ID\" > "
                        << quoted(base / "hook-ran") << "\n";
    fs::permissions(hook, fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec);
    return cfg;
  }

  /// `outrider-agent provision --from STICK`: exit code and log.
  std::pair<int, std::string> provision(const fs::path& stick, const fs::path& config, std::vector<std::string> extra = {},
                                        fs::path pubkey = {}) {
    std::vector<std::string> argv{binary("outrider-agent").string(), "provision", "--from", stick.string(), "--config",
                                  config.string(), "--pubkey", (pubkey.empty() ? provPub : pubkey).string()};
    argv.insert(argv.end(), extra.begin(), extra.end());
    auto log = dir / ("provision-" + std::to_string(++runs) + ".log");
    int rc = run(argv, log);
    return {rc, slurp(log)};
  }
};

}  // namespace

TEST_CASE("a stick made by outriderctl provisions a waiting agent, which then answers ping with its new certificate") {
  World w;
  auto manifest = w.dir / "first.toml";
  std::ofstream(manifest) << "version = 3\n";
  auto img = w.image("edge-1", "1h", {}, {"--manifest", manifest.string()});
  auto stick = w.readBack(img);
  CHECK(slurp(stick / "README.TXT").find("edge-1") != std::string::npos);
  w.startServe();

  auto cfg = w.agentConfig("node");
  const fs::path state = w.dir / "node" / "state";
  Process agent({binary("outrider-agent").string(), "--config", cfg.string()}, w.dir / "agent.log");
  REQUIRE_MESSAGE(waitFor([&] { return slurp(w.dir / "agent.log").find("not provisioned") != std::string::npos; }, 10s),
                  slurp(w.dir / "agent.log"));
  MqttClient hub(g_mosquitto, MqttClientOptions{.caFile = w.ca.caFile(), .cert = w.hubCert});
  REQUIRE(hub.connect("127.0.0.1", w.broker.port()));
  REQUIRE(hub.subscribe(topics::status("edge-1")));

  auto [rc, log] = w.provision(stick, cfg);
  REQUIRE_MESSAGE(rc == 0, log, "\n--- serve:\n", slurp(w.dir / "serve.log"));
  CHECK(log.find("provisioned as node 'edge-1'") != std::string::npos);
  struct stat st {};
  REQUIRE(::stat((state / "identity" / "node.key").c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);
  CHECK(fs::exists(state / "identity" / "node.crt"));
  CHECK(slurp(state / "identity" / "ca.crt") == slurp(w.ca.caFile()));
  auto m = agent::decodeManifestFile(slurp(state / "manifest.pb"));
  REQUIRE(m.ok());
  CHECK(m->version() == 3);
  CHECK(slurp(state / "provisioned.toml").find("provisioned_by") != std::string::npos);
  CHECK(slurp(w.dir / "serve.log").find("enrolled edge-1") != std::string::npos);
  CHECK(slurp(w.db).find("id = 'edge-1'") != std::string::npos);
  CHECK_MESSAGE(slurp(w.dir / "node" / "hook-ran").starts_with("provisioned edge-1 "), log);

  // The waiting agent switches on by itself and comes online with the certificate it was just given.
  bool online = waitFor(
      [&] {
        for (const auto& msg : hub.received()) {
          v1::NodeStatus s;
          if (msg.topic == topics::status("edge-1") && s.ParseFromString(msg.payload) && s.online()) return true;
        }
        return false;
      },
      20s);
  REQUIRE_MESSAGE(online, slurp(w.dir / "agent.log"), "\n--- broker:\n", w.broker.log());
  auto [prc, pong] = w.ctl({"--sign-key", (w.dir / "operator.key").string(), "ping", "edge-1"});
  CHECK_MESSAGE(prc == 0, pong);
  CHECK(pong.find("pong from edge-1") != std::string::npos);
  CHECK(w.broker.log().find("u'edge-1'") != std::string::npos);  // the broker saw the node's certificate CN

  // The same stick again: nothing changes.
  auto before = snapshot(state / "identity");
  auto provBefore = slurp(state / "provisioned.toml");
  auto [rc2, log2] = w.provision(stick, cfg);
  CHECK_MESSAGE(rc2 == 0, log2);
  CHECK(log2.find("already provisioned as node 'edge-1'") != std::string::npos);
  CHECK(snapshot(state / "identity") == before);
  CHECK(slurp(state / "provisioned.toml") == provBefore);
  CHECK(slurp(w.dir / "serve.log").find("refused") == std::string::npos);  // it did not even ask the hub
  CHECK(log2.find("hooks provisioned") == std::string::npos);

  // A reused token (the same stick in a second node): refused by the hub, nothing written there.
  auto cfg2 = w.agentConfig("other");
  auto [rc3, log3] = w.provision(stick, cfg2);
  CHECK(rc3 == 1);
  CHECK_MESSAGE(log3.find("the token was already used") != std::string::npos, log3);
  CHECK(log3.find("nothing written") != std::string::npos);
  CHECK(snapshot(w.dir / "other" / "state").empty());
  CHECK_FALSE(fs::exists(w.dir / "other" / "hook-ran"));
}

TEST_CASE("expired, changed and foreign bundles are refused with a clear line and leave nothing behind") {
  World w;
  auto cfg = w.agentConfig("node");
  const fs::path state = w.dir / "node" / "state";

  SUBCASE("expired") {
    // A stick whose validity ended an hour ago: the real stick's bundle, re-dated and signed again with
    // the provisioning key (no waiting for a clock).
    auto stick = w.readBack(w.image("edge-1"));
    auto file = slurp(stick / "outrider-bundle.bin");
    v1::ProvisioningBundle b;
    REQUIRE(b.ParseFromString(file.substr(80)));
    b.set_issued_at_ms(b.issued_at_ms() - 2 * 3'600'000);
    b.set_expires_at_ms(b.expires_at_ms() - 2 * 3'600'000);
    std::ofstream(stick / "outrider-bundle.bin", std::ios::binary | std::ios::trunc)
        << ctl::encodeBundleFile(b, *crypto::SigningKey::loadFile(w.provKey));
    auto [rc, log] = w.provision(stick, cfg);
    CHECK(rc == 1);
    CHECK_MESSAGE(log.find("expired") != std::string::npos, log);
  }
  SUBCASE("one byte changed") {
    auto stick = w.readBack(w.image("edge-1"));
    auto file = slurp(stick / "outrider-bundle.bin");
    file[file.size() / 2] ^= 0x01;
    std::ofstream(stick / "outrider-bundle.bin", std::ios::binary | std::ios::trunc) << file;
    auto [rc, log] = w.provision(stick, cfg);
    CHECK(rc == 1);
    CHECK_MESSAGE(log.find("changed after signing") != std::string::npos, log);
  }
  SUBCASE("signed by another key") {
    REQUIRE(run({binary("outriderctl").string(), "keys", "gen", "--out", (w.dir / "rogue").string()}, w.dir / "k.log") == 0);
    auto stick = w.readBack(w.image("edge-1", "1h", w.dir / "rogue.key"));
    auto [rc, log] = w.provision(stick, cfg);
    CHECK(rc == 1);
    CHECK_MESSAGE(log.find("signed by another key") != std::string::npos, log);
  }
  SUBCASE("no bundle on the stick") {
    fs::create_directories(w.dir / "empty");
    auto [rc, log] = w.provision(w.dir / "empty", cfg);
    CHECK(rc == 1);
    CHECK_MESSAGE(log.find("cannot read the bundle") != std::string::npos, log);
  }
  CHECK(snapshot(state).empty());
}

TEST_CASE("with no hub reachable yet, enrollment waits and retries, then succeeds") {
  World w;
  auto stick = w.readBack(w.image("edge-2"));
  auto cfg = w.agentConfig("node");
  w.broker.stop();
  Process prov({binary("outrider-agent").string(), "provision", "--from", stick.string(), "--config", cfg.string(),
                "--pubkey", w.provPub.string()},
               w.dir / "provision.log");
  REQUIRE_MESSAGE(waitFor([&] { return slurp(w.dir / "provision.log").find("retrying in") != std::string::npos; }, 10s),
                  slurp(w.dir / "provision.log"));
  CHECK(prov.running());
  // While it waits, only the key it asks with is kept (0600), nothing the agent would read.
  auto waiting = snapshot(w.dir / "node" / "state");
  CHECK(waiting.size() == 1);
  CHECK(waiting.count("enroll-pending.key") == 1);
  const auto keyPerms = fs::status(w.dir / "node" / "state" / "enroll-pending.key").permissions() & fs::perms::all;
  CHECK((keyPerms == (fs::perms::owner_read | fs::perms::owner_write)));
  w.broker.restart();
  w.startServe();
  auto status = prov.wait(60s);
  REQUIRE_MESSAGE(status.has_value(), slurp(w.dir / "provision.log"));
  CHECK_MESSAGE(WIFEXITED(*status), slurp(w.dir / "provision.log"));
  CHECK_MESSAGE(WEXITSTATUS(*status) == 0, slurp(w.dir / "provision.log"));
  CHECK(fs::exists(w.dir / "node" / "state" / "provisioned.toml"));
  CHECK_FALSE(fs::exists(w.dir / "node" / "state" / "enroll-pending.key"));
}

TEST_CASE("a run killed after the hub spent the token but before its answer arrived is finished by the next run") {
  World w;
  auto stick = w.readBack(w.image("edge-1"));
  auto cfg = w.agentConfig("node");
  const fs::path state = w.dir / "node" / "state";
  // enroll serve stopped: the broker holds the request for it until it continues.
  w.startServe();
  w.serve.signal(SIGSTOP);
  struct Resume {
    Process& p;
    ~Resume() { p.signal(SIGCONT); }
  } resume{w.serve};
  // Its private temporary directory (the bundle's CA for libmosquitto) inside the test's own: a killed
  // run cannot remove it, the test's cleanup does.
  fs::create_directories(w.dir / "tmp");
  Process prov({binary("outrider-agent").string(), "provision", "--from", stick.string(), "--config", cfg.string(),
                "--pubkey", w.provPub.string()},
               w.dir / "cut.log", {{"TMPDIR", (w.dir / "tmp").string()}});
  REQUIRE_MESSAGE(waitFor([&] { return slurp(w.dir / "cut.log").find("waiting for the hub") != std::string::npos; }, 20s),
                  slurp(w.dir / "cut.log"));
  prov.signal(SIGKILL);  // the power goes: the request is out, the answer never reaches this run
  prov.wait(10s);
  const std::string keptKey = slurp(state / "enroll-pending.key");
  REQUIRE(keptKey.starts_with("bundle "));
  w.serve.signal(SIGCONT);
  REQUIRE_MESSAGE(waitFor([&] { return slurp(w.dir / "serve.log").find("enrolled edge-1") != std::string::npos; }, 20s),
                  slurp(w.dir / "serve.log"));
  CHECK_FALSE(fs::exists(state / "provisioned.toml"));

  // The token is spent now; the next run asks with the kept key and gets the certificate issued for it.
  auto [rc, log] = w.provision(stick, cfg);
  REQUIRE_MESSAGE(rc == 0, log, "\n--- serve:\n", slurp(w.dir / "serve.log"));
  CHECK(log.find("asking with the key kept by an earlier run") != std::string::npos);
  CHECK(slurp(w.dir / "serve.log").find("enrolled edge-1 again (same key") != std::string::npos);
  CHECK(slurp(w.dir / "serve.log").find("refused") == std::string::npos);
  CHECK(keptKey.find(slurp(state / "identity" / "node.key")) != std::string::npos);  // the key that was asked with
  CHECK_FALSE(fs::exists(state / "enroll-pending.key"));
  CHECK(slurp(w.dir / "node" / "hook-ran").starts_with("provisioned edge-1 "));
}

TEST_CASE("outriderctl provision image checks its input before it writes anything") {
  World w;
  auto out = w.dir / "x.img";
  auto base = [&] {
    return std::vector<std::string>{"provision", "image", "--node", "edge-1", "--hub", w.broker.url(),
                                    "--ca", w.ca.caFile().string(), "--operator-key", w.opPub.string(),
                                    "--sign-key", w.provKey.string(), "--tokens", w.tokens.string(),
                                    "--out", out.string()};
  };
  auto with = [&](std::vector<std::string> extra) {
    auto a = base();
    a.insert(a.end(), extra.begin(), extra.end());
    return w.ctl(a);
  };
  auto [rc, text] = with({"--hub", "mqtt://127.0.0.1:1883"});
  CHECK(rc == 2);
  CHECK(text.find("TLS only") != std::string::npos);
  std::tie(rc, text) = with({"--wg-hub", "eu1,hub.example:51820,notakey,0"});
  CHECK(rc == 2);
  CHECK_MESSAGE(text.find("first manifest") != std::string::npos, text);
  std::tie(rc, text) = with({"--token-ttl", "soon"});
  CHECK(rc == 2);
  auto noNode = base();
  noNode.erase(noNode.begin() + 2, noNode.begin() + 4);
  std::tie(rc, text) = w.ctl(noNode);
  CHECK(rc == 2);
  CHECK(text.find("--node") != std::string::npos);
  CHECK_FALSE(fs::exists(out));
  CHECK_FALSE(fs::exists(w.tokens));

  // A tunnel to the hubs in the first manifest.
  const std::string key = crypto::base64(std::string(32, 'k'));
  std::tie(rc, text) = with({"--wg-hub", "eu1,192.0.2.1:51820," + key + ",0,10.99.0.1,10.99.0.0/24", "--wg-address",
                             "10.99.0.2/32"});
  CHECK_MESSAGE(rc == 0, text);
  CHECK(fs::exists(out));
  CHECK(slurp(w.tokens).find("node = 'edge-1'") != std::string::npos);
  std::tie(rc, text) = with({});
  CHECK(rc == 1);
  CHECK(text.find("refusing to overwrite") != std::string::npos);
}
