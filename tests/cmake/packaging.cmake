# Packaging: the units as shipped, the .debs (lintian), installing them on this machine, and the arm64
# build. The install test installs and purges the packages for real (RUN_SERIAL: nothing else runs then).
if(NOT CMAKE_CROSSCOMPILING)
  outrider_test(test_packaging_units SOURCES integration/test_packaging_units.cpp LABELS integration packaging
                TIMEOUT 120)
  outrider_test(test_packaging_deb SOURCES integration/test_packaging_deb.cpp LABELS integration packaging
                TIMEOUT 300)
  outrider_test(test_packaging_install SOURCES integration/test_packaging_install.cpp
                LABELS integration packaging TIMEOUT 600)
  set_tests_properties(test_packaging_install PROPERTIES RUN_SERIAL ON RESOURCE_LOCK outrider-package)

  set(OUTRIDER_ARM64_BUILD_DIR "${CMAKE_SOURCE_DIR}/build-arm64" CACHE PATH "The arm64 build tree the arm64 tests check")
  outrider_test(test_packaging_arm64 SOURCES integration/test_packaging_arm64.cpp
                LABELS integration packaging arm64 TIMEOUT 1500)
  target_compile_definitions(test_packaging_arm64 PRIVATE OUTRIDER_ARM64_BUILD_DIR="${OUTRIDER_ARM64_BUILD_DIR}")
endif()
