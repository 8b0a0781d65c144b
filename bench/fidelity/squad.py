#!/usr/bin/env python3
"""Fidelity on a real pretrained model: the AtMan paper's SQuAD protocol (Table 1a) on
SmolLM2-135M-Instruct, with the QA items of bench/fidelity/data/qa_items.jsonl (written for this
benchmark; docs/fidelity.md, "SQuAD protocol on SmolLM2").

Each item: a context of 3-5 short sentences, a question, and the gold answer, which appears
verbatim in exactly one sentence. The model reads a one-shot prompt
("Context: ...\\nQuestion: ...\\nAnswer: ...\\n\\nContext: <context>\\nQuestion: <q>\\nAnswer:"),
the target is " <answer>" (teacher-forced), relevance is computed per token and scored over the
context tokens against the tokens of the answering sentence (mAP, mAR, pointing game, deletion
AOPC: bench/fidelity/metrics.py). AtMan comes from our engine (atman-explain, token units), the
baselines from transformers' LlamaForCausalLM on the same float32 weights.

    nice -n 5 ~/.cache/atman/venv/bin/python bench/fidelity/squad.py \\
        --model "$ATMAN_SMOLLM2_HF" --explain build/tools/atman-explain \\
        --write-doc docs/fidelity.md --json squad.json

Not thread-safe; one process drives one engine subprocess and one transformers model.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import re
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import metrics  # noqa: E402
import pipeline  # noqa: E402

ITEMS = Path(__file__).resolve().parent / "data" / "qa_items.jsonl"
# One demonstration before the item (its answer is not in any item's question): without it the
# Instruct model answers in whole sentences and gives the bare answer a median probability of
# 0.003 (plain format) or less (chat template); with it 0.2 (docs/fidelity.md).
DEMO = ("Context: Anna lives in Rome. Tom works in a bank.\nQuestion: Where does Anna live?\n"
        "Answer: Rome\n\n")
BEGIN, END = "<!-- squad-table:begin -->", "<!-- squad-table:end -->"
RANDOM = "Random (chance)"
DEFAULT = "AtMan log-additive 0.1 (production default)"


# ---------------------------------------------------------------------------------------------
# Items.


def load_items(path: Path) -> list[dict]:
    """The QA items, each checked: 3-5 sentences, the answer verbatim (as whole words) in
    exactly one sentence and not in the question. Adds "answer_sentence" (its index)."""
    items = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        item = json.loads(line)
        where = f"{path.name}:{n} ({item.get('id')})"
        for key in ("id", "context", "question", "answer"):
            if key not in item:
                raise ValueError(f"{where}: missing key '{key}'")
        if not 3 <= len(item["context"]) <= 5:
            raise ValueError(f"{where}: context has {len(item['context'])} sentences, not 3-5")
        pattern = re.compile(r"(?<![\w])" + re.escape(item["answer"]) + r"(?![\w])")
        holding = [k for k, s in enumerate(item["context"]) if pattern.search(s)]
        if len(holding) != 1:
            raise ValueError(f"{where}: answer {item['answer']!r} is in sentences {holding}, "
                             "must be in exactly one")
        if pattern.search(item["question"]):
            raise ValueError(f"{where}: answer {item['answer']!r} appears in the question")
        item["answer_sentence"] = holding[0]
        items.append(item)
    return items


def prompt_parts(item: dict) -> list[str]:
    """The prompt as three text items: the demonstration and "Context:", the context (item 1,
    the units that are scored), the question and "Answer:". Each boundary is one where the
    byte-level pre-tokenizer splits anyway, so the tokens are those of the joined text."""
    return [DEMO + "Context:", " " + " ".join(item["context"]),
            f"\nQuestion: {item['question']}\nAnswer:"]


def sentence_spans(item: dict) -> list[tuple[int, int]]:
    """[begin, end) of each sentence within the context part, its leading space included (the
    byte-level tokens of a sentence start with that space)."""
    spans, at = [], 0
    for s in item["context"]:
        spans.append((at, at + 1 + len(s)))
        at += 1 + len(s)
    return spans


# ---------------------------------------------------------------------------------------------
# The transformers side.


class QaModel:
    """LlamaForCausalLM (eager attention, float32) and its tokenizer; the interface of
    pipeline.HfModel that the baseline methods use (model, log_prob on input embeddings)."""

    log_prob = pipeline.HfModel.log_prob

    def __init__(self, model_dir: Path):
        from tokenizers import Tokenizer
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(
            str(model_dir), attn_implementation="eager", dtype=torch.float32).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.embedding = self.model.get_input_embeddings()

    def encode(self, item: dict):
        """(Encoded, [(part, begin, end) per prompt position]): every part tokenized on its
        own, as the engine tokenizes its text items."""
        ids, spans = [], []
        for k, part in enumerate(prompt_parts(item)):
            enc = self.tokenizer.encode(part, add_special_tokens=False)
            ids += enc.ids
            spans += [(k, b, e) for b, e in enc.offsets]
        target_ids = self.tokenizer.encode(" " + item["answer"], add_special_tokens=False).ids
        with torch.no_grad():
            embeds = self.embedding(torch.tensor([ids + target_ids[:-1]])).clone()
        return pipeline.Encoded(embeds, len(ids), target_ids, spans, -1), spans


def locate_units(answer: dict, spans, item: dict) -> list[pipeline.Unit]:
    """The engine's token units with their positions, context flag and ground truth."""
    truth_span = sentence_spans(item)[item["answer_sentence"]]
    units = []
    for k, u in enumerate(answer["explanations"][0]["units"]):
        if u["kind"] != "text":
            raise ValueError(f"unexpected unit kind {u['kind']!r}")
        b, e = u["start"], u["start"] + u["length"]
        unit = pipeline.Unit("text", k, char_range=(b, e))
        unit.positions = [p for p, (part, pb, pe) in enumerate(spans)
                          if part == u["item"] and pb < e and pe > b]
        if not unit.positions:
            raise RuntimeError(f"unit {k} (item {u['item']}, chars {b}-{e}) has no position")
        unit.context = u["item"] == 1
        unit.truth = float(unit.context and b < truth_span[1] and e > truth_span[0])
        units.append(unit)
    return units


