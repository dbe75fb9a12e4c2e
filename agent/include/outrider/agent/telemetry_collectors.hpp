#pragma once
// Where samples come from besides the line-protocol ingest: a source is asked once per collection
// interval and answers asynchronously. The host collector reads /proc and /sys (roots injectable for
// tests); the agent implements sources for VMs and containers (from vmm), tunnels (from netd) and its
// own health.
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "outrider/agent/telemetry_aggregator.hpp"

namespace outrider::agent {

class TelemetrySource {
 public:
  using Done = std::function<void(bool ok, std::vector<Sample> samples)>;
  virtual ~TelemetrySource() = default;
  /// A short name for logs ("host", "vmm", "netd", "agent").
  virtual std::string name() const = 0;
  /// Answer by calling `done` exactly once, now or later on the same io_context; ok=false when the
  /// source failed (counted as a source error). Not asked again while an answer is outstanding.
  virtual void collect(Done done) = 0;
};

struct HostCollectorOptions {
  std::filesystem::path procRoot = "/proc";
  std::filesystem::path sysRoot = "/sys";
  std::vector<std::string> mounts = {"/"};  // statvfs of each (real paths)
};

/// CPU (percent of time per state, from /proc/stat deltas), memory (/proc/meminfo), load
/// (/proc/loadavg), disks (/proc/diskstats rates and statvfs of the mounts), network (/proc/net/dev
/// rates and error counts), temperatures (/sys/class/thermal, /sys/class/hwmon). Rates and CPU need
/// two readings, so they appear from the second collection on. Missing files are skipped.
class HostCollector final : public TelemetrySource {
 public:
  explicit HostCollector(HostCollectorOptions opt);
  std::string name() const override { return "host"; }
  void collect(Done done) override;
  /// One reading at steady time `nowMs` (rates are per second between readings).
  std::vector<Sample> collectAt(std::int64_t nowMs);

 private:
  void cpu(std::vector<Sample>& out);
  void memory(std::vector<Sample>& out);
  void load(std::vector<Sample>& out);
  void disks(std::vector<Sample>& out, double dt);
  void mounts(std::vector<Sample>& out);
  void network(std::vector<Sample>& out, double dt);
  void temperatures(std::vector<Sample>& out);

  HostCollectorOptions opt_;
  std::int64_t lastMs_ = -1;
  std::map<std::string, std::vector<std::uint64_t>> prevCpu_, prevDisk_, prevNet_;
};

}  // namespace outrider::agent
