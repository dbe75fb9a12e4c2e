# Zero-touch provisioning (agent/provision*, ctl/provision*, ctl/enroll*): the bundle, the enrollment
# decision and certificates without a broker; then the whole path with the real binaries, a real
# Mosquitto (mutual TLS plus the enrollment listener) and mtools.
outrider_test(test_provision_bundle SOURCES unit/test_provision_bundle.cpp LIBS outrider_agent outrider_ctl
  LABELS unit provision)
outrider_test(test_provision SOURCES integration/test_provision.cpp LIBS outrider_agent outrider_ctl
  LABELS integration provision TIMEOUT 300)
add_dependencies(test_provision outrider-agent outriderctl)

if(NOT CMAKE_CROSSCOMPILING)
# A short bounded libFuzzer run of the bundle decoder (built into build-fuzz/ by ./scripts/test).
add_test(NAME fuzz_bundle
  COMMAND ${CMAKE_COMMAND} -E env ASAN_OPTIONS=detect_leaks=1
          ${OUTRIDER_FUZZ_DIR}/fuzz_bundle -runs=50000 -max_len=4096 -seed=1 -timeout=10)
set_tests_properties(fuzz_bundle PROPERTIES LABELS "unit;provision;fuzz" TIMEOUT 300)
endif()
