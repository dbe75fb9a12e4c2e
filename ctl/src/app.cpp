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
#include "outrider/ctl/hook_format.hpp"
#include "outrider/ctl/hub_client.hpp"
#include "outrider/ctl/ping.hpp"
#include "outrider/ctl/provision.hpp"
#include "outrider/ctl/telemetry_format.hpp"
#include "outrider/ctl/workload_format.hpp"
#include "outrider/common/manifest.hpp"
#include "outrider/common/names.hpp"
#include "outrider/hooks/runner.hpp"

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
                                  const std::vector<std::string_view>& options, std::string_view synopsis) {
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

// ---- signed commands with a result: vm, ct, apply, tunnel ----

// Sign `body` (made by `fill`), send it to `node`, wait for the final reply. `minTimeout` raises the
// command's validity and wait for operations that take long on the node (a graceful VM stop).
Result<CommandResult> runSigned(const Invocation& inv, const std::string& node,
                                const std::function<void(v1::CommandBody&)>& fill, Outcome& usage, std::ostream& out,
                                std::chrono::milliseconds minTimeout = std::chrono::milliseconds(0)) {
  const GlobalOptions& g = inv.global;
  if (g.signKey.empty()) {
    usage = usageError(fmt::format("{} needs the operator signing key: --sign-key FILE (or OUTRIDER_SIGN_KEY, or "
                                   "sign_key in ctl.toml)",
                                   inv.words.front()));
    return Error{usage.reason};
  }
  auto key = crypto::SigningKey::loadFile(g.signKey);
  if (!key) return Error{fmt::format("cannot load signing key {}: {}", g.signKey, key.error().message)};
  auto hub = connectHub(g, usage);
  if (!hub) return hub.error();
  CommandClient client(**hub, std::move(*key), std::max(g.timeout(), minTimeout));
  auto body = client.newBody(node);
  fill(body);
  auto showProgress = [&](const v1::CommandReply& r) {
    if (g.json || r.kind() != v1::CommandReply::PROGRESS) return;
    out << fmt::format("progress {}%{}\n", r.progress_pct(), r.message().empty() ? "" : ": " + r.message());
    out.flush();
  };
  return client.execute(body, showProgress);
}

Outcome finishSigned(Result<CommandResult> r, const Outcome& usage) {
  if (!r) return usage.exit ? usage : failure(r.error().message);
  if (!r->succeeded()) return failure(r->failureText());
  return ok();
}

std::optional<Outcome> checkName(const std::string& name, const char* what) {
  if (!validWorkloadName(name))
    return usageError(fmt::format("invalid {} name '{}': 1-64 characters of [A-Za-z0-9_.-], not starting with '.' or '-'",
                                  what, name));
  return std::nullopt;
}

Result<std::uint32_t> optionalUint(const Invocation& inv, const char* opt, std::int64_t max) {
  auto it = inv.local.find(opt);
  if (it == inv.local.end()) return 0u;
  auto v = parseInteger(it->second, 1, max, std::string("--") + opt);
  if (!v) return v.error();
  return static_cast<std::uint32_t>(*v);
}

// vm list|start|stop|reboot|delete|console NODE [NAME]
Outcome vm(const Invocation& inv, std::ostream& out) {
  static const std::map<std::string, v1::VmCommand::Op> ops{
      {"list", v1::VmCommand::LIST},     {"start", v1::VmCommand::START},   {"stop", v1::VmCommand::STOP},
      {"reboot", v1::VmCommand::REBOOT}, {"delete", v1::VmCommand::DELETE}, {"console", v1::VmCommand::CONSOLE}};
  const char* synopsis = "vm list NODE | vm start|stop|reboot|delete|console NODE NAME";
  if (inv.words.size() < 2) return usageError(fmt::format("usage: outriderctl {}", synopsis));
  auto op = ops.find(inv.words[1]);
  if (op == ops.end()) return usageError(fmt::format("unknown vm command '{}' (usage: outriderctl {})", inv.words[1], synopsis));
  const bool list = op->second == v1::VmCommand::LIST;
  std::vector<std::string_view> opts;
  if (op->second == v1::VmCommand::STOP) opts = {"grace"};
  if (op->second == v1::VmCommand::CONSOLE) opts = {"bytes"};
  if (auto bad = checkShape(inv, "vm " + inv.words[1], list ? 3 : 4, opts, synopsis)) return *bad;
  const std::string& node = inv.words[2];
  if (auto bad = checkNode(node)) return *bad;
  std::string name = list ? "" : inv.words[3];
  if (!list)
    if (auto bad = checkName(name, "VM")) return *bad;
  auto grace = optionalUint(inv, "grace", 3600);
  if (!grace) return usageError(grace.error().message);
  auto bytes = optionalUint(inv, "bytes", 1 << 20);
  if (!bytes) return usageError(bytes.error().message);
  Outcome usage;
  auto r = runSigned(
      inv, node,
      [&](v1::CommandBody& b) {
        auto* c = b.mutable_vm();
        c->set_op(op->second);
        c->set_name(name);
        c->set_timeout_s(*grace);
        c->set_max_bytes(*bytes);
      },
      usage, out, std::chrono::seconds(*grace ? *grace + 30 : 0));
  if (!r || !r->succeeded()) return finishSigned(std::move(r), usage);
  const auto& reply = r->reply;
  const bool json = inv.global.json;
  switch (op->second) {
    case v1::VmCommand::LIST:
      out << (json ? vmListJson(reply.vm_list()) + "\n" : formatVmTable(reply.vm_list(), SystemClock().nowMs()));
      break;
    case v1::VmCommand::CONSOLE:
      if (json)
        out << fmt::format("{{\"name\":{},\"truncated\":{},\"data\":{}}}\n", jsonQuote(name), reply.console().truncated(),
                           jsonQuote(reply.console().data()));
      else
        out << reply.console().data() << (reply.console().data().empty() || reply.console().data().back() == '\n' ? "" : "\n");
      break;
    default:
      out << (json ? vmJson(reply.vm()) + "\n" : reply.message() + "\n");
  }
  return ok();
}

// ct list|start|stop|delete|logs NODE [NAME]
Outcome ct(const Invocation& inv, std::ostream& out) {
  static const std::map<std::string, v1::ContainerCommand::Op> ops{{"list", v1::ContainerCommand::LIST},
                                                                   {"start", v1::ContainerCommand::START},
                                                                   {"stop", v1::ContainerCommand::STOP},
                                                                   {"delete", v1::ContainerCommand::DELETE},
                                                                   {"logs", v1::ContainerCommand::LOGS}};
  const char* synopsis = "ct list NODE | ct start|stop|delete|logs NODE NAME";
  if (inv.words.size() < 2) return usageError(fmt::format("usage: outriderctl {}", synopsis));
  auto op = ops.find(inv.words[1]);
  if (op == ops.end()) return usageError(fmt::format("unknown ct command '{}' (usage: outriderctl {})", inv.words[1], synopsis));
  const bool list = op->second == v1::ContainerCommand::LIST;
  std::vector<std::string_view> opts;
  if (op->second == v1::ContainerCommand::STOP) opts = {"grace"};
  if (op->second == v1::ContainerCommand::LOGS) opts = {"bytes"};
  if (auto bad = checkShape(inv, "ct " + inv.words[1], list ? 3 : 4, opts, synopsis)) return *bad;
  const std::string& node = inv.words[2];
  if (auto bad = checkNode(node)) return *bad;
  std::string name = list ? "" : inv.words[3];
  if (!list)
    if (auto bad = checkName(name, "container")) return *bad;
  auto grace = optionalUint(inv, "grace", 3600);
  if (!grace) return usageError(grace.error().message);
  auto bytes = optionalUint(inv, "bytes", 1 << 20);
  if (!bytes) return usageError(bytes.error().message);
  Outcome usage;
  auto r = runSigned(
      inv, node,
      [&](v1::CommandBody& b) {
        auto* c = b.mutable_ct();
        c->set_op(op->second);
        c->set_name(name);
        c->set_timeout_s(*grace);
        c->set_max_bytes(*bytes);
      },
      usage, out, std::chrono::seconds(*grace ? *grace + 30 : 0));
  if (!r || !r->succeeded()) return finishSigned(std::move(r), usage);
  const auto& reply = r->reply;
  const bool json = inv.global.json;
  switch (op->second) {
    case v1::ContainerCommand::LIST:
      out << (json ? containerListJson(reply.ct_list()) + "\n"
                   : formatContainerTable(reply.ct_list(), SystemClock().nowMs()));
      break;
    case v1::ContainerCommand::LOGS:
      if (json)
        out << fmt::format("{{\"name\":{},\"truncated\":{},\"stdout\":{},\"stderr\":{}}}\n", jsonQuote(name),
                           reply.logs().truncated(), jsonQuote(reply.logs().stdout_data()),
                           jsonQuote(reply.logs().stderr_data()));
      else
        out << reply.logs().stdout_data() << reply.logs().stderr_data();
      break;
    default:
      out << (json ? containerJson(reply.ct()) + "\n" : reply.message() + "\n");
  }
  return ok();
}

// apply NODE MANIFEST.toml
Outcome apply(const Invocation& inv, std::ostream& out) {
  if (auto bad = checkShape(inv, "apply", 3, {}, "apply NODE MANIFEST.toml")) return *bad;
  const std::string& node = inv.words[1];
  if (auto bad = checkNode(node)) return *bad;
  auto text = readFile(inv.words[2], 4u << 20);
  if (!text) return failure(fmt::format("cannot read {}: {}", inv.words[2], text.error().message));
  auto manifest = parseManifest(*text, inv.words[2]);
  if (!manifest) return usageError(manifest.error().message);
  Outcome usage;
  auto r = runSigned(
      inv, node, [&](v1::CommandBody& b) { *b.mutable_apply()->mutable_manifest() = *manifest; }, usage, out);
  if (!r) return usage.exit ? usage : failure(r.error().message);
  if (r->reply.has_apply())
    out << (inv.global.json ? applyResultJson(r->reply.apply()) + "\n" : formatApplyResult(r->reply.apply()));
  if (!r->succeeded()) return failure(r->failureText());
  return ok();
}

// tunnel status NODE
Outcome tunnel(const Invocation& inv, std::ostream& out) {
  if (inv.words.size() < 2 || inv.words[1] != "status")
    return usageError(inv.words.size() < 2 ? "usage: outriderctl tunnel status NODE"
                                           : fmt::format("unknown tunnel command '{}'", inv.words[1]));
  if (auto bad = checkShape(inv, "tunnel status", 3, {}, "tunnel status NODE")) return *bad;
  const std::string& node = inv.words[2];
  if (auto bad = checkNode(node)) return *bad;
  Outcome usage;
  auto r = runSigned(
      inv, node, [&](v1::CommandBody& b) { b.mutable_tunnel()->set_op(v1::TunnelCommand::STATUS); }, usage, out);
  if (!r || !r->succeeded()) return finishSigned(std::move(r), usage);
  out << (inv.global.json ? tunnelsJson(r->reply.tunnels()) + "\n"
                          : formatTunnels(r->reply.tunnels(), SystemClock().nowMs()));
  return ok();
}

// hook run NODE EVENT [OUTRIDER_NAME=VALUE...]: run one event's hooks on the node, print each result.
Outcome hook(const Invocation& inv, std::ostream& out) {
  const char* synopsis = "hook run NODE EVENT [OUTRIDER_NAME=VALUE...]";
  if (inv.words.size() < 2 || inv.words[1] != "run")
    return usageError(inv.words.size() < 2 ? fmt::format("usage: outriderctl {}", synopsis)
                                           : fmt::format("unknown hook command '{}'", inv.words[1]));
  if (auto bad = checkShape(inv, "hook run", std::max<std::size_t>(inv.words.size(), 4), {}, synopsis)) return *bad;
  const std::string& node = inv.words[2];
  if (auto bad = checkNode(node)) return *bad;
  const std::string& event = inv.words[3];
  if (auto e = hooks::parseEvent(event); !e) return usageError(e.error().message);
  hooks::HookEnv env;
  for (std::size_t i = 4; i < inv.words.size(); ++i) {
    const std::string& w = inv.words[i];
    auto eq = w.find('=');
    if (eq == std::string::npos) return usageError(fmt::format("'{}': expected OUTRIDER_NAME=VALUE", w));
    if (!env.emplace(w.substr(0, eq), w.substr(eq + 1)).second)
      return usageError(fmt::format("variable {} given twice", w.substr(0, eq)));
  }
  if (auto s = hooks::validateHookEnv(env); !s) return usageError(s.error().message);
  Outcome usage;
  auto r = runSigned(
      inv, node,
      [&](v1::CommandBody& b) {
        auto* h = b.mutable_hook();
        h->set_event(event);
        for (const auto& [k, v] : env) (*h->mutable_env())[k] = v;
      },
      usage, out);
  if (!r) return usage.exit ? usage : failure(r.error().message);
  if (r->reply.has_hook())
    out << (inv.global.json ? hookRunJson(r->reply.hook()) + "\n" : formatHookRun(r->reply.hook()));
  if (!r->succeeded()) return failure(r->failureText());
  return ok();
}

// events [NODE] [--count N] [--for S]: NodeEvents as they arrive, until N of them or S seconds.
Outcome events(const Invocation& inv, std::ostream& out) {
  if (inv.words.size() > 2) return usageError(fmt::format("unexpected argument '{}'", inv.words[2]));
  if (auto bad = checkShape(inv, "events", inv.words.size(), {"count", "for"}, "events [NODE] [--count N] [--for S]"))
    return *bad;
  std::string node = inv.words.size() == 2 ? inv.words[1] : "+";
  if (node != "+")
    if (auto bad = checkNode(node)) return *bad;
  auto count = optionalUint(inv, "count", 1'000'000'000);
  if (!count) return usageError(count.error().message);
  auto seconds = optionalUint(inv, "for", 365 * 86400);
  if (!seconds) return usageError(seconds.error().message);
  Outcome usage;
  auto hub = connectHub(inv.global, usage);
  if (!hub) return usage.exit ? usage : failure(hub.error().message);
  if (auto st = (*hub)->subscribe(topics::events(node), inv.global.timeout()); !st) return failure(st.error().message);
  const auto deadline = *seconds ? HubClient::Clock::now() + std::chrono::seconds(*seconds) : HubClient::Clock::time_point::max();
  std::uint32_t seen = 0;
  while (!*count || seen < *count) {
    auto msg = (*hub)->nextMessage(deadline);
    if (!msg) {
      if (msg.error().code == kHubTimeout) break;
      return failure(msg.error().message);
    }
    v1::NodeEvent ev;
    if (!ev.ParseFromString(msg->payload)) continue;
    ++seen;
    if (inv.global.json)
      out << fmt::format("{{\"node\":{},\"seq\":{},\"at_ms\":{},\"source\":{},\"kind\":{},\"subject\":{},\"detail\":{}}}\n",
                         jsonQuote(ev.node_id()), ev.seq(), ev.at_ms(), jsonQuote(ev.source()), jsonQuote(ev.kind()),
                         jsonQuote(ev.subject()), jsonQuote(ev.detail()));
    else
      out << fmt::format("{}  {}  {}  {}  {}  {}\n", formatTimestamp(ev.at_ms()), ev.node_id(), ev.source(), ev.kind(),
                         ev.subject(), ev.detail());
    out.flush();
  }
  if (*count && seen < *count) return failure(fmt::format("{} of {} events seen before the time ran out", seen, *count));
  return ok();
}

// update NODE PACKAGE.deb [--chunk-kib N] [--health-deadline S] / update status NODE
// The package goes as signed pieces (offer, chunks, install; docs/updates.md). A transfer cut earlier
// resumes at what the node already holds.
std::string updateJson(const std::string& node, const v1::CommandReply& r) {
  const auto& u = r.update();
  return fmt::format("{{\"node\":{},\"ok\":{},\"phase\":{},\"from_version\":{},\"to_version\":{},\"reason\":{},"
                     "\"health_ms\":{},\"message\":{}}}",
                     jsonQuote(node), r.kind() == v1::CommandReply::SUCCEEDED, jsonQuote(u.phase()),
                     jsonQuote(u.from_version()), jsonQuote(u.to_version()), jsonQuote(u.reason()), u.health_ms(),
                     jsonQuote(r.message()));
}

Outcome update(const Invocation& inv, std::ostream& out) {
  const bool statusOnly = inv.words.size() >= 2 && inv.words[1] == "status";
  const char* synopsis = "update NODE PACKAGE.deb [--chunk-kib N] [--health-deadline S] | update status NODE";
  if (auto bad = checkShape(inv, "update", 3, statusOnly ? std::vector<std::string_view>{}
                                                          : std::vector<std::string_view>{"chunk-kib", "health-deadline"},
                            synopsis))
    return *bad;
  const std::string& node = inv.words[statusOnly ? 2 : 1];
  if (auto bad = checkNode(node)) return *bad;
  const GlobalOptions& g = inv.global;
  if (statusOnly) {
    Outcome usage;
    auto r = runSigned(inv, node, [](v1::CommandBody& b) { b.mutable_update()->set_op(v1::UpdateCommand::STATUS); },
                       usage, out);
    if (!r || !r->succeeded()) return finishSigned(std::move(r), usage);
    out << (g.json ? updateJson(node, r->reply) : r->reply.message()) << "\n";
    return ok();
  }
  auto chunkKib = optionalUint(inv, "chunk-kib", 1024);
  if (!chunkKib) return usageError(chunkKib.error().message);
  auto healthDeadline = optionalUint(inv, "health-deadline", 3600);
  if (!healthDeadline) return usageError(healthDeadline.error().message);
  const std::size_t chunk = (*chunkKib ? *chunkKib : 48) * std::size_t{1024};
  auto pkg = readFile(inv.words[2], std::size_t{512} << 20);
  if (!pkg) return failure(fmt::format("cannot read {}: {}", inv.words[2], pkg.error().message));
  if (pkg->size() < 8 || pkg->compare(0, 8, "!<arch>\n") != 0)
    return usageError(fmt::format("{} is not a Debian package", inv.words[2]));
  const auto digest = crypto::sha256(*pkg);
  const std::string sha(reinterpret_cast<const char*>(digest.data()), digest.size());
  const std::uint64_t size = pkg->size();

  if (g.signKey.empty())
    return usageError("update needs the operator signing key: --sign-key FILE (or OUTRIDER_SIGN_KEY, or sign_key in ctl.toml)");
  auto key = crypto::SigningKey::loadFile(g.signKey);
  if (!key) return failure(fmt::format("cannot load signing key {}: {}", g.signKey, key.error().message));
  Outcome usage;
  auto hub = connectHub(g, usage);
  if (!hub) return usage.exit ? usage : failure(hub.error().message);
  CommandClient client(**hub, *key, g.timeout());
  auto send = [&](const std::function<void(v1::UpdateCommand&)>& fill) {
    auto body = client.newBody(node);
    auto* u = body.mutable_update();
    u->set_sha256(sha);
    fill(*u);
    return client.execute(body);
  };
  auto offer = [&]() -> Result<std::uint64_t> {
    auto r = send([&](v1::UpdateCommand& u) {
      u.set_op(v1::UpdateCommand::OFFER);
      u.set_size(size);
    });
    if (!r) return r.error();
    if (!r->succeeded()) return Error{"the node refused the package: " + r->failureText()};
    return r->reply.update().have_bytes();
  };
  auto have = offer();
  if (!have) return failure(have.error().message);
  auto kib = [](std::uint64_t b) { return fmt::format("{} KiB", (b + 1023) / 1024); };
  if (!g.json) {
    if (*have >= size) out << fmt::format("{} already holds the package ({})\n", node, kib(size));
    else if (*have > 0) out << fmt::format("resuming at byte {} of {} ({} held by {})\n", *have, size, kib(*have), node);
    else out << fmt::format("sending {} to {} in pieces of {}\n", kib(size), node, kib(chunk));
    out.flush();
  }
  std::uint64_t offset = *have;
  unsigned lastTenth = static_cast<unsigned>(10 * offset / size);
  bool resynced = false;
  while (offset < size) {
    const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(chunk, size - offset));
    auto r = send([&](v1::UpdateCommand& u) {
      u.set_op(v1::UpdateCommand::CHUNK);
      u.set_offset(offset);
      u.set_data(pkg->substr(offset, n));
    });
    if (!r) return failure(fmt::format("transfer stopped at byte {} of {}: {}; run the same update again to resume",
                                       offset, size, r.error().message));
    if (!r->succeeded()) {
      // The node holds something else than we think (another hub sent pieces, or it dropped a bad
      // package): ask once where to go on.
      if (resynced) return failure(fmt::format("transfer stopped at byte {} of {}: {}", offset, size, r->failureText()));
      resynced = true;
      auto again = offer();
      if (!again) return failure(again.error().message);
      offset = *again;
      continue;
    }
    resynced = false;
    offset = r->reply.update().have_bytes();
    unsigned tenth = static_cast<unsigned>(10 * offset / size);
    if (!g.json && tenth != lastTenth) {
      out << fmt::format("sent {} of {} ({}%)\n", kib(offset), kib(size), 100 * offset / size);
      out.flush();
      lastTenth = tenth;
    }
  }
  // Install: long, across a restart of the agent; its replies come until commit or rollback.
  const std::uint32_t deadlineS = (*healthDeadline ? *healthDeadline : 120) + 600;
  CommandClient installer(**hub, std::move(*key), std::max(g.timeout(), std::chrono::milliseconds(deadlineS * 1000ull)));
  auto body = installer.newBody(node);
  auto* u = body.mutable_update();
  u->set_op(v1::UpdateCommand::INSTALL);
  u->set_sha256(sha);
  u->set_health_deadline_s(*healthDeadline);
  auto r = installer.execute(body, [&](const v1::CommandReply& p) {
    if (g.json || p.kind() != v1::CommandReply::PROGRESS) return;
    out << fmt::format("progress {}%: {}\n", p.progress_pct(), p.message());
    out.flush();
  });
  if (!r) return failure(r.error().message);
  out << (g.json ? updateJson(node, r->reply) : r->reply.message()) << "\n";
  if (!r->succeeded()) return failure(r->failureText());
  return ok();
}

// telemetry watch [NODE] [--count N] [--for S]: telemetry summaries as they arrive.
Outcome telemetryWatch(const Invocation& inv, std::ostream& out) {
  const char* synopsis = "telemetry watch [NODE] [--count N] [--for S]";
  if (inv.words.size() < 2 || inv.words[1] != "watch")
    return usageError(inv.words.size() < 2 ? fmt::format("usage: outriderctl {}", synopsis)
                                           : fmt::format("unknown telemetry command '{}'", inv.words[1]));
  if (inv.words.size() > 3) return usageError(fmt::format("unexpected argument '{}'", inv.words[3]));
  if (auto bad = checkShape(inv, "telemetry watch", inv.words.size(), {"count", "for"}, synopsis)) return *bad;
  std::string node = inv.words.size() == 3 ? inv.words[2] : "+";
  if (node != "+")
    if (auto bad = checkNode(node)) return *bad;
  auto count = optionalUint(inv, "count", 1'000'000'000);
  if (!count) return usageError(count.error().message);
  auto seconds = optionalUint(inv, "for", 365 * 86400);
  if (!seconds) return usageError(seconds.error().message);
  Outcome usage;
  auto hub = connectHub(inv.global, usage);
  if (!hub) return usage.exit ? usage : failure(hub.error().message);
  if (auto st = (*hub)->subscribe(topics::telemetry(node), inv.global.timeout()); !st) return failure(st.error().message);
  const auto deadline = *seconds ? HubClient::Clock::now() + std::chrono::seconds(*seconds) : HubClient::Clock::time_point::max();
  std::uint32_t seen = 0;
  while (!*count || seen < *count) {
    auto msg = (*hub)->nextMessage(deadline);
    if (!msg) {
      if (msg.error().code == kHubTimeout) break;
      return failure(msg.error().message);
    }
    v1::TelemetryBatch batch;
    if (!batch.ParseFromString(msg->payload)) continue;
    std::string from = msg->topic.size() > 28 ? msg->topic.substr(18, msg->topic.size() - 28) : "";
    ++seen;
    out << (inv.global.json ? formatTelemetryJson(from, batch) + "\n" : formatTelemetryTable(from, batch) + "\n");
    out.flush();
  }
  if (*count && seen < *count) return failure(fmt::format("{} of {} batches seen before the time ran out", seen, *count));
  return ok();
}

Outcome dispatch(const Invocation& inv, std::ostream& out) {
  const std::string& cmd = inv.words.front();
  if (cmd == "keys") return keysGen(inv, out);
  if (cmd == "nodes") return nodes(inv, out);
  if (cmd == "status") return status(inv, out);
  if (cmd == "ping") return ping(inv, out);
  if (cmd == "vm") return vm(inv, out);
  if (cmd == "ct") return ct(inv, out);
  if (cmd == "apply") return apply(inv, out);
  if (cmd == "tunnel") return tunnel(inv, out);
  if (cmd == "hook") return hook(inv, out);
  if (cmd == "update") return update(inv, out);
  if (cmd == "events") return events(inv, out);
  if (cmd == "telemetry") return telemetryWatch(inv, out);
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
  vm list NODE            the node's VMs: state, accelerator, vCPUs, memory, CPU time
  vm start|stop|reboot|delete NODE NAME [--grace S]
                          act on one VM (stop: ACPI shutdown, forced off after S seconds)
  vm console NODE NAME [--bytes N]
                          the tail of a VM's serial console log
  ct list NODE            the node's containers: state, exit code, restarts, memory
  ct start|stop|delete NODE NAME [--grace S]
                          act on one container (stop: SIGTERM, SIGKILL after S seconds)
  ct logs NODE NAME [--bytes N]
                          the tail of a container's stdout and stderr
  apply NODE MANIFEST.toml
                          push desired state (VMs, containers, tunnels); see docs/manifest.md
  tunnel status NODE      WireGuard tunnels: active hub, failovers, per-hub health and counters
  hook run NODE EVENT [OUTRIDER_NAME=VALUE...]
                          run the node's hooks for EVENT (provisioned, pre-update, post-update,
                          boot-ok, rollback, pre-reboot, factory-reset) with those extra variables;
                          prints each hook's status and output (docs/hooks.md). Raise --timeout
                          for slow hooks
  update NODE PACKAGE.deb [--chunk-kib N] [--health-deadline S]
                          send the node a newer outrider package in signed pieces (resuming a cut
                          transfer), install it, and wait for the node's commit, or its rollback and
                          why (docs/updates.md); --health-deadline: seconds the node has to be healthy
  update status NODE      the node's last update: phase, versions, reason
  telemetry watch [NODE] [--count N] [--for S]
                          print telemetry summaries (count, sum, min, max, last, p50/p90/p99 per
                          series and window) as they arrive; --json gives one line per batch
  events [NODE] [--count N] [--for S]
                          print node events (VM, container and tunnel changes, daemon health) as
                          they arrive, until N events or S seconds (default: until interrupted)
  provision image --node NODE --hub URL [--hub URL...] --ca CA.pem --operator-key FILE...
          --sign-key PROV.key --tokens FILE --out IMAGE [--token-ttl 24h] [--enroll URL...]
          [--manifest M.toml] [--wg-hub NAME,ENDPOINT,PUBKEY,TIER[,PROBE[,CIDR...]]...]
          [--wg-address CIDR...] [--wg-interface NAME]
                          a FAT image labelled OUTRIDER with a signed provisioning bundle for NODE;
                          its one-time token is registered in the token store (docs/provisioning.md)
  enroll serve --ca-cert FILE --ca-key FILE --tokens FILE --db FILE [--cert-days N]
          [--share GROUP] [--count N] [--for S]
                          the hub's enrollment service: checks tokens, signs the nodes' CSRs
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
    // provision and enroll take their own (repeating) options out first.
    auto provisioning = takeProvisioningArgs(args);
    auto inv = parseInvocation(provisioning.rest, env);
    if (!inv) {
      result = usageError(inv.error().message);
    } else if (inv->help || (!inv->words.empty() && inv->words.front() == "help")) {
      out << usageText();
    } else if (inv->words.empty()) {
      result = usageError("no command given (see outriderctl --help)");
    } else if (provisioning.taken) {
      auto r = runProvisioning(*inv, provisioning, out);
      result = Outcome{r.exit, r.reason};
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
