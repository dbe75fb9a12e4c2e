outrider_test(test_common_crypto SOURCES unit/test_crypto.cpp LIBS outrider_common LABELS unit hub)