# ---------------------------------------------------------------------------------------------
# The run.


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", type=Path, default=Path(os.environ.get(
        "ATMAN_SMOLLM2_HF", Path.home() / ".cache" / "atman" / "models" /
        "smollm2-135m-instruct-f32")), help="SmolLM2 float32 HF folder (env ATMAN_SMOLLM2_HF)")
    p.add_argument("--explain", type=Path, default=pipeline.ROOT / "build" / "tools" / "atman-explain")
    p.add_argument("--items-file", type=Path, default=ITEMS)
    p.add_argument("--limit", type=int, default=0, help="first N items only (0: all)")
    p.add_argument("--start", type=int, default=0, help="skip the first N items")
    p.add_argument("--kappa", type=float, default=0.7,
                   help="conceptual-suppression threshold (research code: 0.6-0.75)")
    p.add_argument("--ig-steps", type=int, default=20)
    p.add_argument("--atman-configs", type=int, default=0,
                   help="only the first N AtMan configurations (0: all nine; the smoke test uses 2)")
    p.add_argument("--methods", help="comma-separated methods to compute, for example "
                   "la0.1,mul0.1,chefer (AtMan: " + ",".join(ATMAN_KEYS) + "; others: " +
                   ",".join(BASELINE_KEYS) + "); default: all (or --atman-configs / "
                   "--no-occlusion)")
    p.add_argument("--stop-after", type=float, default=0,
                   help="start no new item after this many minutes (0: no limit)")
    p.add_argument("--common", action="store_true",
                   help="the table over only the items that have every method")
    p.add_argument("--no-occlusion", action="store_true",
                   help="leave out Captum occlusion (the costliest baseline)")
    p.add_argument("--json", type=Path, help="write every figure (and per-item records) here")
    p.add_argument("--compact", action="store_true",
                   help="--json without the per-item relevance and deletion curves (the "
                        "metrics, units and truth stay; --resume and --from-json read it): the "
                        "committed bench/fidelity/results file")
    p.add_argument("--resume", type=Path, help="a --json file of an earlier run: its items "
                   "are kept, and only the methods an item lacks are computed")
    p.add_argument("--write-doc", type=Path, help="replace the squad-table block of this file")
    p.add_argument("--from-json", type=Path, nargs="+",
                   help="compute nothing: merge the items of these --json files (runs over "
                        "disjoint --start/--limit ranges, same methods) and print the table")
    args = p.parse_args(argv)
    if args.from_json:
        return args
    for path, what in ((args.model, "--model"), (args.explain, "--explain"),
                       (args.items_file, "--items-file")):
        if not path.exists():
            p.error(f"{what} {path} does not exist")
    return args


