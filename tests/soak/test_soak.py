"""`atman soak` against a real atman-server on the embedded default model (models/default), on
127.0.0.1: 32 clients, a 10 s warm-up and a 30 s load of Explain, ExplainStream, Generate and
Tokenize with cancellations and short deadlines (the tool's default mix), from the request set
tests/soak/default-model.jsonl. Asserted: every call ended OK or with the status the soak
provoked (CANCELLED for its cancels, DEADLINE_EXCEEDED for its short deadlines), and the idle
server's LibTorch-allocated bytes after the load equal those after the warm-up exactly.

Exactly, because measured so: a Generate/Tokenize-only soak of the same shape (32 clients,
10 s warm-up, 30 s load; 32,636 calls, 1,596 of them with short deadlines) leaves the idle
level where the warm-up left it, to the byte (0 B both times: nothing else allocates at
idle). On the code of 2026-11-30 every explanation leaves about 2.3 KB per prompt token
behind (its KV prefix; 51,008 B for the 22-token facts prompt), so this test fails there
with about 84 KB per Explain/ExplainStream call; the fix belongs to server/ and
core/runtime/. RSS is reported (the tool's table, printed below) but not judged here: 30 s
is short for a trend.

Process handling: tests/support/atman_service.py. Environment (tests/soak/CMakeLists.txt):
ATMAN_CLI, ATMAN_SERVER, ATMAN_SOURCE_DIR.
"""
import base64
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "support"))
sys.path.insert(0, str(HERE))
import atman_service  # noqa: E402
import make_requests  # noqa: E402

SOURCE = Path(os.environ["ATMAN_SOURCE_DIR"])
CLI = os.environ["ATMAN_CLI"]
MODEL = SOURCE / "models" / "default"
REQUESTS = HERE / "default-model.jsonl"
METHODS = ("Explain", "ExplainStream", "Generate", "Tokenize")


def pixels(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))


def split_images(request: dict) -> tuple[dict, list]:
    """The request without its image bytes, and the images' pixels (PNG encoders may differ
    byte for byte between zlib builds; the pixels may not)."""
    request = json.loads(json.dumps(request))
    images = []
    for item in request["prompt"]:
        if "image" in item:
            images.append(pixels(item.pop("image")))
    return request, images


def test_request_file_is_the_generators_output():
    committed = [json.loads(line) for line in REQUESTS.read_text().splitlines()]
    fresh = make_requests.requests()
    assert len(committed) == len(fresh)
    for ours, theirs in zip(committed, fresh):
        (a, a_images), (b, b_images) = split_images(ours), split_images(theirs)
        assert a == b
        assert len(a_images) == len(b_images)
        for x, y in zip(a_images, b_images):
            assert np.array_equal(x, y), a["requestId"]
    assert any(any("image" in item for item in r["prompt"]) for r in committed)


def test_soak_leaves_allocated_bytes_at_the_warm_up_level(tmp_path):
    server = atman_service.Server(model=MODEL)
    try:
        report = tmp_path / "soak.json"
        env = {k: v for k, v in os.environ.items() if not k.startswith("ATMAN_")}
        proc = subprocess.run(
            [CLI, "soak", "--address", server.address,
             "--metrics", f"http://127.0.0.1:{server.metrics_port}/metrics",
             "--requests", str(REQUESTS), "--clients", "32", "--warmup", "10s",
             "--duration", "30s", "--max-rss-growth", "off", "--json", str(report)],
            capture_output=True, text=True, env=env)
        print(proc.stdout)
        print(proc.stderr, file=sys.stderr)
        assert proc.returncode in (0, 1), proc.stderr
        soak = json.loads(report.read_text())
    finally:
        assert server.stop() == 0, server.output()

    methods = soak["methods"]
    for name in METHODS:
        m = methods[name]
        assert m["warmup_requests"] > 0 and m["load_requests"] > 0, name
        assert m["requests"] == m["warmup_requests"] + m["load_requests"] == \
            sum(m["codes"].values()), name
        assert m["ok"] == m["codes"].get("OK", 0), name
        assert m["requests"] == m["ok"] + sum(m["expected"].values()) + \
            sum(m["unexpected"].values()), name
        assert m["expected"].get("CANCELLED", 0) <= m["cancelled_by_soak"], name
        assert m["expected"].get("DEADLINE_EXCEEDED", 0) <= m["short_deadline"], name
    # The soak did provoke what it expects: cancels of explanations, short deadlines.
    assert methods["Explain"]["cancelled_by_soak"] > 0
    assert methods["ExplainStream"]["cancelled_by_soak"] > 0
    assert sum(methods[n]["short_deadline"] for n in METHODS) > 0

    verdict = soak["verdict"]
    assert verdict["unexpected"] == 0, soak["unexpected_examples"]
    assert all(not m["unexpected"] for m in methods.values())
    assert verdict["baseline"] is not None and verdict["final"] is not None, verdict["notes"]
    assert verdict["idle_growth_bytes"] == 0, (
        f"the idle server holds {verdict['idle_growth_bytes']:.0f} more allocated bytes after "
        f"the load than after the warm-up: {verdict['growth_per_explain_call_bytes']:.0f} B per "
        f"Explain/ExplainStream call of the load phase")
    assert verdict["pass"] and proc.returncode == 0, verdict["failures"]
