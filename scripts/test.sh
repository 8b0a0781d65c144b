#!/usr/bin/env bash
# README command (2): set up, build, and run every test (C++ suites and Python oracles
# through ctest). Extra arguments go to ctest (for example `-R Safetensors`).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
start=$(date +%s)
"$ATMAN_ROOT/scripts/build.sh"
atman_log "running tests"
cd "$ATMAN_BUILD"
ctest --output-on-failure --timeout 900 -j "${ATMAN_TEST_JOBS:-2}" "$@"
atman_log "set-up, build and tests took $(($(date +%s) - start)) s"