def engine_methods(kappa: float) -> dict:
    """The AtMan configurations, name -> engine options, in the order of priority of a run
    with limited time (--methods picks a subset in any order; --atman-configs N the first N)."""
    cs = {"contextual_control_threshold": kappa}
    return {
        DEFAULT: {},
        "AtMan multiplicative 0.1 (paper's code)": {"mode": "multiplicative"},
        f"AtMan log-additive 0.1 + CS (kappa {kappa:g})": {**cs},
        f"AtMan multiplicative 0.1 + CS (kappa {kappa:g})": {"mode": "multiplicative", **cs},
        "AtMan log-additive 0.01": {"control_factor": 0.01},
        "AtMan multiplicative 0.01": {"mode": "multiplicative", "control_factor": 0.01},
        "AtMan factor 0 (removal)": {"control_factor": 0.0},
        f"AtMan log-additive 0.01 + CS (kappa {kappa:g})": {"control_factor": 0.01, **cs},
        f"AtMan factor 0 + CS (kappa {kappa:g})": {"control_factor": 0.0, **cs},
    }


# Short names for --methods, in the same order as the full names of engine_methods() and then
# the baselines (pipeline.BASELINES and random).
ATMAN_KEYS = ["la0.1", "mul0.1", "la0.1cs", "mul0.1cs", "la0.01", "mul0.01", "la0", "la0.01cs",
              "la0cs"]
BASELINE_KEYS = {"chefer": "Chefer (grad x attention)", "ixg": "IxG (Captum)",
                 "ig": "IG (Captum)", "saliency": "Saliency (Captum)",
                 "rollout": "Attention rollout", "random": RANDOM,
                 "occlusion": "Occlusion (zero embedding, Captum)"}


def random_scores(hf, enc, units, item_id: str = ""):
    """Uniform random scores, seeded by the item (the same on a resumed run)."""
    return np.random.default_rng(zlib.crc32(item_id.encode())).random(len(units))


def select_methods(args) -> tuple[dict, dict]:
    """(AtMan name -> options, baseline name -> function) that this run computes, each in the
    order given (--methods) or the default order."""
    atman = engine_methods(args.kappa)
    by_key = dict(zip(ATMAN_KEYS, atman))
    baselines = dict(pipeline.BASELINES)
    baselines[RANDOM] = random_scores
    if args.methods:
        chosen_a, chosen_b = {}, {}
        for key in args.methods.split(","):
            key = key.strip()
            if key in by_key:
                chosen_a[by_key[key]] = atman[by_key[key]]
            elif key in BASELINE_KEYS:
                chosen_b[BASELINE_KEYS[key]] = baselines[BASELINE_KEYS[key]]
            else:
                raise SystemExit(f"--methods: unknown method {key!r}; known: "
                                 f"{', '.join(ATMAN_KEYS + list(BASELINE_KEYS))}")
        return chosen_a, chosen_b
    if args.atman_configs:
        atman = dict(list(atman.items())[:args.atman_configs])
    order = [BASELINE_KEYS[k] for k in BASELINE_KEYS]
    chosen_b = {n: baselines[n] for n in order
                if not (args.no_occlusion and n.startswith("Occlusion"))}
    return atman, chosen_b


