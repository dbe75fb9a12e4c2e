// `outriderctl provision image`: a signed bundle for one node on a FAT image labelled OUTRIDER, and its
// one-time token registered for `enroll serve`. Also the command-line plumbing of both commands.
#include "outrider/ctl/provision.hpp"

#include <fcntl.h>
#include <spawn.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fmt/format.h>

#include <cerrno>
#include <cstring>
#include <set>

#include "outrider/common/atomic_file.hpp"
#include "outrider/common/broker_url.hpp"
#include "outrider/common/clock.hpp"
#include "outrider/common/manifest.hpp"
#include "outrider/common/topics.hpp"
#include "outrider/ctl/enroll.hpp"
#include "outrider/ctl/format.hpp"
#include "outrider/ctl/hub_client.hpp"

extern char** environ;

namespace outrider::ctl {

namespace fs = std::filesystem;
namespace v1 = outrider::v1;

namespace {

constexpr std::string_view kBundleFile = "outrider-bundle.bin";
constexpr std::string_view kLabel = "OUTRIDER";
constexpr std::size_t kMaxBundleBytes = 1u << 20;  // the agent's limit
constexpr int kEnrollPort = 8884;

// Options each command takes (all with a value).
const std::set<std::string, std::less<>> kProvisionOptions = {
    "node", "hub", "enroll", "ca", "token-ttl", "wg-hub", "wg-interface", "wg-address", "manifest",
    "operator-key", "sign-key", "out", "tokens"};
const std::set<std::string, std::less<>> kEnrollOptions = {"ca-key", "ca-cert", "tokens", "db",
                                                           "cert-days", "share", "count", "for"};
// Options of the common parser that take a value: needed to find the command word.
const std::set<std::string, std::less<>> kCommonValued = {"broker", "cafile", "cert", "key", "sign-key", "timeout",
                                                          "out", "count", "hold", "grace", "bytes", "for"};

std::string optionName(const std::string& a) {
  std::string n = a.substr(2);
  if (auto eq = n.find('='); eq != std::string::npos) n.resize(eq);
  return n;
}

std::vector<std::string> all(const ProvisioningArgs& a, const std::string& name) {
  std::vector<std::string> out;
  auto [b, e] = a.options.equal_range(name);
  for (auto it = b; it != e; ++it) out.push_back(it->second);
  return out;
}

ProvisioningOutcome usage(std::string s) { return {2, std::move(s)}; }
ProvisioningOutcome failed(std::string s) { return {1, std::move(s)}; }

// One external tool to completion; its output is returned with the failure.
Status runTool(const std::vector<std::string>& argv, const fs::path& logFile) {
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 1, logFile.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  posix_spawn_file_actions_adddup2(&fa, 1, 2);
  std::vector<std::string> envStore;
  for (char** e = environ; *e; ++e)
    if (std::strncmp(*e, "MTOOLS", 6) != 0) envStore.emplace_back(*e);
  envStore.emplace_back("MTOOLS_SKIP_CHECK=1");
  envStore.emplace_back("MTOOLSRC=/dev/null");  // no user or site drive definitions
  std::vector<char*> envp, args;
  for (auto& s : envStore) envp.push_back(s.data());
  envp.push_back(nullptr);
  std::vector<std::string> copy = argv;
  for (auto& s : copy) args.push_back(s.data());
  args.push_back(nullptr);
  pid_t pid = -1;
  int rc = ::posix_spawnp(&pid, args[0], &fa, nullptr, args.data(), envp.data());
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0)
    return Error{fmt::format("cannot run {}: {} (install the mtools package)", argv[0], std::strerror(rc))};
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0)
    if (errno != EINTR) return errnoError("waitpid " + argv[0], errno);
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return {};
  auto log = readFile(logFile, 64 * 1024);
  std::string text = log ? *log : "";
  for (char& c : text)
    if (c == '\n') c = ' ';
  return Error{fmt::format("{} failed ({}): {}", argv[0],
                           WIFEXITED(status) ? "exit " + std::to_string(WEXITSTATUS(status)) : "killed", text)};
}

