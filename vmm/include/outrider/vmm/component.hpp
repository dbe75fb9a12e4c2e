#pragma once
// outrider-vmm is two components on one loop and one local socket: VMs (libvirt) and containers
// (crun). Each reads its own config section, registers its LocalRequest handlers on the service, and
// reports its part of the daemon's health. Each persists its own desired state and reconciles on its
// own; service.cpp only wires them together.
#include <memory>

#include "outrider/common/config.hpp"
#include "outrider/common/local_service.hpp"

namespace outrider::vmm {

class Component {
 public:
  virtual ~Component() = default;
  /// Short health line for HealthReply, e.g. "libvirt connected, 2 VMs running (tcg)".
  virtual Health health() const = 0;
};

/// [vms] section; handles vm_apply, vm_list, vm_action, vm_console (vm_service.cpp).
std::shared_ptr<Component> setupVms(ConfigReader& cfg, LocalService& service);
/// [containers] section; handles ct_apply, ct_list, ct_action, ct_logs, image_import (ct_service.cpp).
std::shared_ptr<Component> setupContainers(ConfigReader& cfg, LocalService& service);

}  // namespace outrider::vmm
