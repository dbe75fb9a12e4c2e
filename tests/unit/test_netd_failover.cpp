// The failover state machine, alone (FailoverPolicy) and driving a tunnel (Tunnel) through the same
// interfaces as the real backend, link configurator and prober, with an injected clock: ring order,
// miss threshold, hold-down, no flapping, standby selection, make-before-break reconfiguration, events.
#include <doctest/doctest.h>

#include <algorithm>
#include <boost/asio/io_context.hpp>
#include <map>
#include <set>

#include "outrider/netd/failover.hpp"
#include "outrider/netd/tunnel.hpp"

using namespace outrider;
using namespace outrider::netd;

namespace {

FailoverPolicy ring3(std::uint32_t standbys = 1, std::int64_t holddownMs = 30000) {
  // Config order: b2 (tier 1), a0 (tier 0), c0 (tier 0), z2 (tier 2).
  return FailoverPolicy({{"b1", 1}, {"a0", 0}, {"c0", 0}, {"z2", 2}}, 3, holddownMs, standbys);
}

void miss(FailoverPolicy& p, std::size_t hub, int n, std::int64_t now) {
  for (int i = 0; i < n; ++i) p.probeMissed(hub, now);
}

}  // namespace

TEST_CASE("ring order: lowest tier first, then config order") {
  auto p = ring3();
  CHECK(p.ring() == std::vector<std::size_t>{1, 2, 0, 3});
  auto d = p.decide(std::nullopt, 0);
  REQUIRE(d.active);
  CHECK(*d.active == 1);  // a0: nothing is known yet, so the first in ring order
}

TEST_CASE("a hub is down only after miss_threshold consecutive misses; a reply resets the count") {
  auto p = ring3();
  CHECK(p.probeMissed(1, 0) == FailoverPolicy::Change::none);
  CHECK(p.probeMissed(1, 0) == FailoverPolicy::Change::none);
  CHECK(p.probeOk(1, 900, 0) == FailoverPolicy::Change::becameHealthy);
  CHECK(p.health(1).misses == 0);
  CHECK(p.probeMissed(1, 0) == FailoverPolicy::Change::none);
  CHECK(p.probeMissed(1, 0) == FailoverPolicy::Change::none);
  CHECK_FALSE(p.health(1).down);
  CHECK(p.probeMissed(1, 0) == FailoverPolicy::Change::becameDown);
  CHECK(p.health(1).down);
  CHECK_FALSE(p.health(1).healthy);
  CHECK(p.health(1).healthySinceMs == 0);
  CHECK(p.probeMissed(1, 0) == FailoverPolicy::Change::none);  // reported once
  CHECK(p.health(1).rttUs == 900);
}

TEST_CASE("failover goes to the next healthy hub in ring order, skipping down hubs, healthy before unknown") {
  auto p = ring3();
  std::size_t active = 1;  // a0
  p.probeOk(1, 100, 0);
  p.probeOk(0, 100, 0);  // b1 healthy; c0 unknown
  miss(p, 1, 3, 1000);
  auto d = p.decide(active, 1000);
  REQUIRE(d.changed);
  CHECK(*d.active == 0);  // c0 is ahead in ring order but not known healthy; b1 is
  CHECK(d.why == "a0 missed 3 probes");

  p.probeOk(2, 100, 1000);  // now c0 is healthy too: it comes first in ring order
  d = p.decide(active, 1000);
  CHECK(*d.active == 2);

  miss(p, 2, 3, 2000);
  miss(p, 0, 3, 2000);
  p.probeOk(3, 100, 2000);
  d = p.decide(active, 2000);
  CHECK(*d.active == 3);  // only z2 is left

  miss(p, 3, 3, 3000);
  d = p.decide(std::size_t{3}, 3000);
  CHECK_FALSE(d.changed);  // nothing better: the allowed IPs stay where they are
}

