#pragma once
// Hook results on their way to the hub and the log: the HookRunResult a `hook run` reply carries, and
// the one-line detail of the "hook.result" NodeEvent published per hook.
#include <cstddef>
#include <string>

#include "outrider/hooks/runner.hpp"
#include "outrider/v1/hub.pb.h"

namespace outrider::agent {

/// The run as the reply carries it. Outputs are kept up to `outputBudget` bytes in total (the later ones
/// are cut and marked truncated), so a reply stays a reasonable MQTT message; names that are not
/// printable ASCII are shown with '?' (protobuf strings must be UTF-8).
outrider::v1::HookRunResult toProto(const hooks::RunResult& run, std::size_t outputBudget = 256 * 1024);

/// "exit 0 in 12 ms", "exit 3 in 40 ms: disk too full" (the last line of output, if any).
std::string hookEventDetail(const hooks::HookResult& h);

/// Log each hook's status and its output lines (at most `maxLines` per hook), and the skipped entries.
void logHookRun(const hooks::RunResult& run, std::size_t maxLines = 200);

}  // namespace outrider::agent
