// Placeholder until netd's checks land: only the interface name.
#include "outrider/common/tunnel_spec.hpp"

namespace outrider {

Status validateTunnelSpec(const outrider::v1::TunnelSpec& spec) {
  if (spec.interface().empty() || spec.interface().size() > 15)
    return Error{"tunnel '" + spec.interface() + "': interface: 1-15 characters"};
  return {};
}

}  // namespace outrider