TEST_CASE("fail-back to a better tier only after it was healthy for the hold-down; a relapse restarts it") {
  auto p = ring3(1, 30000);
  std::size_t active = 1;
  p.probeOk(1, 100, 0);
  p.probeOk(0, 100, 0);
  miss(p, 1, 3, 1000);
  auto d = p.decide(active, 1000);
  REQUIRE(d.changed);
  active = *d.active;
  CHECK(active == 0);  // b1, tier 1

  p.probeOk(1, 100, 5000);  // a0 (tier 0) is back
  CHECK_FALSE(p.decide(active, 5000).changed);
  CHECK_FALSE(p.decide(active, 34999).changed);
  miss(p, 1, 3, 20000);  // relapse before the hold-down ends
  p.probeOk(1, 100, 21000);
  CHECK_FALSE(p.decide(active, 35000).changed);  // 30 s after the first recovery, but not after the second
  CHECK_FALSE(p.decide(active, 50999).changed);
  d = p.decide(active, 51000);
  REQUIRE(d.changed);
  CHECK(*d.active == 1);
  CHECK(d.why == "a0 (tier 0) healthy for 30 s");

  // Within a tier there is no fail-back: with c0 active, a0 (same tier, ahead in the ring) never takes over.
  p.probeOk(2, 100, 60000);
  CHECK_FALSE(p.decide(std::size_t{2}, 200000).changed);
}

TEST_CASE("warm set: the active hub, the next `standbys` hubs that are not down, hubs ahead, and down hubs") {
  auto p = ring3(1);
  CHECK(p.warm(std::size_t{1}) == std::vector<std::size_t>{1, 2});  // a0 + c0
  CHECK(p.role(1, std::size_t{1}) == "active");
  CHECK(p.role(2, std::size_t{1}) == "standby");
  CHECK(p.role(0, std::size_t{1}) == "idle");
  CHECK(p.role(3, std::size_t{1}) == "idle");

  miss(p, 2, 3, 0);  // c0 down: b1 becomes the standby, c0 stays warm to see it recover
  CHECK(p.warm(std::size_t{1}) == std::vector<std::size_t>{1, 2, 0});
  CHECK(p.role(2, std::size_t{1}) == "down");
  CHECK(p.role(0, std::size_t{1}) == "standby");

  auto two = ring3(2);
  CHECK(two.warm(std::size_t{1}) == std::vector<std::size_t>{1, 2, 0});
  // With b1 active, a0 and c0 are ahead of it in the ring (fail-back candidates) and stay warm.
  CHECK(ring3(1).warm(std::size_t{0}) == std::vector<std::size_t>{1, 2, 0, 3});
  CHECK(ring3(0).warm(std::size_t{0}) == std::vector<std::size_t>{1, 2, 0});
}

// ---- Tunnel over fakes ----------------------------------------------------------------------------

namespace {

class FakeClock final : public Clock {
 public:
  std::int64_t now = 1'700'000'000'000;
  std::int64_t nowMs() const override { return now; }
};

/// A WireGuard device in memory with WireGuard's rules: allowed IPs are unique per device (assigning one
/// to a peer takes it from any other), replace_allowed_ips clears a peer's list first.
class FakeBackend final : public WireGuardBackend {
 public:
  std::map<std::string, WgDeviceState> devices;
  std::set<std::string> announced;
  std::vector<WgDeviceConfig> sets;

