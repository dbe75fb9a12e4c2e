#pragma once
// outriderctl as a library: main() is a thin wrapper around runCtl, and tests call it directly.
#include <ostream>
#include <span>
#include <string>

#include "outrider/ctl/options.hpp"

namespace outrider::ctl {

/// Exit statuses.
inline constexpr int kExitOk = 0;
inline constexpr int kExitFailure = 1;  // operational failure, timeout, rejection
inline constexpr int kExitUsage = 2;    // bad command line or configuration

/// The text printed by --help and `help`.
std::string usageText();

/// Run one invocation (`args` is argv without argv[0]). Results go to `out`; on failure exactly one line
/// "outriderctl: <reason>" goes to `err`. Returns the exit status. Needs a live MosquittoLib for the
/// commands that talk to the broker.
int runCtl(std::span<const std::string> args, std::ostream& out, std::ostream& err,
           const EnvLookup& env = processEnv());

}  // namespace outrider::ctl
