#include "outrider/netd/manager.hpp"

#include <netdb.h>
#include <sys/socket.h>

#include <cstring>

#include "outrider/common/atomic_file.hpp"
#include "outrider/common/crypto.hpp"
#include "outrider/common/log.hpp"
#include "outrider/common/tunnel_spec.hpp"

namespace outrider::netd {

using outrider::v1::TunnelSpec;

namespace {
constexpr std::string_view kStateMagic = "outrider-netd-tunnels 1 ";
}

Result<Endpoint> resolveEndpoint(const std::string& hostPort) {
  // Numbers need no resolver (and no name-service modules loaded into the daemon).
  if (auto numeric = Endpoint::parse(hostPort); numeric.ok()) return numeric;
  std::string host, port;
  if (!hostPort.empty() && hostPort.front() == '[') {
    auto close = hostPort.find(']');
    if (close == std::string::npos || close + 2 > hostPort.size()) return Error{"'" + hostPort + "' is not [IPV6]:PORT", EINVAL};
    host = hostPort.substr(1, close - 1);
    port = hostPort.substr(close + 2);
  } else {
    auto colon = hostPort.rfind(':');
    if (colon == std::string::npos) return Error{"'" + hostPort + "' is not HOST:PORT", EINVAL};
    host = hostPort.substr(0, colon);
    port = hostPort.substr(colon + 1);
  }
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_DGRAM;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* res = nullptr;
  int rc = ::getaddrinfo(host.c_str(), port.c_str(), &hints, &res);
  if (rc != 0) return Error{"cannot resolve '" + host + "': " + ::gai_strerror(rc), EINVAL};
  Endpoint ep;
  for (addrinfo* a = res; a; a = a->ai_next) {
    if (a->ai_family == AF_INET) {
      auto* sin = reinterpret_cast<sockaddr_in*>(a->ai_addr);
      ep.family = AF_INET;
      std::memcpy(ep.addr.data(), &sin->sin_addr, 4);
      ep.port = ntohs(sin->sin_port);
      break;
    }
    if (a->ai_family == AF_INET6) {
      auto* sin6 = reinterpret_cast<sockaddr_in6*>(a->ai_addr);
      ep.family = AF_INET6;
      std::memcpy(ep.addr.data(), &sin6->sin6_addr, 16);
      ep.port = ntohs(sin6->sin6_port);
      break;
    }
  }
  ::freeaddrinfo(res);
  if (!ep.family) return Error{"cannot resolve '" + host + "': no IPv4 or IPv6 address", EINVAL};
  return ep;
}

std::string encodeTunnelState(const v1::TunnelApplyRequest& req) {
  std::string body = req.SerializeAsString();
  auto sum = crypto::sha256(body);
  return std::string(kStateMagic) + crypto::hex(std::span<const std::uint8_t>(sum.data(), sum.size())) + "\n" + body;
}

Result<v1::TunnelApplyRequest> decodeTunnelState(std::string_view data) {
  if (data.substr(0, kStateMagic.size()) != kStateMagic) return Error{"not a netd tunnel state file", EINVAL};
  auto nl = data.find('\n');
  if (nl == std::string_view::npos) return Error{"truncated header", EINVAL};
  auto want = data.substr(kStateMagic.size(), nl - kStateMagic.size());
  auto body = data.substr(nl + 1);
  auto sum = crypto::sha256(body);
  if (crypto::hex(std::span<const std::uint8_t>(sum.data(), sum.size())) != want)
    return Error{"checksum mismatch (torn or corrupted file)", EINVAL};
  v1::TunnelApplyRequest req;
  if (!req.ParseFromArray(body.data(), static_cast<int>(body.size()))) return Error{"body does not parse", EINVAL};
  return req;
}

TunnelManager::TunnelManager(boost::asio::io_context& io, NetdOptions opts, std::vector<TunnelSpec> configTunnels,
                             EventSink publish)
    : io_(io), opts_(std::move(opts)), configTunnels_(std::move(configTunnels)), publish_(std::move(publish)) {}

TunnelManager::~TunnelManager() {
  // Tunnels stay up when netd stops; only their timers and probes end here.
  for (auto& [n, t] : tunnels_) t->stop();
}

Status TunnelManager::ensureKey() {
  if (key_) return {};
  auto k = loadOrCreateKey(opts_.keyFile);
  if (!k) return k.error();
  key_ = *k;
  LOG_NOTICE("WireGuard public key {}", keyBase64(key_->publicKey));
  return {};
}

Status TunnelManager::ensureRuntime() {
  if (auto st = ensureKey(); !st) return st;
  if (!links_) links_ = makeRtnlConfigurator();
  if (!backend_) {
    std::string why;
    auto b = makeBackend(opts_.backend, *links_, why);
    if (!b) return b.error();
    backend_ = std::move(*b);
    LOG_NOTICE("WireGuard backend {} ({})", backend_->name(), why);
  }
  if (!prober_) {
    prober_ = makeIcmpProber(io_);
    if (auto n = prober_->note(); !n.empty()) LOG_NOTICE("hub probes: {}", n);
  }
  return {};
}

std::map<std::string, TunnelSpec> TunnelManager::effective(const std::map<std::string, TunnelSpec>& manifest) const {
  std::map<std::string, TunnelSpec> out;
  for (const auto& t : configTunnels_) out[t.interface()] = t;
  for (const auto& [n, t] : manifest) out[n] = t;  // the manifest's tunnel replaces netd.toml's of that name
  return out;
}

void TunnelManager::start() {
  // The key exists from the first start, before any tunnel: the agent reports its public key to the hub
  // (and sends it when it enrolls), so the hubs can add this node as a peer.
  if (auto st = ensureKey(); !st) {
    runtimeError_ = st.error().message;
    LOG_ERR("{}", runtimeError_);
  }
  std::error_code ec;
  if (std::filesystem::exists(statePath(), ec)) {
    auto data = readFile(statePath());
    auto req = data ? decodeTunnelState(*data) : Result<v1::TunnelApplyRequest>(data.error());
    if (!req) {
      LOG_ERR("manifest tunnels {}: {}; starting with netd.toml's tunnels only until the next apply, ignoring",
              statePath().string(), req.error().message);
    } else {
      for (const auto& t : req->tunnels()) {
        if (auto st = validateTunnelSpec(t); !st) {
          LOG_ERR("manifest tunnels {}: {}, ignoring this tunnel", statePath().string(), st.error().message);
          continue;
        }
        manifestTunnels_[t.interface()] = t;
      }
    }
  }
  auto eff = effective(manifestTunnels_);
  if (eff.empty()) return;
  if (auto st = ensureRuntime(); !st) {
    runtimeError_ = st.error().message;
    LOG_ERR("{}", runtimeError_);
    return;
  }
  for (const auto& [name, spec] : eff) {
    std::vector<Endpoint> eps;
    std::string err;
    for (const auto& h : spec.hubs()) {
      auto ep = resolveEndpoint(h.endpoint());
      if (!ep) {
        err = "tunnel '" + name + "': hub '" + h.name() + "': endpoint: " + ep.error().message;
        break;
      }
      eps.push_back(*ep);
    }
    if (!err.empty()) {
      LOG_ERR("{}; the tunnel is not started", err);
      startErrors_[name] = err;
      continue;
    }
    auto t = std::make_unique<Tunnel>(spec, std::move(eps),
                                      TunnelDeps{io_, *backend_, *links_, *prober_, clock_, *key_, publish_});
    t->start();
    tunnels_[name] = std::move(t);
  }
}

Result<v1::ApplyResult> TunnelManager::apply(const v1::TunnelApplyRequest& req) {
  std::map<std::string, TunnelSpec> manifest;
  for (const auto& t : req.tunnels()) {
    if (auto st = validateTunnelSpec(t); !st) return Error{st.error().message, EINVAL};
    if (!manifest.emplace(t.interface(), t).second)
      return Error{"tunnel '" + t.interface() + "': interface: listed twice", EINVAL};
  }
  auto eff = effective(manifest);

  // Resolve what is new or changed; an endpoint that does not resolve refuses the whole request.
  std::map<std::string, std::vector<Endpoint>> resolved;
  for (const auto& [name, spec] : eff) {
    auto it = tunnels_.find(name);
    if (it != tunnels_.end() && it->second->spec().SerializeAsString() == spec.SerializeAsString()) continue;
    std::vector<Endpoint> eps;
    for (const auto& h : spec.hubs()) {
      auto ep = resolveEndpoint(h.endpoint());
      if (!ep) return Error{"tunnel '" + name + "': hub '" + h.name() + "': endpoint: " + ep.error().message, EINVAL};
      eps.push_back(*ep);
    }
    resolved[name] = std::move(eps);
  }
  if (!eff.empty())
    if (auto st = ensureRuntime(); !st) return Error{st.error().message, EIO};

  // Persist before acting, so what runs is always what comes back after a restart.
  v1::TunnelApplyRequest keep;
  for (const auto& [n, t] : manifest) *keep.add_tunnels() = t;
  keep.set_manifest_version(req.manifest_version());
  if (auto st = makeDirs(opts_.stateDir, 0700); !st) return Error{st.error().message, EIO};
  if (auto st = writeFileAtomic(statePath(), encodeTunnelState(keep), 0600); !st)
    return Error{"persist manifest tunnels: " + st.error().message, EIO};
  manifestTunnels_ = std::move(manifest);

  v1::ApplyResult result;
  result.set_manifest_version(req.manifest_version());
  auto add = [&](const std::string& name, const std::string& action) {
    auto* r = result.add_results();
    r->set_kind("tunnel");
    r->set_name(name);
    r->set_ok(true);
    r->set_action(action);
  };
  for (auto it = tunnels_.begin(); it != tunnels_.end();) {
    if (eff.count(it->first)) {
      ++it;
      continue;
    }
    LOG_NOTICE("tunnel {}: removed", it->first);
    it->second->teardown();
    add(it->first, "removed");
    it = tunnels_.erase(it);
  }
  for (const auto& [name, spec] : eff) {
    auto r = resolved.find(name);
    if (r == resolved.end()) {
      add(name, "unchanged");
      continue;
    }
    bool existed = tunnels_.count(name) > 0;
    if (existed) tunnels_[name]->stop();  // the new one adopts its device: no teardown
    auto t = std::make_unique<Tunnel>(spec, std::move(r->second),
                                      TunnelDeps{io_, *backend_, *links_, *prober_, clock_, *key_, publish_});
    t->start();
    tunnels_[name] = std::move(t);
    startErrors_.erase(name);
    add(name, existed ? "updated" : "created");
  }
  result.set_tunnel(std::to_string(eff.size()) + " tunnel(s) applied");
  return result;
}

v1::TunnelStatusList TunnelManager::status() const {
  v1::TunnelStatusList out;
  for (const auto& [n, t] : tunnels_) *out.add_tunnels() = t->status();
  for (const auto& [n, e] : startErrors_) {
    if (tunnels_.count(n)) continue;
    auto* s = out.add_tunnels();
    s->set_interface(n);
    if (key_) s->set_public_key(keyBase64(key_->publicKey));
    if (backend_) s->set_backend(backend_->name());
    s->set_last_error(e);
  }
  return out;
}

Health TunnelManager::health() const {
  if (!runtimeError_.empty()) return Health{false, runtimeError_};
  Health h{true, {}};
  if (key_) h.detail = "public key " + keyBase64(key_->publicKey);
  if (tunnels_.empty() && startErrors_.empty()) {
    h.detail += h.detail.empty() ? "no tunnels configured yet" : "; no tunnels configured yet";
    return h;
  }
  for (const auto& [n, t] : tunnels_) {
    auto active = t->status().active_hub();
    h.detail += "; " + n + ": ";
    if (!t->up()) {
      h.healthy = false;
      h.detail += "down";
    } else if (active.empty()) {
      h.healthy = false;
      h.detail += "up, no healthy hub";
    } else {
      h.detail += "up via " + active;
    }
  }
  for (const auto& [n, e] : startErrors_) {
    if (tunnels_.count(n)) continue;
    h.healthy = false;
    h.detail += "; " + e;
  }
  if (prober_ && !prober_->note().empty()) h.detail += "; " + prober_->note();
  return h;
}

}  // namespace outrider::netd
