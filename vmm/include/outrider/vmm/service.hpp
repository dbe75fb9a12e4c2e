#pragma once
// outrider-vmm as a library: its defaults and what it adds to the shared local API, so main() stays thin
// and tests can link it.
#include <string_view>

#include "outrider/common/local_service.hpp"

namespace outrider::vmm {

inline constexpr std::string_view kDaemonName = "outrider-vmm";
inline constexpr std::string_view kDefaultConfig = "/etc/outrider/vmm.toml";
inline constexpr std::string_view kDefaultSocket = "/run/outrider/vmm.sock";

/// Name, default paths, and the setup that reads vmm's own config keys and registers its handlers.
LocalDaemonSpec daemonSpec();

/// The whole daemon: `outrider-vmm [--config PATH] [--version]`; returns the exit status.
int run(int argc, char** argv);

}  // namespace outrider::vmm
