// The two wire encodings of the WireGuard backends: wireguard-go's UAPI text, and kernel WireGuard's
// generic netlink attributes (this is the only test of the latter: the machines the suite runs on have
// no WireGuard in their kernel).
#include <doctest/doctest.h>
#include <linux/wireguard.h>
#include <netinet/in.h>
#include <netlink/attr.h>
#include <netlink/genl/genl.h>
#include <netlink/msg.h>

#include <cstring>

#include "outrider/netd/kernel_genl.hpp"
#include "outrider/netd/uapi.hpp"

using namespace outrider::netd;

namespace {

WgKey key(std::uint8_t fill) {
  WgKey k;
  k.fill(fill);
  return k;
}

Cidr cidr(const char* s) {
  auto c = Cidr::parse(s);
  REQUIRE(c.ok());
  return *c;
}

Endpoint endpoint(const char* s) {
  auto e = Endpoint::parse(s);
  REQUIRE(e.ok());
  return *e;
}

WgDeviceConfig sampleConfig() {
  WgDeviceConfig cfg;
  cfg.privateKey = key(0x11);
  cfg.listenPort = 51820;
  WgPeerConfig active;
  active.publicKey = key(0xaa);
  active.endpoint = endpoint("10.99.1.2:51820");
  active.keepaliveS = 25;
  active.replaceAllowedIps = true;
  active.allowedIps = {cidr("10.99.200.0/24"), cidr("10.99.100.1/32")};
  WgPeerConfig standby;
  standby.publicKey = key(0xbb);
  standby.endpoint = endpoint("[fd00::2]:51821");
  standby.keepaliveS = 25;
  standby.replaceAllowedIps = true;
  standby.allowedIps = {cidr("fd00:99::2/128")};
  WgPeerConfig gone;
  gone.publicKey = key(0xcc);
  gone.remove = true;
  cfg.peers = {active, standby, gone};
  return cfg;
}

}  // namespace

TEST_CASE("UAPI set: device keys, then one section per peer starting at public_key, blank line at the end") {
  auto text = encodeUapiSet(sampleConfig());
  const std::string hexA(64, 'a'), hexB(64, 'b'), hexC(64, 'c');
  const std::string want = "set=1\n"
                           "private_key=" + std::string(64, '1') + "\n"
                           "listen_port=51820\n"
                           "public_key=" + hexA + "\n"
                           "endpoint=10.99.1.2:51820\n"
                           "persistent_keepalive_interval=25\n"
                           "replace_allowed_ips=true\n"
                           "allowed_ip=10.99.200.0/24\n"
                           "allowed_ip=10.99.100.1/32\n"
                           "public_key=" + hexB + "\n"
                           "endpoint=[fd00::2]:51821\n"
                           "persistent_keepalive_interval=25\n"
                           "replace_allowed_ips=true\n"
                           "allowed_ip=fd00:99::2/128\n"
                           "public_key=" + hexC + "\n"
                           "remove=true\n"
                           "\n";
  CHECK(text == want);

  WgDeviceConfig minimal;
  CHECK(encodeUapiSet(minimal) == "set=1\n\n");
}

TEST_CASE("UAPI errno: 0 is success, a negative or positive errno is an Error with that code") {
  CHECK(parseUapiErrno("errno=0\n\n").ok());
  auto bad = parseUapiErrno("errno=-22\n\n");
  REQUIRE_FALSE(bad.ok());
  CHECK(bad.error().code == EINVAL);
  CHECK(bad.error().message.find("errno=-22") != std::string::npos);
  auto pos = parseUapiErrno("errno=2\n\n");
  REQUIRE_FALSE(pos.ok());
  CHECK(pos.error().code == ENOENT);
  CHECK_FALSE(parseUapiErrno("\n").ok());
  CHECK_FALSE(parseUapiErrno("errno=abc\n\n").ok());
}

