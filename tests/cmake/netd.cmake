# netd: tunnel spec checks, WireGuard backends, failover, and the daemon against wireguard-go in network
# namespaces. (test_netd_daemon, the shared local-API checks, is registered in ipc.cmake.)
outrider_test(test_tunnel_spec SOURCES unit/test_tunnel_spec.cpp LIBS outrider_common LABELS unit netd)
outrider_test(test_netd_codec SOURCES unit/test_netd_codec.cpp LIBS outrider_netd LABELS unit netd)
outrider_test(test_netd_failover SOURCES unit/test_netd_failover.cpp LIBS outrider_netd LABELS unit netd)
outrider_test(test_netd_key SOURCES unit/test_netd_key.cpp LIBS outrider_netd LABELS unit netd)

outrider_test(test_netd_tunnels SOURCES integration/test_netd_tunnels.cpp LIBS outrider_netd
              LABELS integration netd TIMEOUT 600)
add_dependencies(test_netd_tunnels outrider-netd)
