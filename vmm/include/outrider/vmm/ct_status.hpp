#pragma once
// The supervisor's status file (bundle/status), written atomically by outrider-ctshim at each step and
// read by outrider-vmm, also after vmm restarts: how vmm learns a container's pid and exit status
// without being its parent.
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace outrider::vmm {

struct ShimStatus {
  std::string state;       // "starting", "running", "exited", "failed"
  int shimPid = 0;
  int pid = 0;             // the container's init, once running
  int exitCode = 0;        // valid when state == "exited"
  int signal = 0;          // killed by this signal, else 0
  std::int64_t startedMs = 0;
  std::int64_t finishedMs = 0;
  std::string bootId;      // the boot the supervisor ran in; another boot means it is gone
  std::string error;       // for "failed": why the runtime could not start it
};

std::string formatShimStatus(const ShimStatus& s);
/// nullopt if the text is not a status file (missing state line).
std::optional<ShimStatus> parseShimStatus(std::string_view text);

/// This boot's id (/proc/sys/kernel/random/boot_id), "" if unreadable.
std::string currentBootId();

}  // namespace outrider::vmm
