#pragma once
// Which accelerator new guests get. `vms.accel = auto` picks KVM only when a probe guest really runs
// under it: /dev/kvm can exist and still be unable to run a stock kernel (a nested or paravirtual KVM
// that emulates instructions one by one). The probe creates a VM through /dev/kvm in a child process,
// runs a real-mode loop of a few million instructions that must end on HLT, and gives up after a
// bound; the verdict is cached in the state dir per kernel release.
#include <chrono>
#include <filesystem>
#include <string>

namespace outrider::vmm {

struct AccelChoice {
  std::string accel;   // "kvm" or "tcg"
  std::string why;     // for the log and health
};

/// Run the KVM probe now (no cache). True if the probe guest reached HLT in time.
bool probeKvm(const std::string& device, std::chrono::milliseconds bound, std::string& why);

/// `setting` is "auto", "kvm" or "tcg". For auto, a cached verdict in `cacheFile` (same kernel
/// release) is reused; otherwise the probe runs and the verdict is written there.
AccelChoice chooseAccel(const std::string& setting, const std::filesystem::path& cacheFile,
                        const std::string& device = "/dev/kvm");

}  // namespace outrider::vmm
