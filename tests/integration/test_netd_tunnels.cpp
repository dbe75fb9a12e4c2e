// outrider-netd against real wireguard-go hubs in network namespaces the test makes itself: the tunnel
// comes up and carries traffic, status agrees with `wg show`, failover on a dead hub or a dead link,
// fail-back only after the hold-down, bad configuration refused with the tunnel untouched, and a
// SIGKILLed netd that comes back to the same key and the same active hub without a teardown.
#include <doctest/doctest.h>
#include <sys/wait.h>

#include <boost/asio/io_context.hpp>
#include <chrono>
#include <csignal>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <sstream>

#include "outrider/common/atomic_file.hpp"
#include "outrider/common/ipc.hpp"
#include "support/netns_fixture.hpp"
#include "support/process.hpp"
#include "unit/test_ipc_support.hpp"

using namespace outrider;
using namespace outrider::test;
using namespace std::chrono_literals;

namespace {

const std::string kService = "10.99.200.1";

/// A client of netd's local API on its own loop.
class NetdApi {
 public:
  explicit NetdApi(const std::filesystem::path& socket) : socket_(socket), client_(io_, socket) {}

  bool waitReady(Process& netd) {
    waitFor([&] { return std::filesystem::exists(socket_) || !netd.running(); }, 10s);
    return std::filesystem::exists(socket_);
  }

  Result<v1::LocalReply> call(v1::LocalRequest req) { return callAndWait(io_, client_, std::move(req), 5s); }

  v1::TunnelStatusList status() {
    v1::LocalRequest req;
    req.mutable_tunnel_status();
    auto r = call(req);
    if (!r.ok() || !r->has_tunnels()) return {};
    return r->tunnels();
  }

  /// Status of the one tunnel, or an empty one.
  v1::TunnelStatus tunnel() {
    auto l = status();
    return l.tunnels_size() ? l.tunnels(0) : v1::TunnelStatus{};
  }

  bool waitActive(const std::string& hub, std::chrono::milliseconds timeout) {
    return waitFor([&] { return tunnel().active_hub() == hub; }, timeout);
  }

  Result<v1::LocalReply> apply(const std::vector<v1::TunnelSpec>& tunnels) {
    v1::LocalRequest req;
    for (const auto& t : tunnels) *req.mutable_tunnel_apply()->add_tunnels() = t;
    req.mutable_tunnel_apply();
    return call(req);
  }

  Result<v1::LocalReply> health() { return call(healthRequest()); }

  void subscribe() {
    client_.subscribe([this](const v1::LocalEvent& ev) { events_.push_back(ev); });
    // Make the subscription happen now (it is sent on the next connection use).
    (void)health();
  }
  /// Pump the loop briefly so pushed events arrive, then look for one.
  bool sawEvent(const std::string& kind, const std::string& detailPrefix) {
    runUntil(io_, [] { return false; }, 50ms);
    for (const auto& e : events_)
      if (e.kind() == kind && e.detail().rfind(detailPrefix, 0) == 0) return true;
    return false;
  }
  std::string events() const {
    std::string out;
    for (const auto& e : events_) out += e.kind() + " " + e.subject() + " " + e.detail() + "\n";
    return out;
  }

