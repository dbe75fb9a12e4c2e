# VMs in outrider-vmm (libvirt): specs and XML, the manager against a fake and libvirt's test driver,
# and the real daemon booting a tiny guest under libvirtd + QEMU (TCG).
outrider_test(test_vm_spec SOURCES unit/test_vm_spec.cpp LIBS outrider_vmm LABELS unit vmm TIMEOUT 60)
outrider_test(test_vm_manager SOURCES unit/test_vm_manager.cpp LIBS outrider_vmm LABELS unit vmm TIMEOUT 60)
outrider_test(test_vm_daemon SOURCES integration/test_vm_daemon.cpp LIBS outrider_vmm LABELS integration vmm TIMEOUT 300)
add_dependencies(test_vm_daemon outrider-vmm)
