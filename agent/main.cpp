// outrider-agent: the hub session, command checking and dispatch, and (later) desired state, telemetry
// and provisioning. Runs unprivileged.
#include "outrider/agent/main.hpp"

int main(int argc, char** argv) { return outrider::agent::runMain(argc, argv); }
