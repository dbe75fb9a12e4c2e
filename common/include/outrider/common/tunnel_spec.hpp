#pragma once
// Checks of a TunnelSpec that need no knowledge of the host: interface name length and characters,
// addresses and allowed IPs as CIDRs, overlapping allowed IPs between hubs, duplicate hub names or keys,
// keys that are not base64 of 32 bytes, endpoints that are not host:port, tiers, probe addresses.
// Used by the agent (manifest), outriderctl (before sending) and netd (again, before applying).
#include "outrider/common/result.hpp"
#include "outrider/v1/tunnel.pb.h"

namespace outrider {

/// Ok, or an Error whose message names the tunnel, hub and field, e.g.
/// "tunnel 'wg-hub': hub 'eu1': public_key: not base64 of 32 bytes".
Status validateTunnelSpec(const outrider::v1::TunnelSpec& spec);

}  // namespace outrider
