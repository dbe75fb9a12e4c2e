// Placeholder until the libvirt backend lands.
#include "outrider/vmm/component.hpp"

namespace outrider::vmm {
namespace {
struct NoVms : Component {
  Health health() const override { return {true, "no VMs managed yet"}; }
};
}  // namespace
std::shared_ptr<Component> setupVms(ConfigReader&, LocalService&) { return std::make_shared<NoVms>(); }
}  // namespace outrider::vmm
