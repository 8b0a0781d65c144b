# Sanitizer and fuzzing builds (clang only; docs/development.md, "Sanitizers and fuzzing").
#
#   -DATMAN_SANITIZE=address,undefined   ASan + UBSan (LeakSanitizer comes with ASan)
#   -DATMAN_SANITIZE=thread              TSan
#   -DATMAN_FUZZ=ON                      libFuzzer targets (with ATMAN_SANITIZE=address,undefined)
#
# The flags go to the compile and link of every target this project builds (core/, server/,
# client/, tests, generated protobuf code), never to the third-party libraries we link, which
# stay uninstrumented: their suppressions are in tests/sanitizers/. Errors are fatal
# (-fno-sanitize-recover=all), so a UBSan report fails the test that triggers it.
#
#   ATMAN_TEST_LAUNCHER   empty, or in sanitizer builds tests/sanitizers/check_reports.sh: the
#                         suites whose test process starts our instrumented binaries (server,
#                         client) put it before their command, so that a sanitizer report from
#                         any of those processes fails the test.
#
#   atman_add_fuzzer(NAME <name> SOURCES ... DEPS ... [LINK_INSTRUMENTED_STB])
#       A libFuzzer target: SOURCES define LLVMFuzzerTestOneInput (and optionally
#       LLVMFuzzerInitialize), DEPS are the libraries it links. In every build this makes
#       <name>_replay (SOURCES + tests/fuzz/replay_main.cc, no libFuzzer) and the ctest test
#       fuzz.<name> (label fuzz) that feeds it every file of tests/fuzz/regressions/<name>/ and
#       tests/fuzz/corpus/<name>/. With ATMAN_FUZZ it also makes the fuzzer <name> itself, part
#       of the target atman_fuzzers, and lists it in ${CMAKE_BINARY_DIR}/fuzzers.txt for
#       scripts/fuzz.sh. LINK_INSTRUMENTED_STB compiles stb_image into the target in
#       sanitizer and fuzz builds, so that Debian's uninstrumented libstb.so is not what the
#       sanitizers (and the fuzzer's coverage) see.
set(ATMAN_SANITIZE "" CACHE STRING
    "Sanitizers for our targets, as -fsanitize= takes them: address,undefined or thread (clang)")
option(ATMAN_FUZZ "Build the libFuzzer targets (clang, with ATMAN_SANITIZE=address,undefined)" OFF)

set(_atman_sanitizers_known address undefined leak thread)
if(ATMAN_SANITIZE OR ATMAN_FUZZ)
  if(NOT CMAKE_CXX_COMPILER_ID STREQUAL "Clang" OR NOT CMAKE_C_COMPILER_ID STREQUAL "Clang")
    message(FATAL_ERROR "ATMAN_SANITIZE / ATMAN_FUZZ need clang (CC=clang-14 CXX=clang++-14); "
                        "this is ${CMAKE_CXX_COMPILER_ID}. scripts/sanitize.sh and "
                        "scripts/fuzz.sh configure it.")
  endif()
  string(REPLACE "," ";" _atman_sanitizer_list "${ATMAN_SANITIZE}")
  foreach(_s ${_atman_sanitizer_list})
    if(NOT _s IN_LIST _atman_sanitizers_known)
      message(FATAL_ERROR "ATMAN_SANITIZE: unknown sanitizer '${_s}' "
                          "(known: ${_atman_sanitizers_known})")
    endif()
  endforeach()
  if("thread" IN_LIST _atman_sanitizer_list AND "address" IN_LIST _atman_sanitizer_list)
    message(FATAL_ERROR "ATMAN_SANITIZE: thread and address cannot be combined")
  endif()
  if(ATMAN_FUZZ AND NOT "address" IN_LIST _atman_sanitizer_list)
    message(FATAL_ERROR "ATMAN_FUZZ needs ATMAN_SANITIZE=address,undefined")
  endif()

  set(_atman_sanitize_flags -g -fno-omit-frame-pointer -fno-sanitize-recover=all)
  if(ATMAN_SANITIZE)
    list(APPEND _atman_sanitize_flags -fsanitize=${ATMAN_SANITIZE})
    add_link_options(-fsanitize=${ATMAN_SANITIZE})
  endif()
  if(ATMAN_FUZZ)
    # Coverage instrumentation everywhere; only the fuzzers link libFuzzer's main.
    list(APPEND _atman_sanitize_flags -fsanitize=fuzzer-no-link)
  endif()
  add_compile_options(${_atman_sanitize_flags})
  message(STATUS "atman: sanitizers '${ATMAN_SANITIZE}', fuzzers ${ATMAN_FUZZ}")
