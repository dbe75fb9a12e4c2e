# Containers in outrider-vmm (crun backend, images, cgroups, reconcile).
outrider_test(test_ct_units SOURCES unit/test_ct_spec.cpp unit/test_ct_image.cpp unit/test_ct_cgroup.cpp
              unit/test_ct_log.cpp unit/test_ct_reconcile.cpp
              LIBS outrider_vmm LABELS unit vmm TIMEOUT 120)
outrider_test(test_ct_daemon SOURCES integration/test_ct_daemon.cpp LIBS outrider_vmm LABELS integration vmm TIMEOUT 240)
add_dependencies(test_ct_daemon outrider-vmm outrider-ctshim)
