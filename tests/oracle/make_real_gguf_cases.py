"""What transformers makes of the real SmolLM2-135M-Instruct Q4_1 GGUF (ATMAN_SMOLLM2_GGUF)
and of the same weights as a float32 Hugging Face folder (ATMAN_SMOLLM2_HF).

  <out>/manifest.json   {"gguf": path, "hf": path, "prompts": [...], "ids": [[...]],
                         "tokenizer": [{"text", "ids", "offsets"} for tests/oracle/make_tokenizer_cases.py's CORPUS],
                         "skip": reason (only when a file is absent)}
  <out>/expected.safetensors
                        logits.<i> [T, V] float32 of AutoModelForCausalLM.from_pretrained(
                        folder, gguf_file=name, dtype=float32) on prompt i; hf_logits.<i> of
                        the Hugging Face folder; dequant.<name> for a few tensors
                        (the first 2048 rows of gguf.quants.dequantize of the stored blocks,
                        in llama.cpp's row order)
"""
import argparse
import os
from pathlib import Path

import numpy as np
import torch
from gguf import GGUFReader
from gguf.quants import dequantize
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from common import seed_everything, write_json
from make_tokenizer_cases import CORPUS

PROMPTS = [
    "The capital of France is",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "def fibonacci(n):",
]
DEQUANT_ROWS = 2048  # the first rows of each (the whole embedding would be 113 MB)
DEQUANT = ["token_embd.weight", "blk.0.attn_q.weight", "blk.3.ffn_down.weight", "output_norm.weight"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    seed_everything(0)
    args.out.mkdir(parents=True, exist_ok=True)
    gguf = Path(os.environ.get("ATMAN_SMOLLM2_GGUF",
                               Path.home() / ".cache/atman/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    hf = Path(os.environ.get("ATMAN_SMOLLM2_HF",
                             Path.home() / ".cache/atman/models/smollm2-135m-instruct-f32"))
    missing = [str(p) for p in (gguf, hf) if not p.exists()]
    if missing:
        write_json(args.out / "manifest.json", {"skip": f"absent (scripts/setup.sh fetches them): {missing}"})
        return

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                 dtype=torch.float32).eval()
    hf_model = AutoModelForCausalLM.from_pretrained(str(hf), dtype=torch.float32).eval()
    tensors = {}
    ids = []
    with torch.no_grad():
        for i, prompt in enumerate(PROMPTS):
            enc = tokenizer(prompt, return_tensors="pt")
            ids.append(enc.input_ids[0].tolist())
            tensors[f"logits.{i}"] = model(enc.input_ids).logits[0].contiguous()
            tensors[f"hf_logits.{i}"] = hf_model(enc.input_ids).logits[0].contiguous()

    reader = GGUFReader(str(gguf))
    by_name = {t.name: t for t in reader.tensors}
    for name in DEQUANT:
        t = by_name[name]
        rows = np.array(dequantize(t.data, t.tensor_type), dtype=np.float32, copy=True)
        tensors[f"dequant.{name}"] = torch.from_numpy(rows[:DEQUANT_ROWS].copy())

    cases = []
    for text in CORPUS:
        enc = tokenizer(text, return_offsets_mapping=True)
        cases.append({"text": text, "ids": enc.input_ids,
                      "offsets": [list(o) for o in enc.offset_mapping],
                      "decoded": tokenizer.decode(enc.input_ids)})
    save_file(tensors, str(args.out / "expected.safetensors"))
    write_json(args.out / "manifest.json", {
        "gguf": str(gguf), "hf": str(hf), "prompts": PROMPTS, "ids": ids, "tokenizer": cases,
        "vocab_size": len(tokenizer), "bos_token": tokenizer.bos_token,
        "eos_token": tokenizer.eos_token, "chat_template": tokenizer.chat_template,
    })


if __name__ == "__main__":
    main()
