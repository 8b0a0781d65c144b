#!/usr/bin/env bash
# README command (2), what CI runs (.ci/run): set up, build, and run every test:
#   1. the g++ build in $ATMAN_BUILD (default build/) and all its ctest tests (C++ suites,
#      Python oracles, the fuzz targets' regression replays);
#   2. the sanitizer builds and their suites (scripts/sanitize.sh all: ASan + UBSan, TSan);
#   3. every fuzzer for ATMAN_FUZZ_SECONDS seconds (default 60), two at a time
#      (scripts/fuzz.sh).
#
#   bash scripts/test.sh [--quick] [ctest args...]
#
#   --quick      stage 1 only (no sanitizer builds, no fuzzing)
#   ctest args   go to stage 1's ctest (for example `-R Safetensors`)
#
# Every stage runs even when an earlier one failed; the exit code is non-zero when any did.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

quick=0
if [[ "${1:-}" == --quick ]]; then
  quick=1
  shift
fi

start=$(date +%s)
failed=()
stage() {
  local name="$1" t0 rc=0
  shift
  t0=$(date +%s)
  "$@" || rc=$?
  atman_log "$name took $(($(date +%s) - t0)) s (exit $rc)"
  ((rc == 0)) || failed+=("$name")
}

main_tests() {
  "$ATMAN_ROOT/scripts/build.sh" || return
  atman_log "running tests"
  (cd "$ATMAN_BUILD" && ctest --output-on-failure --timeout 900 -j "${ATMAN_TEST_JOBS:-2}" "$@")
}

stage "build and tests" main_tests "$@"
if ((!quick)); then
  stage "sanitizers" "$ATMAN_ROOT/scripts/sanitize.sh" all
  stage "fuzzing" "$ATMAN_ROOT/scripts/fuzz.sh" --seconds "${ATMAN_FUZZ_SECONDS:-60}" \
    --parallel 2
fi
atman_log "set-up, builds and tests took $(($(date +%s) - start)) s"
if ((${#failed[@]})); then
  # The failed tests' last lines once more, at the end, where a cut log still shows them.
  parent="$(dirname "$ATMAN_BUILD")"
  python3 "$ATMAN_ROOT/scripts/ctest-digest.py" --since "$start" \
    "$ATMAN_BUILD" "$parent/build-asan" "$parent/build-tsan" || true
  atman_log "failed: ${failed[*]}"
  exit 1
fi
