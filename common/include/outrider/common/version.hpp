#pragma once
#include <string_view>

namespace outrider {
/// The project version (from CMake), e.g. "0.1.0".
std::string_view version();
}  // namespace outrider
