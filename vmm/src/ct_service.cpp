// Placeholder until the crun backend lands.
#include "outrider/vmm/component.hpp"

namespace outrider::vmm {
namespace {
struct NoContainers : Component {
  Health health() const override { return {true, "no containers managed yet"}; }
};
}  // namespace
std::shared_ptr<Component> setupContainers(ConfigReader&, LocalService&) { return std::make_shared<NoContainers>(); }
}  // namespace outrider::vmm
