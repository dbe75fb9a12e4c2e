outrider_test(test_common_config SOURCES unit/test_config.cpp LIBS outrider_common LABELS unit hub)
outrider_test(test_common_atomic SOURCES unit/test_atomic_file.cpp LIBS outrider_common LABELS unit hub)
outrider_test(test_common_manifest SOURCES unit/test_manifest.cpp LIBS outrider_common LABELS unit hub)
