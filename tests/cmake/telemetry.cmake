# Telemetry engine (agent module): unit tests link outrider_agent; the integration tests run a real
# TelemetryService on loopback sockets, and a child process for the kill -9 test.
foreach(t line sketch aggregator spool service collectors)
  outrider_test(test_telemetry_${t} SOURCES unit/test_telemetry_${t}.cpp LIBS outrider_agent LABELS unit telemetry)
endforeach()
outrider_test(test_telemetry_format SOURCES unit/test_telemetry_format.cpp LIBS outrider_ctl LABELS unit telemetry)

# Integration: real sockets on loopback, a real spool, and a child process killed with SIGKILL.
add_executable(test_telemetry_child integration/test_telemetry_child.cpp)
target_link_libraries(test_telemetry_child PRIVATE outrider_agent)
outrider_test(test_telemetry_ingest SOURCES integration/test_telemetry_ingest.cpp LIBS outrider_agent
  LABELS integration telemetry TIMEOUT 300)
add_dependencies(test_telemetry_ingest test_telemetry_child)
# Telemetry end to end through the real agent and a real broker.
outrider_test(test_telemetry_hub SOURCES integration/test_telemetry_hub.cpp LIBS outrider_proto
  LABELS integration telemetry TIMEOUT 180)
add_dependencies(test_telemetry_hub outrider-agent outrider-vmm outrider-netd outriderctl)
