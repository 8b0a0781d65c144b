"""One AtMan explanation on a real pretrained model (a Hugging Face Llama folder such as
SmolLM2-135M-Instruct, $ATMAN_SMOLLM2_HF), side by side in one run, per prompt length:

- ours: bench/explain_bench (token granularity, batches of up to 32 rows), its time against
  (n + 1) plain forward passes of our own (the median plain pass times n + 1) and its
  allocator peak against a plain pass;
- the plain Python AtMan reference (tests/oracle/atman_reference.py: transformers with patched
  attention, one full pass per unit, no prefix reuse) on the same transformers model;
  --reference-rows K times only its first K units and scales the per-unit time to all n
  (the reference's passes all have the same length, so its time is linear in the units);
- Captum Integrated Gradients (zero baseline, --ig-steps steps, all steps in one batch) on the
  same transformers model and target (sum of the target tokens' log-probabilities);
- a plain transformers forward pass, the Python side's unit of time and memory.

Memory: ours, the runtime's allocator peak above what was live (bench/explain_bench; weights
are memory-mapped and not in it); the Python methods, the growth of the process's peak RSS
while the method runs (Linux clear_refs resets VmHWM first), so the resident weights are not in
it either. Prints one JSON object per length and a markdown table; docs/performance.md records
it.

  python bench/explain_real.py --build build --model "$ATMAN_SMOLLM2_HF" --tokens 128 512
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "oracle"))
sys.path.insert(0, str(ROOT / "bench" / "fidelity"))

import atman_reference  # noqa: E402
from pipeline import PeakRss  # noqa: E402


def build_prompt(tokenizer, tokens: int) -> str:
    """Natural text of about `tokens` tokens: the QA contexts of bench/fidelity/data, in order."""
    lines = (ROOT / "bench" / "fidelity" / "data" / "qa_items.jsonl").read_text().splitlines()
    sentences = [s for line in lines for s in json.loads(line)["context"]]
    prompt, k = "", 0
    while len(tokenizer.encode(prompt, add_special_tokens=False).ids) < tokens:
        prompt += (" " if prompt else "") + sentences[k % len(sentences)]
        k += 1
    return prompt


def measured(fn):
    rss = PeakRss(os.getpid())
    rss.start()
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start, rss.stop()


def log_prob_fn(model, prompt_len, target_ids):
    def f(embeds):
        logits = model(inputs_embeds=embeds).logits[:, prompt_len - 1:prompt_len - 1 + len(target_ids)]
        lp = torch.log_softmax(logits.float(), dim=-1)
        idx = torch.tensor(target_ids).view(1, -1, 1).expand(lp.shape[0], -1, 1)
        return lp.gather(-1, idx).squeeze(-1).sum(-1)
    return f


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build", default="build", type=Path)
    parser.add_argument("--model", type=Path, default=Path(os.environ.get(
        "ATMAN_SMOLLM2_HF", Path.home() / ".cache/atman/models/smollm2-135m-instruct-f32")))
    parser.add_argument("--tokens", default=[128, 512], type=int, nargs="+")
    parser.add_argument("--target", default=" London")
    parser.add_argument("--threads", default=1, type=int)
    parser.add_argument("--ig-steps", default=20, type=int)
    parser.add_argument("--reference-rows", default=0, type=int,
                        help="time the Python reference on its first K units only and scale "
                             "to all units (0: all units)")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    for path, what in ((args.model / "config.json", "--model"),
                       (args.build / "bench" / "explain_bench", "--build")):
        if not path.exists():
            parser.error(f"{what}: {path} does not exist")
    torch.set_num_threads(args.threads)

    from captum.attr import IntegratedGradients
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM

    tokenizer = Tokenizer.from_file(str(args.model / "tokenizer.json"))
    model = AutoModelForCausalLM.from_pretrained(str(args.model), dtype=torch.float32).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    target_ids = tokenizer.encode(args.target, add_special_tokens=False).ids

    results = []
    for tokens in args.tokens:
        prompt = build_prompt(tokenizer, tokens)
        prompt_ids = tokenizer.encode(prompt, add_special_tokens=False).ids
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "prompt.txt").write_text(prompt)
            ours = json.loads(subprocess.run(
                [str(args.build / "bench" / "explain_bench"), str(args.model),
                 str(Path(tmp) / "prompt.txt"), args.target, "--threads", str(args.threads),
                 "--repeats", "1", "--batch1", "peak"],
                check=True, capture_output=True, text=True).stdout.splitlines()[-1])
        n = ours["units"]
        ids = torch.tensor([prompt_ids + target_ids[:-1]])

        # transformers plain forward (sdpa, the library default), the Python side's unit.
        model.set_attn_implementation("sdpa")
        with torch.no_grad():
            model(input_ids=ids)  # warm-up
            _, hf_forward, hf_forward_rss = measured(lambda: model(input_ids=ids))

        # Captum IG on the input embeddings.
        f = log_prob_fn(model, len(prompt_ids), target_ids)
        embeds = model.get_input_embeddings()(ids).detach()
        ig = IntegratedGradients(f)
        _, ig_seconds, ig_rss = measured(lambda: ig.attribute(
            embeds.clone().requires_grad_(True), baselines=torch.zeros_like(embeds),
            n_steps=args.ig_steps))

        # The plain Python reference (sets eager + its patched attention itself).
        original = atman_reference.make_units
        rows = n if args.reference_rows <= 0 else min(args.reference_rows, n)
        atman_reference.make_units = lambda *a, **k: original(*a, **k)[:rows]
        try:
            ref, ref_seconds, ref_rss = measured(lambda: atman_reference.explain(
                model, tokenizer, [{"text": prompt}], args.target,
                {"text_granularity": "token", "add_special_tokens": False}))
        finally:
            atman_reference.make_units = original
        assert len(ref["units"]) == rows, (len(ref["units"]), rows)
        # (rows + 1) passes measured (the unperturbed one and `rows` perturbed ones).
        ref_full = ref_seconds * (n + 1) / (rows + 1)
        model.set_attn_implementation("sdpa")

        explain_s = ours["explain_batched_seconds"]
        out = {
            "tokens": ours["sequence_length"], "units": n, "threads": args.threads,
            "ours_forward_seconds": ours["forward_seconds"],
            "ours_explain_seconds": explain_s,
            "ours_over_n_plus_1_forwards": ours["batched_over_n_plus_1_forwards"],
            "ours_plain_forward_peak_bytes": ours["plain_forward_peak_bytes"],
            "ours_explain_peak_bytes": ours["explain_batched_peak_bytes"],
            "ours_explain_batch1_peak_bytes": ours.get("explain_batch1_peak_bytes"),
            "weight_bytes": ours["weight_bytes"],
            "hf_forward_seconds": hf_forward, "hf_forward_rss_bytes": hf_forward_rss,
            "hf_n_plus_1_forwards_seconds": (n + 1) * hf_forward,
            "reference_rows_measured": rows, "reference_seconds_measured": ref_seconds,
            "reference_seconds": ref_full, "reference_rss_bytes": ref_rss,
            "ig_steps": args.ig_steps, "ig_seconds": ig_seconds, "ig_rss_bytes": ig_rss,
            "reference_over_ours": ref_full / explain_s,
            "ig_over_ours": ig_seconds / explain_s,
            "hf_n_plus_1_over_ours": (n + 1) * hf_forward / explain_s,
        }
        print(json.dumps(out), flush=True)
        results.append(out)

    mb = 2 ** 20
    print("\n| L | n | ours s | ours / ((n+1) x our plain pass) | (n+1) x transformers pass s "
          "| Python reference s | reference / ours | Captum IG s | IG / ours "
          "| ours peak MB (plain pass) | reference peak RSS growth MB | IG peak RSS growth MB "
          "(transformers plain pass) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['tokens']} | {r['units']} | {r['ours_explain_seconds']:.1f} | "
              f"{r['ours_over_n_plus_1_forwards']:.2f} | {r['hf_n_plus_1_forwards_seconds']:.1f} | "
              f"{r['reference_seconds']:.1f}"
              f"{'' if r['reference_rows_measured'] == r['units'] else ' (scaled)'} | "
              f"{r['reference_over_ours']:.1f} | {r['ig_seconds']:.1f} | {r['ig_over_ours']:.2f} | "
              f"{r['ours_explain_peak_bytes'] / mb:.1f} ({r['ours_plain_forward_peak_bytes'] / mb:.1f}) | "
              f"{r['reference_rss_bytes'] / mb:.1f} | {r['ig_rss_bytes'] / mb:.1f} "
              f"({r['hf_forward_rss_bytes'] / mb:.1f}) |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
