#!/usr/bin/env bash
# Set up (scripts/setup.sh), configure and build. Extra arguments go to `cmake --build`
# (for example `--target test_io`). ATMAN_BUILD picks the build folder (default build/).
# ATMAN_SETUP_MODE=serve (scripts/run.sh) sets up only what serving needs and configures a
# fresh build folder without the tests and benchmarks; the default, test, sets up everything
# and turns them (back) on.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
setup_mode="${ATMAN_SETUP_MODE:-test}"
"$ATMAN_ROOT/scripts/setup.sh" "$setup_mode"

torch_prefix="$("$ATMAN_PY" -c 'import torch.utils; print(torch.utils.cmake_prefix_path)')"
if [[ ! -f "$ATMAN_BUILD/CMakeCache.txt" ]]; then
  atman_log "configuring $ATMAN_BUILD"
  serve_args=()
  [[ "$setup_mode" == serve ]] && serve_args=(-DATMAN_BUILD_TESTS=OFF -DATMAN_BUILD_BENCH=OFF)
  cmake -S "$ATMAN_ROOT" -B "$ATMAN_BUILD" -G Ninja "${serve_args[@]}" \
    -DCMAKE_PREFIX_PATH="$torch_prefix" -DATMAN_PYTHON="$ATMAN_PY" ${ATMAN_CMAKE_ARGS:-}
elif [[ "$setup_mode" == test ]] && grep -q -E '^ATMAN_BUILD_TESTS:BOOL=OFF' "$ATMAN_BUILD/CMakeCache.txt"; then
  # Configured by run.sh (serve): the tests and benchmarks were off.
  atman_log "reconfiguring $ATMAN_BUILD with the tests and benchmarks"
  cmake -S "$ATMAN_ROOT" -B "$ATMAN_BUILD" -DATMAN_BUILD_TESTS=ON -DATMAN_BUILD_BENCH=ON
fi
jobs="${ATMAN_JOBS:-$(nproc)}"
atman_log "building ($jobs jobs)"
cmake --build "$ATMAN_BUILD" -j "$jobs" "$@"
