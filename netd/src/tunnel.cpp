#include "outrider/netd/tunnel.hpp"

#include <algorithm>
#include <set>

#include "outrider/common/log.hpp"

namespace outrider::netd {

namespace {
Cidr hostPrefix(const Cidr& c) {
  Cidr h = c;
  h.bits = c.family == AF_INET ? 32 : 128;
  return h;
}
}  // namespace

TunnelParams TunnelParams::of(const v1::TunnelSpec& s) {
  TunnelParams p;
  if (s.keepalive_s()) p.keepaliveS = s.keepalive_s();
  if (s.probe_interval_ms()) p.probeIntervalMs = s.probe_interval_ms();
  if (s.miss_threshold()) p.missThreshold = s.miss_threshold();
  if (s.holddown_s()) p.holddownS = s.holddown_s();
  if (s.standbys()) p.standbys = s.standbys();
  return p;
}

namespace {
std::vector<FailoverPolicy::Hub> hubsOf(const v1::TunnelSpec& s) {
  std::vector<FailoverPolicy::Hub> out;
  for (const auto& h : s.hubs()) out.push_back({h.name(), h.tier()});
  return out;
}
}  // namespace

Tunnel::Tunnel(v1::TunnelSpec spec, std::vector<Endpoint> endpoints, TunnelDeps deps)
    : spec_(std::move(spec)),
      endpoints_(std::move(endpoints)),
      params_(TunnelParams::of(spec_)),
      deps_(std::move(deps)),
      policy_(hubsOf(spec_), params_.missThreshold, std::int64_t{params_.holddownS} * 1000, params_.standbys) {
  // The spec was validated before a Tunnel is made; parse failures here would be a broken invariant.
  for (const auto& a : spec_.addresses())
    if (auto c = Cidr::parse(a)) addresses_.push_back(*c);
  for (const auto& h : spec_.hubs()) {
    auto k = keyFromBase64(h.public_key());
    hubKeys_.push_back(k ? *k : WgKey{});
    std::vector<Cidr> allowed;
    for (const auto& a : h.allowed_ips())
      if (auto c = Cidr::parse(a)) allowed.push_back(*c);
    allowed_.push_back(std::move(allowed));
    auto p = Cidr::parse(h.probe_address());
    probes_.push_back(p ? hostPrefix(*p) : Cidr{});
  }
  peerState_.resize(spec_.hubs_size());
  lastHandshake_.assign(spec_.hubs_size(), -1);
}

Tunnel::~Tunnel() {
  *alive_ = false;
  stop();
}

void Tunnel::start() {
  running_ = true;
  timer_ = std::make_unique<boost::asio::steady_timer>(deps_.io);
  schedule(std::chrono::milliseconds(0));
}

void Tunnel::stop() {
  running_ = false;
  if (timer_) timer_->cancel();
  ++generation_;
  deps_.prober.reset(name());
}

void Tunnel::teardown() {
  stop();
  if (auto st = deps_.backend.removeDevice(name()); !st)
    LOG_WARN("tunnel {}: remove device: {}, ignoring", name(), st.error().message);
  up_ = false;
  configured_ = false;
}

void Tunnel::schedule(std::chrono::milliseconds after) {
  if (!running_ || !timer_) return;
  timer_->expires_after(after);
  timer_->async_wait([this, alive = std::weak_ptr<bool>(alive_)](const boost::system::error_code& ec) {
    auto a = alive.lock();
    if (ec || !a || !*a || !running_) return;
    tick();
  });
}

void Tunnel::setError(std::string e) {
  if (e != lastError_) LOG_ERR("tunnel {}: {}", name(), e);
  lastError_ = std::move(e);
}

std::optional<std::string> Tunnel::activeHub() const {
  if (!active_) return std::nullopt;
  return spec_.hubs(static_cast<int>(*active_)).name();
}

void Tunnel::tick() {
  const auto interval = std::chrono::milliseconds(params_.probeIntervalMs);
  auto ready = deps_.backend.ensureDevice(name());
  if (!ready) {
    setError(ready.error().message);
    up_ = false;
    configured_ = false;
    schedule(interval);
    return;
  }
  if (!ready->ready) {
    up_ = false;
    schedule(std::chrono::milliseconds(20));
    return;
  }
  if (ready->fresh) {
    if (configured_) LOG_WARN("tunnel {}: the device was recreated, configuring it again", name());
    ++generation_;
    deps_.prober.reset(name());
    configured_ = false;
    std::fill(lastHandshake_.begin(), lastHandshake_.end(), -1);
  }
  if (!configured_) {
    if (auto st = reconcile(true); !st) {
      setError(st.error().message);
      up_ = false;
      schedule(interval);
      return;
    }
    configured_ = true;
    up_ = true;
    lastError_.clear();
    LOG_NOTICE("tunnel {}: up on {}, active hub {}", name(), deps_.backend.name(), activeHub().value_or("(none)"));
  }
  readDevice();
  evaluate("tick");
  // One probe per warm hub; a reply or a miss is handled when it arrives.
  auto timeout = std::max(interval / 2, std::chrono::milliseconds(50));
  auto gen = generation_;
  for (auto i : policy_.warm(active_)) {
    deps_.prober.probe(name(), probes_[i].address(), timeout,
                       [this, i, gen, alive = std::weak_ptr<bool>(alive_)](ProbeResult r) {
                         auto a = alive.lock();
                         if (!a || !*a) return;
                         onProbe(i, gen, r);
                       });
  }
  schedule(interval);
}

void Tunnel::readDevice() {
  auto dev = deps_.backend.device(name());
  if (!dev) {
    setError(dev.error().message);
    return;
  }
  for (std::size_t i = 0; i < hubKeys_.size(); ++i) {
    const auto* p = dev->peer(hubKeys_[i]);
    if (!p) {
      peerState_[i] = WgPeerState{};
      continue;
    }
    peerState_[i] = *p;
    // A handshake that completed since the last read is a recovery signal; the first read only sets
    // the baseline.
    if (lastHandshake_[i] >= 0 && p->lastHandshakeMs > 0 && p->lastHandshakeMs != lastHandshake_[i]) {
      if (policy_.health(i).down) {
        auto c = policy_.handshake(i, now());
        if (c == FailoverPolicy::Change::becameHealthy) {
          LOG_INFO("tunnel {}: hub {} completed a handshake", name(), spec_.hubs(static_cast<int>(i)).name());
          deps_.publish("tunnel.hub", name(), spec_.hubs(static_cast<int>(i)).name() + ": healthy (handshake)");
        }
      }
    }
    lastHandshake_[i] = p->lastHandshakeMs;
  }
}

void Tunnel::onProbe(std::size_t i, std::uint64_t gen, const ProbeResult& r) {
  if (gen != generation_ || !configured_) return;
  const auto& hub = spec_.hubs(static_cast<int>(i)).name();
  auto c = r.ok ? policy_.probeOk(i, r.rttUs, now()) : policy_.probeMissed(i, now());
  if (!r.ok && !r.error.empty()) LOG_DEBUG("tunnel {}: probe to {}: {}", name(), hub, r.error);
  if (c == FailoverPolicy::Change::becameHealthy) {
    LOG_INFO("tunnel {}: hub {} is healthy (rtt {} us)", name(), hub, r.rttUs);
    deps_.publish("tunnel.hub", name(), hub + ": healthy");
  } else if (c == FailoverPolicy::Change::becameDown) {
    LOG_WARN("tunnel {}: hub {} is down ({} missed probes)", name(), hub, policy_.health(i).misses);
    deps_.publish("tunnel.hub", name(), hub + ": down (" + std::to_string(policy_.health(i).misses) + " missed probes)");
  }
  if (c != FailoverPolicy::Change::none) evaluate("probe");
}

void Tunnel::evaluate(const std::string&) {
  auto warmBefore = policy_.warm(active_);
  auto d = policy_.decide(active_, now());
  if (d.changed) {
    auto old = active_;
    active_ = d.active;
    std::string from = old ? spec_.hubs(static_cast<int>(*old)).name() : std::string("(none)");
    std::string to = spec_.hubs(static_cast<int>(*active_)).name();
    if (configured_) {
      if (auto st = reconcile(false); !st) {
        setError("fail over " + from + " -> " + to + ": " + st.error().message);
        active_ = old;
        return;
      }
    }
    if (old) {
      ++failovers_;
      lastFailoverMs_ = now();
      LOG_NOTICE("tunnel {}: failover {} -> {}: {}", name(), from, to, d.why);
      deps_.publish("tunnel.failover", name(), from + " -> " + to + ": " + d.why);
    }
    return;
  }
  if (configured_ && policy_.warm(active_) != warmBefore) (void)reconcile(false);
}

Status Tunnel::reconcile(bool initial) {
  const std::string& ifname = name();
  auto dev = deps_.backend.device(ifname);
  if (!dev) return dev.error();
  if (initial && !active_) {
    // Adopt the hub that already owns the allowed IPs (netd restarted while the tunnel was up).
    for (std::size_t i = 0; i < hubKeys_.size(); ++i) {
      const auto* p = dev->peer(hubKeys_[i]);
      if (!p) continue;
      bool ownsMore = std::any_of(p->allowedIps.begin(), p->allowedIps.end(),
                                  [&](const Cidr& c) { return !(c == probes_[i]); });
      if (ownsMore) {
        active_ = i;
        LOG_NOTICE("tunnel {}: adopted the running device; active hub {}", ifname, spec_.hubs(static_cast<int>(i)).name());
        break;
      }
    }
  }
  if (!active_) active_ = policy_.decide(std::nullopt, now()).active;

  WgDeviceConfig cfg;
  if (initial) {
    cfg.privateKey = deps_.key.privateKey;  // a no-op for a device that already has this key
    if (spec_.listen_port() && dev->listenPort != spec_.listen_port())
      cfg.listenPort = static_cast<std::uint16_t>(spec_.listen_port());
  }
  auto warm = policy_.warm(active_);
  std::set<WgKey> wanted;
  for (auto i : warm) {
    WgPeerConfig p;
    p.publicKey = hubKeys_[i];
    p.endpoint = endpoints_[i];
    p.keepaliveS = static_cast<std::uint16_t>(params_.keepaliveS);
    p.replaceAllowedIps = true;
    if (active_ && i == *active_) p.allowedIps = allowed_[i];
    p.allowedIps.push_back(probes_[i]);
    wanted.insert(p.publicKey);
    cfg.peers.push_back(std::move(p));
  }
  // Old active first (shrinks to its probe address), new active last: allowed IPs are unique per device,
  // so the last assignment wins either way, and the tunnel never has a moment without them.
  std::stable_partition(cfg.peers.begin(), cfg.peers.end(),
                        [&](const WgPeerConfig& p) { return !(active_ && p.publicKey == hubKeys_[*active_]); });
  for (const auto& p : dev->peers) {
    if (wanted.count(p.publicKey)) continue;
    WgPeerConfig rm;
    rm.publicKey = p.publicKey;
    rm.remove = true;
    cfg.peers.push_back(rm);
  }
  if (auto st = deps_.backend.configure(ifname, cfg); !st) return st;

  // Addresses, link, routes: make before break (new routes first, stale ones after).
  auto have = deps_.links.addresses(ifname);
  if (!have) return have.error();
  for (const auto& a : addresses_)
    if (std::find(have->begin(), have->end(), a) == have->end())
      if (auto st = deps_.links.addAddress(ifname, a); !st) return st;
  for (const auto& a : *have)
    if (std::find(addresses_.begin(), addresses_.end(), a) == addresses_.end())
      if (auto st = deps_.links.deleteAddress(ifname, a); !st) LOG_WARN("tunnel {}: {}, ignoring", ifname, st.error().message);
  if (auto st = deps_.links.setUp(ifname); !st) return st;

  std::vector<Cidr> routes;
  if (active_) routes = allowed_[*active_];
  for (auto i : warm)
    if (std::find(routes.begin(), routes.end(), probes_[i]) == routes.end()) routes.push_back(probes_[i]);
  auto installed = deps_.links.routes(ifname);
  if (!installed) return installed.error();
  for (const auto& r : routes)
    if (std::find(installed->begin(), installed->end(), r) == installed->end())
      if (auto st = deps_.links.replaceRoute(ifname, r); !st) return st;
  for (const auto& r : *installed)
    if (std::find(routes.begin(), routes.end(), r) == routes.end())
      if (auto st = deps_.links.deleteRoute(ifname, r); !st) LOG_WARN("tunnel {}: {}, ignoring", ifname, st.error().message);
  installedRoutes_ = routes;
  return {};
}

v1::TunnelStatus Tunnel::status() const {
  v1::TunnelStatus s;
  s.set_interface(name());
  s.set_public_key(keyBase64(deps_.key.publicKey));
  s.set_backend(deps_.backend.name());
  if (active_ && !policy_.health(*active_).down) s.set_active_hub(spec_.hubs(static_cast<int>(*active_)).name());
  s.set_failovers(failovers_);
  s.set_last_failover_ms(lastFailoverMs_);
  s.set_up(up_);
  s.set_last_error(lastError_);
  for (const auto& a : spec_.addresses()) s.add_addresses(a);
  for (std::size_t i = 0; i < static_cast<std::size_t>(spec_.hubs_size()); ++i) {
    const auto& h = spec_.hubs(static_cast<int>(i));
    const auto& hh = policy_.health(i);
    auto* o = s.add_hubs();
    o->set_name(h.name());
    o->set_tier(h.tier());
    o->set_endpoint(h.endpoint());
    o->set_state(policy_.role(i, active_));
    o->set_rx_bytes(peerState_[i].rxBytes);
    o->set_tx_bytes(peerState_[i].txBytes);
    o->set_last_handshake_ms(peerState_[i].lastHandshakeMs);
    o->set_probe_rtt_us(hh.rttUs);
    o->set_misses(hh.misses);
    o->set_healthy_since_ms(hh.healthySinceMs);
    o->set_healthy(hh.healthy);
  }
  return s;
}

}  // namespace outrider::netd
