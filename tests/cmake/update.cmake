# Updates with rollback (docs/updates.md). Unit: the resumable transfer, the state files, the health
# verdict and the agent's update steps against fakes; and the boot slots on a node (docs/hooks.md): the boot
# watcher over the real `none` backend, the agent's verdict against fakes. One executable: they share the
# agent library and the health rules.
outrider_test(test_update SOURCES unit/test_update.cpp unit/test_boot.cpp LIBS outrider_agent LABELS unit hooks)
# End to end with the package installed for real: disk short, a resumed transfer that commits, a broken
# package rolled back. It shares dpkg's outrider package with the install test (a resource lock), and runs
# beside the other tests otherwise: its daemons use only its own directory.
if(NOT CMAKE_CROSSCOMPILING)
  outrider_test(test_update_install SOURCES integration/test_update_install.cpp LABELS integration hooks TIMEOUT 900)
  set_tests_properties(test_update_install PROPERTIES RESOURCE_LOCK outrider-package)
  add_dependencies(test_update_install outrider-agent outriderctl outrider-vmm outrider-netd)
endif()
