#include "outrider/ctl/app.hpp"

#include <filesystem>
#include <map>
#include <ostream>

#include <fmt/format.h>

#include "outrider/common/atomic_file.hpp"
#include "outrider/common/clock.hpp"
#include "outrider/common/crypto.hpp"
#include "outrider/common/topics.hpp"
#include "outrider/ctl/command_client.hpp"
#include "outrider/ctl/format.hpp"
#include "outrider/ctl/hub_client.hpp"
#include "outrider/ctl/ping.hpp"

namespace outrider::ctl {

namespace fs = std::filesystem;

namespace {

// What a subcommand ends with: an exit status and, on failure, the one-line reason.
struct Outcome {
  int exit = kExitOk;
  std::string reason;
};
Outcome ok() { return {}; }
Outcome failure(std::string reason) { return {kExitFailure, std::move(reason)}; }
Outcome usageError(std::string reason) { return {kExitUsage, std::move(reason)}; }

constexpr auto kQuietPeriod = std::chrono::milliseconds(300);

// Refuse words and options the subcommand does not take.
std::optional<Outcome> checkShape(const Invocation& inv, std::string_view name, std::size_t words,
                                  std::initializer_list<std::string_view> options, std::string_view synopsis) {
  if (inv.words.size() < words) return usageError(fmt::format("usage: outriderctl {}", synopsis));
  if (inv.words.size() > words) return usageError(fmt::format("unexpected argument '{}'", inv.words[words]));
  for (const auto& [opt, value] : inv.local)
    if (std::find(options.begin(), options.end(), opt) == options.end())
      return usageError(fmt::format("option --{} is not valid for '{}'", opt, name));
  return std::nullopt;
}

std::optional<Outcome> checkNode(const std::string& node) {
  if (!topics::validNodeId(node))
    return usageError(fmt::format("invalid node id '{}': 1-64 chars of [A-Za-z0-9._-], not starting with '.'", node));
  return std::nullopt;
}

Result<std::unique_ptr<HubClient>> connectHub(const GlobalOptions& g, Outcome& usage) {
  auto url = BrokerUrl::parse(g.broker);
  if (!url) {
    usage = usageError(url.error().message);
    return url.error();
  }
  HubOptions opts;
  opts.broker = *url;
  opts.cafile = g.cafile;
  opts.cert = g.cert;
  opts.key = g.key;
  if (opts.broker.tls && opts.cafile.empty()) {
    usage = usageError(fmt::format("{} needs a CA file: --cafile FILE (or OUTRIDER_CAFILE, or cafile in ctl.toml)",
                                   opts.broker.text()));
    return Error{usage.reason, 0};
  }
  if (opts.cert.empty() != opts.key.empty()) {
    usage = usageError("a client certificate needs both --cert and --key");
    return Error{usage.reason, 0};
  }
  return HubClient::connect(opts, g.timeout());
}

// ---- keys gen ----
Outcome keysGen(const Invocation& inv, std::ostream& out) {
  if (inv.words.size() < 2 || inv.words[1] != "gen")
    return usageError(inv.words.size() < 2 ? "usage: outriderctl keys gen --out NAME"
                                           : fmt::format("unknown keys command '{}'", inv.words[1]));
  if (auto bad = checkShape(inv, "keys gen", 2, {"out"}, "keys gen --out NAME")) return *bad;
  auto it = inv.local.find("out");
  if (it == inv.local.end() || it->second.empty()) return usageError("keys gen needs --out NAME");
  const fs::path priv = it->second + ".key";
  const fs::path pub = it->second + ".pub";
  for (const auto& p : {priv, pub}) {
    std::error_code ec;
    if (fs::exists(fs::symlink_status(p, ec))) return failure(fmt::format("refusing to overwrite {}", p.string()));
  }
  auto key = crypto::SigningKey::generate();
  if (!key) return failure("generate key: " + key.error().message);
  if (auto st = key->saveFile(priv); !st) return failure(fmt::format("write {}: {}", priv.string(), st.error().message));
  if (auto st = writeFileAtomic(pub, key->publicKey().toPem(), 0644); !st)
    return failure(fmt::format("write {}: {}", pub.string(), st.error().message));
  const std::string inlineForm = "ed25519:" + crypto::base64(key->publicKey().raw());
  if (inv.global.json) {
    out << fmt::format("{{\"key_id\":{},\"private_key\":{},\"public_key\":{},\"inline\":{}}}\n",
                       jsonQuote(key->publicKey().id()), jsonQuote(priv.string()), jsonQuote(pub.string()),
                       jsonQuote(inlineForm));
  } else {
    out << formatTable({{"key id:", key->publicKey().id()},
                        {"private key:", priv.string() + " (keep secret)"},
                        {"public key:", pub.string()},
                        {"inline:", inlineForm}});
    out << "Add the inline form (or the path of " << pub.string() << ") to the node's trusted operator keys in agent.toml.\n";
  }
  return ok();
}

// ---- nodes ----
std::optional<std::string> nodeOfStatusTopic(std::string_view topic) {
  constexpr std::string_view prefix = "outrider/v1/nodes/";
  constexpr std::string_view suffix = "/status";
  if (!topic.starts_with(prefix) || !topic.ends_with(suffix)) return std::nullopt;
  auto node = topic.substr(prefix.size(), topic.size() - prefix.size() - suffix.size());
  if (node.empty() || node.find('/') != std::string_view::npos) return std::nullopt;
  return std::string(node);
}

Outcome nodes(const Invocation& inv, std::ostream& out) {
  if (auto bad = checkShape(inv, "nodes", 1, {}, "nodes")) return *bad;
  Outcome usage;
  auto hub = connectHub(inv.global, usage);
  if (!hub) return usage.exit ? usage : failure(hub.error().message);
  const auto timeout = inv.global.timeout();
  if (auto st = (*hub)->subscribe(topics::kAllStatus, timeout); !st) return failure(st.error().message);
  // Retained messages follow the SUBACK at once; collect until the stream pauses.
  const auto deadline = HubClient::Clock::now() + timeout;
  auto quietUntil = HubClient::Clock::now() + kQuietPeriod;
  std::map<std::string, NodeEntry> seen;
  for (;;) {
    auto msg = (*hub)->nextMessage(std::min(deadline, quietUntil));
    if (!msg) {
      if (msg.error().code == kHubTimeout) break;
      return failure(msg.error().message);
    }
    quietUntil = HubClient::Clock::now() + kQuietPeriod;
    auto node = nodeOfStatusTopic(msg->topic);
    if (!node) continue;
    if (msg->payload.empty()) {  // a cleared retained status
      seen.erase(*node);
      continue;
    }
    NodeEntry e{*node, std::nullopt};
    v1::NodeStatus s;
    if (s.ParseFromString(msg->payload)) e.status = std::move(s);
    seen[*node] = std::move(e);
  }
  std::vector<NodeEntry> entries;
  for (auto& [name, e] : seen) entries.push_back(std::move(e));
  out << (inv.global.json ? formatNodesJson(std::move(entries))
                          : formatNodesTable(std::move(entries), SystemClock().nowMs()));
  return ok();
}

// ---- status NODE ----
Outcome status(const Invocation& inv, std::ostream& out) {
  if (auto bad = checkShape(inv, "status", 2, {}, "status NODE")) return *bad;
  const std::string& node = inv.words[1];
  if (auto bad = checkNode(node)) return *bad;
  Outcome usage;
  auto hub = connectHub(inv.global, usage);
  if (!hub) return usage.exit ? usage : failure(hub.error().message);
  const auto timeout = inv.global.timeout();
  const std::string topic = topics::status(node);
  if (auto st = (*hub)->subscribe(topic, timeout); !st) return failure(st.error().message);
  const auto deadline = HubClient::Clock::now() + timeout;
  for (;;) {
    auto msg = (*hub)->nextMessage(deadline);
    if (!msg) {
      if (msg.error().code == kHubTimeout) return failure(fmt::format("no status for node {}", node));
      return failure(msg.error().message);
    }
    if (msg->topic != topic || msg->payload.empty()) continue;
    v1::NodeStatus s;
    if (!s.ParseFromString(msg->payload)) return failure(fmt::format("invalid status message from node {}", node));
    out << (inv.global.json ? statusJson(node, s) + "\n" : formatStatus(node, s, SystemClock().nowMs()));
    return ok();
  }
}

// ---- ping NODE ----
Outcome ping(const Invocation& inv, std::ostream& out) {
  if (auto bad = checkShape(inv, "ping", 2, {"count", "hold"}, "ping NODE [--count N] [--hold MS]")) return *bad;
  const std::string& node = inv.words[1];
  if (auto bad = checkNode(node)) return *bad;
  std::int64_t count = 1, hold = 0;
  if (auto it = inv.local.find("count"); it != inv.local.end()) {
    auto v = parseInteger(it->second, 1, 1000000, "--count");
    if (!v) return usageError(v.error().message);
    count = *v;
  }
  if (auto it = inv.local.find("hold"); it != inv.local.end()) {
    auto v = parseInteger(it->second, 0, 86400000, "--hold");
    if (!v) return usageError(v.error().message);
    hold = *v;
  }
  const GlobalOptions& g = inv.global;
  if (g.signKey.empty())
    return usageError("ping needs the operator signing key: --sign-key FILE (or OUTRIDER_SIGN_KEY, or sign_key in ctl.toml)");
  auto key = crypto::SigningKey::loadFile(g.signKey);
  if (!key) return failure(fmt::format("cannot load signing key {}: {}", g.signKey, key.error().message));

  Outcome usage;
  auto hub = connectHub(g, usage);
  if (!hub) return usage.exit ? usage : failure(hub.error().message);
  CommandClient client(**hub, std::move(*key), g.timeout());

  if (count > 1) {
    PingStats stats = pingMany(client, node, static_cast<std::uint64_t>(count), static_cast<std::uint32_t>(hold));
    out << formatPingStats(stats, g.json);
    if (stats.ok < static_cast<std::uint64_t>(count))
      return failure(fmt::format("{} of {} pings failed; first: {}", static_cast<std::uint64_t>(count) - stats.ok,
                                 count, stats.firstError));
    return ok();
  }

  auto showProgress = [&](const v1::CommandReply& r) {
    if (g.json) return;
    if (r.kind() == v1::CommandReply::ACCEPTED)
      out << "accepted by " << node << (r.message().empty() ? "" : ": " + r.message()) << '\n';
    else
      out << fmt::format("progress {}%{}\n", r.progress_pct(), r.message().empty() ? "" : ": " + r.message());
    out.flush();
  };
  auto r = client.execute(makePing(client, node, static_cast<std::uint32_t>(hold)), showProgress);
  if (!r) return failure(r.error().message);
  if (!r->succeeded()) return failure(r->failureText());
  const double rttMs = std::chrono::duration<double, std::milli>(r->rtt).count();
  const v1::Pong& pong = r->reply.pong();
  if (g.json)
    out << fmt::format("{{\"node\":{},\"command_id\":{},\"version\":{},\"rtt_ms\":{:.3f},\"node_time_ms\":{},"
                       "\"uptime_s\":{}}}\n",
                       jsonQuote(node), jsonQuote(r->reply.command_id()), jsonQuote(pong.version()), rttMs,
                       pong.node_time_ms(), pong.uptime_s());
  else
    out << fmt::format("pong from {}: version {}, rtt {:.2f} ms\n", node, pong.version().empty() ? "?" : pong.version(),
                       rttMs);
  return ok();
}

Outcome dispatch(const Invocation& inv, std::ostream& out) {
  const std::string& cmd = inv.words.front();
  if (cmd == "keys") return keysGen(inv, out);
  if (cmd == "nodes") return nodes(inv, out);
  if (cmd == "status") return status(inv, out);
  if (cmd == "ping") return ping(inv, out);
  return usageError(fmt::format("unknown command '{}' (see outriderctl --help)", cmd));
}

std::string oneLine(std::string s) {
  for (char& c : s)
    if (c == '\n' || c == '\r') c = ' ';
  while (!s.empty() && s.back() == ' ') s.pop_back();
  return s;
}

}  // namespace

std::string usageText() {
  return R"(usage: outriderctl [OPTIONS] COMMAND [ARGS]

Commands:
  keys gen --out NAME     make an Ed25519 key pair: NAME.key (private, mode 0600) and NAME.pub
  nodes                   list the nodes known from their retained status
  status NODE             show one node's status and its daemons
  ping NODE [--count N] [--hold MS]
                          send signed pings and wait for the replies; with --count > 1,
                          print round-trip statistics
  help                    show this help

Options (before or after the command):
  --broker URL            mqtts://host:port or mqtt://host:port (default mqtts://127.0.0.1:8883)
  --cafile FILE           CA certificate that signed the broker's certificate (mqtts)
  --cert FILE, --key FILE client certificate and key (mqtts)
  --sign-key FILE         operator Ed25519 private key (PEM) that signs commands
  --timeout SECONDS       how long to wait for the broker and for replies (default 10)
  --json                  machine-readable output
  -h, --help              show this help

The same settings come from environment variables OUTRIDER_BROKER, OUTRIDER_CAFILE, OUTRIDER_CERT,
OUTRIDER_KEY, OUTRIDER_SIGN_KEY, OUTRIDER_TIMEOUT, and from the TOML file $OUTRIDER_CTL_CONFIG or
~/.config/outrider/ctl.toml (keys broker, cafile, cert, key, sign_key, timeout; relative paths are
relative to the file). Flags override the environment, which overrides the file.

Exit status: 0 success, 1 failure, rejection or timeout, 2 usage or configuration error.
)";
}

int runCtl(std::span<const std::string> args, std::ostream& out, std::ostream& err, const EnvLookup& env) {
  Outcome result;
  try {
    auto inv = parseInvocation(args, env);
    if (!inv) {
      result = usageError(inv.error().message);
    } else if (inv->help || (!inv->words.empty() && inv->words.front() == "help")) {
      out << usageText();
    } else if (inv->words.empty()) {
      result = usageError("no command given (see outriderctl --help)");
    } else {
      result = dispatch(*inv, out);
    }
  } catch (const std::exception& e) {
    result = failure(fmt::format("internal error: {}", e.what()));
  }
  out.flush();
  if (result.exit != kExitOk) err << "outriderctl: " << oneLine(result.reason) << std::endl;
  return result.exit;
}

}  // namespace outrider::ctl