def request(item: dict, options: dict, rid: int) -> dict:
    """The engine request of one AtMan configuration: token units of the context (prompt item
    1) only, the only units the metrics read; the demonstration and the question are read by
    the model but not scored (scored_items), which gives the context tokens the scores of a
    whole-prompt explanation at a third of its passes."""
    return {"id": rid, "prompt": [{"text": t} for t in prompt_parts(item)],
            "target": " " + item["answer"],
            "options": {"text_granularity": "token", "scored_items": [1], **options}}


def units_from_record(rec: dict) -> list[pipeline.Unit]:
    """The units an earlier run recorded (positions, context flag, ground truth)."""
    units = []
    for k, (positions, context, truth) in enumerate(rec["units"]):
        unit = pipeline.Unit("text", k)
        unit.positions, unit.context, unit.truth = positions, context, truth
        units.append(unit)
    return units


def explain_item(engine, hf, item, methods, baselines, rec=None) -> dict:
    """The item's record with `methods` (AtMan name -> options) and `baselines` (name ->
    function) added to those of `rec` (an earlier run's record of the item, or None)."""
    enc, spans = hf.encode(item)
    # All engine requests go out first; the engine (its own thread) works through them while
    # this process computes the transformers baselines, then the answers are read in order.
    for rid, options in enumerate(methods.values()):
        engine.proc.stdin.write(json.dumps(request(item, options, rid)) + "\n")
    engine.proc.stdin.flush()
    if rec is None:
        rec = {"id": item["id"], "methods": {}}
        with torch.no_grad():
            lp = hf.log_prob(enc.embeds, enc)
            logits = hf.model(inputs_embeds=enc.embeds).logits[0, enc.prompt_len - 1]
        rec["p_answer"] = math.exp(float(lp[0]))
        rec["greedy_first_token"] = int(logits.argmax()) == enc.target_ids[0]
        rec["prompt_tokens"] = enc.prompt_len
    answers = []
    if methods:
        # The first answer defines the units (the baselines need them), so read it first.
        answers.append(json.loads(engine.proc.stdout.readline()))
        if "error" in answers[0]:
            raise RuntimeError(f"atman-explain failed on {item['id']}: {answers[0]['error']}")
        if answers[0]["prompt_tokens"] != enc.prompt_len:
            raise RuntimeError(f"{item['id']}: engine has {answers[0]['prompt_tokens']} prompt "
                               f"tokens, transformers {enc.prompt_len}")
        if answers[0]["target_ids"] != enc.target_ids:
            raise RuntimeError(f"{item['id']}: target ids differ: {answers[0]['target_ids']} "
                               f"against {enc.target_ids}")
        units = locate_units(answers[0], spans, item)
        if "units" in rec and [u[0] for u in rec["units"]] != [u.positions for u in units]:
            raise RuntimeError(f"{item['id']}: units differ from the resumed record's")
    elif "units" in rec:
        units = units_from_record(rec)
    else:
        raise RuntimeError(f"{item['id']}: no AtMan method to take the units from")
    rec["units"] = [[u.positions, u.context, u.truth] for u in units]
    context = [u for u in units if u.context]
    idx = [u.index for u in context]
    y = np.array([u.truth for u in context])
    rec["context"], rec["truth"] = idx, y.tolist()
    # The baselines and their deletion curves while the engine works through the AtMan
    # requests; then the AtMan curves. Every removal set is computed once per item (`known`).
    known = {}
    new = {}
    for name, fn in baselines.items():
        if fn is random_scores:
            fn = functools.partial(random_scores, item_id=item["id"])
        rel, seconds, _ = pipeline.timed(fn, hf, enc, units)
        new[name] = {"relevance": np.asarray(rel, dtype=np.float64), "seconds": seconds}
    curves = pipeline.deletion_curves(hf, enc, context,
                                      {name: m["relevance"][idx] for name, m in new.items()},
                                      known=known)
    for _ in range(len(methods) - 1):
        answers.append(json.loads(engine.proc.stdout.readline()))
    atman = {}
    for name, answer in zip(methods, answers):
        if "error" in answer:
            raise RuntimeError(f"{name} failed on {item['id']}: {answer['error']}")
        if len(answer["explanations"][0]["units"]) != len(units):
            raise RuntimeError(f"{name}: {len(answer['explanations'][0]['units'])} units, "
                               f"expected {len(units)}")
        atman[name] = {
            "relevance": np.asarray(answer["unit_relevance"], dtype=np.float64).sum(0),
            "seconds": answer["usage"]["seconds"],
            "engine_peak": answer["usage"]["peak_memory_bytes"]}
    curves.update(pipeline.deletion_curves(
        hf, enc, context, {name: m["relevance"][idx] for name, m in atman.items()}, known=known))
    new.update(atman)
    for name, m in new.items():
        x = m["relevance"][idx]
        curve = curves[name]
        m.update(precision=metrics.precision(x, y), recall=metrics.recall(x, y),
                 pointing=metrics.pointing_hit(x, y), aopc=metrics.area_over_curve(curve),
                 curve=curve)
        m["relevance"] = m["relevance"].tolist()
        rec["methods"][name] = m
    return rec


