#pragma once
// Names that end up in paths, libvirt domain names, cgroup paths and interface names.
#include <string_view>

namespace outrider {

/// VM, container, image and hub names: 1..64 chars of [A-Za-z0-9_.-], not starting with '.' or '-'
/// (so never "", ".", "..", a path with '/', or an option-looking word).
bool validWorkloadName(std::string_view name);

}  // namespace outrider
