# outriderctl (module ctl): unit tests link outrider_ctl; integration tests run the real binary against a
# real Mosquitto started by the test.
outrider_test(test_ctl_options SOURCES unit/test_ctl_options.cpp LIBS outrider_ctl LABELS unit hub)
outrider_test(test_ctl_envelope SOURCES unit/test_ctl_envelope.cpp LIBS outrider_ctl LABELS unit hub)
outrider_test(test_ctl_format SOURCES unit/test_ctl_format.cpp LIBS outrider_ctl LABELS unit hub)
outrider_test(test_ctl_hub SOURCES integration/test_ctl_hub.cpp LIBS outrider_ctl LABELS integration hub TIMEOUT 180)
# The integration test runs the binary, so build it first.
add_dependencies(test_ctl_hub outriderctl)
outrider_test(test_ctl_workload_format SOURCES unit/test_ctl_workload_format.cpp LIBS outrider_ctl LABELS unit hub)
outrider_test(test_ctl_usage SOURCES unit/test_ctl_usage.cpp LIBS outrider_ctl LABELS unit hub)
