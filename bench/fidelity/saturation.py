#!/usr/bin/env python3
"""Why log-additive AtMan can fail on a small, sharply trained model (docs/fidelity.md,
"Reading"): how saturated the attention of the query that predicts the answer is, and mean
precision (the paper's mAP) of the engine's AtMan under suppression factors and modes.

    nice -n 5 ~/.cache/atman/venv/bin/python bench/fidelity/saturation.py \\
        --explain build/tools/atman-explain --model models/default [--tasks FILE] [--per-task 15]

Dev-set items (run.DEV_SEED), never the held-out ones.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import metrics  # noqa: E402
import pipeline  # noqa: E402
import run  # noqa: E402

CONFIGS = {
    "log-additive 0.1 (default)": {},
    "log-additive 0.01": {"control_factor": 0.01},
    "log-additive 0.001": {"control_factor": 0.001},
    "log-additive 0 (removal)": {"control_factor": 0.0},
    "multiplicative 0.1": {"mode": "multiplicative"},
    "multiplicative 0.5": {"mode": "multiplicative", "control_factor": 0.5},
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", type=Path, default=pipeline.ROOT / "models" / "default")
    p.add_argument("--explain", type=Path, default=pipeline.ROOT / "build" / "tools" / "atman-explain")
    p.add_argument("--tasks", type=Path)
    p.add_argument("--per-task", type=int, default=15)
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.tasks:
        pipeline.use_tasks(args.tasks)
    hf = pipeline.HfModel(args.model)
    engine = pipeline.Engine(args.explain, args.model)
    folder = Path(tempfile.mkdtemp(prefix="atman-saturation-"))

    print("| task | top attention prob >= 0.99 | score margin top vs 2nd key: median | p90 |")
    print("|---|---|---|---|")
    for task in pipeline.tasks.TASKS:
        top, margin = [], []
        for item in pipeline.tasks.generate(task, args.per_task, run.DEV_SEED):
            enc = hf.encode(item)
            with torch.no_grad():
                _, attentions = hf.log_prob(enc.embeds, enc, output_attentions=True)
            for a in attentions:  # every layer; [heads, keys] of the answer-predicting query
                probs = a[0, :, enc.prompt_len - 1].double()
                s = probs.sort(-1, descending=True).values
                top.append(s[:, 0].numpy())
                # A second key whose probability underflowed to 0 counts at float32's smallest
                # positive value (a margin of about 103).
                second = s[:, 1].clamp(min=float(torch.finfo(torch.float32).smallest_normal) * 2**-23)
                margin.append((s[:, 0].log() - second.log()).numpy())
        top, margin = np.concatenate(top), np.concatenate(margin)
        print(f"| {task} | {100 * (top >= 0.99).mean():.0f}% of (layer, head) | "
              f"{np.median(margin):.1f} | {np.percentile(margin, 90):.1f} |")

    print()
    print("| AtMan configuration | " + " | ".join(f"mAP {t}" for t in pipeline.tasks.TASKS) + " |")
    print("|---|" + "---|" * len(pipeline.tasks.TASKS))
    scores = {name: {t: [] for t in pipeline.tasks.TASKS} for name in CONFIGS}
    for task in pipeline.tasks.TASKS:
        for i, item in enumerate(pipeline.tasks.generate(task, args.per_task, run.DEV_SEED)):
            image = run.save_image(item, folder, f"{task}{i}")
            for name, options in CONFIGS.items():
                units, rel, _, _ = run.engine_units(engine, item, image, options, hf.grid)
                pipeline.assign_truth(item, units)
                ctx = [u for u in units if u.context]
                scores[name][task].append(
                    metrics.precision(rel[[u.index for u in ctx]], [u.truth for u in ctx]))
    for name, per in scores.items():
        print(f"| {name} | " + " | ".join(f"{100 * np.mean(v):.1f}" for v in per.values()) + " |")
    engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
