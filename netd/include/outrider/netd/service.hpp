#pragma once
// outrider-netd as a library: its defaults and what it adds to the shared local API, so main() stays thin
// and tests can link it.
#include <string_view>

#include "outrider/common/local_service.hpp"

namespace outrider::netd {

inline constexpr std::string_view kDaemonName = "outrider-netd";
inline constexpr std::string_view kDefaultConfig = "/etc/outrider/netd.toml";
inline constexpr std::string_view kDefaultSocket = "/run/outrider/netd.sock";

/// Name, default paths, and the setup that reads netd's own config keys and registers its handlers.
LocalDaemonSpec daemonSpec();

/// The whole daemon: `outrider-netd [--config PATH] [--version]`; returns the exit status.
int run(int argc, char** argv);

}  // namespace outrider::netd
