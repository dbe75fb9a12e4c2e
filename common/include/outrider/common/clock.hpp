#pragma once
// Wall-clock time as an interface, so that expiry and skew checks can be tested with a fixed clock.
#include <chrono>
#include <cstdint>

namespace outrider {

class Clock {
 public:
  virtual ~Clock() = default;
  /// Unix time in milliseconds.
  virtual std::int64_t nowMs() const = 0;
};

class SystemClock final : public Clock {
 public:
  std::int64_t nowMs() const override {
    return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
        .count();
  }
};

}  // namespace outrider
