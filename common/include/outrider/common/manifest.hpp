#pragma once
// The node manifest in TOML (what operators write for `outriderctl apply`) and its protobuf form
// (outrider.v1.NodeManifest). netd.toml's [[tunnel]] tables use the same schema as the manifest's.
// Errors name "SOURCE:LINE: key: message". See docs/manifest.md for the schema.
#include <string>
#include <string_view>
#include <vector>

#include "outrider/common/result.hpp"
#include "outrider/v1/manifest.pb.h"

namespace outrider {

/// Parse and check a manifest: structure, types, unknown keys, names, duplicates, bounds that need no
/// knowledge of the node (the node's daemons check the rest: images present, memory, architecture).
Result<outrider::v1::NodeManifest> parseManifest(std::string_view text, const std::string& source);

/// Only the [[tunnel]] tables of a TOML document (other top-level keys are ignored).
Result<std::vector<outrider::v1::TunnelSpec>> parseTunnels(std::string_view text, const std::string& source);

/// The same checks parseManifest makes, on a manifest that arrived as protobuf (the agent checks every
/// manifest again; the hub is not trusted to have used outriderctl).
Status validateManifest(const outrider::v1::NodeManifest& m);

}  // namespace outrider