  std::string name() const override { return "fake"; }
  Result<DeviceReady> ensureDevice(const std::string& ifname) override {
    if (!devices.count(ifname)) {
      devices[ifname] = WgDeviceState{};
      return DeviceReady{true, true};
    }
    return DeviceReady{true, false};
  }
  Status configure(const std::string& ifname, const WgDeviceConfig& cfg) override {
    auto it = devices.find(ifname);
    if (it == devices.end()) return Error{"no device", ENODEV};
    sets.push_back(cfg);
    auto& dev = it->second;
    for (const auto& pc : cfg.peers) {
      auto pos = std::find_if(dev.peers.begin(), dev.peers.end(), [&](auto& p) { return p.publicKey == pc.publicKey; });
      if (pc.remove) {
        if (pos != dev.peers.end()) dev.peers.erase(pos);
        continue;
      }
      if (pos == dev.peers.end()) {
        dev.peers.push_back(WgPeerState{});
        dev.peers.back().publicKey = pc.publicKey;
        pos = std::prev(dev.peers.end());
      }
      if (pc.endpoint) pos->endpoint = pc.endpoint;
      if (pc.keepaliveS) pos->keepaliveS = *pc.keepaliveS;
      if (pc.replaceAllowedIps) pos->allowedIps.clear();
      for (const auto& a : pc.allowedIps) {
        for (auto& other : dev.peers) std::erase(other.allowedIps, a);
        pos->allowedIps.push_back(a);
      }
    }
    return {};
  }
  Result<WgDeviceState> device(const std::string& ifname) override {
    auto it = devices.find(ifname);
    if (it == devices.end()) return Error{"no device", ENODEV};
    return it->second;
  }
  Status removeDevice(const std::string& ifname) override {
    devices.erase(ifname);
    return {};
  }
  const WgPeerState* peer(const std::string& ifname, const WgKey& k) { return devices[ifname].peer(k); }
};

class FakeLinks final : public LinkConfigurator {
 public:
  bool up = false;
  std::set<std::string> addrs, routeSet;
  std::vector<std::string> log;
  Result<bool> linkExists(const std::string&) override { return true; }
  Status createLink(const std::string&, const std::string&) override { return {}; }
  Status deleteLink(const std::string&) override { return {}; }
  Status setUp(const std::string&) override {
    up = true;
    return {};
  }
  Result<std::vector<Cidr>> addresses(const std::string&) override { return parse(addrs); }
  Status addAddress(const std::string&, const Cidr& a) override {
    addrs.insert(a.str());
    return {};
  }
  Status deleteAddress(const std::string&, const Cidr& a) override {
    addrs.erase(a.str());
    return {};
  }
  Result<std::vector<Cidr>> routes(const std::string&) override { return parse(routeSet); }
  Status replaceRoute(const std::string&, const Cidr& d) override {
    routeSet.insert(d.str());
    log.push_back("+" + d.str());
    return {};
  }
  Status deleteRoute(const std::string&, const Cidr& d) override {
    routeSet.erase(d.str());
    log.push_back("-" + d.str());
    return {};
  }

 private:
  static std::vector<Cidr> parse(const std::set<std::string>& s) {
    std::vector<Cidr> out;
    for (const auto& x : s) out.push_back(*Cidr::parse(x));
    return out;
  }
};

/// Answers at once: a probe to an address in `reachable` succeeds.
class FakeProber final : public Prober {
 public:
  std::set<std::string> reachable;
  std::vector<std::string> sent;
  void probe(const std::string&, const std::string& address, std::chrono::milliseconds,
             std::function<void(ProbeResult)> done) override {
    sent.push_back(address);
    done(reachable.count(address) ? ProbeResult{true, 700, {}} : ProbeResult{false, 0, {}});
  }
  void reset(const std::string&) override {}
  std::string note() const override { return {}; }
};

WgKey hubKey(std::uint8_t n) {
  WgKey k;
  k.fill(n);
  return k;
}

v1::TunnelSpec spec3(std::uint32_t holddownS = 3) {
  v1::TunnelSpec s;
  s.set_interface("wgt0");
  s.add_addresses("10.99.100.10/24");
  s.set_probe_interval_ms(1000);
  s.set_miss_threshold(3);
  s.set_holddown_s(holddownS);
  s.set_standbys(1);
  const char* names[] = {"home", "near", "far"};
  std::uint32_t tiers[] = {0, 1, 2};
  for (int i = 0; i < 3; ++i) {
    auto* h = s.add_hubs();
    h->set_name(names[i]);
    h->set_endpoint("10.99." + std::to_string(i + 1) + ".2:51820");
    h->set_public_key(keyBase64(hubKey(static_cast<std::uint8_t>(0xa0 + i))));
    h->add_allowed_ips("10.99.200.0/24");
    h->set_tier(tiers[i]);
    h->set_probe_address("10.99.100." + std::to_string(i + 1));
  }
  return s;
}

std::vector<Endpoint> endpoints3() {
  return {*Endpoint::parse("10.99.1.2:51820"), *Endpoint::parse("10.99.2.2:51820"), *Endpoint::parse("10.99.3.2:51820")};
}

struct Rig {
  boost::asio::io_context io;
  FakeClock clock;
  FakeBackend backend;
  FakeLinks links;
  FakeProber prober;
  std::vector<std::string> events;
  WgKeyPair key{hubKey(0x11), hubKey(0x12)};

