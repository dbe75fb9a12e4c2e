// The only file that talks rtnetlink (libnl-route): links, addresses, routes.
#include <linux/if.h>
#include <linux/rtnetlink.h>
#include <netlink/netlink.h>
#include <netlink/route/addr.h>
#include <netlink/route/link.h>
#include <netlink/route/route.h>
#include <netlink/socket.h>

#include <cerrno>
#include <cstring>

#include "outrider/common/c_handle.hpp"
#include "outrider/netd/backend.hpp"

namespace outrider::netd {

namespace {

using NlSock = CHandle<nl_sock, nl_socket_free>;
using NlCache = CHandle<nl_cache, nl_cache_free>;
using RtnlLink = CHandle<rtnl_link, rtnl_link_put>;
using RtnlAddr = CHandle<rtnl_addr, rtnl_addr_put>;
using RtnlRoute = CHandle<rtnl_route, rtnl_route_put>;
using NlAddr = CHandle<nl_addr, nl_addr_put>;

int errnoOf(int nlerr) {
  switch (nlerr < 0 ? -nlerr : nlerr) {
    case NLE_OPNOTSUPP: return EOPNOTSUPP;
    case NLE_EXIST: return EEXIST;
    case NLE_NODEV:
    case NLE_OBJ_NOTFOUND: return ENODEV;
    case NLE_PERM: return EPERM;
    default: return EIO;
  }
}

Error nlErr(const std::string& what, int rc) { return Error{what + ": " + nl_geterror(rc), errnoOf(rc)}; }

NlAddr toNlAddr(const Cidr& c) {
  NlAddr a(nl_addr_build(c.family, c.addr.data(), c.family == AF_INET ? 4 : 16));
  if (a) nl_addr_set_prefixlen(a.get(), c.bits);
  return a;
}

Cidr fromNlAddr(nl_addr* a) {
  Cidr c;
  c.family = nl_addr_get_family(a);
  auto len = std::min<unsigned>(nl_addr_get_len(a), 16);
  std::memcpy(c.addr.data(), nl_addr_get_binary_addr(a), len);
  c.bits = static_cast<std::uint8_t>(nl_addr_get_prefixlen(a));
  return c;
}

class Rtnl final : public LinkConfigurator {
 public:
  Result<bool> linkExists(const std::string& ifname) override {
    auto idx = ifindex(ifname);
    if (idx.ok()) return true;
    if (idx.error().code == ENODEV) return false;
    return idx.error();
  }

  Status createLink(const std::string& ifname, const std::string& kind) override {
    auto s = sock();
    if (!s) return s.error();
    RtnlLink link(rtnl_link_alloc());
    rtnl_link_set_name(link.get(), ifname.c_str());
    if (int rc = rtnl_link_set_type(link.get(), kind.c_str()); rc < 0) return nlErr("link kind " + kind, rc);
    if (int rc = rtnl_link_add(*s, link.get(), NLM_F_CREATE | NLM_F_EXCL); rc < 0)
      return nlErr("create link " + ifname + " of kind " + kind, rc);
    return {};
  }

  Status deleteLink(const std::string& ifname) override {
    auto s = sock();
    if (!s) return s.error();
    RtnlLink link(rtnl_link_alloc());
    rtnl_link_set_name(link.get(), ifname.c_str());
    if (int rc = rtnl_link_delete(*s, link.get()); rc < 0 && rc != -NLE_NODEV && rc != -NLE_OBJ_NOTFOUND)
      return nlErr("delete link " + ifname, rc);
    return {};
  }

  Status setUp(const std::string& ifname) override {
    auto s = sock();
    if (!s) return s.error();
    rtnl_link* raw = nullptr;
    if (int rc = rtnl_link_get_kernel(*s, 0, ifname.c_str(), &raw); rc < 0) return nlErr("link " + ifname, rc);
    RtnlLink link(raw);
    if (rtnl_link_get_flags(link.get()) & IFF_UP) return {};
    RtnlLink change(rtnl_link_alloc());
    rtnl_link_set_flags(change.get(), IFF_UP);
    if (int rc = rtnl_link_change(*s, link.get(), change.get(), 0); rc < 0) return nlErr("set " + ifname + " up", rc);
    return {};
  }

  Result<std::vector<Cidr>> addresses(const std::string& ifname) override {
    auto idx = ifindex(ifname);
    if (!idx) return idx.error();
    auto s = sock();
    if (!s) return s.error();
    nl_cache* raw = nullptr;
    if (int rc = rtnl_addr_alloc_cache(*s, &raw); rc < 0) return nlErr("list addresses", rc);
    NlCache cache(raw);
    std::vector<Cidr> out;
    for (nl_object* o = nl_cache_get_first(cache.get()); o; o = nl_cache_get_next(o)) {
      auto* a = reinterpret_cast<rtnl_addr*>(o);
      if (rtnl_addr_get_ifindex(a) != *idx) continue;
      nl_addr* local = rtnl_addr_get_local(a);
      if (!local) continue;
      Cidr c = fromNlAddr(local);
      c.bits = static_cast<std::uint8_t>(rtnl_addr_get_prefixlen(a));
      if (c.family == AF_INET6 && c.addr[0] == 0xfe && (c.addr[1] & 0xc0) == 0x80) continue;
      out.push_back(c);
    }
    return out;
  }

