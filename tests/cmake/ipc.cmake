# Local IPC (common/ipc, common/local_service) and the vmm and netd daemons serving it.
outrider_test(test_ipc_framing SOURCES unit/test_ipc_framing.cpp LIBS outrider_common LABELS unit hub)
outrider_test(test_ipc_server SOURCES unit/test_ipc_server.cpp LIBS outrider_common LABELS unit hub TIMEOUT 120)
outrider_test(test_ipc_local_service SOURCES unit/test_ipc_local_service.cpp LIBS outrider_common LABELS unit hub)

# The integration tests start the built daemons, so they depend on them being built.
outrider_test(test_vmm_daemon SOURCES integration/test_vmm_daemon.cpp LIBS outrider_vmm LABELS integration vmm TIMEOUT 120)
add_dependencies(test_vmm_daemon outrider-vmm)
outrider_test(test_netd_daemon SOURCES integration/test_netd_daemon.cpp LIBS outrider_netd LABELS integration netd TIMEOUT 120)
add_dependencies(test_netd_daemon outrider-netd)
outrider_test(test_daemon_notify SOURCES integration/test_daemon_notify.cpp LABELS integration vmm)
add_dependencies(test_daemon_notify outrider-vmm)