 private:
  std::filesystem::path socket_;
  boost::asio::io_context io_;
  ipc::Client client_;
  std::vector<v1::LocalEvent> events_;
};

/// The same tunnel as NetnsLab::tunnelToml, as a protobuf spec (for tunnel_apply).
v1::TunnelSpec specFor(NetnsLab& lab, int hubs, int probeMs, int holddownS, std::vector<int> tiers) {
  v1::TunnelSpec s;
  s.set_interface(lab.edgeIf());
  s.add_addresses("10.99.100.10/24");
  s.set_keepalive_s(1);
  s.set_probe_interval_ms(static_cast<std::uint32_t>(probeMs));
  s.set_miss_threshold(3);
  s.set_holddown_s(static_cast<std::uint32_t>(holddownS));
  s.set_standbys(1);
  for (int h = 1; h <= hubs; ++h) {
    auto* p = s.add_hubs();
    p->set_name("hub" + std::to_string(h));
    p->set_endpoint(lab.hub(h).endpoint);
    p->set_public_key(lab.hub(h).publicKey);
    p->add_allowed_ips("10.99.200.0/24");
    p->set_tier(static_cast<std::uint32_t>(tiers.at(static_cast<std::size_t>(h - 1))));
    p->set_probe_address(lab.hub(h).probeAddress);
  }
  return s;
}

struct DumpPeer {
  std::string endpoint;
  std::set<std::string> allowed;
};

/// `wg show IF dump` in the edge namespace: the interface's public key, and its peers by public key.
std::pair<std::string, std::map<std::string, DumpPeer>> wgDump(NetnsLab& lab) {
  int rc = -1;
  auto text = lab.capture(lab.inEdge({"wg", "show", lab.edgeIf(), "dump"}), &rc);
  REQUIRE_MESSAGE(rc == 0, "wg show dump failed");
  std::istringstream in(text);
  std::string line;
  std::string pub;
  std::map<std::string, DumpPeer> peers;
  bool first = true;
  while (std::getline(in, line)) {
    std::vector<std::string> f;
    std::istringstream ls(line);
    std::string x;
    while (std::getline(ls, x, '\t')) f.push_back(x);
    if (first) {
      REQUIRE(f.size() >= 2);
      pub = f[1];
      first = false;
      continue;
    }
    REQUIRE(f.size() >= 4);
    DumpPeer p;
    p.endpoint = f[2];
    std::istringstream as(f[3]);
    while (std::getline(as, x, ',')) p.allowed.insert(x);
    peers[f[0]] = p;
  }
  return {pub, peers};
}

const v1::HubStatus* hubOf(const v1::TunnelStatus& t, const std::string& name) {
  for (const auto& h : t.hubs())
    if (h.name() == name) return &h;
  return nullptr;
}

}  // namespace

