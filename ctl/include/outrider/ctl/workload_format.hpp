#pragma once
// Tables and JSON for VM, container, tunnel and apply results. Pure functions, tested without a broker.
#include <string>

#include "outrider/v1/hub.pb.h"

namespace outrider::ctl {

/// "512.0 KiB", "3.2 MiB", "17 B".
std::string formatBytes(std::uint64_t bytes);

/// NAME, STATE, ACCEL, VCPUS, MEMORY, CPU TIME, SINCE; then errors; "no VMs" when empty.
std::string formatVmTable(const v1::VmList& list, std::int64_t nowMs);
std::string vmListJson(const v1::VmList& list);
std::string vmJson(const v1::VmInfo& vm);

/// NAME, STATE, IMAGE, PID, EXIT, RESTARTS, MEMORY, SINCE; then errors; "no containers" when empty.
std::string formatContainerTable(const v1::ContainerList& list, std::int64_t nowMs);
std::string containerListJson(const v1::ContainerList& list);
std::string containerJson(const v1::ContainerInfo& c);

/// Per tunnel: interface, backend, key, active hub, failovers; then a hub table.
std::string formatTunnels(const v1::TunnelStatusList& list, std::int64_t nowMs);
std::string tunnelsJson(const v1::TunnelStatusList& list);

/// KIND, NAME, RESULT, DETAIL.
std::string formatApplyResult(const v1::ApplyResult& r);
std::string applyResultJson(const v1::ApplyResult& r);

}  // namespace outrider::ctl