TEST_CASE("UAPI get: device and peers, handshake in ms, counters, allowed IPs; errors refuse") {
  const std::string hexA(64, 'a'), hexB(64, 'b');
  std::string reply = "private_key=" + std::string(64, '1') + "\n"
                      "listen_port=40000\n"
                      "public_key=" + hexA + "\n"
                      "preshared_key=" + std::string(64, '0') + "\n"
                      "protocol_version=1\n"
                      "endpoint=10.99.1.2:51820\n"
                      "last_handshake_time_sec=1795438234\n"
                      "last_handshake_time_nsec=322221981\n"
                      "tx_bytes=673900704\n"
                      "rx_bytes=8556684\n"
                      "persistent_keepalive_interval=2\n"
                      "allowed_ip=10.99.100.0/24\n"
                      "allowed_ip=10.99.200.0/24\n"
                      "public_key=" + hexB + "\n"
                      "endpoint=[fd00::2]:51820\n"
                      "last_handshake_time_sec=0\n"
                      "last_handshake_time_nsec=0\n"
                      "tx_bytes=0\n"
                      "rx_bytes=0\n"
                      "persistent_keepalive_interval=0\n"
                      "errno=0\n\n";
  auto dev = decodeUapiGet(reply);
  REQUIRE_MESSAGE(dev.ok(), (dev.ok() ? "" : dev.error().message));
  CHECK(dev->listenPort == 40000);
  REQUIRE(dev->peers.size() == 2);
  const auto& a = dev->peers[0];
  CHECK(a.publicKey == key(0xaa));
  REQUIRE(a.endpoint);
  CHECK(a.endpoint->str() == "10.99.1.2:51820");
  CHECK(a.lastHandshakeMs == 1795438234322LL);
  CHECK(a.txBytes == 673900704u);
  CHECK(a.rxBytes == 8556684u);
  CHECK(a.keepaliveS == 2);
  REQUIRE(a.allowedIps.size() == 2);
  CHECK(a.allowedIps[1].str() == "10.99.200.0/24");
  CHECK(dev->peers[1].endpoint->str() == "[fd00::2]:51820");
  CHECK(dev->peers[1].lastHandshakeMs == 0);
  CHECK(dev->peer(key(0xbb)) == &dev->peers[1]);
  CHECK(dev->peer(key(0xcc)) == nullptr);

  CHECK_FALSE(decodeUapiGet("errno=-5\n\n").ok());
  CHECK_FALSE(decodeUapiGet("public_key=zz\nerrno=0\n\n").ok());
  CHECK_FALSE(decodeUapiGet("public_key=" + hexA + "\nrx_bytes=-1\nerrno=0\n\n").ok());
  CHECK_FALSE(decodeUapiGet("garbage\nerrno=0\n\n").ok());
  CHECK_FALSE(decodeUapiGet("listen_port=1\n\n").ok());  // no errno line: incomplete
}

namespace {

std::string keyAt(nlattr* a) {
  REQUIRE(a);
  REQUIRE(nla_len(a) == WG_KEY_LEN);
  return std::string(static_cast<const char*>(nla_data(a)), WG_KEY_LEN);
}

std::string raw(const WgKey& k) { return std::string(reinterpret_cast<const char*>(k.data()), k.size()); }

}  // namespace

