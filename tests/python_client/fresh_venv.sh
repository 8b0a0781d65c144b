#!/usr/bin/env bash
# ctest python_client.fresh_venv: the wheel of python_client.wheel installs into a fresh venv
# (python -m venv, no system site packages) with only its declared dependencies, resolved by
# pip from the index (pinned by requirements.txt as constraints; pip's cache makes reruns
# offline-friendly), and imports; its optional extras (pandas, Pillow) are absent there and
# their methods say how to get them.
#   fresh_venv.sh SOURCE_DIR OUT PYTHON
set -euo pipefail
src="$1" out="$2" py="$3"
base="$("$py" -c 'import sys; print(sys._base_executable)')"
rm -rf "$out/venv"
# No pip inside (ensurepip is slow): the build venv's pip installs into it (pip --python).
"$base" -m venv --without-pip "$out/venv"
wheel=("$out"/dist/atman_client-*.whl)
pip=("$py" -m pip --python "$out/venv/bin/python")
"${pip[@]}" install -q --no-compile --constraint "$src/requirements.txt" "${wheel[0]}"
"${pip[@]}" check
cd "$out"  # not the tree: the import must come from the venv
"$out/venv/bin/python" - "$src" <<'PY'
import importlib.metadata as md
import re
import sys
from pathlib import Path

import atman
from atman.v1 import atman_pb2 as pb

src = Path(sys.argv[1])
assert Path(atman.__file__).is_relative_to(Path(sys.prefix)), atman.__file__
assert atman.__version__ == md.version("atman-client"), atman.__version__
major = re.search(r"^package atman\.v(\d+);", (src / "proto/atman/v1/atman.proto").read_text(),
                  re.M).group(1)
assert atman.__version__.split(".")[0] == major and atman.PROTO_PACKAGE == f"atman.v{major}"
declared = {re.split(r"[<>=;\[ ]", r)[0].lower() for r in md.requires("atman-client")
            if "extra ==" not in r}
assert declared == {"grpcio", "grpcio-health-checking", "protobuf", "numpy"}, declared
for optional in ("pandas", "PIL"):
    try:
        __import__(optional)
    except ImportError:
        pass
    else:
        raise AssertionError(f"{optional} is importable in the fresh venv")
request = pb.ExplainRequest(prompt=[pb.PromptItem(image=b"GIF89a")], target="x")
result = atman.Explanation.from_proto(request, pb.ExplainResponse(target="x"))
for call, name in ((result.to_pandas, "pandas"), (result.overlay, "pillow")):
    try:
        call()
    except ImportError as e:
        assert f"pip install {name}" in str(e), e
    else:
        raise AssertionError(f"{call.__name__} worked without {name}")
try:
    atman.Client("127.0.0.1:1").explain("x", control_factor=-1)
except atman.OptionError as e:
    assert e.field == "control_factor", e
print("fresh venv:", atman.__version__, sorted(declared))
PY
