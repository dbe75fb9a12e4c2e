// Placeholder: the TOML schema lands next.
#include "outrider/common/manifest.hpp"

namespace outrider {

Result<outrider::v1::NodeManifest> parseManifest(std::string_view, const std::string& source) {
  return Error{source + ": manifest parsing is not built yet"};
}
Result<std::vector<outrider::v1::TunnelSpec>> parseTunnels(std::string_view, const std::string& source) {
  return std::vector<outrider::v1::TunnelSpec>{};
}
Status validateManifest(const outrider::v1::NodeManifest&) { return {}; }

}  // namespace outrider
