// outrider-netd: WireGuard tunnels and hub failover for the agent, served on a local unix socket.
#include "outrider/netd/service.hpp"

int main(int argc, char** argv) { return outrider::netd::run(argc, argv); }
