# A VM end to end through the hub: outriderctl, Mosquitto (mutual TLS + ACL), outrider-agent,
# outrider-vmm and outrider-netd, libvirtd + QEMU (TCG) booting the tiny guest.
outrider_test(test_workloads_e2e SOURCES integration/test_workloads_e2e.cpp LIBS outrider_proto
  LABELS integration vmm TIMEOUT 300)
# The binaries it runs must be built first.
add_dependencies(test_workloads_e2e outrider-agent outrider-vmm outrider-netd outriderctl)
