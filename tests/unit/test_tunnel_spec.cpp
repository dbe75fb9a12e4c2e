// validateTunnelSpec: a good spec passes; every kind of bad field is refused with a message naming the
// tunnel, the hub and the field.
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "outrider/common/tunnel_spec.hpp"

using outrider::validateTunnelSpec;
using outrider::v1::TunnelSpec;

namespace {

const std::string kKeyA = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=";
const std::string kKeyB = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";
const std::string kKeyC = "TrMvSoP4jYQlY6RIzBgbssQqY3vxI2Pi+y71lOWWXX0=";

TunnelSpec goodSpec() {
  TunnelSpec s;
  s.set_interface("wgo-edge");
  s.add_addresses("10.99.100.10/24");
  auto* a = s.add_hubs();
  a->set_name("home");
  a->set_endpoint("10.99.1.2:51820");
  a->set_public_key(kKeyA);
  a->add_allowed_ips("10.99.200.0/24");
  a->set_tier(0);
  a->set_probe_address("10.99.100.1");
  auto* b = s.add_hubs();
  b->set_name("backup");
  b->set_endpoint("hub-2.example.net:51820");
  b->set_public_key(kKeyB);
  b->add_allowed_ips("10.99.200.0/24");  // the same network: that is what failover moves
  b->set_tier(1);
  b->set_probe_address("10.99.100.2");
  return s;
}

std::string refusal(const TunnelSpec& s) {
  auto st = validateTunnelSpec(s);
  REQUIRE_FALSE(st.ok());
  return st.error().message;
}

bool has(const std::string& msg, const std::string& part) { return msg.find(part) != std::string::npos; }

}  // namespace

TEST_CASE("a well-formed tunnel passes, IPv6 endpoints and addresses included") {
  auto s = goodSpec();
  CHECK(validateTunnelSpec(s).ok());
  s.mutable_hubs(1)->set_endpoint("[fd00::2]:51820");
  s.add_addresses("fd00:99::10/64");
  s.mutable_hubs(1)->set_probe_address("fd00:99::2");
  CHECK(validateTunnelSpec(s).ok());
}

TEST_CASE("interface name: empty, too long, bad characters") {
  for (std::string bad : {"", "a-very-long-name", "wg 0", "wg/0", "-wg", "wg:0"}) {
    auto s = goodSpec();
    s.set_interface(bad);
    auto m = refusal(s);
    INFO(m);
    CHECK(has(m, "tunnel '" + bad + "'"));
    CHECK(has(m, "interface"));
  }
  auto s = goodSpec();
  s.set_interface("exactly15bytes_");
  CHECK(validateTunnelSpec(s).ok());
}

TEST_CASE("addresses: missing, not a CIDR, bad prefix") {
  auto s = goodSpec();
  s.clear_addresses();
  CHECK(has(refusal(s), "addresses"));
  for (std::string bad : {"10.99.100.10", "10.99.100.300/24", "10.99.100.10/33", "nonsense/8", "10.0.0.1/"}) {
    auto t = goodSpec();
    t.set_addresses(0, bad);
    auto m = refusal(t);
    INFO(m);
    CHECK(has(m, "tunnel 'wgo-edge': addresses: "));
  }
}

TEST_CASE("hub public key: not base64, wrong length; duplicate keys") {
  for (std::string bad : std::vector<std::string>{"", "not base64!", "AAAA", kKeyA.substr(0, 40)}) {
    auto s = goodSpec();
    s.mutable_hubs(0)->set_public_key(bad);
    auto m = refusal(s);
    INFO(m);
    CHECK(has(m, "tunnel 'wgo-edge': hub 'home': public_key: not base64 of 32 bytes"));
  }
  auto s = goodSpec();
  s.mutable_hubs(1)->set_public_key(kKeyA);
  auto m = refusal(s);
  CHECK(has(m, "hub 'backup': public_key"));
  CHECK(has(m, "another hub"));
}

