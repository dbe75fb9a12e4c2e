# outrider_module(NAME [DEPS targets...])
# Builds the library outrider_<NAME> from <dir>/src/*.cpp with <dir>/include as its public headers,
# the same way for every module. Executables are added by the module's own CMakeLists.
function(outrider_module name)
  cmake_parse_arguments(M "" "" "DEPS" ${ARGN})
  file(GLOB srcs CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/src/*.cpp)
  add_library(outrider_${name} STATIC ${srcs})
  target_include_directories(outrider_${name} PUBLIC ${CMAKE_CURRENT_SOURCE_DIR}/include)
  target_link_libraries(outrider_${name} PUBLIC ${M_DEPS})
  set_target_properties(outrider_${name} PROPERTIES POSITION_INDEPENDENT_CODE ON)
endfunction()

# outrider_daemon(NAME EXE MODULE) : the thin executable over a module library.
function(outrider_executable exe module)
  add_executable(${exe} ${CMAKE_CURRENT_SOURCE_DIR}/main.cpp)
  target_link_libraries(${exe} PRIVATE outrider_${module})
  install(TARGETS ${exe} RUNTIME DESTINATION ${ARGN})
endfunction()
