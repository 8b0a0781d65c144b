# Helpers that give every target of ours the same flags.
#
#   atman_target_flags(<target>)   C++20, warnings (as errors when ATMAN_WERROR), our include
#                                  root. Third-party headers come in through imported targets,
#                                  which CMake marks as system headers, so their warnings do
#                                  not fail our build.
#   atman_add_library(<name> SOURCES ... DEPS ... [PRIVATE_DEPS ...])
#                                  a static module library of core/ with its own include root
#   atman_add_gtest(<name> SOURCES ... DEPS ... [FIXTURES f...] [LABELS l...])
#                                  a GoogleTest executable whose tests ctest lists by name;
#                                  FIXTURES names ctest fixtures (e.g. oracle generators)
#                                  that must run first.
#
# ATMAN_FIXTURES_DIR: where the oracles write their fixtures and where the tests read them
# (ctest passes it to every test as ATMAN_FIXTURES). Default: fixtures/ in the build folder.
# A build that runs its tests on fixtures generated elsewhere (scripts/gpu-check.sh: the
# copy carried to the GPU machine) points it there and excludes the oracle steps (ctest -FA).

set(ATMAN_FIXTURES_DIR "${CMAKE_BINARY_DIR}/fixtures" CACHE PATH
    "Oracle fixtures: written by the oracle steps, read by the tests (ATMAN_FIXTURES)")

function(atman_target_flags target)
  target_compile_features(${target} PUBLIC cxx_std_20)
  target_compile_options(${target} PRIVATE -Wall -Wextra -Wpedantic -Wno-unused-parameter)
  # clang checks the ABSL_GUARDED_BY / ABSL_EXCLUSIVE_LOCKS_REQUIRED annotations (g++ ignores
  # them): the sanitizer and fuzz builds compile with clang.
  if(CMAKE_CXX_COMPILER_ID MATCHES "Clang")
    target_compile_options(${target} PRIVATE -Wthread-safety)
  endif()
  if(ATMAN_WERROR)
    target_compile_options(${target} PRIVATE -Werror)
  endif()
endfunction()

function(atman_add_library name)
  cmake_parse_arguments(ARG "" "" "SOURCES;DEPS;PRIVATE_DEPS" ${ARGN})
  add_library(${name} STATIC ${ARG_SOURCES})
  # Each module's headers are reachable only through its own include root, which holds one
  # link, core/<module> -> the module's folder: a target sees "core/<module>/..." only when it
  # links that module (DEPS: PUBLIC, for what the module's headers include; PRIVATE_DEPS: for
  # what only its sources include). So an include that skips a layer (core/text including
  # core/model) does not compile, rather than linking by luck.
  file(RELATIVE_PATH _module ${PROJECT_SOURCE_DIR} ${CMAKE_CURRENT_SOURCE_DIR})
  set(_root ${PROJECT_BINARY_DIR}/include/${name})
  get_filename_component(_parent ${_root}/${_module} DIRECTORY)
  file(MAKE_DIRECTORY ${_parent})
  file(CREATE_LINK ${CMAKE_CURRENT_SOURCE_DIR} ${_root}/${_module} SYMBOLIC)
  target_include_directories(${name} PUBLIC ${_root})
  target_link_libraries(${name} PUBLIC ${ARG_DEPS} PRIVATE ${ARG_PRIVATE_DEPS})
  set_target_properties(${name} PROPERTIES POSITION_INDEPENDENT_CODE ON)
  atman_target_flags(${name})
endfunction()

function(atman_add_gtest name)
  cmake_parse_arguments(ARG "" "" "SOURCES;DEPS;FIXTURES;LABELS" ${ARGN})
  add_executable(${name} ${ARG_SOURCES})
  target_link_libraries(${name} PRIVATE ${ARG_DEPS} atman_test_support GTest::gmock_main)
  atman_target_flags(${name})
  # Tests find fixtures and the shared test data through the environment, never through
  # absolute paths compiled into the binary.
  gtest_discover_tests(${name}
    DISCOVERY_TIMEOUT 120
    TEST_LIST ${name}_TESTS
    PROPERTIES
      ENVIRONMENT "ATMAN_FIXTURES=${ATMAN_FIXTURES_DIR}"
      # A second variable goes through ENVIRONMENT_MODIFICATION: a ';' inside one
      # ENVIRONMENT value does not survive gtest_discover_tests.
      ENVIRONMENT_MODIFICATION "ATMAN_SOURCE_DIR=set:${PROJECT_SOURCE_DIR}")
  # Labels and fixtures are lists, which do not survive gtest_discover_tests' PROPERTIES either
  # (each item becomes one argument of set_tests_properties: FIXTURES "a;b" shifted every later
  # property onto the wrong name, ENVIRONMENT included). They are set on the discovered tests
  # by a file ctest includes after the discovery's own.
  set(_file "${CMAKE_CURRENT_BINARY_DIR}/${name}_properties.cmake")
  file(CONFIGURE OUTPUT "${_file}" CONTENT [==[
foreach(_test IN LISTS @name@_TESTS)
  set_tests_properties("${_test}" PROPERTIES LABELS "@ARG_LABELS@")
  if(NOT "@ARG_FIXTURES@" STREQUAL "")
    set_tests_properties("${_test}" PROPERTIES FIXTURES_REQUIRED "@ARG_FIXTURES@")
  endif()
endforeach()
]==] @ONLY)
  set_property(DIRECTORY APPEND PROPERTY TEST_INCLUDE_FILES "${_file}")
endfunction()

# atman_add_oracle(<fixture> <script> [args...]): a ctest step that runs a Python oracle
# (tests/oracle/) to write fixtures under ${ATMAN_FIXTURES_DIR} before the tests that
# require <fixture>.
function(atman_add_oracle fixture script)
  if(NOT ATMAN_PYTHON)
    message(FATAL_ERROR "ATMAN_PYTHON is not set: configure through scripts/build.sh, "
                        "or pass -DATMAN_PYTHON=<venv>/bin/python")
  endif()
  add_test(NAME oracle.${fixture}
           COMMAND ${ATMAN_PYTHON} ${PROJECT_SOURCE_DIR}/tests/oracle/${script}
                   --out ${ATMAN_FIXTURES_DIR}/${fixture} ${ARGN})
  set_tests_properties(oracle.${fixture} PROPERTIES FIXTURES_SETUP ${fixture} LABELS oracle
                       ENVIRONMENT "PYTHONHASHSEED=0;OMP_NUM_THREADS=1")
endfunction()