TEST_CASE("a netd.toml tunnel comes up, carries traffic, agrees with wg show; bad configuration is refused and changes nothing") {
  NetnsLab lab(3);
  auto netd = lab.startNetd(lab.tunnelToml(500, 3, 3, 1, {0, 1, 2}));
  NetdApi api(lab.netdSocket());
  REQUIRE_MESSAGE(api.waitReady(netd), netd.log());

  REQUIRE_MESSAGE(lab.pingWithin(kService, 20s), netd.log());
  REQUIRE(api.waitActive("hub1", 10s));
  // Wait for a probe round to have read the counters.
  REQUIRE(waitFor([&] { auto h = hubOf(api.tunnel(), "hub1"); return h && h->healthy() && h->rx_bytes() > 0; }, 10s));

  auto st = api.tunnel();
  CHECK(st.interface() == lab.edgeIf());
  CHECK(st.up());
  CHECK(st.backend() == "wireguard-go");
  CHECK(st.public_key() == lab.edgePublicKey());
  CHECK(st.failovers() == 0);
  CHECK(st.last_error().empty());
  REQUIRE(st.hubs_size() == 3);
  CHECK(hubOf(st, "hub1")->state() == "active");
  CHECK(hubOf(st, "hub2")->state() == "standby");
  CHECK(hubOf(st, "hub3")->state() == "idle");
  CHECK(hubOf(st, "hub1")->probe_rtt_us() > 0);
  CHECK(hubOf(st, "hub1")->last_handshake_ms() > 0);

  auto [pub, peers] = wgDump(lab);
  CHECK(pub == st.public_key());
  REQUIRE(peers.size() == 2);  // active + one warm standby; hub3 is idle
  const auto& p1 = peers.at(lab.hub(1).publicKey);
  CHECK(p1.endpoint == lab.hub(1).endpoint);
  CHECK(p1.allowed == std::set<std::string>{"10.99.200.0/24", "10.99.100.1/32"});
  const auto& p2 = peers.at(lab.hub(2).publicKey);
  CHECK(p2.endpoint == lab.hub(2).endpoint);
  CHECK(p2.allowed == std::set<std::string>{"10.99.100.2/32"});
  CHECK(peers.count(lab.hub(3).publicKey) == 0);
  CHECK(hubOf(st, "hub1")->endpoint() == p1.endpoint);

  auto h = api.health();
  REQUIRE(h.ok());
  CHECK(h->health().healthy());
  CHECK(h->health().detail().find("public key " + lab.edgePublicKey()) != std::string::npos);
  CHECK(netd.log().find(lab.edgePublicKey()) != std::string::npos);
  // The private key never shows up in the log.
  auto priv = readFile(lab.edgeKeyFile());
  REQUIRE(priv.ok());
  CHECK(netd.log().find(priv->substr(0, 43)) == std::string::npos);

  // Each of these requests carries one valid tunnel and one bad one: refused as a whole.
  auto good = specFor(lab, 2, 500, 3, {0, 1});
  good.set_interface("ob" + std::to_string(::getpid()));
  struct Bad {
    std::string what;
    std::function<void(v1::TunnelSpec&)> edit;
    std::string expect;
  };
  std::vector<Bad> bads{
      {"malformed key", [](auto& s) { s.mutable_hubs(0)->set_public_key("bm90IGEga2V5"); }, "public_key: not base64 of 32 bytes"},
      {"unresolvable endpoint", [](auto& s) { s.mutable_hubs(1)->set_endpoint("no-such-hub.invalid:51820"); },
       "hub 'hub2': endpoint: cannot resolve 'no-such-hub.invalid'"},
      {"overlapping allowed IPs", [](auto& s) { s.mutable_hubs(1)->add_allowed_ips("10.99.0.0/16"); }, "overlaps"},
      {"duplicate hub", [](auto& s) { *s.add_hubs() = s.hubs(0); }, "name: duplicate hub name"},
      {"interface name too long", [](auto& s) { s.set_interface("a-much-too-long-name"); }, "interface"},
  };
  for (const auto& bad : bads) {
    auto spec = specFor(lab, 3, 500, 3, {0, 1, 2});
    spec.set_interface("oc" + std::to_string(::getpid()));
    bad.edit(spec);
    auto r = api.apply({good, spec});
    INFO(bad.what);
    REQUIRE(r.ok());
    CHECK(r->error().code() == v1::LocalError::BAD_REQUEST);
    CHECK_MESSAGE(r->error().message().find(bad.expect) != std::string::npos, r->error().message());
  }
  auto twice = api.apply({good, good});
  REQUIRE(twice.ok());
  CHECK(twice->error().code() == v1::LocalError::BAD_REQUEST);
  CHECK(twice->error().message().find("interface: listed twice") != std::string::npos);
  CHECK_FALSE(std::filesystem::exists(lab.stateDir() / "manifest-tunnels.state"));
  auto after = api.status();
  REQUIRE(after.tunnels_size() == 1);  // the good tunnel of the refused requests was not made either
  CHECK(after.tunnels(0).active_hub() == "hub1");
  CHECK(after.tunnels(0).failovers() == 0);
  CHECK(wgDump(lab).second.size() == 2);
  CHECK(lab.ping(kService));
  CHECK(netd.running());
}

