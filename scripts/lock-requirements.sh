#!/usr/bin/env bash
# Re-resolves requirements.in into the fully pinned requirements.txt, in a throw-away venv.
# Run after changing requirements.in; commit both files.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install -q --upgrade pip
"$tmp/venv/bin/python" -m pip install -q -r "$root/requirements.in"
{
  echo "# Fully pinned lock of requirements.in (made by scripts/lock-requirements.sh). Do not edit by hand."
  "$tmp/venv/bin/python" -m pip freeze --all | grep -v -E '^(pip|wheel)=='
} >"$root/requirements.txt"
echo "wrote requirements.txt"
