#!/usr/bin/env bash
# Makes docs/examples/tiled-units.png (docs/vision.md, "Model: LLaVA-NeXT", "In the engine"):
# a picture of a tiled LLaVA-NeXT image's units. The model is the tiny random LLaVA-NeXT of the engine tests
# (tests/oracle/make_atman_cases.py --models llava-next: 28 px views of 4 x 4 cells, pinpoints
# up to 56 x 56), written into a temporary folder; its scores mean nothing, its geometry is
# LLaVA-NeXT's. A 40 x 30 picture (drawn here) is explained with a 2 x 3 grid of units by
# `atman explain` against atman-server on free loopback ports (--json and --png), then
# draw-tiled-units.py draws the base view's and the tiles' cells coloured by unit, the server's
# unit rectangles and the tool's overlay.
#
# Environment: ATMAN_BUILD (build folder with atman and atman-server, default build),
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

"$ATMAN_PY" tests/oracle/make_atman_cases.py --out "$work/fixtures" --models llava-next >/dev/null
model="$work/fixtures/llava-next"

free_port() { "$ATMAN_PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port="$(free_port)"
metrics="$(free_port)"
OMP_NUM_THREADS=1 "$build/server/atman-server" --model "$model" --devices cpu --host 127.0.0.1 \
  --port "$port" --metrics-port "$metrics" >"$work/server.log" 2>&1 &
server=$!
export ATMAN_ADDRESS="127.0.0.1:$port"
until "$atman" health >/dev/null 2>&1; do
  kill -0 "$server" 2>/dev/null || { cat "$work/server.log" >&2; exit 1; }
  sleep 0.5
done

# A 40 x 30 picture: sky, ground, a sun and a house.
"$ATMAN_PY" - "$work/picture.png" <<'PY'
import sys
from PIL import Image, ImageDraw
im = Image.new("RGB", (40, 30), (170, 205, 235))
d = ImageDraw.Draw(im)
d.rectangle([0, 21, 39, 29], fill=(90, 160, 70))
d.ellipse([4, 3, 14, 13], fill=(250, 200, 40))
d.rectangle([24, 12, 34, 22], fill=(180, 90, 60))
d.polygon([(22, 13), (29, 6), (36, 13)], fill=(120, 50, 40))
im.save(sys.argv[1])
PY
"$atman" explain --prompt "USER: " --image "$work/picture.png" --prompt " what is it? ASSISTANT:" \
  --target " a house" --image-granularity grid --image-rows 2 --image-cols 3 \
  --png "$work/overlay.png" --json >"$work/response.json"
"$ATMAN_PY" docs/examples/draw-tiled-units.py --model "$model" --image "$work/picture.png" \
  --response "$work/response.json" --overlay "$work/overlay.png" --rows 2 --cols 3 \
  --out "$out/tiled-units.png"
echo "wrote $out/tiled-units.png"