  std::unique_ptr<Tunnel> make(v1::TunnelSpec s = spec3()) {
    return std::make_unique<Tunnel>(
        std::move(s), endpoints3(),
        TunnelDeps{io, backend, links, prober, clock, key,
                   [this](std::string k, std::string subj, std::string d) { events.push_back(k + " " + subj + " " + d); }});
  }
  std::vector<std::string> allowed(std::uint8_t hub) {
    std::vector<std::string> out;
    if (auto* p = backend.peer("wgt0", hubKey(hub)))
      for (const auto& a : p->allowedIps) out.push_back(a.str());
    return out;
  }
  void ticks(Tunnel& t, int n) {
    for (int i = 0; i < n; ++i) {
      t.tick();
      clock.now += 1000;
    }
  }
};

}  // namespace

TEST_CASE("tunnel: first tick configures key, active and standby peers, addresses, link and routes") {
  Rig r;
  r.prober.reachable = {"10.99.100.1", "10.99.100.2", "10.99.100.3"};
  auto t = r.make();
  t->tick();
  REQUIRE(t->up());
  REQUIRE_FALSE(r.backend.sets.empty());
  CHECK(r.backend.sets.front().privateKey == r.key.privateKey);
  CHECK(r.allowed(0xa0) == std::vector<std::string>{"10.99.200.0/24", "10.99.100.1/32"});
  CHECK(r.allowed(0xa1) == std::vector<std::string>{"10.99.100.2/32"});
  CHECK(r.backend.peer("wgt0", hubKey(0xa2)) == nullptr);  // idle: beyond the one standby
  CHECK(r.backend.peer("wgt0", hubKey(0xa0))->keepaliveS == 25);
  CHECK(r.links.up);
  CHECK(r.links.addrs == std::set<std::string>{"10.99.100.10/24"});
  CHECK(r.links.routeSet == std::set<std::string>{"10.99.200.0/24", "10.99.100.1/32", "10.99.100.2/32"});
  CHECK(r.prober.sent == std::vector<std::string>{"10.99.100.1", "10.99.100.2"});

  auto st = t->status();
  CHECK(st.interface() == "wgt0");
  CHECK(st.backend() == "fake");
  CHECK(st.public_key() == keyBase64(r.key.publicKey));
  CHECK(st.active_hub() == "home");
  CHECK(st.up());
  REQUIRE(st.hubs_size() == 3);
  CHECK(st.hubs(0).state() == "active");
  CHECK(st.hubs(0).healthy());
  CHECK(st.hubs(0).probe_rtt_us() == 700);
  CHECK(st.hubs(0).healthy_since_ms() == r.clock.now);
  CHECK(st.hubs(1).state() == "standby");
  CHECK(st.hubs(2).state() == "idle");
  CHECK(st.hubs(2).endpoint() == "10.99.3.2:51820");
  CHECK(std::count_if(r.events.begin(), r.events.end(),
                      [](auto& e) { return e.rfind("tunnel.hub wgt0 home: healthy", 0) == 0; }) == 1);
}

