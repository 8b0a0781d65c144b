#!/usr/bin/env bash
# Set up (scripts/setup.sh), configure and build. Extra arguments go to `cmake --build`
# (for example `--target test_io`). ATMAN_BUILD picks the build folder (default build/).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
"$ATMAN_ROOT/scripts/setup.sh"

torch_prefix="$("$ATMAN_PY" -c 'import torch.utils; print(torch.utils.cmake_prefix_path)')"
if [[ ! -f "$ATMAN_BUILD/CMakeCache.txt" ]]; then
  atman_log "configuring $ATMAN_BUILD"
  cmake -S "$ATMAN_ROOT" -B "$ATMAN_BUILD" -G Ninja \
    -DCMAKE_PREFIX_PATH="$torch_prefix" -DATMAN_PYTHON="$ATMAN_PY" ${ATMAN_CMAKE_ARGS:-}
fi
jobs="${ATMAN_JOBS:-$(nproc)}"
atman_log "building ($jobs jobs)"
cmake --build "$ATMAN_BUILD" -j "$jobs" "$@"
