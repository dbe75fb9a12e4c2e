#pragma once
// sd_notify without libsystemd: one datagram to $NOTIFY_SOCKET. A no-op when not run by systemd.
#include <chrono>
#include <optional>
#include <string_view>

namespace outrider::notify {

/// Send e.g. "READY=1", "STOPPING=1", "WATCHDOG=1", "STATUS=...". Returns false if not sent.
bool send(std::string_view state);
/// The watchdog interval systemd asked for ($WATCHDOG_USEC, honouring $WATCHDOG_PID), if any.
std::optional<std::chrono::microseconds> watchdogInterval();

}  // namespace outrider::notify