  Status addAddress(const std::string& ifname, const Cidr& c) override { return addr(ifname, c, true); }
  Status deleteAddress(const std::string& ifname, const Cidr& c) override { return addr(ifname, c, false); }

  Result<std::vector<Cidr>> routes(const std::string& ifname) override {
    auto idx = ifindex(ifname);
    if (!idx) return idx.error();
    auto s = sock();
    if (!s) return s.error();
    nl_cache* raw = nullptr;
    std::vector<Cidr> out;
    for (int family : {AF_INET, AF_INET6}) {
      if (int rc = rtnl_route_alloc_cache(*s, family, 0, &raw); rc < 0) return nlErr("list routes", rc);
      NlCache cache(raw);
      for (nl_object* o = nl_cache_get_first(cache.get()); o; o = nl_cache_get_next(o)) {
        auto* r = reinterpret_cast<rtnl_route*>(o);
        if (rtnl_route_get_protocol(r) != kRouteProtocol || rtnl_route_get_nnexthops(r) < 1) continue;
        if (rtnl_route_nh_get_ifindex(rtnl_route_nexthop_n(r, 0)) != *idx) continue;
        out.push_back(fromNlAddr(rtnl_route_get_dst(r)));
      }
    }
    return out;
  }

  Status replaceRoute(const std::string& ifname, const Cidr& dst) override { return route(ifname, dst, true); }
  Status deleteRoute(const std::string& ifname, const Cidr& dst) override { return route(ifname, dst, false); }

 private:
  Result<nl_sock*> sock() {
    if (sock_) return sock_.get();
    NlSock s(nl_socket_alloc());
    if (!s) return Error{"nl_socket_alloc", ENOMEM};
    if (int rc = nl_connect(s.get(), NETLINK_ROUTE); rc < 0) return nlErr("connect rtnetlink", rc);
    sock_ = std::move(s);
    return sock_.get();
  }

  Result<int> ifindex(const std::string& ifname) {
    auto s = sock();
    if (!s) return s.error();
    rtnl_link* raw = nullptr;
    int rc = rtnl_link_get_kernel(*s, 0, ifname.c_str(), &raw);
    if (rc < 0) return nlErr("link " + ifname, rc);
    RtnlLink link(raw);
    return rtnl_link_get_ifindex(link.get());
  }

  Status addr(const std::string& ifname, const Cidr& c, bool add) {
    auto idx = ifindex(ifname);
    if (!idx) return idx.error();
    auto s = sock();
    if (!s) return s.error();
    RtnlAddr a(rtnl_addr_alloc());
    rtnl_addr_set_ifindex(a.get(), *idx);
    NlAddr local = toNlAddr(c);
    if (int rc = rtnl_addr_set_local(a.get(), local.get()); rc < 0) return nlErr("address " + c.str(), rc);
    rtnl_addr_set_prefixlen(a.get(), c.bits);
    int rc = add ? rtnl_addr_add(*s, a.get(), NLM_F_REPLACE) : rtnl_addr_delete(*s, a.get(), 0);
    if (rc < 0 && !(add && rc == -NLE_EXIST) && !(!add && (rc == -NLE_NOADDR || rc == -NLE_OBJ_NOTFOUND)))
      return nlErr(std::string(add ? "add" : "delete") + " address " + c.str() + " on " + ifname, rc);
    return {};
  }

  Status route(const std::string& ifname, const Cidr& dst, bool add) {
    auto idx = ifindex(ifname);
    if (!idx) return idx.error();
    auto s = sock();
    if (!s) return s.error();
    RtnlRoute r(rtnl_route_alloc());
    rtnl_route_set_family(r.get(), static_cast<std::uint8_t>(dst.family));
    rtnl_route_set_table(r.get(), RT_TABLE_MAIN);
    rtnl_route_set_protocol(r.get(), kRouteProtocol);
    rtnl_route_set_scope(r.get(), RT_SCOPE_LINK);
    rtnl_route_set_type(r.get(), RTN_UNICAST);
    NlAddr d = toNlAddr(dst);
    if (int rc = rtnl_route_set_dst(r.get(), d.get()); rc < 0) return nlErr("route " + dst.str(), rc);
    rtnl_nexthop* nh = rtnl_route_nh_alloc();
    rtnl_route_nh_set_ifindex(nh, *idx);
    rtnl_route_add_nexthop(r.get(), nh);  // owned by the route from here
    int rc = add ? rtnl_route_add(*s, r.get(), NLM_F_CREATE | NLM_F_REPLACE) : rtnl_route_delete(*s, r.get(), 0);
    if (rc < 0 && !(!add && rc == -NLE_OBJ_NOTFOUND))
      return nlErr(std::string(add ? "add" : "delete") + " route " + dst.str() + " dev " + ifname, rc);
    return {};
  }

  NlSock sock_;
};

}  // namespace

std::unique_ptr<LinkConfigurator> makeRtnlConfigurator() { return std::make_unique<Rtnl>(); }

}  // namespace outrider::netd
