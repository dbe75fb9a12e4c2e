#pragma once
// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), as the command journal, the workload state
// files and the telemetry spool store it: hardware-accelerated where the CPU has SSE4.2.
#include <cstddef>
#include <cstdint>
#include <string_view>

namespace outrider {

/// Continue a CRC-32C: `crc` is the value so far (0 to start).
std::uint32_t crc32c(std::uint32_t crc, const void* data, std::size_t n);
inline std::uint32_t crc32c(std::string_view data) { return crc32c(0, data.data(), data.size()); }

}  // namespace outrider
