# ccache, when installed, with the settings that make it hit across clones and with
# precompiled headers: paths are rewritten relative to the source tree (base_dir), and the
# PCH-related sloppiness that ccache's manual asks for is set.
find_program(ATMAN_CCACHE ccache)
if(ATMAN_CCACHE AND NOT CMAKE_CXX_COMPILER_LAUNCHER)
  set(_atman_ccache_env
      CCACHE_BASEDIR=${CMAKE_SOURCE_DIR}
      CCACHE_NOHASHDIR=1
      CCACHE_SLOPPINESS=pch_defines,time_macros,include_file_mtime,include_file_ctime)
  set(CMAKE_CXX_COMPILER_LAUNCHER ${CMAKE_COMMAND} -E env ${_atman_ccache_env} ${ATMAN_CCACHE})
  set(CMAKE_C_COMPILER_LAUNCHER ${CMAKE_CXX_COMPILER_LAUNCHER})
  message(STATUS "atman: compiling through ccache (${ATMAN_CCACHE})")
  # clang stamps precompiled headers with their build time, which ccache cannot hash.
  if(CMAKE_CXX_COMPILER_ID STREQUAL "Clang")
    add_compile_options("SHELL:-Xclang -fno-pch-timestamp")
  endif()
endif()
