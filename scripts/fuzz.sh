#!/usr/bin/env bash
# Builds the libFuzzer targets of tests/fuzz/ (clang, ASan + UBSan, in build-fuzz/ beside
# $ATMAN_BUILD) and runs each for a bounded time (docs/development.md, "Sanitizers and
# fuzzing"). Nothing is written into the tree: new inputs go to build-fuzz/fuzz-corpus/<target>/,
# crashes, leaks and timeouts to build-fuzz/fuzz-artifacts/<target>/ (copy one into
# tests/fuzz/regressions/<target>/ by hand to keep it), logs to build-fuzz/fuzz-logs/.
#
#   bash scripts/fuzz.sh [--seconds N] [--parallel P] [target...]
#
#   --seconds N    per target (default 60)
#   --parallel P   fuzzers running at once (default 1; one core each)
#   target         names from build-fuzz/fuzzers.txt (default: all of them)
#
# Each fuzzer starts from the seed corpus (tests/fuzz/corpus/<target>/), the regression
# inputs (tests/fuzz/regressions/<target>/) and what earlier runs here found, with the
# dictionary tests/fuzz/dicts/<target>.dict when there is one, and the limits
# -rss_limit_mb=3072 -timeout=10 -max_len=65536. Exits non-zero when any fuzzer found a
# problem.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

seconds=60
parallel=1
targets=()
while (($#)); do
  case "$1" in
    --seconds) seconds="$2"; shift 2 ;;
    --parallel) parallel="$2"; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) echo "fuzz.sh: unknown option $1" >&2; exit 2 ;;
    *) targets+=("$1"); shift ;;
  esac
done

atman_clang
build="$(dirname "$ATMAN_BUILD")/build-fuzz"
start=$(date +%s)
CC="$ATMAN_CC" CXX="$ATMAN_CXX" ATMAN_BUILD="$build" \
  ATMAN_CMAKE_ARGS="-DATMAN_SANITIZE=address,undefined -DATMAN_FUZZ=ON -DATMAN_BUILD_BENCH=OFF" \
  "$ATMAN_ROOT/scripts/build.sh" --target atman_fuzzers
atman_log "fuzzers built in $(($(date +%s) - start)) s"

if ((${#targets[@]} == 0)); then
  mapfile -t targets <"$build/fuzzers.txt"
fi
atman_sanitizer_env
export ATMAN_SOURCE_DIR="$ATMAN_ROOT"
mkdir -p "$build/fuzz-logs"

run_one() {
  local target="$1"
  local binary="$build/tests/fuzz/$target" corpus="$build/fuzz-corpus/$target"
  local artifacts="$build/fuzz-artifacts/$target" log="$build/fuzz-logs/$target.log"
  [[ -x "$binary" ]] || { atman_log "$target: no such fuzzer in $build/fuzzers.txt"; return 2; }
  mkdir -p "$corpus" "$artifacts"
  local args=(-max_total_time="$seconds" -rss_limit_mb=3072 -timeout=10 -max_len=65536
              -print_final_stats=1 -artifact_prefix="$artifacts/")
  local dict="$ATMAN_ROOT/tests/fuzz/dicts/$target.dict"
  [[ -f "$dict" ]] && args+=(-dict="$dict")
  local seeds=("$ATMAN_ROOT/tests/fuzz/corpus/$target")
  [[ -d "$ATMAN_ROOT/tests/fuzz/regressions/$target" ]] &&
    seeds+=("$ATMAN_ROOT/tests/fuzz/regressions/$target")
  # The first folder receives new inputs; the others are only read.
  if "$binary" "${args[@]}" "$corpus" "${seeds[@]}" >"$log" 2>&1; then
    # The last status line: "#<runs> DONE cov: <edges> ft: <features> corp: <n>/<size> ...".
    local done_line
    done_line="$(grep -E '^#[0-9]+' "$log" | tail -1)"
    atman_log "$target: no findings in $seconds s: $(awk '{
      for (i = 2; i < NF; ++i) v[$i] = $(i + 1)
      printf "%s runs, cov %s, ft %s, corpus %s, %s exec/s", substr($1, 2), v["cov:"], v["ft:"],
        v["corp:"], v["exec/s:"] }' <<<"$done_line")"
  else
    atman_log "$target: FOUND A PROBLEM, see $log and $artifacts/"
    grep -E -m 5 'ERROR|FUZZ_CHECK|runtime error|Test unit written' "$log" >&2 || true
    return 1
  fi
}

atman_log "fuzzing ${targets[*]} for $seconds s each, $parallel at a time"
failed=()
pids=()
names=()
for target in "${targets[@]}"; do
  while ((${#pids[@]} >= parallel)); do
    if ! wait "${pids[0]}"; then failed+=("${names[0]}"); fi
    pids=("${pids[@]:1}")
    names=("${names[@]:1}")
  done
  run_one "$target" &
  pids+=($!)
  names+=("$target")
done
for i in "${!pids[@]}"; do
  if ! wait "${pids[$i]}"; then failed+=("${names[$i]}"); fi
done
atman_log "fuzzing took $(($(date +%s) - start)) s in all"
if ((${#failed[@]})); then
  atman_log "fuzzers with findings: ${failed[*]}"
  exit 1
fi
