#pragma once
// Kernel WireGuard over generic netlink (family "wireguard", linux/wireguard.h): the message encoding
// and decoding, kept apart from the socket so it can be tested on a kernel without WireGuard.
#include <memory>
#include <string>

#include "outrider/common/result.hpp"
#include "outrider/netd/wg_types.hpp"

struct nl_msg;

namespace outrider::netd {

struct NlMsgFree {
  void operator()(nl_msg* m) const noexcept;
};
using NlMsgPtr = std::unique_ptr<nl_msg, NlMsgFree>;

/// WG_CMD_SET_DEVICE for `ifname` with generic netlink family id `family`.
Result<NlMsgPtr> buildWgSetDevice(int family, const std::string& ifname, const WgDeviceConfig& cfg);
/// WG_CMD_GET_DEVICE (a dump request) for `ifname`.
Result<NlMsgPtr> buildWgGetDevice(int family, const std::string& ifname);
/// Merge one message of a WG_CMD_GET_DEVICE reply into `dev`. The kernel splits large devices over
/// several messages, repeating a peer's public key when its allowed IPs continue; those are coalesced.
Status parseWgGetDevice(nl_msg* msg, WgDeviceState& dev);

}  // namespace outrider::netd
