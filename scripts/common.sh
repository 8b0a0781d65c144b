# Shared paths for the scripts in this folder; sourced, not run.
#
#   ATMAN_ROOT    the source tree
#   ATMAN_CACHE   where the venv lives, outside the tree so that fresh clones (CI) reuse it
#   ATMAN_VENV    the Python venv with requirements.txt installed
#   ATMAN_BUILD   the CMake build folder (default build/ in the tree)
#   ATMAN_SMOLLM2_GGUF  SmolLM2-135M-Instruct Q4_1 (real pretrained weights; scripts/setup.sh)
#   ATMAN_SMOLLM2_HF    the same weights as a Hugging Face folder (float32)
ATMAN_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ATMAN_CACHE="${ATMAN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/atman}"
ATMAN_VENV="${ATMAN_VENV:-$ATMAN_CACHE/venv}"
ATMAN_BUILD="${ATMAN_BUILD:-$ATMAN_ROOT/build}"
ATMAN_PY="$ATMAN_VENV/bin/python"
ATMAN_SMOLLM2_GGUF="${ATMAN_SMOLLM2_GGUF:-$ATMAN_CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
ATMAN_SMOLLM2_HF="${ATMAN_SMOLLM2_HF:-$ATMAN_CACHE/models/smollm2-135m-instruct-f32}"

atman_log() { printf '[atman %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# Sanitizer run-time options (scripts/sanitize.sh, scripts/fuzz.sh; docs/development.md,
# "Sanitizers and fuzzing"): every report is fatal (UBSan halts; TSan keeps going so that one
# run lists every race, then exits 66), leaks are checked at exit, and only third-party
# libraries are suppressed, by the files in tests/sanitizers/.
atman_sanitizer_env() {
  local supp="$ATMAN_ROOT/tests/sanitizers"
  local symbolizer="external_symbolizer_path=/usr/lib/llvm-14/bin/llvm-symbolizer"
  export ASAN_OPTIONS="detect_leaks=1:halt_on_error=1:strict_string_checks=1:check_initialization_order=1:suppressions=$supp/asan.supp:print_suppressions=0:$symbolizer"
  export LSAN_OPTIONS="suppressions=$supp/lsan.supp:print_suppressions=0:$symbolizer"
  export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:suppressions=$supp/ubsan.supp:print_suppressions=0:$symbolizer"
  export TSAN_OPTIONS="halt_on_error=0:exitcode=66:second_deadlock_stack=1:suppressions=$supp/tsan.supp:print_suppressions=0:$symbolizer"
}

# clang for the sanitizer and fuzz builds (Debian 12: clang-14, scripts/apt-packages.txt).
atman_clang() {
  ATMAN_CC="${ATMAN_CC:-clang-14}"
  ATMAN_CXX="${ATMAN_CXX:-clang++-14}"
}