TEST_CASE("tunnel: the active hub missing 3 probes fails over to the standby in one set; the next hub becomes standby") {
  Rig r;
  r.prober.reachable = {"10.99.100.1", "10.99.100.2", "10.99.100.3"};
  auto t = r.make();
  r.ticks(*t, 2);
  r.prober.reachable.erase("10.99.100.1");
  r.ticks(*t, 2);
  CHECK(t->activeHub() == "home");  // 2 misses: not yet
  auto setsBefore = r.backend.sets.size();
  r.ticks(*t, 1);
  CHECK(t->activeHub() == "near");
  CHECK(r.allowed(0xa1) == std::vector<std::string>{"10.99.200.0/24", "10.99.100.2/32"});
  CHECK(r.allowed(0xa0) == std::vector<std::string>{"10.99.100.1/32"});  // kept warm, to see it recover
  // One set moved the allowed IPs and warmed "far" (the new standby) at the same time.
  REQUIRE(r.backend.sets.size() == setsBefore + 1);
  CHECK(r.allowed(0xa2) == std::vector<std::string>{"10.99.100.3/32"});
  CHECK(std::find(r.events.begin(), r.events.end(), "tunnel.failover wgt0 home -> near: home missed 3 probes") !=
        r.events.end());
  CHECK(std::find(r.events.begin(), r.events.end(), "tunnel.hub wgt0 home: down (3 missed probes)") != r.events.end());
  auto st = t->status();
  CHECK(st.failovers() == 1);
  CHECK(st.last_failover_ms() > 0);
  CHECK(st.hubs(0).state() == "down");
  CHECK(st.hubs(0).misses() == 3);
  CHECK(st.hubs(1).state() == "active");
  CHECK(st.hubs(2).state() == "standby");
  // Routes: the service network stays (near carries it too); far's probe address was added.
  CHECK(r.links.routeSet.count("10.99.200.0/24") == 1);
  CHECK(r.links.routeSet.count("10.99.100.3/32") == 1);
}

TEST_CASE("tunnel: the better hub is taken back only after the hold-down, and a flapping hub never is") {
  Rig r;
  r.prober.reachable = {"10.99.100.2", "10.99.100.3"};
  auto t = r.make(spec3(3));
  r.ticks(*t, 3);
  REQUIRE(t->activeHub() == "near");
  r.prober.reachable.insert("10.99.100.1");
  r.ticks(*t, 2);  // home healthy from the first of these ticks
  CHECK(t->activeHub() == "near");
  // Flap: home drops before the hold-down ends (a hub that misses is not taken back), and comes back.
  r.prober.reachable.erase("10.99.100.1");
  r.ticks(*t, 3);
  CHECK(t->policy().health(0).down);
  r.prober.reachable.insert("10.99.100.1");
  r.ticks(*t, 3);  // healthy again for 0, 1, 2 s
  CHECK(t->activeHub() == "near");
  r.ticks(*t, 1);  // 3 s
  CHECK(t->activeHub() == "home");
  CHECK(r.allowed(0xa0) == std::vector<std::string>{"10.99.200.0/24", "10.99.100.1/32"});
  CHECK(t->status().failovers() == 2);
  CHECK(std::find_if(r.events.begin(), r.events.end(), [](auto& e) {
          return e.rfind("tunnel.failover wgt0 near -> home: home (tier 0) healthy for 3 s", 0) == 0;
        }) != r.events.end());
}

TEST_CASE("tunnel: a new instance adopts a running device and keeps its active hub") {
  Rig r;
  r.prober.reachable = {"10.99.100.1", "10.99.100.2", "10.99.100.3"};
  {
    auto t = r.make();
    r.prober.reachable.erase("10.99.100.1");
    r.ticks(*t, 4);
    REQUIRE(t->activeHub() == "near");
  }  // netd restarts: the device stays
  r.prober.reachable.insert("10.99.100.1");
  auto t2 = r.make();
  t2->tick();
  CHECK(t2->activeHub() == "near");
  CHECK(r.allowed(0xa1) == std::vector<std::string>{"10.99.200.0/24", "10.99.100.2/32"});
  CHECK(r.backend.sets.back().replacePeers == false);
  CHECK(t2->status().failovers() == 0);
}

TEST_CASE("tunnel: a recreated device (wireguard-go restarted) is configured again on the next tick") {
  Rig r;
  r.prober.reachable = {"10.99.100.1", "10.99.100.2"};
  auto t = r.make();
  r.ticks(*t, 1);
  r.backend.devices.erase("wgt0");
  r.links.routeSet.clear();
  r.ticks(*t, 1);
  CHECK(r.allowed(0xa0) == std::vector<std::string>{"10.99.200.0/24", "10.99.100.1/32"});
  CHECK(r.links.routeSet.count("10.99.200.0/24") == 1);
  CHECK(t->activeHub() == "home");
}
