// `outrider-agent provision --from DIR`: verify, enroll, write identity and configuration, last of all
// provisioned.toml. Every refusal happens before the first write; a failure while writing removes what
// this run wrote.
#include "outrider/agent/provision.hpp"

#include <fmt/format.h>
#include <stdlib.h>
#include <toml++/toml.h>

#include <cstdio>
#include <optional>
#include <regex>
#include <sstream>

#include "outrider/agent/config.hpp"
#include "outrider/agent/hook_report.hpp"
#include "outrider/agent/mqtt.hpp"
#include "outrider/agent/provision_bundle.hpp"
#include "outrider/agent/provision_x509.hpp"
#include "outrider/agent/workloads.hpp"
#include "outrider/common/atomic_file.hpp"
#include "outrider/common/clock.hpp"
#include "outrider/common/config.hpp"
#include "outrider/common/ipc.hpp"
#include "outrider/common/log.hpp"
#include "outrider/hooks/runner.hpp"

namespace outrider::agent::provision {

namespace fs = std::filesystem;
namespace v1 = outrider::v1;

namespace {

constexpr const char* kUsage =
    "usage: outrider-agent provision --from DIR [--config FILE] [--pubkey FILE] [--give-up-after SECONDS]\n";

struct Options {
  fs::path from;
  fs::path config = "/etc/outrider/agent.toml";
  fs::path pubkey = "/etc/outrider/provisioning.pub";
  std::optional<std::chrono::seconds> giveUpAfter;
};

// What the provisioner needs from agent.toml. It reads only these keys: the agent checks its own file.
struct NodeSettings {
  fs::path stateDir = AgentConfig{}.stateDir;
  fs::path netdSocket = AgentConfig{}.netdSocket;
  bool handConfigured = false;  // agent.toml sets node.id itself
};

Result<Options> parseArgs(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    std::string value;
    auto take = [&](std::string_view name) -> bool {
      std::string flag = "--" + std::string(name);
      if (a == flag && i + 1 < argc) {
        value = argv[++i];
        return true;
      }
      if (a.starts_with(flag + "=")) {
        value = a.substr(flag.size() + 1);
        return true;
      }
      return false;
    };
    if (take("from")) o.from = value;
    else if (take("config")) o.config = value;
    else if (take("pubkey")) o.pubkey = value;
    else if (take("give-up-after")) {
      char* end = nullptr;
      long v = std::strtol(value.c_str(), &end, 10);
      if (value.empty() || *end || v < 1 || v > 30L * 86400) return Error{"--give-up-after: seconds in [1, 2592000]"};
      o.giveUpAfter = std::chrono::seconds(v);
    } else {
      return Error{"unknown or incomplete argument '" + a + "'"};
    }
  }
  if (o.from.empty()) return Error{"--from DIR is required"};
  return o;
}

NodeSettings readSettings(const fs::path& config) {
  auto r = ConfigReader::load(config);
  NodeSettings s;
  s.stateDir = r.str("node.state_dir", s.stateDir.string());
  if (!s.stateDir.is_absolute()) r.fail("node.state_dir", "must be an absolute path");
  s.netdSocket = r.str("daemons.netd_socket", s.netdSocket.string());
  s.handConfigured = r.has("node.id");
  log::Level level = log::Level::info;
  if (log::parseLevel(r.str("log.level", "info"), level)) log::setLevel(level);
  return s;
}

// netd owns the node's WireGuard key; it names the public half in its health detail and tunnel status.
// Best effort: the hub also learns it later from the node's status.
std::string askNetdForWireguardKey(boost::asio::io_context& io, const fs::path& socket) {
  std::error_code ec;
  if (!fs::exists(socket, ec)) return {};
  ipc::Client client(io, socket);
  std::string key;
  static const std::regex kKey("public key ([A-Za-z0-9+/]{43}=)");
  v1::LocalRequest health;
  health.mutable_health();
  client.call(health, std::chrono::seconds(2), [&](Result<v1::LocalReply> r) {
    std::smatch m;
    if (r && r->has_health() && std::regex_search(r->health().detail(), m, kKey)) key = m[1];
    if (!key.empty()) return;
    v1::LocalRequest status;
    status.mutable_tunnel_status();
    client.call(status, std::chrono::seconds(2), [&](Result<v1::LocalReply> s) {
      if (!s || !s->has_tunnels()) return;
      for (const auto& t : s->tunnels().tunnels())
        if (!t.public_key().empty()) {
          key = t.public_key();
          return;
        }
    });
  });
  io.run();
  io.restart();
  return key;
}

std::string tomlText(const toml::table& t) {
  std::ostringstream os;
  os << t;
  return os.str();
}

// STATE_DIR/provisioned.toml: the keys the agent takes from provisioning (docs/provisioning.md).
std::string provisionedToml(const VerifiedBundle& vb, const fs::path& identity) {
  const auto& b = vb.bundle;
  toml::array brokers, keys;
  for (const auto& u : b.hub_brokers()) brokers.push_back(u);
  for (const auto& k : b.operator_keys()) keys.push_back(k);
  toml::table t{
      {"node", toml::table{{"id", b.node_id()}, {"provisioned_by", vb.record()}}},
      {"hub", toml::table{{"brokers", brokers},
                          {"cafile", (identity / "ca.crt").string()},
                          {"certfile", (identity / "node.crt").string()},
                          {"keyfile", (identity / "node.key").string()}}},
      {"commands", toml::table{{"operator_keys", keys}}},
  };
  return "# Written by `outrider-agent provision` from bundle " + b.bundle_id() +
         ". Keys set in agent.toml win over these.\n" + tomlText(t);
}

// Files this run wrote, removed again if a later step fails.
class Rollback {
 public:
  void wrote(fs::path p) { files_.push_back(std::move(p)); }
  void madeDir(fs::path p) { dirs_.push_back(std::move(p)); }
  void commit() {
    files_.clear();
    dirs_.clear();
  }
  ~Rollback() {
    std::error_code ec;
    for (auto it = files_.rbegin(); it != files_.rend(); ++it) fs::remove(*it, ec);
    for (auto it = dirs_.rbegin(); it != dirs_.rend(); ++it) fs::remove(*it, ec);  // only if empty
  }

