"""Smoke test of the SQuAD-protocol fidelity benchmark on SmolLM2 (bench/fidelity/squad.py,
docs/fidelity.md "SQuAD protocol on SmolLM2").

- The committed QA items are valid (3-5 sentences, the answer in exactly one sentence, not in
  the question), and malformed items are refused with a message naming the item.
- Tokenizing the prompt's three parts on their own gives the tokens of the joined prompt (so
  the engine, which tokenizes its text items separately, sees the model's natural tokens).
- atman-explain's token-unit scores on SmolLM2 equal transformers' with each unit's key column
  biased by log 0.1 (every context unit of one item); scoring only the context (scored_items)
  gives the scores of a whole-prompt explanation; the deletion curves computed in shared
  batches equal one curve per method.
- squad.py end to end on one item, two AtMan configurations: every recorded precision
  recomputes from the recorded relevance and truth; the truth is the answering sentence.

Environment: ATMAN_EXPLAIN (the binary) and ATMAN_SMOLLM2_HF (the float32 SmolLM2 folder that
scripts/setup.sh writes; default as in scripts/common.sh). A missing model or binary fails.
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
import squad  # noqa: E402

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "atman"
MODEL = Path(os.environ.get("ATMAN_SMOLLM2_HF", CACHE / "models" / "smollm2-135m-instruct-f32"))
EXPLAIN = Path(os.environ.get("ATMAN_EXPLAIN", SOURCE / "build" / "tools" / "atman-explain"))


def test_inputs_exist():
    assert (MODEL / "config.json").is_file(), f"no SmolLM2 folder at {MODEL} (ATMAN_SMOLLM2_HF)"
    assert EXPLAIN.is_file(), f"no atman-explain at {EXPLAIN} (ATMAN_EXPLAIN)"


def test_items_are_valid():
    items = squad.load_items(squad.ITEMS)
    assert len(items) >= 150
    assert len({it["id"] for it in items}) == len(items)
    for it in items:
        s = it["context"][it["answer_sentence"]]
        assert it["answer"] in s


@pytest.mark.parametrize("item, message", [
    ({"id": "x", "context": ["A is red.", "B is red.", "C is blue."], "question": "Q?",
      "answer": "red"}, "x): answer 'red' is in sentences [0, 1], must be in exactly one"),
    ({"id": "y", "context": ["A is red.", "B is green.", "C is blue."], "question": "Is A red?",
      "answer": "red"}, "y): answer 'red' appears in the question"),
    ({"id": "z", "context": ["A is red.", "B is green."], "question": "Q?", "answer": "red"},
     "z): context has 2 sentences, not 3-5"),
    ({"id": "w", "context": ["A is red.", "B is green.", "C is blue."], "question": "Q?"},
     "w): missing key 'answer'"),
    # "red" inside "reddish" is not the answer as a whole word
    ({"id": "v", "context": ["A is reddish.", "B is green.", "C is blue."], "question": "Q?",
      "answer": "red"}, "v): answer 'red' is in sentences [], must be in exactly one"),
])
def test_bad_items_are_refused(tmp_path, item, message):
    path = tmp_path / "items.jsonl"
    path.write_text(json.dumps(item) + "\n")
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")
                       .replace("(", r"\(").replace(")", r"\)")):
        squad.load_items(path)


def test_parts_tokenize_like_the_joined_prompt():
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(MODEL / "tokenizer.json"))
    for it in squad.load_items(squad.ITEMS):
        parts = squad.prompt_parts(it)
        joined = tok.encode("".join(parts), add_special_tokens=False).ids
        split = [t for p in parts for t in tok.encode(p, add_special_tokens=False).ids]
        assert split == joined, it["id"]


def explain(requests):
    proc = subprocess.run([str(EXPLAIN), "--model", str(MODEL)],
                          input="".join(json.dumps(r) + "\n" for r in requests),
                          capture_output=True, text=True, timeout=900,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


@pytest.fixture(scope="module")
def hf():
    torch.set_num_threads(1)
    return squad.QaModel(MODEL)


def test_engine_equals_transformers_on_smollm2(hf):
    """R_k = log p(target) - log p(target | unit k's key column + log 0.1) on transformers."""
    item = squad.load_items(squad.ITEMS)[0]
    answer = explain([squad.request(item, {}, 0)])[0]
    enc, spans = hf.encode(item)
    assert answer["prompt_tokens"] == enc.prompt_len
    assert answer["target_ids"] == enc.target_ids
    units = squad.locate_units(answer, spans, item)
    assert all(len(u.positions) == 1 for u in units)  # token units
    n = enc.embeds.shape[1]
    low = torch.finfo(torch.float32).min
    causal = torch.full((n, n), low).triu(1)
    reference = []
    with torch.no_grad():
        base = hf.log_prob(enc.embeds, enc)
        for chunk in range(0, len(units), 16):
            masks = []
            for u in units[chunk:chunk + 16]:
                m = causal.clone()
                m[:, u.positions] += math.log(0.1)
                masks.append(m.clamp(min=low))
            masks = torch.stack(masks)[:, None]
            perturbed = hf.log_prob(enc.embeds.expand(masks.shape[0], -1, -1), enc,
                                    attention_mask=masks)
            reference += (base - perturbed).double().tolist()
    reference = np.array(reference)
    ours = np.array(answer["unit_relevance"]).sum(0)
    assert np.abs(ours - reference).max() <= 1e-3 * np.abs(reference).max() + 1e-4


def test_scored_context_equals_the_whole_prompt_explanation(hf):
    """The benchmark scores only the context item (scored_items [1]); its units and scores are
    those of an explanation of every prompt token (a row suppresses only its own unit)."""
    item = squad.load_items(squad.ITEMS)[1]
    scored = squad.request(item, {"mode": "multiplicative"}, 0)
    whole = json.loads(json.dumps(scored))
    del whole["options"]["scored_items"]
    a, b = explain([scored, whole])
    units_a, units_b = a["explanations"][0]["units"], b["explanations"][0]["units"]
    context_b = [k for k, u in enumerate(units_b) if u["item"] == 1]
    assert [u["item"] for u in units_a] == [1] * len(context_b)
    assert [(u["start"], u["length"]) for u in units_a] == \
        [(units_b[k]["start"], units_b[k]["length"]) for k in context_b]
    assert len(context_b) < len(units_b) / 2 and a["usage"]["perturbed_rows"] == len(context_b)
    ra = np.array(a["unit_relevance"]).sum(0)
    rb = np.array(b["unit_relevance"]).sum(0)[context_b]
    assert np.abs(ra - rb).max() <= 1e-4 * np.abs(rb).max()


def test_shared_deletion_curves_equal_one_curve_each(hf):
    """deletion_curves (one removal set computed once for every method that has it) gives each
    method the curve of its own deletion_curve."""
    item = squad.load_items(squad.ITEMS)[2]
    enc, spans = hf.encode(item)
    answer = explain([squad.request(item, {}, 0)])[0]
    context = squad.locate_units(answer, spans, item)
    rng = np.random.default_rng(0)
    atman = np.array(answer["unit_relevance"]).sum(0)
    relevances = {"atman": atman, "same top": atman + 1e-3 * rng.random(len(context)),
                  "random": rng.random(len(context)), "reversed": -atman}
    shared = squad.pipeline.deletion_curves(hf, enc, context, relevances)
    for name, rel in relevances.items():
        alone = squad.pipeline.deletion_curve(hf, enc, context, rel)
        assert shared[name] == pytest.approx(alone, rel=1e-4, abs=1e-7), name
    assert shared["atman"][0] == shared["random"][0] and shared["atman"][-1] == shared["random"][-1]


def test_squad_end_to_end(tmp_path):
    out, doc = tmp_path / "squad.json", tmp_path / "doc.md"
    doc.write_text(f"intro\n{squad.BEGIN}\nold\n{squad.END}\noutro\n")
    assert squad.main(["--model", str(MODEL), "--explain", str(EXPLAIN), "--limit", "1",
                       "--atman-configs", "2", "--ig-steps", "2", "--no-occlusion",
                       "--json", str(out), "--write-doc", str(doc)]) == 0
    result = json.loads(out.read_text())
    assert len(result["items"]) == 1
    rec = result["items"][0]
    item = squad.load_items(squad.ITEMS)[0]
    # truth: the context tokens of the answering sentence, and only those
    assert 0 < sum(rec["truth"]) < len(rec["truth"])
    assert len(result["methods"]) == 2 + 6  # log-additive and multiplicative 0.1 AtMan, IG, IxG, Saliency, rollout, Chefer, random
    for name, m in rec["methods"].items():
        x = np.array(m["relevance"])[rec["context"]]
        # the file keeps 6 significant digits of each relevance value
        assert metrics.precision(x, rec["truth"]) == pytest.approx(m["precision"], rel=1e-5), name
        assert all(v == float(f"{v:.6g}") for v in m["relevance"] + m["curve"]), name
        assert len(m["curve"]) == 11
    assert item["id"] == rec["id"]
    text = doc.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n") and "\nold\n" not in text
    assert "| AtMan log-additive 0.1 (production default) |" in text


def synthetic_record(item_id, methods):
    """An item's record as squad.py writes it, with method name -> precision (no model)."""
    return {"id": item_id, "p_answer": 0.5, "greedy_first_token": True, "prompt_tokens": 80,
            "context": [0, 1, 2, 3], "truth": [0.0, 1.0, 1.0, 0.0],
            "methods": {m: {"precision": p, "recall": p, "pointing": 1.0, "aopc": 0.1,
                            "seconds": 1.0} for m, p in methods.items()}}


def write_results(path, records):
    path.write_text(json.dumps({"kappa": 0.7, "ig_steps": 20, "methods": [], "items": records}))


def test_merge_adds_methods_per_item_and_counts_n(tmp_path):
    """--from-json adds up the methods an item has in each file; N counts per method;
    --common keeps only the items with every method (no model needed)."""
    ids = [it["id"] for it in squad.load_items(squad.ITEMS)[:2]]
    default, chefer = "AtMan log-additive 0.1 (production default)", "Chefer (grad x attention)"

    write_results(tmp_path / "a.json", [synthetic_record(ids[0], {default: 0.8}),
                                        synthetic_record(ids[1], {default: 0.6})])
    write_results(tmp_path / "b.json", [synthetic_record(ids[0], {chefer: 0.4})])
    out = tmp_path / "merged.json"
    assert squad.main(["--from-json", str(tmp_path / "a.json"), str(tmp_path / "b.json"),
                       "--json", str(out)]) == 0
    summary = json.loads(out.read_text())["summary"]["methods"]
    assert summary[default]["n"] == 2 and summary[default]["mAP"] == pytest.approx(70.0)
    assert summary[chefer]["n"] == 1 and summary[chefer]["mAP"] == pytest.approx(40.0)
    assert squad.main(["--from-json", str(tmp_path / "a.json"), str(tmp_path / "b.json"),
                       "--common", "--json", str(out)]) == 0
    summary = json.loads(out.read_text())["summary"]["methods"]
    assert summary[default]["n"] == 1 and summary[default]["mAP"] == pytest.approx(80.0)


def test_compact_json_keeps_the_table_without_relevance(tmp_path):
    """--compact drops per-item relevance and curves, keeps every metric (6 significant
    digits) and the units, and reads back into the same table (the committed results file)."""
    item_id = squad.load_items(squad.ITEMS)[0]["id"]
    default = "AtMan log-additive 0.1 (production default)"
    full = {"kappa": 0.7, "ig_steps": 20, "methods": [], "items": [{
        "id": item_id, "p_answer": 0.123456789, "greedy_first_token": False,
        "prompt_tokens": 80, "units": [[[40], True, 0.0], [[41], True, 1.0]],
        "context": [0, 1], "truth": [0.0, 1.0],
        "methods": {default: {"relevance": [0.1, 0.30000001], "curve": [0.2] * 11,
                              "precision": 0.7500000123, "recall": 1.0, "pointing": 1.0,
                              "aopc": 0.1, "seconds": 2.5}}}]}
    (tmp_path / "full.json").write_text(json.dumps(full))
    compact = tmp_path / "compact.json"
    assert squad.main(["--from-json", str(tmp_path / "full.json"), "--compact",
                       "--json", str(compact)]) == 0
    rec = json.loads(compact.read_text())["items"][0]
    m = rec["methods"][default]
    assert "relevance" not in m and "curve" not in m
    assert m["precision"] == 0.75 and rec["p_answer"] == 0.123457 and rec["units"][1][2] == 1.0
    again = tmp_path / "again.json"
    assert squad.main(["--from-json", str(compact), "--json", str(again)]) == 0
    assert json.loads(again.read_text())["summary"]["methods"][default]["mAP"] == \
        pytest.approx(75.0)


def test_methods_by_short_name():
    args = squad.parse_args(["--from-json", "x", "--methods", "mul0.1cs,ig,la0.1"])
    atman, others = squad.select_methods(args)
    assert list(atman) == ["AtMan multiplicative 0.1 + CS (kappa 0.7)",
                           "AtMan log-additive 0.1 (production default)"]
    assert atman["AtMan multiplicative 0.1 + CS (kappa 0.7)"] == {
        "mode": "multiplicative", "contextual_control_threshold": 0.7}
    assert list(others) == ["IG (Captum)"]
    with pytest.raises(SystemExit):
        squad.select_methods(squad.parse_args(["--from-json", "x", "--methods", "la0.5"]))


def test_pairs_against_the_default_with_the_sign_test(tmp_path):
    """Each method's row counts the items (that have both) where the default's precision is
    higher / lower, ties in neither, with the exact two-sided sign test (no model needed)."""
    ids = [it["id"] for it in squad.load_items(squad.ITEMS)[:12]]
    chefer = "Chefer (grad x attention)"
    precisions = [(0.9, 0.5)] * 9 + [(0.4, 0.6), (0.7, 0.7)]  # 9 higher, 1 lower, 1 tie

    records = [synthetic_record(i, {squad.DEFAULT: d, chefer: c}) for i, (d, c) in zip(ids, precisions)]
    records.append(synthetic_record(ids[11], {chefer: 0.1}))  # no default: not paired
    path, out, doc = tmp_path / "a.json", tmp_path / "out.json", tmp_path / "doc.md"
    write_results(path, records)
    doc.write_text(f"{squad.BEGIN}\n{squad.END}\n")
    assert squad.main(["--from-json", str(path), "--json", str(out),
                       "--write-doc", str(doc)]) == 0
    summary = json.loads(out.read_text())["summary"]["methods"]
    assert "vs_default" not in summary[squad.DEFAULT]
    vs = summary[chefer]["vs_default"]
    assert (vs["items"], vs["higher"], vs["lower"]) == (11, 9, 1)
    assert vs["sign_p"] == pytest.approx(2 * 11 / 1024)  # P(<= 1 of 10) twice
    text = doc.read_text()
    assert f"| {chefer} | 12 |" in text and "| 9 / 1 (p = 0.021) |" in text
    assert squad.sign_test(0, 0) == 1.0 and squad.sign_test(5, 5) == 1.0
    assert squad.sign_test(28, 0) == pytest.approx(2 / 2**28)