// NAME,ENDPOINT,PUBKEY,TIER[,PROBE_ADDRESS[,ALLOWED_CIDR...]]
Result<v1::HubPeer> parseWgHub(std::string_view spec) {
  std::vector<std::string> f;
  std::string cur;
  for (char c : spec) {
    if (c == ',') {
      f.push_back(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  f.push_back(cur);
  if (f.size() < 4)
    return Error{fmt::format("--wg-hub '{}': expected NAME,ENDPOINT,PUBKEY,TIER[,PROBE_ADDRESS[,ALLOWED_CIDR...]]", spec)};
  auto tier = parseInteger(f[3], 0, 2, "--wg-hub tier");
  if (!tier) return tier.error();
  v1::HubPeer h;
  h.set_name(f[0]);
  h.set_endpoint(f[1]);
  h.set_public_key(f[2]);
  h.set_tier(static_cast<std::uint32_t>(*tier));
  if (f.size() > 4) h.set_probe_address(f[4]);
  for (std::size_t i = 5; i < f.size(); ++i) h.add_allowed_ips(f[i]);
  return h;
}

std::string randomBytes(std::size_t n) {
  std::string hex = randomHex(n), raw;
  for (std::size_t i = 0; i < hex.size(); i += 2) raw.push_back(static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  return raw;
}

}  // namespace

// ---- command line -----------------------------------------------------------------------------------

ProvisioningArgs takeProvisioningArgs(std::span<const std::string> args) {
  ProvisioningArgs r;
  // The command word: the first argument that is neither an option nor an option's value.
  std::string command;
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--") {
      if (i + 1 < args.size()) command = args[i + 1];
      break;
    }
    if (a.size() >= 2 && a.front() == '-') {
      if (a.starts_with("--") && a.find('=') == std::string::npos) {
        auto n = optionName(a);
        if (kCommonValued.count(n) || kProvisionOptions.count(n) || kEnrollOptions.count(n)) ++i;
      }
      continue;
    }
    command = a;
    break;
  }
  if (command != "provision" && command != "enroll") {
    r.rest.assign(args.begin(), args.end());
    return r;
  }
  r.taken = true;
  const auto& mine = command == "provision" ? kProvisionOptions : kEnrollOptions;
  bool onlyWords = false;
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (onlyWords || !a.starts_with("--") || a == "--") {
      onlyWords = onlyWords || a == "--";
      r.rest.push_back(a);
      continue;
    }
    auto n = optionName(a);
    if (!mine.count(n)) {
      r.rest.push_back(a);
      continue;
    }
    if (auto eq = a.find('='); eq != std::string::npos) {
      r.options.emplace(n, a.substr(eq + 1));
    } else if (i + 1 < args.size()) {
      r.options.emplace(n, args[++i]);
    } else if (r.error.empty()) {
      r.error = "option --" + n + " needs a value";
    }
  }
  return r;
}

ProvisioningOutcome runProvisioning(const Invocation& inv, const ProvisioningArgs& args, std::ostream& out) {
  if (!args.error.empty()) return usage(args.error);
  const std::string& cmd = inv.words.front();
  const std::string sub = inv.words.size() > 1 ? inv.words[1] : "";
  if (cmd == "provision") {
    if (sub != "image")
      return usage(sub.empty() ? "usage: outriderctl provision image --node NODE ... --out IMAGE"
                               : fmt::format("unknown provision command '{}'", sub));
    return provisionImage(inv, args, out);
  }
  if (sub != "serve")
    return usage(sub.empty() ? "usage: outriderctl enroll serve --ca-cert FILE --ca-key FILE --tokens FILE --db FILE"
                             : fmt::format("unknown enroll command '{}'", sub));
  return enrollServe(inv, args, out);
}

Result<std::chrono::seconds> parseDuration(std::string_view text, std::string_view what) {
  auto bad = [&] {
    return Error{fmt::format("invalid {} '{}': expected a duration such as 24h, 90m, 3600s or 7d", what, text)};
  };
  if (text.empty()) return bad();
  std::int64_t unit = 1;
  std::string_view digits = text;
  switch (text.back()) {
    case 's': unit = 1; digits.remove_suffix(1); break;
    case 'm': unit = 60; digits.remove_suffix(1); break;
    case 'h': unit = 3600; digits.remove_suffix(1); break;
    case 'd': unit = 86400; digits.remove_suffix(1); break;
    default: break;
  }
  auto v = parseInteger(digits, 1, 365 * 86400, what);
  if (!v) return bad();
  if (*v * unit > 365 * 86400) return Error{fmt::format("invalid {} '{}': at most 365 days", what, text)};
  return std::chrono::seconds(*v * unit);
}

// ---- the bundle and the image -------------------------------------------------------------------------

std::string encodeBundleFile(const v1::ProvisioningBundle& bundle, const crypto::SigningKey& key) {
  const std::string payload = bundle.SerializeAsString();
  std::string keyId;
  for (std::size_t i = 0; i < 16; i += 2)
    keyId.push_back(static_cast<char>(std::stoi(key.publicKey().id().substr(i, 2), nullptr, 16)));
  std::string signedPart = "ORPB";
  signedPart += std::string("\x01\x00\x00\x00", 4);  // envelope format 1, little endian
  signedPart += keyId;
  const std::string sig = key.sign(signedPart + payload);
  std::string out = signedPart.substr(0, 16);
  out += sig;
  out += payload;
  return out;
}

