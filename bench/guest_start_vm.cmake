# guest_start_vm: a VM start through the node (hub command -> running event) against a bare libvirt
# start of the same domain; outrider-vmm's RSS with 10 defined VMs. ./scripts/bench guest_start runs it.
pkg_check_modules(GUEST_START_LIBVIRT REQUIRED IMPORTED_TARGET libvirt)
add_executable(bench_guest_start_vm ${CMAKE_CURRENT_LIST_DIR}/guest_start_vm.cpp)
target_link_libraries(bench_guest_start_vm PRIVATE outrider_ctl outrider_testsupport PkgConfig::GUEST_START_LIBVIRT)
add_dependencies(bench_guest_start_vm outrider-agent outrider-vmm outrider-netd)
# The memory baseline: a minimal libvirt client doing vmm's libvirt calls, run by bench_guest_start_vm.
add_executable(bench_libvirt_client_floor ${CMAKE_CURRENT_LIST_DIR}/libvirt_client_floor.cpp)
target_link_libraries(bench_libvirt_client_floor PRIVATE PkgConfig::GUEST_START_LIBVIRT Threads::Threads)
add_dependencies(bench_guest_start_vm bench_libvirt_client_floor)
