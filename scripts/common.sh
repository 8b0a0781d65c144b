# Shared paths for the scripts in this folder; sourced, not run.
#
#   ATMAN_ROOT    the source tree
#   ATMAN_CACHE   where the venv lives, outside the tree so that fresh clones (CI) reuse it
#   ATMAN_VENV    the Python venv with requirements.txt installed
#   ATMAN_BUILD   the CMake build folder (default build/ in the tree)
ATMAN_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ATMAN_CACHE="${ATMAN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/atman}"
ATMAN_VENV="${ATMAN_VENV:-$ATMAN_CACHE/venv}"
ATMAN_BUILD="${ATMAN_BUILD:-$ATMAN_ROOT/build}"
ATMAN_PY="$ATMAN_VENV/bin/python"

atman_log() { printf '[atman %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