def canonical_order(kappa: float) -> list[str]:
    """Every method name, in the table's order: AtMan configurations, then the baselines."""
    return list(engine_methods(kappa)) + list(BASELINE_KEYS.values())


def in_order(names, kappa: float) -> list[str]:
    order = canonical_order(kappa)
    return sorted(set(names), key=lambda n: order.index(n) if n in order else len(order))


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.from_json:
        return merge(args)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    pipeline.IG_STEPS = args.ig_steps
    items = load_items(args.items_file)
    items = items[args.start:]
    if args.limit:
        items = items[:args.limit]
    done = {}
    if args.resume and args.resume.exists():
        previous = json.loads(args.resume.read_text())
        if previous["kappa"] != args.kappa or previous["ig_steps"] != args.ig_steps:
            raise SystemExit(f"--resume {args.resume}: kappa {previous['kappa']} / IG steps "
                             f"{previous['ig_steps']}, this run {args.kappa} / {args.ig_steps}")
        done = {r["id"]: r for r in previous.get("items", [])}
    methods, baselines = select_methods(args)
    hf = QaModel(args.model)
    engine = pipeline.Engine(args.explain, args.model)
    started = time.time()
    deadline = started + 60 * args.stop_after if args.stop_after else None
    records = dict(done)  # id -> record; the resumed items outside this run's range are kept
    for n, item in enumerate(items):
        if deadline and time.time() > deadline:
            print(f"[squad] --stop-after {args.stop_after:g} min reached before {item['id']}",
                  file=sys.stderr, flush=True)
            break
        rec = records.get(item["id"])
        have = set(rec["methods"]) if rec else set()
        todo_a = {k: v for k, v in methods.items() if k not in have}
        todo_b = {k: v for k, v in baselines.items() if k not in have}
        if not todo_a and not todo_b:
            continue
        if rec is not None and "units" not in rec and not todo_a:
            continue  # an old record without units: its baselines need an AtMan answer
        t0 = time.time()
        records[item["id"]] = explain_item(engine, hf, item, todo_a, todo_b, rec)
        print(f"[squad] {item['id']}: {time.time() - t0:.1f}s for {len(todo_a)} AtMan + "
              f"{len(todo_b)} other methods ({n + 1}/{len(items)}, "
              f"{(time.time() - started) / 60:.1f} min)", file=sys.stderr, flush=True)
        if args.json:  # checkpoint after every item, so a run can be stopped and resumed
            write_json(args, ordered(records, args.items_file))
    engine.close()
    return finish(args, ordered(records, args.items_file))