TEST_CASE("genl WG_CMD_SET_DEVICE: header, device attributes, nested peers with flags and allowed IPs") {
  constexpr int kFamily = 0x1d;
  auto msg = buildWgSetDevice(kFamily, "wgo-edge", sampleConfig());
  REQUIRE(msg.ok());
  nlmsghdr* hdr = nlmsg_hdr(msg->get());
  CHECK(hdr->nlmsg_type == kFamily);
  CHECK((hdr->nlmsg_flags & NLM_F_REQUEST));
  CHECK((hdr->nlmsg_flags & NLM_F_ACK));
  auto* gh = static_cast<genlmsghdr*>(nlmsg_data(hdr));
  CHECK(gh->cmd == WG_CMD_SET_DEVICE);
  CHECK(gh->version == WG_GENL_VERSION);

  nlattr* dev[WGDEVICE_A_MAX + 1] = {};
  REQUIRE(genlmsg_parse(hdr, 0, dev, WGDEVICE_A_MAX, nullptr) == 0);
  REQUIRE(dev[WGDEVICE_A_IFNAME]);
  CHECK(std::string(nla_get_string(dev[WGDEVICE_A_IFNAME])) == "wgo-edge");
  CHECK(keyAt(dev[WGDEVICE_A_PRIVATE_KEY]) == raw(key(0x11)));
  REQUIRE(dev[WGDEVICE_A_LISTEN_PORT]);
  CHECK(nla_get_u16(dev[WGDEVICE_A_LISTEN_PORT]) == 51820);
  CHECK(dev[WGDEVICE_A_FLAGS] == nullptr);  // no replace_peers: peers not named stay
  REQUIRE(dev[WGDEVICE_A_PEERS]);

  std::vector<nlattr*> peers;
  nlattr* p = nullptr;
  int rem = 0;
  nla_for_each_nested(p, dev[WGDEVICE_A_PEERS], rem) peers.push_back(p);
  REQUIRE(peers.size() == 3);

  nlattr* a[WGPEER_A_MAX + 1] = {};
  REQUIRE(nla_parse_nested(a, WGPEER_A_MAX, peers[0], nullptr) == 0);
  CHECK(keyAt(a[WGPEER_A_PUBLIC_KEY]) == raw(key(0xaa)));
  REQUIRE(a[WGPEER_A_FLAGS]);
  CHECK(nla_get_u32(a[WGPEER_A_FLAGS]) == WGPEER_F_REPLACE_ALLOWEDIPS);
  CHECK(nla_get_u16(a[WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL]) == 25);
  REQUIRE(a[WGPEER_A_ENDPOINT]);
  REQUIRE(nla_len(a[WGPEER_A_ENDPOINT]) == static_cast<int>(sizeof(sockaddr_in)));
  sockaddr_in sin{};
  std::memcpy(&sin, nla_data(a[WGPEER_A_ENDPOINT]), sizeof sin);
  CHECK(sin.sin_family == AF_INET);
  CHECK(ntohs(sin.sin_port) == 51820);
  CHECK(ntohl(sin.sin_addr.s_addr) == 0x0a630102u);  // 10.99.1.2
  std::vector<std::string> ips;
  nlattr* ip = nullptr;
  nla_for_each_nested(ip, a[WGPEER_A_ALLOWEDIPS], rem) {
    nlattr* ia[WGALLOWEDIP_A_MAX + 1] = {};
    REQUIRE(nla_parse_nested(ia, WGALLOWEDIP_A_MAX, ip, nullptr) == 0);
    Cidr c;
    c.family = nla_get_u16(ia[WGALLOWEDIP_A_FAMILY]);
    std::memcpy(c.addr.data(), nla_data(ia[WGALLOWEDIP_A_IPADDR]), static_cast<std::size_t>(nla_len(ia[WGALLOWEDIP_A_IPADDR])));
    c.bits = nla_get_u8(ia[WGALLOWEDIP_A_CIDR_MASK]);
    ips.push_back(c.str());
  }
  CHECK(ips == std::vector<std::string>{"10.99.200.0/24", "10.99.100.1/32"});

  nlattr* b[WGPEER_A_MAX + 1] = {};
  REQUIRE(nla_parse_nested(b, WGPEER_A_MAX, peers[1], nullptr) == 0);
  REQUIRE(nla_len(b[WGPEER_A_ENDPOINT]) == static_cast<int>(sizeof(sockaddr_in6)));
  sockaddr_in6 sin6{};
  std::memcpy(&sin6, nla_data(b[WGPEER_A_ENDPOINT]), sizeof sin6);
  CHECK(sin6.sin6_family == AF_INET6);
  CHECK(ntohs(sin6.sin6_port) == 51821);

  nlattr* c[WGPEER_A_MAX + 1] = {};
  REQUIRE(nla_parse_nested(c, WGPEER_A_MAX, peers[2], nullptr) == 0);
  CHECK(keyAt(c[WGPEER_A_PUBLIC_KEY]) == raw(key(0xcc)));
  CHECK(nla_get_u32(c[WGPEER_A_FLAGS]) == WGPEER_F_REMOVE_ME);
  CHECK(c[WGPEER_A_ALLOWEDIPS] == nullptr);
  CHECK(c[WGPEER_A_ENDPOINT] == nullptr);

  auto get = buildWgGetDevice(kFamily, "wgo-edge");
  REQUIRE(get.ok());
  nlmsghdr* gh2 = nlmsg_hdr(get->get());
  CHECK((gh2->nlmsg_flags & NLM_F_DUMP) == NLM_F_DUMP);
  CHECK(static_cast<genlmsghdr*>(nlmsg_data(gh2))->cmd == WG_CMD_GET_DEVICE);
}

