"""Fixtures of the service tests: stubs generated from proto/ at test time, and atman-server
processes started on 127.0.0.1 with free ports (each stopped with SIGTERM at the end); the
process handling is tests/support/atman_service.py, shared with tests/client.

Environment (set by tests/server/CMakeLists.txt): ATMAN_SERVER (the binary), ATMAN_ENGINE_EXPLAIN
(the in-process engine tool), ATMAN_FIXTURES (oracle outputs), ATMAN_SOURCE_DIR (the tree).
"""
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))
import atman_service  # noqa: E402
from atman_service import health_pb2, health_pb2_grpc, pb, pb_grpc  # noqa: E402,F401

FIXTURES = Path(os.environ["ATMAN_FIXTURES"])
ENGINE = os.environ["ATMAN_ENGINE_EXPLAIN"]
MODEL = FIXTURES / "atman_cases" / "llama"


class Server(atman_service.Server):
    """atman-server on the llama of the atman_cases oracle fixture unless `model` is given."""

    def __init__(self, *flags, model=None, **kwargs):
        super().__init__(*flags, model=model or MODEL, **kwargs)


@pytest.fixture(scope="module")
def server():
    s = Server()
    yield s
    assert s.stop() == 0, s.output()


def engine_scores(requests: list) -> list:
    """The engine's scores for `requests`, computed in process by the C++ tool."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(requests, f)
    out = subprocess.run([ENGINE, str(MODEL), f.name], check=True, capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    return json.loads(out.stdout)


GRANULARITY = {"token": pb.TEXT_GRANULARITY_TOKEN, "word": pb.TEXT_GRANULARITY_WORD,
               "sentence": pb.TEXT_GRANULARITY_SENTENCE, "paragraph": pb.TEXT_GRANULARITY_PARAGRAPH,
               "auto": pb.TEXT_GRANULARITY_AUTO}


def to_proto(r: dict) -> "pb.ExplainRequest":
    req = pb.ExplainRequest(target=r.get("target", ""))
    for item in r["prompt"]:
        if "text" in item:
            req.prompt.add(text=item["text"])
        else:
            req.prompt.add(token_ids=pb.TokenIds(ids=item["token_ids"]))
    req.options.text_granularity = GRANULARITY[r.get("text_granularity", "auto")]
    if "control_factor" in r:
        req.options.control_factor = r["control_factor"]
    if r.get("target_granularity") == "token":
        req.options.target_granularity = pb.TARGET_GRANULARITY_TOKEN
    return req


def flat_scores(response) -> list:
    """Scores in the engine's unit order (items in prompt order; text, tokens, then target)."""
    out = []
    for e in response.explanations:
        for item in e.items:
            out += [s.score for s in item.text] + [s.score for s in item.tokens] + [s.score for s in item.image]
        out += [s.score for s in e.target]
    return out


def assert_scores_close(ours, expected, what=""):
    assert len(ours) == len(expected), f"{what}: {len(ours)} scores, expected {len(expected)}"
    largest = max([abs(x) for x in expected] + [1e-9])
    for k, (a, b) in enumerate(zip(ours, expected)):
        assert abs(a - b) <= 1e-4 * largest, f"{what} score {k}: {a} vs engine {b}"
