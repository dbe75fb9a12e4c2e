#pragma once
namespace outrider::agent {
/// `outrider-agent [--config FILE] [--version]`; returns the exit status.
int runMain(int argc, char** argv);
}  // namespace outrider::agent
