#pragma once
// The restart backoff that containers and VMs share: a workload that ends soon after each start is
// started again after a growing delay, not in a tight loop.
#include <algorithm>
#include <chrono>

namespace outrider::vmm {

/// Delay before restart number `consecutive` (0-based count of restarts without a long run in
/// between): 1 s doubling to a 60 s cap.
inline std::chrono::seconds restartDelay(unsigned consecutive) {
  if (consecutive >= 6) return std::chrono::seconds(60);
  return std::chrono::seconds(std::min<long>(60, 1L << consecutive));
}
/// A run at least this long resets the backoff.
inline constexpr std::chrono::seconds kBackoffReset{60};

}  // namespace outrider::vmm
