#!/usr/bin/env bash
# ctest launcher of the suites whose test process is not the instrumented one (tests/server,
# tests/client: pytest starts atman-server, engine_explain and the atman tool) in sanitizer
# builds (ATMAN_TEST_LAUNCHER, cmake/AtmanSanitizers.cmake). Those processes' exit codes are
# not always checked by the tests, so their sanitizer reports are sent to files
# (log_path=<fresh folder>/report.<pid>) and any report fails the test: this prints every report
# and exits 1 when the command itself passed. Without reports, the command's exit code.
#
#   check_reports.sh <command> [args...]
set -uo pipefail
dir="$(mktemp -d "${TMPDIR:-/tmp}/atman-sanitizer-XXXXXX")"
for var in ASAN_OPTIONS LSAN_OPTIONS UBSAN_OPTIONS TSAN_OPTIONS; do
  export "$var=${!var:-}${!var:+:}log_path=$dir/report"
done
"$@"
rc=$?
shopt -s nullglob
reports=("$dir"/report.*)
if ((${#reports[@]})); then
  for report in "${reports[@]}"; do
    echo "=== sanitizer report ${report##*/} (pid) ==="
    cat "$report"
  done
  echo "check_reports.sh: ${#reports[@]} sanitizer report(s) from processes of this test"
  ((rc == 0)) && rc=1
fi
rm -rf "$dir"
exit "$rc"
