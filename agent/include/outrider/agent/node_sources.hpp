#pragma once
// Telemetry sources backed by the node's daemons and the agent itself: per-VM and per-container stats
// from vmm, per-hub tunnel stats from netd, and the agent's own queues and counters.
#include <functional>
#include <memory>

#include "outrider/agent/daemon_monitor.hpp"
#include "outrider/agent/telemetry_collectors.hpp"

namespace outrider::agent {

/// vm_list and ct_list with stats: measurement "vm" / "container", tag "name", fields cpu_time_ns,
/// memory_bytes, disk and network bytes / cpu_usage_ns, memory_bytes, pids, restarts, running.
std::shared_ptr<TelemetrySource> makeVmmSource(DaemonMonitor& daemons);
/// tunnel_status: measurement "tunnel_hub", tags "interface", "hub", fields rx_bytes, tx_bytes,
/// probe_rtt_ms, misses, healthy, active; measurement "tunnel", field failovers.
std::shared_ptr<TelemetrySource> makeNetdSource(DaemonMonitor& daemons);

/// The agent's own health, from a callback that fills samples (measurement "agent").
std::shared_ptr<TelemetrySource> makeAgentSource(std::function<std::vector<Sample>()> sample);

}  // namespace outrider::agent
