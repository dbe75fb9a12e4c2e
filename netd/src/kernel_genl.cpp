// The only file that encodes WireGuard generic netlink attributes.
#include "outrider/netd/kernel_genl.hpp"

#include <arpa/inet.h>
#include <linux/wireguard.h>
#include <netinet/in.h>
#include <netlink/attr.h>
#include <netlink/genl/genl.h>
#include <netlink/msg.h>

#include <cstring>

namespace outrider::netd {

void NlMsgFree::operator()(nl_msg* m) const noexcept { nlmsg_free(m); }

namespace {

constexpr std::size_t kMsgSize = 64 * 1024;

Error nlError(const std::string& what) { return Error{what + ": netlink message too small", EMSGSIZE}; }

int putEndpoint(nl_msg* m, const Endpoint& ep) {
  if (ep.family == AF_INET) {
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(ep.port);
    std::memcpy(&sa.sin_addr, ep.addr.data(), 4);
    return nla_put(m, WGPEER_A_ENDPOINT, sizeof sa, &sa);
  }
  sockaddr_in6 sa{};
  sa.sin6_family = AF_INET6;
  sa.sin6_port = htons(ep.port);
  std::memcpy(&sa.sin6_addr, ep.addr.data(), 16);
  return nla_put(m, WGPEER_A_ENDPOINT, sizeof sa, &sa);
}

}  // namespace

Result<NlMsgPtr> buildWgSetDevice(int family, const std::string& ifname, const WgDeviceConfig& cfg) {
  NlMsgPtr msg(nlmsg_alloc_size(kMsgSize));
  if (!msg) return Error{"nlmsg_alloc", ENOMEM};
  nl_msg* m = msg.get();
  if (!genlmsg_put(m, NL_AUTO_PORT, NL_AUTO_SEQ, family, 0, NLM_F_REQUEST | NLM_F_ACK, WG_CMD_SET_DEVICE,
                   WG_GENL_VERSION))
    return nlError("genlmsg_put");
  if (nla_put_string(m, WGDEVICE_A_IFNAME, ifname.c_str()) < 0) return nlError("ifname");
  if (cfg.privateKey && nla_put(m, WGDEVICE_A_PRIVATE_KEY, WG_KEY_LEN, cfg.privateKey->data()) < 0)
    return nlError("private key");
  if (cfg.listenPort && nla_put_u16(m, WGDEVICE_A_LISTEN_PORT, *cfg.listenPort) < 0) return nlError("listen port");
  if (cfg.replacePeers && nla_put_u32(m, WGDEVICE_A_FLAGS, WGDEVICE_F_REPLACE_PEERS) < 0) return nlError("flags");
  if (!cfg.peers.empty()) {
    nlattr* peers = nla_nest_start(m, WGDEVICE_A_PEERS);
    if (!peers) return nlError("peers");
    int i = 0;
    for (const auto& p : cfg.peers) {
      nlattr* peer = nla_nest_start(m, i++);  // the index is ignored by the kernel
      if (!peer) return nlError("peer");
      if (nla_put(m, WGPEER_A_PUBLIC_KEY, WG_KEY_LEN, p.publicKey.data()) < 0) return nlError("peer key");
      std::uint32_t flags = 0;
      if (p.remove) flags |= WGPEER_F_REMOVE_ME;
      if (p.replaceAllowedIps) flags |= WGPEER_F_REPLACE_ALLOWEDIPS;
      if (p.updateOnly) flags |= WGPEER_F_UPDATE_ONLY;
      if (flags && nla_put_u32(m, WGPEER_A_FLAGS, flags) < 0) return nlError("peer flags");
      if (!p.remove) {
        if (p.endpoint && putEndpoint(m, *p.endpoint) < 0) return nlError("endpoint");
        if (p.keepaliveS && nla_put_u16(m, WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL, *p.keepaliveS) < 0)
          return nlError("keepalive");
        if (!p.allowedIps.empty()) {
          nlattr* ips = nla_nest_start(m, WGPEER_A_ALLOWEDIPS);
          if (!ips) return nlError("allowed ips");
          int j = 0;
          for (const auto& a : p.allowedIps) {
            nlattr* ip = nla_nest_start(m, j++);
            if (!ip) return nlError("allowed ip");
            if (nla_put_u16(m, WGALLOWEDIP_A_FAMILY, static_cast<std::uint16_t>(a.family)) < 0 ||
                nla_put(m, WGALLOWEDIP_A_IPADDR, a.family == AF_INET ? 4 : 16, a.addr.data()) < 0 ||
                nla_put_u8(m, WGALLOWEDIP_A_CIDR_MASK, a.bits) < 0)
              return nlError("allowed ip");
            nla_nest_end(m, ip);
          }
          nla_nest_end(m, ips);
        }
      }
      nla_nest_end(m, peer);
    }
    nla_nest_end(m, peers);
  }
  return msg;
}

Result<NlMsgPtr> buildWgGetDevice(int family, const std::string& ifname) {
  NlMsgPtr msg(nlmsg_alloc());
  if (!msg) return Error{"nlmsg_alloc", ENOMEM};
  if (!genlmsg_put(msg.get(), NL_AUTO_PORT, NL_AUTO_SEQ, family, 0, NLM_F_REQUEST | NLM_F_DUMP, WG_CMD_GET_DEVICE,
                   WG_GENL_VERSION))
    return nlError("genlmsg_put");
  if (nla_put_string(msg.get(), WGDEVICE_A_IFNAME, ifname.c_str()) < 0) return nlError("ifname");
  return msg;
}

Status parseWgGetDevice(nl_msg* msg, WgDeviceState& dev) {
  nlattr* attrs[WGDEVICE_A_MAX + 1] = {};
  if (int rc = genlmsg_parse(nlmsg_hdr(msg), 0, attrs, WGDEVICE_A_MAX, nullptr); rc < 0)
    return Error{std::string("WG_CMD_GET_DEVICE reply: ") + nl_geterror(rc), EPROTO};
  if (attrs[WGDEVICE_A_PUBLIC_KEY] && nla_len(attrs[WGDEVICE_A_PUBLIC_KEY]) == WG_KEY_LEN)
    dev.publicKey = keyFromBytes(
        std::string_view(static_cast<const char*>(nla_data(attrs[WGDEVICE_A_PUBLIC_KEY])), WG_KEY_LEN));
  if (attrs[WGDEVICE_A_LISTEN_PORT]) dev.listenPort = nla_get_u16(attrs[WGDEVICE_A_LISTEN_PORT]);
  if (!attrs[WGDEVICE_A_PEERS]) return {};
  nlattr* peer = nullptr;
  int rem = 0;
  nla_for_each_nested(peer, attrs[WGDEVICE_A_PEERS], rem) {
    nlattr* pa[WGPEER_A_MAX + 1] = {};
    if (nla_parse_nested(pa, WGPEER_A_MAX, peer, nullptr) < 0) return Error{"WG_CMD_GET_DEVICE: bad peer", EPROTO};
    if (!pa[WGPEER_A_PUBLIC_KEY] || nla_len(pa[WGPEER_A_PUBLIC_KEY]) != WG_KEY_LEN)
      return Error{"WG_CMD_GET_DEVICE: peer without a public key", EPROTO};
    WgKey key = keyFromBytes(std::string_view(static_cast<const char*>(nla_data(pa[WGPEER_A_PUBLIC_KEY])), WG_KEY_LEN));
    WgPeerState* p = nullptr;
    if (!dev.peers.empty() && dev.peers.back().publicKey == key) {
      p = &dev.peers.back();
    } else {
      dev.peers.push_back(WgPeerState{});
      p = &dev.peers.back();
      p->publicKey = key;
    }
    if (pa[WGPEER_A_ENDPOINT]) {
      auto len = nla_len(pa[WGPEER_A_ENDPOINT]);
      const auto* sa = static_cast<const sockaddr*>(nla_data(pa[WGPEER_A_ENDPOINT]));
      Endpoint ep;
      if (sa->sa_family == AF_INET && len >= static_cast<int>(sizeof(sockaddr_in))) {
        const auto* in = reinterpret_cast<const sockaddr_in*>(sa);
        ep.family = AF_INET;
        std::memcpy(ep.addr.data(), &in->sin_addr, 4);
        ep.port = ntohs(in->sin_port);
        p->endpoint = ep;
      } else if (sa->sa_family == AF_INET6 && len >= static_cast<int>(sizeof(sockaddr_in6))) {
        const auto* in6 = reinterpret_cast<const sockaddr_in6*>(sa);
        ep.family = AF_INET6;
        std::memcpy(ep.addr.data(), &in6->sin6_addr, 16);
        ep.port = ntohs(in6->sin6_port);
        p->endpoint = ep;
      }
    }
    if (pa[WGPEER_A_LAST_HANDSHAKE_TIME] &&
        nla_len(pa[WGPEER_A_LAST_HANDSHAKE_TIME]) >= static_cast<int>(2 * sizeof(std::int64_t))) {
      std::int64_t ts[2];
      std::memcpy(ts, nla_data(pa[WGPEER_A_LAST_HANDSHAKE_TIME]), sizeof ts);
      p->lastHandshakeMs = ts[0] * 1000 + ts[1] / 1000000;
    }
    if (pa[WGPEER_A_RX_BYTES]) p->rxBytes = nla_get_u64(pa[WGPEER_A_RX_BYTES]);
    if (pa[WGPEER_A_TX_BYTES]) p->txBytes = nla_get_u64(pa[WGPEER_A_TX_BYTES]);
    if (pa[WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL])
      p->keepaliveS = nla_get_u16(pa[WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL]);
    if (pa[WGPEER_A_ALLOWEDIPS]) {
      nlattr* ip = nullptr;
      int rem2 = 0;
      nla_for_each_nested(ip, pa[WGPEER_A_ALLOWEDIPS], rem2) {
        nlattr* ia[WGALLOWEDIP_A_MAX + 1] = {};
        if (nla_parse_nested(ia, WGALLOWEDIP_A_MAX, ip, nullptr) < 0)
          return Error{"WG_CMD_GET_DEVICE: bad allowed IP", EPROTO};
        if (!ia[WGALLOWEDIP_A_FAMILY] || !ia[WGALLOWEDIP_A_IPADDR] || !ia[WGALLOWEDIP_A_CIDR_MASK])
          return Error{"WG_CMD_GET_DEVICE: incomplete allowed IP", EPROTO};
        Cidr c;
        c.family = nla_get_u16(ia[WGALLOWEDIP_A_FAMILY]);
        int want = c.family == AF_INET ? 4 : 16;
        if ((c.family != AF_INET && c.family != AF_INET6) || nla_len(ia[WGALLOWEDIP_A_IPADDR]) != want)
          return Error{"WG_CMD_GET_DEVICE: bad allowed IP address", EPROTO};
        std::memcpy(c.addr.data(), nla_data(ia[WGALLOWEDIP_A_IPADDR]), static_cast<std::size_t>(want));
        c.bits = nla_get_u8(ia[WGALLOWEDIP_A_CIDR_MASK]);
        p->allowedIps.push_back(c);
      }
    }
  }
  return {};
}

}  // namespace outrider::netd