Status writeFatImage(const fs::path& image, const std::string& label,
                     const std::vector<std::pair<std::string, std::string>>& files) {
  std::error_code ec;
  if (fs::exists(fs::symlink_status(image, ec))) return Error{"refusing to overwrite " + image.string()};
  fs::path dir = image.parent_path().empty() ? fs::path(".") : image.parent_path();
  fs::path work = dir / ("." + image.filename().string() + ".tmp" + randomHex(6));
  if (auto s = makeDirs(work, 0700); !s) return s;
  struct Cleanup {
    fs::path p;
    ~Cleanup() {
      std::error_code e;
      fs::remove_all(p, e);
    }
  } cleanup{work};
  const fs::path img = work / "image";
  const fs::path log = work / "tool.log";
  // 8192 sectors of 512 bytes: a 4 MiB FAT12 file system, room for the bundle's 1 MiB at most.
  if (auto s = runTool({"mformat", "-C", "-i", img.string(), "-T", "8192", "-h", "2", "-s", "32", "-v", label, "::"}, log);
      !s)
    return s;
  for (const auto& [name, content] : files) {
    fs::path src = work / name;
    if (auto s = writeFileAtomic(src, content, 0600); !s) return s;
    if (auto s = runTool({"mcopy", "-i", img.string(), src.string(), "::/" + name}, log); !s) return s;
  }
  if (::chmod(img.c_str(), 0600) != 0) return errnoError("chmod " + img.string(), errno);
  if (std::rename(img.c_str(), image.c_str()) != 0) return errnoError("rename to " + image.string(), errno);
  return fsyncDir(dir);
}

// ---- provision image ------------------------------------------------------------------------------------