namespace {

/// A WG_CMD_GET_DEVICE reply as the kernel would send it.
NlMsgPtr getReply(const WgKey& peerKey, bool withDevice, std::vector<std::pair<const char*, int>> ips,
                  std::int64_t hsSec) {
  NlMsgPtr m(nlmsg_alloc());
  REQUIRE(genlmsg_put(m.get(), 0, 1, 0x1d, 0, NLM_F_MULTI, WG_CMD_GET_DEVICE, WG_GENL_VERSION));
  nla_put_string(m.get(), WGDEVICE_A_IFNAME, "wgo-edge");
  if (withDevice) {
    auto pub = key(0x22);
    nla_put(m.get(), WGDEVICE_A_PUBLIC_KEY, WG_KEY_LEN, pub.data());
    nla_put_u16(m.get(), WGDEVICE_A_LISTEN_PORT, 40001);
  }
  nlattr* peers = nla_nest_start(m.get(), WGDEVICE_A_PEERS);
  nlattr* p = nla_nest_start(m.get(), 0);
  nla_put(m.get(), WGPEER_A_PUBLIC_KEY, WG_KEY_LEN, peerKey.data());
  if (withDevice) {
    sockaddr_in sin{};
    sin.sin_family = AF_INET;
    sin.sin_port = htons(51820);
    sin.sin_addr.s_addr = htonl(0x0a630102);
    nla_put(m.get(), WGPEER_A_ENDPOINT, sizeof sin, &sin);
    std::int64_t ts[2] = {hsSec, 500000000};
    nla_put(m.get(), WGPEER_A_LAST_HANDSHAKE_TIME, sizeof ts, ts);
    nla_put_u64(m.get(), WGPEER_A_RX_BYTES, 1234);
    nla_put_u64(m.get(), WGPEER_A_TX_BYTES, 5678);
    nla_put_u16(m.get(), WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL, 25);
  }
  nlattr* list = nla_nest_start(m.get(), WGPEER_A_ALLOWEDIPS);
  int n = 0;
  for (auto [text, bits] : ips) {
    auto c = Cidr::parse(text);
    nlattr* ip = nla_nest_start(m.get(), n++);
    nla_put_u16(m.get(), WGALLOWEDIP_A_FAMILY, static_cast<std::uint16_t>(c->family));
    nla_put(m.get(), WGALLOWEDIP_A_IPADDR, c->family == AF_INET ? 4 : 16, c->addr.data());
    nla_put_u8(m.get(), WGALLOWEDIP_A_CIDR_MASK, static_cast<std::uint8_t>(bits));
    nla_nest_end(m.get(), ip);
  }
  nla_nest_end(m.get(), list);
  nla_nest_end(m.get(), p);
  nla_nest_end(m.get(), peers);
  return m;
}

}  // namespace

TEST_CASE("genl WG_CMD_GET_DEVICE reply: device, peer counters and handshake; a peer split over messages coalesces") {
  WgDeviceState dev;
  auto first = getReply(key(0xaa), true, {{"10.99.200.0", 24}}, 1795438234);
  auto second = getReply(key(0xaa), false, {{"fd00:99::", 64}}, 0);
  auto third = getReply(key(0xbb), false, {{"10.99.100.2", 32}}, 0);
  REQUIRE(parseWgGetDevice(first.get(), dev).ok());
  REQUIRE(parseWgGetDevice(second.get(), dev).ok());
  REQUIRE(parseWgGetDevice(third.get(), dev).ok());
  REQUIRE(dev.publicKey);
  CHECK(*dev.publicKey == key(0x22));
  CHECK(dev.listenPort == 40001);
  REQUIRE(dev.peers.size() == 2);
  const auto& a = dev.peers[0];
  CHECK(a.publicKey == key(0xaa));
  CHECK(a.endpoint->str() == "10.99.1.2:51820");
  CHECK(a.lastHandshakeMs == 1795438234500LL);
  CHECK(a.rxBytes == 1234);
  CHECK(a.txBytes == 5678);
  CHECK(a.keepaliveS == 25);
  REQUIRE(a.allowedIps.size() == 2);
  CHECK(a.allowedIps[0].str() == "10.99.200.0/24");
  CHECK(a.allowedIps[1].str() == "fd00:99::/64");
  CHECK(dev.peers[1].allowedIps.at(0).str() == "10.99.100.2/32");
}

TEST_CASE("genl WG_CMD_GET_DEVICE reply: a bad allowed IP is an error, not a silent skip") {
  NlMsgPtr m(nlmsg_alloc());
  REQUIRE(genlmsg_put(m.get(), 0, 1, 0x1d, 0, 0, WG_CMD_GET_DEVICE, WG_GENL_VERSION));
  nlattr* peers = nla_nest_start(m.get(), WGDEVICE_A_PEERS);
  nlattr* p = nla_nest_start(m.get(), 0);
  auto k = key(0xaa);
  nla_put(m.get(), WGPEER_A_PUBLIC_KEY, WG_KEY_LEN, k.data());
  nlattr* list = nla_nest_start(m.get(), WGPEER_A_ALLOWEDIPS);
  nlattr* ip = nla_nest_start(m.get(), 0);
  nla_put_u16(m.get(), WGALLOWEDIP_A_FAMILY, AF_INET);
  std::uint8_t sixteen[16] = {};
  nla_put(m.get(), WGALLOWEDIP_A_IPADDR, 16, sixteen);  // IPv4 with 16 address bytes
  nla_put_u8(m.get(), WGALLOWEDIP_A_CIDR_MASK, 32);
  nla_nest_end(m.get(), ip);
  nla_nest_end(m.get(), list);
  nla_nest_end(m.get(), p);
  nla_nest_end(m.get(), peers);
  WgDeviceState dev;
  CHECK_FALSE(parseWgGetDevice(m.get(), dev).ok());
}