TEST_CASE("killing the active hub's wireguard-go fails over to the standby; fail-back waits for the hold-down") {
  NetnsLab lab(3);
  auto netd = lab.startNetd(lab.tunnelToml(500, 3, 3, 1, {0, 1, 2}));
  NetdApi api(lab.netdSocket());
  REQUIRE_MESSAGE(api.waitReady(netd), netd.log());
  api.subscribe();
  REQUIRE_MESSAGE(lab.pingWithin(kService, 20s), netd.log());
  REQUIRE(api.waitActive("hub1", 10s));
  REQUIRE(waitFor([&] { return hubOf(api.tunnel(), "hub2")->healthy(); }, 10s));

  lab.killHub(1);
  // Generous bound: detection is 3 probes of 0.5 s; this only guards against hanging forever.
  REQUIRE_MESSAGE(api.waitActive("hub2", 30s), netd.log());
  CHECK(lab.pingWithin(kService, 10s));
  auto st = api.tunnel();
  CHECK(st.failovers() == 1);
  CHECK(st.last_failover_ms() > 0);
  CHECK(hubOf(st, "hub1")->state() == "down");
  CHECK(hubOf(st, "hub1")->misses() >= 3);
  CHECK(hubOf(st, "hub3")->state() == "standby");  // the next hub in the ring was warmed
  CHECK_MESSAGE(api.sawEvent("tunnel.failover", "hub1 -> hub2: hub1 missed 3 probes"), api.events());
  CHECK_MESSAGE(api.sawEvent("tunnel.hub", "hub1: down"), api.events());
  auto peers = wgDump(lab).second;
  CHECK(peers.at(lab.hub(2).publicKey).allowed == std::set<std::string>{"10.99.200.0/24", "10.99.100.2/32"});
  CHECK(peers.at(lab.hub(1).publicKey).allowed == std::set<std::string>{"10.99.100.1/32"});

  // hub1 comes back: it is healthy again, but keeps no traffic until it was healthy for 3 s.
  REQUIRE(lab.startHub(1));
  REQUIRE_MESSAGE(waitFor([&] { return hubOf(api.tunnel(), "hub1")->healthy(); }, 30s), netd.log());
  auto since = hubOf(api.tunnel(), "hub1")->healthy_since_ms();
  REQUIRE(since > 0);
  CHECK(api.tunnel().active_hub() == "hub2");
  REQUIRE_MESSAGE(api.waitActive("hub1", 30s), netd.log());
  st = api.tunnel();
  CHECK(st.failovers() == 2);
  CHECK(st.last_failover_ms() - since >= 3000);
  CHECK_MESSAGE(api.sawEvent("tunnel.failover", "hub2 -> hub1: hub1 (tier 0) healthy for 3 s"), api.events());
  CHECK(lab.pingWithin(kService, 10s));
}

TEST_CASE("taking the active hub's link down fails over to the standby") {
  NetnsLab lab(2);
  auto netd = lab.startNetd(lab.tunnelToml(500, 3, 30, 1, {0, 1}));
  NetdApi api(lab.netdSocket());
  REQUIRE_MESSAGE(api.waitReady(netd), netd.log());
  REQUIRE_MESSAGE(lab.pingWithin(kService, 20s), netd.log());
  REQUIRE(api.waitActive("hub1", 10s));

  lab.setHubLink(1, false);
  REQUIRE_MESSAGE(api.waitActive("hub2", 30s), netd.log());
  CHECK(lab.pingWithin(kService, 10s));
  CHECK(api.tunnel().failovers() == 1);
  CHECK(hubOf(api.tunnel(), "hub1")->state() == "down");

  // The edge's own wireguard-go dies: netd starts a new one and configures it again, same active hub.
  pid_t old = lab.uapiOwner(lab.edgeIf());
  REQUIRE(old > 0);
  ::kill(old, SIGKILL);
  REQUIRE_MESSAGE(waitFor([&] { pid_t now = lab.uapiOwner(lab.edgeIf()); return now > 0 && now != old; }, 30s),
                  netd.log());
  CHECK_MESSAGE(lab.pingWithin(kService, 20s), netd.log());
  auto st = api.tunnel();
  CHECK(st.up());
  CHECK(st.active_hub() == "hub2");
  CHECK(netd.log().find("exited with status") != std::string::npos);
  CHECK(netd.running());
}

