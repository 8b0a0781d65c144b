"""One AtMan explanation, ours against plain forward passes and against the plain Python
reference (tests/oracle/atman_reference.py: transformers with patched attention, one row at a
time, no prefix reuse), on the same random-initialised Llama-shaped model and prompt, in one
run. Prints a JSON report; docs/performance.md records it.

  python bench/explain_compare.py --build build [--tokens 128] [--threads 1]
"""
import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "oracle"))

from atman_reference import explain  # noqa: E402
from make_atman_cases import CORPUS, train_tokenizer  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--build", default="build", type=Path)
    parser.add_argument("--tokens", default=128, type=int, help="prompt length (approximate)")
    parser.add_argument("--threads", default=1, type=int)
    parser.add_argument("--repeats", default=5, type=int)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    tokenizer = train_tokenizer(bos=True)
    # Llama-shaped (GQA, SwiGLU), 19M parameters: big enough that per-operation overhead does
    # not dominate a pass on the CPU, small enough for a 2-core machine.
    config = LlamaConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=512,
                         intermediate_size=1376, num_hidden_layers=6, num_attention_heads=8,
                         num_key_value_heads=4, max_position_embeddings=1024,
                         tie_word_embeddings=False)
    model = LlamaForCausalLM(config).eval()
    words = " ".join(CORPUS).split()
    prompt, n = "", 0
    while len(tokenizer.encode(prompt).ids) < args.tokens:
        prompt += (" " if prompt else "") + words[n % len(words)]
        n += 1
    target = " Paris"

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        model.save_pretrained(folder)
        tokenizer.save(str(folder / "tokenizer.json"))
        (Path(tmp) / "prompt.txt").write_text(prompt)
        ours = json.loads(subprocess.run(
            [str(args.build / "bench" / "explain_bench"), str(folder), str(Path(tmp) / "prompt.txt"),
             target, "--threads", str(args.threads), "--repeats", str(args.repeats)],
            check=True, capture_output=True, text=True).stdout)

    start = time.perf_counter()
    ref = explain(model, tokenizer, [{"text": prompt}], target, {"text_granularity": "token"})
    reference_seconds = time.perf_counter() - start
    assert len(ref["units"]) == ours["units"], (len(ref["units"]), ours["units"])
    ours["reference_seconds"] = reference_seconds
    ours["reference_over_ours_batch32"] = reference_seconds / ours["explain_batched_seconds"]
    ours["reference_over_ours_batch1"] = reference_seconds / ours["explain_batch1_seconds"]
    print(json.dumps(ours, indent=1))


if __name__ == "__main__":
    main()
