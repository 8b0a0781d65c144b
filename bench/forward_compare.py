"""One forward pass of the same random-initialised model on the same input, ours against
transformers, in one script; prints both times and the ratio (ours / transformers: below 1
means we are faster).

  python bench/forward_compare.py --build build --preset small --tokens 256 --threads 1
  python bench/forward_compare.py --build build --preset llama3-8b --device cuda:0 \
      --dtype bfloat16 --tokens 512 2048 --attn eager sdpa --output last

The model is built with transformers (seed 0) and saved with save_pretrained into --workdir;
our side is build/bench/forward_bench on that folder. Ids are i * 7919 mod vocab on both
sides. transformers runs under torch.inference_mode() with the given attention
implementation; `--output all` asks both for logits at every position, `last` for the last
position only (logits_to_keep=1). On CUDA, also measures the dense bf16 matmul rate and our
achieved TFLOP/s (model FLOPs: 2 x matmul parameters x tokens + causal attention).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

PRESETS = {
    # CPU-sized: Llama layout (GQA, SwiGLU, RMSNorm, RoPE), 31 M parameters.
    "small": dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
                  num_attention_heads=8, num_key_value_heads=4, vocab_size=8192,
                  max_position_embeddings=4096),
    # Llama-3-8B's shapes, random weights.
    "llama3-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                      max_position_embeddings=8192, rope_theta=500000.0,
                      rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                    "high_freq_factor": 4.0,
                                    "original_max_position_embeddings": 8192}),
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_transformers(model, ids, device, output, repeats, warmup):
    times = []
    keep = 0 if output == "all" else 1
    with torch.inference_mode():
        for r in range(warmup + repeats):
            sync(device)
            start = time.perf_counter()
            logits = model(input_ids=ids, logits_to_keep=keep, use_cache=False).logits
            float(logits[:, 0, 0].sum())
            sync(device)
            if r >= warmup:
                times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def matmul_tflops(device, dtype, n=8192, repeats=20):
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e12


def model_flops(config, batch, tokens, output):
    h, L = config.hidden_size, config.num_hidden_layers
    d = h // config.num_attention_heads
    kv = config.num_key_value_heads * d
    per_layer = h * (h + 2 * kv) + h * h + 3 * h * config.intermediate_size
    lm_rows = tokens if output == "all" else 1
    dense = 2 * per_layer * L * batch * tokens + 2 * h * config.vocab_size * batch * lm_rows
    attention = 2 * 2 * L * batch * config.num_attention_heads * d * tokens * (tokens + 1) / 2
    return dense + attention


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--build", default="build", type=Path)
    p.add_argument("--preset", default="small", choices=sorted(PRESETS))
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    p.add_argument("--tokens", default=[256], type=int, nargs="+")
    p.add_argument("--batch", default=1, type=int)
    p.add_argument("--threads", default=1, type=int)
    p.add_argument("--repeats", default=5, type=int)
    p.add_argument("--warmup", default=1, type=int)
    p.add_argument("--rounds", default=3, type=int, help="alternations of ours and theirs")
    p.add_argument("--attn", default=["eager"], nargs="+", help="transformers attn implementations")
    p.add_argument("--output", default="all", choices=["all", "last"])
    p.add_argument("--workdir", default=None, type=Path)
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="atman-forward-bench-"))
    folder = workdir / args.preset
    config = LlamaConfig(**PRESETS[args.preset], tie_word_embeddings=False)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
    if not (folder / "config.json").exists():
        model.save_pretrained(folder)
    binary = args.build / "bench" / "forward_bench"

    results = []
    tflops = matmul_tflops(device, dtype) if device.type == "cuda" else None
    for tokens in args.tokens:
        ids = (torch.arange(args.batch * tokens) * 7919 % config.vocab_size).view(args.batch, tokens).to(device)
        # Rounds alternate ours and theirs, so that load from other processes on a shared
        # machine hits both sides alike; each side's figure is the median over all rounds.
        ours_times, theirs_times = [], {attn: [] for attn in args.attn}
        for _ in range(args.rounds):
            ours = json.loads(subprocess.run(
                [str(binary), "--model", str(folder), "--device", args.device, "--dtype", args.dtype,
                 "--batch", str(args.batch), "--tokens", str(tokens), "--threads", str(args.threads),
                 "--repeats", str(args.repeats), "--warmup", str(args.warmup), "--output", args.output],
                check=True, capture_output=True, text=True).stdout)
            ours_times += ours["times_ms"]
            for attn in args.attn:
                model.set_attn_implementation(attn)
                theirs_times[attn].append(
                    time_transformers(model, ids, device, args.output, args.repeats, args.warmup))
        ours_ms = statistics.median(ours_times)
        row = {"preset": args.preset, "device": args.device, "dtype": args.dtype,
               "batch": args.batch, "tokens": tokens, "threads": args.threads,
               "output": args.output, "rounds": args.rounds, "ours_ms": round(ours_ms, 2)}
        for attn in args.attn:
            theirs = statistics.median(theirs_times[attn])
            row[f"transformers_{attn}_ms"] = round(theirs, 2)
            row[f"ratio_vs_{attn}"] = round(ours_ms / theirs, 3)
        if tflops is not None:
            achieved = model_flops(config, args.batch, tokens, args.output) / (ours_ms / 1e3) / 1e12
            row.update(matmul_tflops=round(tflops, 1), ours_tflops=round(achieved, 1),
                       fraction_of_matmul=round(achieved / tflops, 3))
        results.append(row)
        print(json.dumps(row), flush=True)
    return results


if __name__ == "__main__":
    main()
