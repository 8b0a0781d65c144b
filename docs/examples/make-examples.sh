#!/usr/bin/env bash
# Makes the example pictures of docs/cli.md with the `atman` tool from the embedded default
# model: starts atman-server on a free loopback port, then
#   text-example.png   the HTML report of a text explanation, screenshotted by headless Chromium
#   image-example.png  `atman explain --png` of an image question (input: shapes.png, drawn by
#                      tools/default_model/tasks.py, seed 7)
# and the terminal output of both (*.txt, plain marks).
#
# Environment: ATMAN_BUILD (build folder with atman and atman-server, default build),
# ATMAN_MODEL (default models/default), EXAMPLES_OUT (default docs/examples).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
build="${ATMAN_BUILD:-build}"
model="${ATMAN_MODEL:-models/default}"
out="${EXAMPLES_OUT:-docs/examples}"
py="${ATMAN_VENV:-$HOME/.cache/atman/venv}/bin/python"
atman="$build/client/atman"
[[ -f "$model/config.json" ]] || { echo "no model at $model" >&2; exit 1; }
mkdir -p "$out"
work="$(mktemp -d)"

port="$("$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
metrics="$("$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
OMP_NUM_THREADS=1 "$build/server/atman-server" --model "$model" --devices cpu --host 127.0.0.1 \
  --port "$port" --metrics-port "$metrics" >"$work/server.log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null; wait "$server" 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 240); do
  "$atman" health --address "127.0.0.1:$port" >/dev/null 2>&1 && break
  sleep 0.5
done
"$atman" health --address "127.0.0.1:$port"
export ATMAN_ADDRESS="127.0.0.1:$port"

shot() {  # shot HTML PNG: Chromium's screenshot, trimmed to the page's content
  chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --force-device-scale-factor=1 \
    --force-color-profile=srgb --window-size=820,1400 --user-data-dir="$work/chromium" \
    --screenshot="$work/full.png" "file://$(realpath "$1")" 2>/dev/null
  "$py" - "$work/full.png" "$2" <<'PY'
import sys
from PIL import Image, ImageChops
im = Image.open(sys.argv[1]).convert("RGB")
box = ImageChops.difference(im, Image.new("RGB", im.size, "white")).getbbox()
im.crop((0, 0, im.width, min(im.height, box[3] + 16))).save(sys.argv[2], optimize=True)
PY
}

# Text: which sentence answers the question?
text_prompt=$'<s> Tom lives in Rome. Anna lives in Paris. Ben lives in Oslo.\nQuestion: Where does Anna live?\nAnswer:'
"$atman" explain --prompt "$text_prompt" --target " Paris" --text-granularity word \
  --control-mode multiplicative \
  --html "$work/text.html" | tee "$out/text-example.txt"
shot "$work/text.html" "$out/text-example.png"

# Image: which shape is the colour question about?
"$py" - "$out/shapes.png" "$work/question.txt" "$work/answer.txt" <<'PY'
import sys
sys.path.insert(0, "tools/default_model")
import tasks
from PIL import Image
item = next(i for i in tasks.generate("shapes", 200, seed=7) if i.kind == "colour")
Image.fromarray(item.image).save(sys.argv[1])
before, after = item.prompt.split(tasks.IMAGE_TOKEN)
open(sys.argv[2], "w").write(after)
open(sys.argv[3], "w").write(item.answer)
PY
"$atman" explain --prompt "<s>" --image "$out/shapes.png" --prompt "$(cat "$work/question.txt")" \
  --target "$(cat "$work/answer.txt")" --control-mode multiplicative --image-granularity tiles-3x3 \
  --png "$out/image-example.png" | tee "$out/image-example.txt"
echo "wrote $out/text-example.png $out/image-example.png"