def ordered(records: dict, items_file: Path) -> list[dict]:
    order = [it["id"] for it in load_items(items_file)]
    return [records[i] for i in order if i in records]


def finish(args, records: list[dict]) -> int:
    if args.common:  # only the items that have every method of the run
        names = set(method_names_of(records, args.kappa))
        records = [r for r in records if set(r["methods"]) >= names]
        if not records:
            raise SystemExit("--common: no item has every method")
    summary = summarise(records, args.kappa)
    table = render(summary, args, len(records))
    print(table)
    if args.json:
        write_json(args, records)
    if args.write_doc:
        write_doc(args.write_doc, table)
    return 0


def merge(args) -> int:
    """The table of the items recorded in several --json files (in item-file order; a later
    file's methods of an item are added to an earlier one's)."""
    by_id, kappa, ig_steps = {}, None, None
    for path in args.from_json:
        data = json.loads(path.read_text())
        if kappa is not None and (data["kappa"], data["ig_steps"]) != (kappa, ig_steps):
            raise SystemExit(f"{path}: other kappa / IG steps than {args.from_json[0]}")
        kappa, ig_steps = data["kappa"], data["ig_steps"]
        for rec in data["items"]:
            if rec["id"] in by_id:
                by_id[rec["id"]]["methods"].update(rec["methods"])
            else:
                by_id[rec["id"]] = rec
    args.kappa, args.ig_steps = kappa, ig_steps
    return finish(args, ordered(by_id, args.items_file))


def write_doc(path: Path, table: str) -> None:
    text = path.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{path} has no {BEGIN} ... {END} block")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    path.write_text(f"{head}{BEGIN}\n{table}\n{END}{tail}")


def rounded(records: list[dict], compact: bool = False) -> list[dict]:
    """The records with every figure of a method (relevance, deletion curve, metrics) rounded
    to 6 significant digits (the metrics are computed before rounding), without relevance and
    curves when compact."""
    def r6(values):
        return [float(f"{v:.6g}") for v in values]
    out = []
    for rec in records:
        methods = {name: {k: (r6(v) if isinstance(v, list)
                              else r6([v])[0] if isinstance(v, float) else v)
                          for k, v in m.items()
                          if not (compact and k in ("relevance", "curve"))}
                   for name, m in rec["methods"].items()}
        out.append({**rec, "methods": methods, "p_answer": r6([rec["p_answer"]])[0]})
    return out


def write_json(args, records) -> None:
    """All records and the summary, written whole to a temporary file and renamed (a run
    stopped while writing leaves the previous checkpoint)."""
    tmp = args.json.with_name(args.json.name + ".tmp")
    tmp.write_text(json.dumps({"model": args.model.name, "kappa": args.kappa,
                               "ig_steps": args.ig_steps,
                               "methods": method_names_of(records, args.kappa),
                               "summary": summarise(records, args.kappa),
                               "items": rounded(records, getattr(args, "compact", False))},
                              separators=(",", ":")))
    os.replace(tmp, args.json)


def method_names_of(records, kappa: float) -> list[str]:
    return in_order({n for r in records for n in r["methods"]}, kappa)


