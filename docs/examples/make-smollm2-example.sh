#!/usr/bin/env bash
# Makes docs/examples/smollm2-example.png (README, docs/cli.md "Try it"): SmolLM2-135M-Instruct
# (the float32 Hugging Face folder of scripts/setup.sh, ATMAN_SMOLLM2_HF) answers a question in
# its chat format, greedily (empty target), and `atman explain` explains the answer at word
# granularity; the HTML report is screenshotted by headless Chromium and trimmed. The terminal
# output goes to smollm2-example.txt (plain marks).
#
# Environment: ATMAN_ADDRESS (a running atman-server on that model; else one is started on free
# loopback ports and stopped at the end: its warm-up takes a minute or more on a CPU),
# ATMAN_BUILD (build folder with atman and atman-server, default build), ATMAN_SMOLLM2_HF,
# EXAMPLES_OUT (default docs/examples).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
source scripts/common.sh
build="${ATMAN_BUILD:-build}"
out="${EXAMPLES_OUT:-docs/examples}"
atman="$build/client/atman"
mkdir -p "$out"
work="$(mktemp -d)"
server=""
cleanup() {
  if [[ -n "$server" ]]; then kill "$server" 2>/dev/null; wait "$server" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

if [[ -z "${ATMAN_ADDRESS:-}" ]]; then
  [[ -f "$ATMAN_SMOLLM2_HF/config.json" ]] || {
    echo "no SmolLM2 folder at $ATMAN_SMOLLM2_HF: run scripts/setup.sh" >&2; exit 1; }
  free_port() { "$ATMAN_PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
  port="$(free_port)"
  metrics="$(free_port)"
  "$build/server/atman-server" --model "$ATMAN_SMOLLM2_HF" --devices cpu --host 127.0.0.1 \
    --port "$port" --metrics-port "$metrics" >"$work/server.log" 2>&1 &
  server=$!
  export ATMAN_ADDRESS="127.0.0.1:$port"
  until "$atman" health >/dev/null 2>&1; do
    kill -0 "$server" 2>/dev/null || { cat "$work/server.log" >&2; exit 1; }
    sleep 1
  done
fi
"$atman" health

# SmolLM2's chat format (its chat_template.jinja without a system turn).
prompt=$'<|im_start|>user\nAnna lives in Paris. Tom lives in Rome. Where does Tom live?<|im_end|>\n<|im_start|>assistant\n'
"$atman" explain --prompt "$prompt" --max-new-tokens 12 --text-granularity word \
  --html "$work/report.html" | tee "$out/smollm2-example.txt"
chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --force-device-scale-factor=1 \
  --force-color-profile=srgb --window-size=820,1400 --user-data-dir="$work/chromium" \
  --screenshot="$work/full.png" "file://$(realpath "$work/report.html")" 2>/dev/null
"$ATMAN_PY" - "$work/full.png" "$out/smollm2-example.png" <<'PY'
import sys
from PIL import Image, ImageChops
im = Image.open(sys.argv[1]).convert("RGB")
box = ImageChops.difference(im, Image.new("RGB", im.size, "white")).getbbox()
im.crop((0, 0, im.width, min(im.height, box[3] + 16))).save(sys.argv[2], optimize=True)
PY
echo "wrote $out/smollm2-example.png"
