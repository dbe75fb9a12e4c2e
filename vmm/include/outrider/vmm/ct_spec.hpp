#pragma once
// Container specs: the [containers] settings, validation of a ContainerSpec with clear messages, the
// OCI runtime config (config.json) made from it, and the restart backoff schedule.
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "outrider/common/result.hpp"
#include "outrider/v1/workloads.pb.h"
#include "outrider/vmm/restart_backoff.hpp"

namespace outrider::vmm {

/// The [containers] section of vmm.toml.
struct CtSettings {
  std::string crun = "crun";                                           // containers.crun
  std::filesystem::path shim;                                          // containers.shim; "" = next to vmm
  std::filesystem::path runtimeRoot = "/run/outrider/crun";            // containers.runtime_root
  std::filesystem::path imagesDir = "/var/lib/outrider/images";        // containers.images_dir
  std::filesystem::path stateDir = "/var/lib/outrider/containers";     // containers.state_dir
  std::string cgroupParent = "outrider";                               // containers.cgroup_parent
  std::filesystem::path cgroupRoot = "/sys/fs/cgroup";                 // containers.cgroup_root
  std::uint64_t logMaxBytes = 1u << 20;                                // containers.log_max_bytes
  std::uint32_t stopTimeoutS = 10;                                     // containers.stop_timeout_s
  std::chrono::milliseconds reconcileInterval{5000};                   // containers.reconcile_interval_ms
};

inline constexpr std::uint64_t kMinMemoryBytes = 4u << 20;

/// Every capability name Linux knows (CAP_*).
const std::vector<std::string>& knownCapabilities();

/// Check one spec; the message names the container and the field. `hostCpus` bounds cpu_millis.
Status validateSpec(const v1::ContainerSpec& spec, unsigned hostCpus);

/// Restart policy as the wire names it: "never", "on-failure", "always".
std::string restartName(v1::ContainerSpec::Restart r);

/// What changes the running container: everything but the desired state (`stopped`). Two specs with the
/// same key need no recreate.
std::string specKey(const v1::ContainerSpec& spec);

/// Inputs for config.json beyond the spec.
struct BundleOptions {
  std::string rootfsPath;          // absolute, or relative to the bundle
  std::vector<std::string> defaultArgs{"sh"};  // when the spec has no args
  std::string cgroupsPath;         // e.g. "/outrider/web"
  bool memorySwapLimit = false;    // set memory.swap = memory (no swap beyond the limit) where supported
};

/// The OCI runtime config for `spec`: own pid/mount/ipc/uts/net namespaces, cgroup limits, only the
/// listed capabilities, noNewPrivileges, minimal /dev and /proc, masked and read-only paths.
std::string renderConfigJson(const v1::ContainerSpec& spec, const BundleOptions& opts);

/// Whether a container that ended this way restarts under `policy`.
bool shouldRestart(v1::ContainerSpec::Restart policy, bool exitedCleanly);

}  // namespace outrider::vmm
