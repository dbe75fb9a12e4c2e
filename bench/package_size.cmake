add_executable(bench_package_size ${CMAKE_CURRENT_LIST_DIR}/package_size.cpp)
target_link_libraries(bench_package_size PRIVATE outrider_testsupport)
target_compile_definitions(bench_package_size PRIVATE OUTRIDER_ARM64_BUILD_DIR="${CMAKE_SOURCE_DIR}/build-arm64")
add_dependencies(bench_package_size outrider-agent outrider-vmm outrider-netd outrider-ctshim outriderctl)