ProvisioningOutcome provisionImage(const Invocation& inv, const ProvisioningArgs& args, std::ostream& out) {
  if (inv.words.size() > 2) return usage(fmt::format("unexpected argument '{}'", inv.words[2]));
  for (const auto& k : {"node", "ca", "token-ttl", "wg-interface", "manifest", "sign-key", "out", "tokens"})
    if (args.options.count(k) > 1) return usage(fmt::format("option --{} given twice", k));
  auto one = [&](const char* k) -> std::string {
    auto it = args.options.find(k);
    return it == args.options.end() ? "" : it->second;
  };
  const std::string node = one("node");
  if (node.empty()) return usage("provision image needs --node NODE");
  if (!topics::validNodeId(node))
    return usage(fmt::format("invalid node id '{}': 1-64 chars of [A-Za-z0-9._-], not starting with '.'", node));
  const auto hubs = all(args, "hub");
  if (hubs.empty()) return usage("provision image needs at least one --hub mqtts://HOST:PORT");
  if (one("ca").empty()) return usage("provision image needs the fleet CA certificate: --ca CA.pem");
  if (one("sign-key").empty()) return usage("provision image needs the provisioning key: --sign-key PROV.key");
  if (one("out").empty()) return usage("provision image needs --out IMAGE");
  if (one("tokens").empty()) return usage("provision image needs the token store enroll serve reads: --tokens FILE");
  const auto opKeys = all(args, "operator-key");
  if (opKeys.empty()) return usage("provision image needs at least one trusted operator key: --operator-key FILE");
  auto ttl = parseDuration(one("token-ttl").empty() ? "24h" : one("token-ttl"), "--token-ttl");
  if (!ttl) return usage(ttl.error().message);

  v1::ProvisioningBundle b;
  b.set_format_version(1);
  b.set_node_id(node);
  for (const auto& h : hubs) {
    auto u = BrokerUrl::parse(h);
    if (!u) return usage("--hub: " + u.error().message);
    if (!u->tls) return usage(fmt::format("--hub {}: nodes reach the hub over TLS only (mqtts://)", h));
    b.add_hub_brokers(u->text());
  }
  auto enrolls = all(args, "enroll");
  if (enrolls.empty())
    for (const auto& h : hubs) {
      auto u = *BrokerUrl::parse(h);
      u.port = kEnrollPort;
      enrolls.push_back(u.text());
    }
  for (const auto& e : enrolls) {
    auto u = BrokerUrl::parse(e);
    if (!u) return usage("--enroll: " + u.error().message);
    if (!u->tls) return usage(fmt::format("--enroll {}: the enrollment listener must be TLS (mqtts://)", e));
    b.add_enroll_brokers(u->text());
  }
  auto ca = readFile(one("ca"), 1 << 20);
  if (!ca) return failed(fmt::format("cannot read {}: {}", one("ca"), ca.error().message));
  if (auto s = checkCaPem(*ca); !s) return usage(fmt::format("{}: {}", one("ca"), s.error().message));
  b.set_ca_pem(*ca);
  for (const auto& k : opKeys) {
    auto v = crypto::VerifyKey::parse(k);
    if (!v) return usage("--operator-key: " + v.error().message);
    b.add_operator_keys("ed25519:" + crypto::base64(v->raw()));
  }

  // The first manifest: --manifest, plus the --wg-hub peers as a tunnel in it.
  std::optional<v1::NodeManifest> manifest;
  if (!one("manifest").empty()) {
    auto text = readFile(one("manifest"), 4u << 20);
    if (!text) return failed(fmt::format("cannot read {}: {}", one("manifest"), text.error().message));
    auto m = parseManifest(*text, one("manifest"));
    if (!m) return usage(m.error().message);
    manifest = std::move(*m);
  }
  const auto wgHubs = all(args, "wg-hub");
  if (!wgHubs.empty()) {
    if (!manifest) {
      manifest.emplace();
      manifest->set_version(1);
    }
    const std::string iface = one("wg-interface").empty() ? "wg-hub" : one("wg-interface");
    v1::TunnelSpec* tunnel = nullptr;
    for (auto& t : *manifest->mutable_tunnels())
      if (t.interface() == iface) tunnel = &t;
    if (!tunnel) {
      tunnel = manifest->add_tunnels();
      tunnel->set_interface(iface);
    }
    for (const auto& a : all(args, "wg-address")) tunnel->add_addresses(a);
    for (const auto& spec : wgHubs) {
      auto h = parseWgHub(spec);
      if (!h) return usage(h.error().message);
      *tunnel->add_hubs() = std::move(*h);
    }
  } else if (args.options.count("wg-address") || args.options.count("wg-interface")) {
    return usage("--wg-address and --wg-interface go with --wg-hub");
  }
  if (manifest) {
    if (auto s = validateManifest(*manifest); !s) return usage("first manifest: " + s.error().message);
    *b.mutable_manifest() = *manifest;
  }

  auto key = crypto::SigningKey::loadFile(one("sign-key"));
  if (!key) return failed(fmt::format("cannot load the provisioning key {}: {}", one("sign-key"), key.error().message));
  const std::int64_t now = SystemClock().nowMs();
  b.set_bundle_id(randomHex(16));
  b.set_issued_at_ms(now);
  b.set_expires_at_ms(now + std::chrono::duration_cast<std::chrono::milliseconds>(*ttl).count());
  b.set_enroll_token(randomBytes(32));
  const std::string file = encodeBundleFile(b, *key);
  if (file.size() > kMaxBundleBytes)
    return usage(fmt::format("the bundle is {} bytes; nodes read at most {}", file.size(), kMaxBundleBytes));

  const std::string readme = fmt::format(
      "Outrider provisioning stick for node {}.\n"
      "Insert it into the node: it provisions itself (outrider-agent provision).\n"
      "Bundle {}, valid until {}. It holds a one-time enrollment secret: keep it safe, and wipe it once used.\n",
      node, b.bundle_id(), formatTimestamp(b.expires_at_ms()));
  const fs::path outPath = one("out");
  if (auto s = writeFatImage(outPath, std::string(kLabel), {{std::string(kBundleFile), file}, {"README.TXT", readme}}); !s)
    return failed(s.error().message);
  TokenRecord t{tokenIdOf(b.enroll_token()), b.enroll_token(), node, b.bundle_id(), now, b.expires_at_ms()};
  if (auto s = TokenStore::add(one("tokens"), t, now); !s) {
    std::error_code ec;
    fs::remove(outPath, ec);  // an image whose token enroll serve does not know is of no use
    return failed(fmt::format("cannot register the token in {}: {}", one("tokens"), s.error().message));
  }
  auto digest = crypto::sha256(file);
  const std::string sha = crypto::hex(std::span<const std::uint8_t>(digest.data(), digest.size()));
  if (inv.global.json) {
    out << fmt::format("{{\"node\":{},\"image\":{},\"bundle_id\":{},\"bundle_sha256\":{},\"token_id\":{},"
                       "\"expires_at_ms\":{},\"signing_key_id\":{}}}\n",
                       jsonQuote(node), jsonQuote(outPath.string()), jsonQuote(b.bundle_id()), jsonQuote(sha),
                       jsonQuote(t.id), b.expires_at_ms(), jsonQuote(key->publicKey().id()));
  } else {
    out << formatTable({{"image:", outPath.string() + " (FAT, label " + std::string(kLabel) + ")"},
                        {"node:", node},
                        {"bundle:", b.bundle_id() + " sha256:" + sha},
                        {"token:", t.id + " (registered in " + one("tokens") + ")"},
                        {"expires:", formatTimestamp(b.expires_at_ms())},
                        {"signed by:", "provisioning key " + key->publicKey().id()}});
  }
  return {};
}

}  // namespace outrider::ctl