 private:
  std::vector<fs::path> files_, dirs_;
};

// A private directory holding the bundle's CA for libmosquitto (it takes a file); removed on exit.
class TempCa {
 public:
  Status create(std::string_view pem) {
    const char* base = std::getenv("TMPDIR");
    std::string tmpl = std::string(base && *base ? base : "/tmp") + "/outrider-provision-XXXXXX";
    if (!::mkdtemp(tmpl.data())) return errnoError("mkdtemp " + tmpl, errno);
    dir_ = tmpl;
    return writeFileAtomic(file(), pem, 0600);
  }
  fs::path file() const { return dir_ / "ca.crt"; }
  ~TempCa() {
    std::error_code ec;
    if (!dir_.empty()) fs::remove_all(dir_, ec);
  }

 private:
  fs::path dir_;
};

Status writeState(const NodeSettings& s, const VerifiedBundle& vb, std::string_view bundleFile, const NodeKey& key,
                  const std::string& certPem, const std::string& provisioned, Rollback& rb) {
  const fs::path identity = s.stateDir / "identity";
  std::error_code ec;
  if (!fs::exists(s.stateDir, ec)) {
    if (auto st = makeDirs(s.stateDir, 0750); !st) return st;
    rb.madeDir(s.stateDir);
  }
  if (!fs::exists(identity, ec)) {
    if (auto st = makeDirs(identity, 0700); !st) return st;
    rb.madeDir(identity);
  }
  auto put = [&](const fs::path& p, std::string_view data, unsigned mode) -> Status {
    if (auto st = writeFileAtomic(p, data, mode); !st) return st;
    rb.wrote(p);
    return {};
  };
  if (auto st = put(identity / "node.key", key.keyPem, 0600); !st) return st;
  if (auto st = put(identity / "node.crt", certPem, 0644); !st) return st;
  if (auto st = put(identity / "ca.crt", vb.bundle.ca_pem(), 0644); !st) return st;
  // The signed bundle itself: the root updater takes the operator keys from it only after checking its
  // signature, since everything in the state directory is the agent's to change.
  if (auto st = put(identity / "bundle.bin", bundleFile, 0644); !st) return st;
  if (vb.bundle.has_manifest())
    if (auto st = put(s.stateDir / "manifest.pb", encodeManifestFile(vb.bundle.manifest()), 0640); !st) return st;
  // Last: the agent switches on when this file appears.
  return put(provisionedFile(s.stateDir), provisioned, 0640);
}

// The `provisioned` hooks (docs/hooks.md), once everything is written. They cannot undo provisioning:
// a failing hook is logged and the node stays provisioned.
void runProvisionedHooks(const AgentConfig& cfg, const VerifiedBundle& vb) {
  hooks::HookRunner runner(hooks::RunnerOptions{.hooksDir = cfg.hooksDir, .node = cfg.nodeId, .timeout = cfg.hookTimeout});
  auto r = runner.run("provisioned", {{"OUTRIDER_BUNDLE_ID", vb.bundle.bundle_id()},
                                      {"OUTRIDER_STATE_DIR", cfg.stateDir.string()}});
  if (!r) {
    LOG_WARN("provisioned hooks: {}, ignoring", r.error().message);
    return;
  }
  if (r->hooks.empty() && r->skipped.empty()) return;
  logHookRun(*r);
  if (!r->ok()) LOG_WARN("a provisioned hook failed; the node stays provisioned");
}

// The node's key from the moment its request may reach the hub until the certificate is written: the hub
// spends the token when it answers, so a run cut off before the answer arrived (power loss, kill) must ask
// again with the same key, which the hub answers with the same certificate. STATE_DIR/enroll-pending.key
// (0600): "bundle <id>" on the first line, then the key's PEM. A key kept for another bundle is replaced.
class PendingKey {
 public:
  PendingKey(fs::path stateDir, std::string bundleId) : stateDir_(std::move(stateDir)), bundleId_(std::move(bundleId)) {}
  fs::path file() const { return stateDir_ / "enroll-pending.key"; }

