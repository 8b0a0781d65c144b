#!/usr/bin/env bash
# Installs what the project needs, and nothing when it is already there (a few seconds):
#   1. the Debian packages in scripts/apt-packages.txt (apt-get; needs root or sudo);
#   2. the Python venv at $ATMAN_VENV with requirements.txt (pip; the torch wheel in it is
#      also the LibTorch that the C++ build links).
# Nothing is downloaded except through apt and pip.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# --- 1. Debian packages ---------------------------------------------------------------------
mapfile -t wanted < <(grep -v -E '^\s*(#|$)' "$ATMAN_ROOT/scripts/apt-packages.txt")
missing=()
for pkg in "${wanted[@]}"; do
  status="$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)"
  [[ "$status" == "install ok installed" ]] || missing+=("$pkg")
done
if ((${#missing[@]})); then
  atman_log "installing Debian packages: ${missing[*]}"
  sudo=""
  if [[ $(id -u) -ne 0 ]]; then sudo="sudo"; fi
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  atman_log "Debian packages: all ${#wanted[@]} present"
fi

# --- 2. Python venv -------------------------------------------------------------------------
want_hash="$(sha256sum "$ATMAN_ROOT/requirements.txt" | cut -c1-16)"
stamp="$ATMAN_VENV/.atman-requirements"
if [[ -x "$ATMAN_PY" && -f "$stamp" && "$(cat "$stamp")" == "$want_hash" ]]; then
  atman_log "venv: up to date ($ATMAN_VENV)"
else
  atman_log "venv: installing requirements.txt into $ATMAN_VENV (the torch wheel is large)"
  mkdir -p "$ATMAN_CACHE"
  [[ -x "$ATMAN_PY" ]] || python3 -m venv "$ATMAN_VENV"
  "$ATMAN_PY" -m pip install -q --upgrade pip
  "$ATMAN_PY" -m pip install -q -r "$ATMAN_ROOT/requirements.txt"
  echo "$want_hash" >"$stamp"
fi
