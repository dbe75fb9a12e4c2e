# Short, bounded libFuzzer runs of the targets that ./scripts/test builds into build-fuzz/ with clang.
# A missing fuzz binary fails the test: the suite never counts a fuzzer it did not run.
# The fuzz targets are host (clang) builds: a cross build does not register them.
set(OUTRIDER_FUZZ_DIR "${CMAKE_SOURCE_DIR}/build-fuzz/tests/fuzz" CACHE PATH "Where the libFuzzer targets are built")
if(NOT CMAKE_CROSSCOMPILING)
foreach(target fuzz_envelope fuzz_line_protocol)
  add_test(NAME ${target}
    COMMAND ${CMAKE_COMMAND} -E env ASAN_OPTIONS=detect_leaks=1
            ${OUTRIDER_FUZZ_DIR}/${target} -runs=50000 -max_len=4096 -seed=1 -timeout=10)
  set_tests_properties(${target} PROPERTIES LABELS "unit;hub;fuzz" TIMEOUT 300)
endforeach()
endif()