  Result<NodeKey> load(const std::string& nodeId) {
    const std::string head = "bundle " + bundleId_ + "\n";
    if (auto kept = readFile(file(), 64 << 10); kept && kept->starts_with(head)) {
      if (auto k = nodeKeyFrom(std::string_view(*kept).substr(head.size()), nodeId); k) {
        LOG_NOTICE("asking with the key kept by an earlier run for bundle {} (it was cut off before the hub's answer)",
                   bundleId_);
        return k;
      } else {
        LOG_WARN("{}: {}; making a new key", file().string(), k.error().message);
      }
    }
    auto key = makeNodeKey(nodeId);
    if (!key) return key;
    std::error_code ec;
    if (!fs::exists(stateDir_, ec)) {
      if (auto st = makeDirs(stateDir_, 0750); !st) return st.error();
      madeDir_ = true;
    }
    if (auto st = writeFileAtomic(file(), head + key->keyPem, 0600); !st) return st.error();
    return key;
  }
  void drop() {
    std::error_code ec;
    fs::remove(file(), ec);
    if (madeDir_) fs::remove(stateDir_, ec);  // only if empty
  }

 private:
  fs::path stateDir_;
  std::string bundleId_;
  bool madeDir_ = false;
};

// The steps; every refusal returns before the first write. Exit status as runProvision's.
int provisionNode(const Options& o) {
  NodeSettings s;
  try {
    s = readSettings(o.config);
  } catch (const ConfigError& e) {
    LOG_ERR("provisioning: {}", e.what());
    return 2;
  }
  auto refuse = [](const std::string& why) {
    LOG_ERR("provisioning refused: {}; nothing written", why);
    return 1;
  };
  if (s.handConfigured)
    return refuse(fmt::format("{} sets node.id itself, so this node is configured by hand", o.config.string()));
  auto trusted = crypto::VerifyKey::parse(o.pubkey.string());
  if (!trusted) return refuse("provisioning public key: " + trusted.error().message);
  const fs::path bundlePath = o.from / kBundleFileName;
  auto file = readFile(bundlePath, kMaxBundleBytes + 1);
  if (!file) return refuse(fmt::format("cannot read the bundle: {}", file.error().message));
  auto vb = verifyBundle(*file, *trusted);
  if (!vb) return refuse(fmt::format("{}: {}", bundlePath.string(), vb.error().message));
  const auto& b = vb->bundle;

  // The same stick again (also after it expired): nothing to do.
  const fs::path provFile = provisionedFile(s.stateDir);
  std::error_code ec;
  if (fs::exists(provFile, ec)) {
    std::string by, node;
    try {
      auto r = ConfigReader::load(provFile);
      by = r.str("node.provisioned_by", "");
      node = r.str("node.id", "");
    } catch (const ConfigError& e) {
      return refuse(fmt::format("this node has a provisioned.toml that does not read ({})", e.what()));
    }
    if (by == vb->record()) {
      fs::remove(PendingKey(s.stateDir, b.bundle_id()).file(), ec);  // left by a run cut off after it finished
      LOG_NOTICE("already provisioned as node '{}' from bundle {}: nothing to do", node, b.bundle_id());
      return 0;
    }
    return refuse(fmt::format("this node is already provisioned as '{}' (from {}); provisioning it again from "
                              "bundle {} needs a factory reset first",
                              node, by.empty() ? "an unknown bundle" : "bundle " + by, b.bundle_id()));
  }
  if (auto st = checkBundleTime(*vb, SystemClock().nowMs()); !st) return refuse(st.error().message);

  const fs::path identity = s.stateDir / "identity";
  const std::string provisioned = provisionedToml(*vb, identity);
  try {
    // What the agent will read, checked before the token is spent.
    (void)AgentConfig::parse(provisioned, provFile.string());
  } catch (const ConfigError& e) {
    return refuse(fmt::format("the bundle gives a configuration the agent would not accept: {}", e.what()));
  }
  LOG_NOTICE("provisioning node '{}' from bundle {} (expires in {} min)", b.node_id(), b.bundle_id(),
             (b.expires_at_ms() - SystemClock().nowMs()) / 60000);

  MqttLibrary mqtt;
  boost::asio::io_context io;
  const std::string wgKey = askNetdForWireguardKey(io, s.netdSocket);
  if (wgKey.empty()) LOG_INFO("netd did not name its WireGuard key; the hub learns it from the node's status later");
  TempCa ca;
  if (auto st = ca.create(b.ca_pem()); !st) return refuse(st.error().message);
  PendingKey pending(s.stateDir, b.bundle_id());
  auto key = pending.load(b.node_id());
  if (!key) return refuse(key.error().message);

  EnrollParams p;
  p.nodeId = b.node_id();
  for (const auto& u : b.enroll_brokers()) p.brokers.push_back(*BrokerUrl::parse(u));
  p.cafile = ca.file();
  p.token = b.enroll_token();
  p.bundleId = b.bundle_id();
  p.csrDer = key->csrDer;
  p.wireguardPublicKey = wgKey;
  const auto untilExpiry = std::chrono::milliseconds(std::max<std::int64_t>(b.expires_at_ms() - SystemClock().nowMs(), 0));
  p.giveUpAt = std::chrono::steady_clock::now() + (o.giveUpAfter ? std::min<std::chrono::milliseconds>(*o.giveUpAfter, untilExpiry)
                                                                 : untilExpiry);
  p.acceptCertificate = [&](const std::string& pem) {
    return checkNodeCertificate(pem, b.ca_pem(), key->keyPem, b.node_id());
  };
  auto cert = enroll(io, p);
  if (!cert) {
    if (cert.error().code == kEnrollRefused) {
      pending.drop();  // a definite no: the key will never be certified
      return refuse(cert.error().message);
    }
    LOG_ERR("provisioning stopped: {}; the node's key stays in {} so that running provision again with this "
            "stick asks with the same key",
            cert.error().message, pending.file().string());
    return 1;
  }

  Rollback rb;
  if (auto st = writeState(s, *vb, *file, *key, *cert, provisioned, rb); !st) {
    LOG_ERR("provisioning failed while writing the node's state: {}; what this run wrote is removed again",
            st.error().message);
    return 1;
  }
  std::optional<AgentConfig> cfg;
  try {
    cfg = loadNodeConfig(o.config);
    if (!cfg) throw ConfigError("no node.id after provisioning");
  } catch (const ConfigError& e) {
    LOG_ERR("provisioning failed: the agent would not start with what was written ({}); removed again", e.what());
    return 1;
  }
  rb.commit();
  pending.drop();
  runProvisionedHooks(*cfg, *vb);
  LOG_NOTICE("provisioned as node '{}' from bundle {}: identity in {}, {}; the agent starts on its own", b.node_id(),
             b.bundle_id(), identity.string(),
             b.has_manifest() ? fmt::format("first manifest version {}", b.manifest().version()) : "no first manifest");
  return 0;
}

}  // namespace

int runProvision(int argc, char** argv) {
  auto o = parseArgs(argc, argv);
  if (!o) {
    std::fprintf(stderr, "outrider-agent provision: %s\n%s", o.error().message.c_str(), kUsage);
    return 2;
  }
  return provisionNode(*o);
}

}  // namespace outrider::agent::provision