endif()

set(ATMAN_TEST_LAUNCHER "")
if(ATMAN_SANITIZE)
  set(ATMAN_TEST_LAUNCHER ${PROJECT_SOURCE_DIR}/tests/sanitizers/check_reports.sh)
endif()

if(ATMAN_FUZZ)
  file(WRITE ${CMAKE_BINARY_DIR}/fuzzers.txt "")
  add_custom_target(atman_fuzzers)
endif()

function(atman_add_fuzzer)
  cmake_parse_arguments(ARG "LINK_INSTRUMENTED_STB" "NAME" "SOURCES;DEPS" ${ARGN})
  if(NOT ARG_NAME OR NOT ARG_SOURCES)
    message(FATAL_ERROR "atman_add_fuzzer: NAME and SOURCES are required")
  endif()
  set(_extra_deps "")
  if(ARG_LINK_INSTRUMENTED_STB AND (ATMAN_SANITIZE OR ATMAN_FUZZ))
    if(NOT TARGET atman_fuzz_stb_image)
      # An object library: its objects always enter the link, so the executable's own
      # stbi_* definitions take precedence over libstb.so's (which atman_vision also links).
      find_package(PkgConfig REQUIRED)
      pkg_check_modules(ATMAN_FUZZ_STB REQUIRED IMPORTED_TARGET stb)
      add_library(atman_fuzz_stb_image OBJECT
                  ${PROJECT_SOURCE_DIR}/tests/fuzz/stb_image_instrumented.c)
      target_link_libraries(atman_fuzz_stb_image PRIVATE PkgConfig::ATMAN_FUZZ_STB)
      # UBSan reports under -fno-sanitize-recover cannot be suppressed; the two checks of stb's
      # known report (tests/sanitizers/ubsan.supp) are made recoverable in stb alone so that
      # their suppression applies. Unsuppressed reports still stop the process
      # (UBSAN_OPTIONS=halt_on_error=1).
      target_compile_options(atman_fuzz_stb_image
                             PRIVATE -fsanitize-recover=pointer-overflow,nonnull-attribute)
    endif()
    list(APPEND _extra_deps atman_fuzz_stb_image)
  endif()

  # The replay of the regression inputs and the seed corpus, in every build.
  set(_replay ${ARG_NAME}_replay)
  add_executable(${_replay} ${ARG_SOURCES} ${PROJECT_SOURCE_DIR}/tests/fuzz/replay_main.cc)
  target_link_libraries(${_replay} PRIVATE ${ARG_DEPS} ${_extra_deps})
  target_include_directories(${_replay} PRIVATE ${PROJECT_SOURCE_DIR})  # tests/fuzz/*.h
  atman_target_flags(${_replay})
  add_test(NAME fuzz.${ARG_NAME}
           COMMAND ${_replay} ${PROJECT_SOURCE_DIR}/tests/fuzz/regressions/${ARG_NAME}
                   ${PROJECT_SOURCE_DIR}/tests/fuzz/corpus/${ARG_NAME})
  set_tests_properties(fuzz.${ARG_NAME} PROPERTIES LABELS fuzz
                       ENVIRONMENT "ATMAN_SOURCE_DIR=${PROJECT_SOURCE_DIR}")

  if(ATMAN_FUZZ)
    add_executable(${ARG_NAME} ${ARG_SOURCES})
    target_link_libraries(${ARG_NAME} PRIVATE ${ARG_DEPS} ${_extra_deps})
    target_include_directories(${ARG_NAME} PRIVATE ${PROJECT_SOURCE_DIR})
    target_link_options(${ARG_NAME} PRIVATE -fsanitize=fuzzer)
    atman_target_flags(${ARG_NAME})
    add_dependencies(atman_fuzzers ${ARG_NAME})
    file(APPEND ${CMAKE_BINARY_DIR}/fuzzers.txt "${ARG_NAME}\n")
  endif()
endfunction()