def summarise(records, kappa: float) -> dict:
    """Per method, over the items that have it (N); item statistics over all items."""
    out = {"items": len(records),
           "median_p_answer": float(np.median([r["p_answer"] for r in records])),
           "greedy_first_token": float(np.mean([r["greedy_first_token"] for r in records])),
           "mean_prompt_tokens": float(np.mean([r["prompt_tokens"] for r in records])),
           "mean_context_tokens": float(np.mean([len(r["context"]) for r in records])),
           "methods": {}}
    for name in method_names_of(records, kappa):
        ms = [r["methods"][name] for r in records if name in r["methods"]]
        correct = [r["methods"][name] for r in records
                   if r["greedy_first_token"] and name in r["methods"]]
        per = {
            "n": len(ms),
            "mAP": 100 * float(np.mean([m["precision"] for m in ms])),
            "mAR": 100 * float(np.mean([m["recall"] for m in ms])),
            "mAP_correct": (100 * float(np.mean([m["precision"] for m in correct]))
                            if correct else None),
            "pointing": 100 * float(np.mean([m["pointing"] for m in ms])),
            "aopc": float(np.mean([m["aopc"] for m in ms])),
            "s": float(np.mean([m["seconds"] for m in ms])),
        }
        if "engine_peak" in ms[0]:
            per["engine_peak_mb"] = max(m["engine_peak"] for m in ms) / 2**20
        if name != DEFAULT:
            per["vs_default"] = paired_against_default(records, name)
        out["methods"][name] = per
    truth_share = [float(np.mean(r["truth"])) for r in records]
    out["truth_share"] = float(np.mean(truth_share))
    return out


def paired_against_default(records, name: str) -> dict | None:
    """Item by item over the items that have both: on how many the production default's
    precision is higher / lower than `name`'s (ties, which the sign test leaves out, are the
    rest), and the two-sided exact sign test's p (None when no item has both)."""
    pairs = [(r["methods"][DEFAULT]["precision"], r["methods"][name]["precision"])
             for r in records if DEFAULT in r["methods"] and name in r["methods"]]
    if not pairs:
        return None
    higher = sum(d > o for d, o in pairs)
    lower = sum(d < o for d, o in pairs)
    return {"items": len(pairs), "higher": higher, "lower": lower,
            "sign_p": sign_test(higher, lower)}


def sign_test(k: int, j: int) -> float:
    """Two-sided exact sign test of k successes against j failures (ties left out): the
    probability under p = 1/2 of an outcome at least as far from n/2 as this one."""
    n = k + j
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(k, j) + 1)) / 2**n
    return min(1.0, 2 * tail)


def render(summary, args, n_items) -> str:
    lines = [
        f"Model `{args.model.name}`, {n_items} QA items "
        f"(`{args.items_file.name}`{', only items with every method' if args.common else ''}), "
        f"token units; mean {summary['mean_prompt_tokens']:.1f} "
        f"prompt tokens of which {summary['mean_context_tokens']:.1f} context tokens; the "
        f"answering sentence holds {100 * summary['truth_share']:.1f}% of the context tokens "
        f"(the mAP of a uniform map). Median p(answer) {summary['median_p_answer']:.3f}; "
        f"greedy first answer token right on {100 * summary['greedy_first_token']:.1f}% of "
        f"items. Conceptual suppression kappa {args.kappa:g}; IG {args.ig_steps} steps. "
        f"N: the items a method ran on. Default higher / lower: on how many of the items "
        f"that have both the production default's precision is above / below the method's "
        f"(ties neither), with the two-sided exact sign test's p.",
        "",
        "| method | N | mAP | mAR | mAP (first token greedy-right) | pointing | deletion AOPC "
        "| default higher / lower (sign test p) | s / explanation |",
        "|---|---|---|---|---|---|---|---|---|"]
    for name, a in summary["methods"].items():
        mc = "n/a" if a["mAP_correct"] is None else f"{a['mAP_correct']:.1f}"
        vs = a.get("vs_default")
        paired = ("-" if vs is None else
                  f"{vs['higher']} / {vs['lower']} ({format_p(vs['sign_p'])})")
        lines.append(f"| {name} | {a['n']} | {a['mAP']:.1f} | {a['mAR']:.1f} | {mc} "
                     f"| {a['pointing']:.1f} | {a['aopc']:.3f} | {paired} | {a['s']:.2f} |")
    return "\n".join(lines)


def format_p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.2g}" if p < 0.1 else f"p = {p:.2f}"


if __name__ == "__main__":
    sys.exit(main())