TEST_CASE("a manifest tunnel survives netd SIGKILL: same key, same device, same active hub, traffic keeps flowing") {
  NetnsLab lab(3);
  auto netd = lab.startNetd("");
  NetdApi api(lab.netdSocket());
  REQUIRE_MESSAGE(api.waitReady(netd), netd.log());
  auto h = api.health();
  REQUIRE(h.ok());
  // The key exists from the first start, before any tunnel, and health names its public half.
  CHECK(h->health().detail().rfind("public key ", 0) == 0);
  CHECK(h->health().detail().find("; no tunnels configured yet") != std::string::npos);

  auto r = api.apply({specFor(lab, 3, 500, 30, {0, 1, 2})});
  REQUIRE(r.ok());
  REQUIRE_MESSAGE(!r->has_error(), r->error().message());
  REQUIRE(r->apply().results_size() == 1);
  CHECK(r->apply().results(0).kind() == "tunnel");
  CHECK(r->apply().results(0).name() == lab.edgeIf());
  CHECK(r->apply().results(0).action() == "created");
  CHECK(std::filesystem::exists(lab.stateDir() / "manifest-tunnels.state"));
  REQUIRE_MESSAGE(lab.pingWithin(kService, 20s), netd.log());
  REQUIRE(api.waitActive("hub1", 10s));

  // Make the active hub one that a fresh start would not pick: fail over to hub2, bring hub1 back (the
  // 30 s hold-down keeps hub2 active).
  lab.killHub(1);
  REQUIRE_MESSAGE(api.waitActive("hub2", 30s), netd.log());
  REQUIRE(lab.startHub(1));
  auto key = api.tunnel().public_key();
  pid_t wgPid = lab.uapiOwner(lab.edgeIf());
  REQUIRE(wgPid > 0);

  netd.signal(SIGKILL);
  netd.wait(5s);
  CHECK(lab.ping(kService));  // the tunnel does not depend on netd running

  auto netd2 = lab.startNetd("", "netd2.log");
  NetdApi api2(lab.netdSocket());
  REQUIRE_MESSAGE(api2.waitReady(netd2), netd2.log());
  REQUIRE_MESSAGE(waitFor([&] { return api2.tunnel().up(); }, 10s), netd2.log());
  auto st = api2.tunnel();
  CHECK(st.public_key() == key);
  CHECK(st.active_hub() == "hub2");
  CHECK(netd2.log().find("adopted the running wireguard-go") != std::string::npos);
  CHECK(netd2.log().find("active hub hub2") != std::string::npos);
  CHECK(lab.ping(kService));
  CHECK(lab.uapiOwner(lab.edgeIf()) == wgPid);  // adopted, not restarted
  // Converged without a failover of its own, and the fail-back still waits for hub1's hold-down.
  CHECK(st.failovers() == 0);

  // A clean stop leaves the tunnel up as well.
  netd2.signal(SIGTERM);
  auto ws = netd2.wait(10s);
  REQUIRE(ws);
  CHECK(WIFEXITED(*ws));
  CHECK(WEXITSTATUS(*ws) == 0);
  CHECK(lab.ping(kService));
}

TEST_CASE("a bad netd.toml stops start-up with exit 2 and a file:line message; nothing is created") {
  const std::string badTunnel = "[[tunnel]]\n"
                                "interface = \"wgbad\"\n"
                                "addresses = [\"10.99.100.10/24\"]\n"
                                "  [[tunnel.hub]]\n"
                                "  name = \"home\"\n"
                                "  endpoint = \"10.99.1.2:51820\"\n"
                                "  public_key = \"bm90IGEga2V5\"\n"
                                "  allowed_ips = [\"10.99.200.0/24\"]\n"
                                "  probe_address = \"10.99.100.1\"\n";
  struct Case {
    std::string wireguard, tunnels, expect;
  };
  for (const auto& c : std::vector<Case>{
           {"", badTunnel, "hub 'home': public_key: not base64 of 32 bytes"},
           {"backend = \"fast\"\n", "", "wireguard.backend"},
           {"uapi_dir = \"\"\n", "", "wireguard.uapi_dir"},
       }) {
    TempDir dir("netdcfg");
    auto config = dir / "netd.toml";
    std::ofstream(config) << "[api]\nsocket = \"" << (dir / "api.sock").string() << "\"\n"
                          << "[wireguard]\nkey_file = \"" << (dir / "wg.key").string() << "\"\n"
                          << "state_dir = \"" << (dir / "state").string() << "\"\n"
                          << c.wireguard << c.tunnels;
    Process netd({binary("outrider-netd").string(), "--config", config.string()}, dir / "log");
    auto st = netd.wait(10s);
    REQUIRE(st);
    CHECK(WIFEXITED(*st));
    CHECK(WEXITSTATUS(*st) == 2);
    auto log = netd.log();
    INFO(log);
    CHECK(log.find("<3>" + config.string() + ":") != std::string::npos);
    CHECK(log.find(c.expect) != std::string::npos);
    CHECK_FALSE(std::filesystem::exists(dir / "api.sock"));
    CHECK_FALSE(std::filesystem::exists(dir / "wg.key"));
  }
}
