#!/usr/bin/env bash
# ctest fixture step python_client.wheel: builds the atman-client wheel from a clean copy of
# the tree (the files git tracks or would track under client/python and proto/: no build
# outputs, no generated stubs) and installs it, without dependencies, into OUT/site, which the
# suite puts on PYTHONPATH.
#   build_wheel.sh SOURCE_DIR OUT PYTHON
set -euo pipefail
src="$1" out="$2" py="$3"
rm -rf "$out/tree" "$out/dist" "$out/site"
mkdir -p "$out/tree" "$out/dist"
if git -C "$src" rev-parse --show-toplevel >/dev/null 2>&1; then
  (cd "$src" && git ls-files -co --exclude-standard -- client/python proto) |
    (cd "$src" && xargs -d '\n' cp --parents -t "$out/tree")
else
  mkdir -p "$out/tree/client"
  cp -r "$src/client/python" "$out/tree/client/"
  cp -r "$src/proto" "$out/tree/"
  rm -rf "$out/tree/client/python/build" "$out/tree/client/python/src/"*.egg-info
fi
if ls "$out/tree/client/python/src/atman/v1" >/dev/null 2>&1; then
  echo "generated stubs are in the tree copy: they must be built, not committed" >&2
  exit 1
fi
"$py" -m pip wheel --no-deps --no-build-isolation -q -w "$out/dist" "$out/tree/client/python"
wheel=("$out"/dist/atman_client-*.whl)
"$py" -m pip install --no-deps -q --target "$out/site" "${wheel[0]}"
echo "built ${wheel[0]##*/}"
