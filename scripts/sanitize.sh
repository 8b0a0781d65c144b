#!/usr/bin/env bash
# Sanitizer builds and their tests (docs/development.md, "Sanitizers and fuzzing"):
#
#   bash scripts/sanitize.sh [address|thread|all] [ctest args...]     (default: all)
#
#   address  build-asan/: clang with ASan + UBSan (LeakSanitizer on), everything but the
#            benchmarks; runs the suites labelled io, text, vision, model, runtime, atman,
#            server, client and fuzz (the fuzz targets' regression and seed replays).
#   thread   build-tsan/: clang with TSan; builds the batcher tests, the server's in-process
#            suites, atman-server, engine_explain and atman (the soak); runs the suites
#            labelled runtime and server.
#
# Build folders sit beside $ATMAN_BUILD (default build/). The oracles write their fixtures into
# each folder as in the main build (ctest runs the fixture steps the selected tests need). Run-
# time options and suppressions come from atman_sanitizer_env (scripts/common.sh) and
# tests/sanitizers/. Extra arguments go to ctest (e.g. -R DynamicBatcher). Exits non-zero when
# a build or a test fails; `all` runs both even when the first fails.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

mode="${1:-all}"
(($#)) && shift
case "$mode" in
  address|thread|all) ;;
  *) echo "usage: $0 [address|thread|all] [ctest args...]" >&2; exit 2 ;;
esac

atman_clang
atman_sanitizer_env
parent="$(dirname "$ATMAN_BUILD")"
jobs="${ATMAN_TEST_JOBS:-2}"

# run_sanitizer <name> <ATMAN_SANITIZE> <ctest label regex> [build targets...]
run_sanitizer() {
  local name="$1" sanitize="$2" labels="$3"
  shift 3
  local dir="$parent/build-$name" start
  start=$(date +%s)
  local targets=()
  (($#)) && targets=(--target "$@")
  # The test executables run at build time too (gtest_discover_tests lists their tests), so
  # the sanitizer options are already exported here.
  CC="$ATMAN_CC" CXX="$ATMAN_CXX" ATMAN_BUILD="$dir" \
    ATMAN_CMAKE_ARGS="-DATMAN_SANITIZE=$sanitize -DATMAN_BUILD_BENCH=OFF" \
    "$ATMAN_ROOT/scripts/build.sh" "${targets[@]}" || return 1
  local built=$(($(date +%s) - start))
  atman_log "$name: built in $built s; running ctest -L '$labels'"
  local rc=0
  (cd "$dir" && ctest --output-on-failure --timeout 1800 -j "$jobs" -L "$labels" \
    "${ctest_args[@]}") || rc=$?
  atman_log "$name: build $built s, tests $(($(date +%s) - start - built)) s, exit $rc"
  return "$rc"
}

ctest_args=("$@")
failed=()
if [[ "$mode" == address || "$mode" == all ]]; then
  run_sanitizer asan address,undefined '^(io|text|vision|model|runtime|atman|server|client|fuzz)$' ||
    failed+=(address)
fi
if [[ "$mode" == thread || "$mode" == all ]]; then
  # LibTorch's intra-op threads are libgomp's, which is not instrumented: TSan cannot see its
  # barriers, so every tensor an OpenMP worker touches would be reported. One OpenMP thread
  # leaves TSan our own threads (batcher workers and timer, the service's pool, gRPC's).
  OMP_NUM_THREADS=1 run_sanitizer tsan thread '^(runtime|server)$' \
    test_runtime test_dynamic_batcher test_service_edge test_server_config test_metrics_endpoint \
    atman-server engine_explain atman || failed+=(thread)
fi
if ((${#failed[@]})); then
  atman_log "sanitizer runs that failed: ${failed[*]}"
  exit 1
fi
atman_log "sanitizer runs passed: $mode"