TEST_CASE("hub names: invalid, duplicate") {
  auto s = goodSpec();
  s.mutable_hubs(1)->set_name("home");
  auto m = refusal(s);
  CHECK(has(m, "hub 'home': name: duplicate"));
  s = goodSpec();
  s.mutable_hubs(0)->set_name("../etc");
  CHECK(has(refusal(s), "hub '../etc': name"));
}

TEST_CASE("endpoint: not host:port, bad port, bad host, unbracketed IPv6") {
  for (std::string bad : {"10.99.1.2", "10.99.1.2:", "10.99.1.2:0", "10.99.1.2:70000", "10.99.1.2:port", ":51820",
                          "fd00::2:51820", "[fd00::2]51820", "[nope]:51820", "bad host:51820"}) {
    auto s = goodSpec();
    s.mutable_hubs(0)->set_endpoint(bad);
    auto m = refusal(s);
    INFO(bad << " -> " << m);
    CHECK(has(m, "tunnel 'wgo-edge': hub 'home': endpoint: "));
  }
}

TEST_CASE("allowed IPs: bad CIDR, host bits, overlap inside a hub, partial overlap between hubs") {
  auto s = goodSpec();
  s.mutable_hubs(0)->add_allowed_ips("10.1.0.0/40");
  CHECK(has(refusal(s), "hub 'home': allowed_ips: "));

  s = goodSpec();
  s.mutable_hubs(0)->add_allowed_ips("10.1.0.1/16");
  CHECK(has(refusal(s), "host bits"));

  s = goodSpec();
  s.mutable_hubs(0)->add_allowed_ips("10.99.0.0/16");
  auto m = refusal(s);
  CHECK(has(m, "hub 'home': allowed_ips: '10.99.0.0/16' overlaps '10.99.200.0/24'"));

  s = goodSpec();
  s.mutable_hubs(1)->add_allowed_ips("10.50.0.0/16");
  s.mutable_hubs(0)->add_allowed_ips("10.50.1.0/24");
  m = refusal(s);
  INFO(m);
  CHECK(has(m, "hub 'backup': allowed_ips: '10.50.0.0/16' overlaps '10.50.1.0/24' of hub 'home'"));

  // Disjoint extra networks are fine, and so is the same network on every hub.
  s = goodSpec();
  s.mutable_hubs(0)->add_allowed_ips("10.50.0.0/16");
  s.mutable_hubs(1)->add_allowed_ips("10.60.0.0/16");
  CHECK(validateTunnelSpec(s).ok());
}

TEST_CASE("tier above 2 and a probe address that is not an address are refused") {
  auto s = goodSpec();
  s.mutable_hubs(1)->set_tier(3);
  CHECK(has(refusal(s), "hub 'backup': tier: must be 0, 1 or 2"));
  for (std::string bad : {"", "10.99.100", "10.99.100.1/32", "hub.example.net"}) {
    s = goodSpec();
    s.mutable_hubs(0)->set_probe_address(bad);
    auto m = refusal(s);
    INFO(m);
    CHECK(has(m, "hub 'home': probe_address"));
  }
  s = goodSpec();
  s.mutable_hubs(1)->set_probe_address("10.99.100.1");
  CHECK(has(refusal(s), "hub 'backup': probe_address: already"));
}

TEST_CASE("tunnel-wide numbers: no hubs, probe interval, threshold, ports") {
  auto s = goodSpec();
  s.clear_hubs();
  CHECK(has(refusal(s), "at least one hub"));
  s = goodSpec();
  s.set_probe_interval_ms(10);
  CHECK(has(refusal(s), "probe_interval_ms"));
  s = goodSpec();
  s.set_miss_threshold(1000);
  CHECK(has(refusal(s), "miss_threshold"));
  s = goodSpec();
  s.set_listen_port(70000);
  CHECK(has(refusal(s), "listen_port"));
  s = goodSpec();
  s.set_keepalive_s(70000);
  CHECK(has(refusal(s), "keepalive_s"));
  s = goodSpec();
  s.set_standbys(100);
  CHECK(has(refusal(s), "standbys"));
  (void)kKeyC;
}
