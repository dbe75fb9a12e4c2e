// outrider-vmm: KVM guests and OCI containers for the agent, served on a local unix socket.
#include "outrider/vmm/service.hpp"

int main(int argc, char** argv) { return outrider::vmm::run(argc, argv); }
