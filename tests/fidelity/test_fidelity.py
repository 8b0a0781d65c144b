"""Smoke test of the fidelity benchmark (bench/fidelity) and of atman-explain.

- The metrics against values computed by hand on toy inputs.
- atman-explain's answer schema; the same scores with batches of 1 and of 32 rows; and its
  scores against transformers: removal (factor 0) and the default factor 0.1 computed on
  LlavaForConditionalGeneration with the unit's key columns masked (attention mask 0) or
  biased by log 0.1 (a 4-D additive mask), for every unit of an image item and a text item.
- The benchmark end to end (run.py) on two items per task, with its JSON and table.

Environment (ctest sets both): ATMAN_EXPLAIN, the binary; ATMAN_FIDELITY_MODEL, a model folder
in the default model's format, here one trained for two steps by tools/default_model/train.py
(the fixture fidelity_model): the smoke test checks mechanics, not the model's quality, and so
does not wait for models/default to ship. A missing model or binary fails the test.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

SOURCE = Path(os.environ.get("ATMAN_SOURCE_DIR", Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(SOURCE / "bench" / "fidelity"))
import metrics  # noqa: E402
import pipeline  # noqa: E402
import run  # noqa: E402
from pipeline import tasks  # noqa: E402

MODEL = Path(os.environ.get("ATMAN_FIDELITY_MODEL", SOURCE / "models" / "default"))
EXPLAIN = Path(os.environ.get("ATMAN_EXPLAIN", SOURCE / "build" / "tools" / "atman-explain"))
SEED = 777  # any seed; the smoke test checks mechanics, not the model's quality


def test_inputs_exist():
    assert (MODEL / "config.json").is_file(), f"no model at {MODEL} (ATMAN_FIDELITY_MODEL)"
    assert EXPLAIN.is_file(), f"no atman-explain at {EXPLAIN} (ATMAN_EXPLAIN)"


# --- metrics, by hand -------------------------------------------------------------------------

def test_precision_recall_by_hand():
    x = [2.0, -1.0, 1.0, 1.0]   # clipped: [2, 0, 1, 1], sum 4, max 2
    y = [1.0, 1.0, 0.0, 0.5]
    # precision = (2*1 + 0*1 + 1*0 + 1*0.5) / 4 = 2.5 / 4
    assert metrics.precision(x, y) == pytest.approx(0.625, abs=1e-12)
    # recall = (1*1 + 0*1 + 0.5*0 + 0.5*0.5) / (1 + 1 + 0 + 0.5) = 1.25 / 2.5
    assert metrics.recall(x, y) == pytest.approx(0.5, abs=1e-12)
    assert metrics.precision([-1.0, 0.0], [1.0, 0.0]) == 0.0
    assert metrics.recall([-1.0, 0.0], [1.0, 0.0]) == 0.0


def test_pointing_and_deletion_by_hand():
    assert metrics.pointing_hit([0.1, 0.7, 0.7], [0, 1, 0]) == 1.0   # first maximum wins
    assert metrics.pointing_hit([0.9, 0.7], [0, 1]) == 0.0
    assert metrics.pointing_hit([-0.2, -0.1], [1, 1]) == 0.0         # nothing positive: miss
    assert list(metrics.deletion_order([0.1, 0.5, -2.0, 0.5])) == [1, 3, 0, 2]
    assert metrics.deletion_counts(5, [0, 0.1, 0.5, 1.0]) == [0, 0, 2, 5]  # round half to even
    # p = [0.8, 0.4, 0.2, 0.2]: drops 0, 0.4, 0.6, 0.6 -> mean 0.4
    assert metrics.area_over_curve([0.8, 0.4, 0.2, 0.2]) == pytest.approx(0.4, abs=1e-12)


# --- atman-explain ----------------------------------------------------------------------------

def explain_lines(requests, *args):
    proc = subprocess.run([str(EXPLAIN), "--model", str(MODEL), *args],
                          input="".join(json.dumps(r) + "\n" for r in requests),
                          capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


@pytest.fixture(scope="module")
def items(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    chosen = [tasks.generate("mixed", 1, SEED)[0], tasks.generate("facts", 1, SEED)[0]]
    return [(item, run.save_image(item, folder, f"i{k}")) for k, item in enumerate(chosen)]


def test_bad_arguments_exit_2():
    assert subprocess.run([str(EXPLAIN)], capture_output=True).returncode == 2
    assert subprocess.run([str(EXPLAIN), "--model", str(MODEL), "--max-rows", "0"],
                          capture_output=True).returncode == 2


def test_schema_and_errors(items):
    item, image = items[0]
    good = pipeline.engine_request(item, image, {})
    good["id"] = "a"
    answers = explain_lines([good, {"id": 7, "prompt": [{"text": "x"}], "options": {"nope": 1}},
                             {"id": 8, "prompt": [{"image_path": "/no/such.png"}]}])
    assert len(answers) == 3
    a = answers[0]
    assert set(a) == {"id", "target", "target_ids", "target_log_probs", "prompt_tokens",
                      "explanations", "unit_relevance", "usage"}
    assert a["id"] == "a" and a["target"] == item.answer
    assert len(a["target_log_probs"]) == len(a["target_ids"])
    assert len(a["explanations"]) == 1
    units = a["explanations"][0]["units"]
    image_units = [u for u in units if u["kind"] == "image"]
    assert len(image_units) == 36 and all(len(u["rect"]) == 4 for u in image_units)
    assert sum(u["rect"][2] * u["rect"][3] for u in image_units) == pytest.approx(1.0)
    for u in units:
        assert u["kind"] in ("text", "image")
        assert set(u) == ({"kind", "item", "score", "rect"} if u["kind"] == "image"
                          else {"kind", "item", "score", "start", "length"})
    assert np.array(a["unit_relevance"]).shape == (len(a["target_ids"]), len(units))
    usage = a["usage"]
    for key in ("forward_passes", "perturbed_rows", "positions_computed", "peak_memory_bytes",
                "prepare_seconds", "perturbed_seconds", "score_seconds", "seconds"):
        assert key in usage
    assert usage["perturbed_rows"] == len(units) and usage["peak_memory_bytes"] > 0
    assert answers[1] == {"id": 7, "code": "INVALID_ARGUMENT",
                          "error": "options: unknown field 'nope'"}
    assert answers[2]["code"] == "NOT_FOUND" and "/no/such.png" in answers[2]["error"]


def test_batch_size_does_not_change_scores(items):
    requests = [pipeline.engine_request(it, im, opt) for it, im in items
                for opt in ({}, {"contextual_control_threshold": 0.7})]
    one = explain_lines(requests, "--max-rows", "1")
    many = explain_lines(requests, "--max-rows", "32")
    for a, b in zip(one, many):
        ra, rb = np.array(a["unit_relevance"]), np.array(b["unit_relevance"])
        assert ra.shape == rb.shape
        assert np.abs(ra - rb).max() <= 1e-4 * np.abs(rb).max() + 1e-6
    assert one[0]["usage"]["forward_passes"] > many[0]["usage"]["forward_passes"]


@pytest.fixture(scope="module")
def hf():
    torch.set_num_threads(1)
    return pipeline.HfModel(MODEL)


@pytest.mark.parametrize("factor", [0.0, 0.1])
def test_engine_equals_transformers(items, hf, factor):
    """R_k = log p(target) - log p(target | unit k's keys scaled by `factor`), on transformers."""
    for item, image in items:
        answer = explain_lines([pipeline.engine_request(item, image, {"control_factor": factor})])[0]
        units = pipeline.units_from_engine(item, answer, hf.grid)
        enc = hf.encode(item)
        assert answer["prompt_tokens"] == enc.prompt_len
        hf.locate(units, enc)
        n = enc.embeds.shape[1]
        causal = torch.full((n, n), torch.finfo(torch.float32).min).triu(1)
        masks = []
        for u in units:
            m = causal.clone()
            cols = torch.tensor(u.positions)
            # log 0 = -inf as the finite minimum, as transformers writes masked keys
            m[:, cols] += math.log(factor) if factor > 0 else torch.finfo(torch.float32).min
            masks.append(m.clamp(min=torch.finfo(torch.float32).min))
        with torch.no_grad():
            base = hf.log_prob(enc.embeds, enc)
            perturbed = hf.log_prob(enc.embeds.expand(len(units), -1, -1), enc,
                                    attention_mask=torch.stack(masks)[:, None])
        reference = (base - perturbed).double().numpy()
        ours = np.array(answer["unit_relevance"]).sum(0)
        assert ours.shape == reference.shape
        tol = 1e-4 * np.abs(reference).max() + 1e-5
        assert np.abs(ours - reference).max() <= tol, (item.prompt, ours, reference)


# --- the benchmark end to end -----------------------------------------------------------------

def test_benchmark_end_to_end(tmp_path):
    out, doc = tmp_path / "fidelity.json", tmp_path / "doc.md"
    doc.write_text(f"intro\n{run.BEGIN}\nold\n{run.END}\noutro\n")
    assert run.main(["--model", str(MODEL), "--explain", str(EXPLAIN), "--per-task", "2",
                     "--dev-per-task", "1", "--kappa-grid", "0.6,0.8", "--ig-steps", "4",
                     "--json", str(out), "--items", "--write-doc", str(doc)]) == 0
    result = json.loads(out.read_text())
    assert set(result["kappa"].values()) <= {0.6, 0.8}
    methods = result["summary"]["methods"]
    assert run.ATMAN in methods and "IG (Captum)" in methods and run.RANDOM in methods
    assert len(methods) == 12
    for name, per in methods.items():
        for group in run.GROUPS:
            assert 0 <= per[group]["mAP"] <= 100 and 0 <= per[group]["mAR"] <= 100, name
    # Every item's recorded precision recomputes from its recorded relevance and truth.
    assert len(result["items"]) == 6
    for rec in result["items"]:
        for name, m in rec["methods"].items():
            x = np.array(m["relevance"])[rec["context"]]
            assert metrics.precision(x, rec["truth"]) == pytest.approx(m["precision"]), name
            assert len(m["curve"]) == len(pipeline.DELETION_FRACTIONS)
    text = doc.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n") and "\nold\n" not in text
    assert "| AtMan (engine, defaults) |" in text
