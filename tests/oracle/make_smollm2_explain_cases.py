"""Reference explanations on a real pretrained model: SmolLM2-135M-Instruct as the float32
Hugging Face folder of scripts/setup.sh (env ATMAN_SMOLLM2_HF, else the default of
scripts/common.sh), explained by the plain Python AtMan (atman_reference.py) at word
granularity: both manipulation modes, with and without conceptual suppression (one of them per
target token), a short prompt whose target repeats prompt words (so that conceptual suppression
reaches the teacher-forced target tokens).

  <out>/cases.json  {"model": folder, "cases": [{name, prompt, target, options, expected}]}
  <out>/skipped.txt the reason, when the model folder is absent (the C++ test then skips)
"""
import argparse
import os
from pathlib import Path

import torch
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM

from atman_reference import explain
from common import seed_everything, write_json

PROMPT = "Anna lives in Paris. Anna lives in"
TARGET = " Paris. Yes"
CASES = [
    ("word-log_additive", {"text_granularity": "word"}),
    ("word-multiplicative", {"text_granularity": "word", "mode": "multiplicative"}),
    ("word-log_additive-suppression-token", {"text_granularity": "word",
                                             "contextual_control_threshold": 0.6,
                                             "target_granularity": "token"}),
    ("word-multiplicative-suppression", {"text_granularity": "word", "mode": "multiplicative",
                                         "contextual_control_threshold": 0.6}),
]


def model_folder() -> Path:
    """scripts/common.sh's ATMAN_SMOLLM2_HF."""
    if os.environ.get("ATMAN_SMOLLM2_HF"):
        return Path(os.environ["ATMAN_SMOLLM2_HF"])
    cache = os.environ.get("ATMAN_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "atman")
    return Path(cache) / "models" / "smollm2-135m-instruct-f32"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "skipped.txt").unlink(missing_ok=True)
    folder = model_folder()
    if not (folder / "config.json").is_file():
        (args.out / "skipped.txt").write_text(
            f"no SmolLM2-135M-Instruct Hugging Face folder at {folder} (ATMAN_SMOLLM2_HF): "
            "run scripts/setup.sh to write it\n")
        return
    seed_everything(0)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    out = []
    for name, options in CASES:
        prompt = [{"text": PROMPT}]
        ref = explain(model, tokenizer, prompt, TARGET, options)
        if options.get("contextual_control_threshold") is not None:
            assert ref["similarity_suppressed"] > 0, name
        out.append({"name": name, "prompt": prompt, "target": TARGET, "options": options,
                    "expected": ref})
    write_json(args.out / "cases.json", {"model": str(folder), "cases": out})


if __name__ == "__main__":
    main()
