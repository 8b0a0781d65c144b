"""A random GPT-2 written as a llama.cpp GGUF (architecture "gpt2", the layout of llama.cpp's
convert_hf_to_gguf.py: fused attn_qkv, learned position_embd, LayerNorm weights and biases,
biases on every projection, Conv1D weights transposed to [out, in], output.weight a copy of the
token embedding) with the GPT-2 tokenizer of shared/data, and what transformers' GGUF loader
makes of it.

  <out>/gpt2.gguf       blk.0.attn_qkv.weight and blk.1.ffn_up.weight stored as Q8_0,
                        blk.0.ffn_down.weight as F16, the rest F32
  <out>/tied.gguf       the same without output.weight (tied embeddings), all F32
  <out>/no-positions.gguf
                        a gpt2 file without position_embd.weight (must be refused naming it)
  <out>/expected.safetensors
                        logits.<i> [T, V] float32 of AutoModelForCausalLM.from_pretrained(
                        out, gguf_file="gpt2.gguf") on prompt i; tied_logits.<i> of tied.gguf
  <out>/manifest.json   {"prompts": [...], "ids": [[...]] (transformers' GGUF tokenizer),
                         "config": {n_embd, n_layer, n_head, n_positions, n_inner, vocab_size,
                         layer_norm_epsilon}}
"""
import argparse
import json
from pathlib import Path

import numpy as np
import torch
from gguf import GGMLQuantizationType as Q
from gguf import GGUFWriter
from gguf.quants import quantize
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel

from common import add_bpe_tokenizer, seed_everything, write_json

PROMPTS = ["The capital of France is", "def fibonacci(n): return n"]
# n_positions: transformers maps gpt2.context_length to n_ctx, which GPT2Config ignores, so
# its position table has the default 1024 rows whatever the file says.
CONFIG = dict(n_embd=32, n_layer=2, n_head=4, n_positions=1024, layer_norm_epsilon=1e-5)
QUANTIZED = {"blk.0.attn_qkv.weight": Q.Q8_0, "blk.1.ffn_up.weight": Q.Q8_0,
             "blk.0.ffn_down.weight": Q.F16}
# Conv1D weights ([in, out] in transformers) that llama.cpp's converter transposes.
TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
NAMES = {"attn.c_attn": "attn_qkv", "attn.c_proj": "attn_output", "ln_1": "attn_norm",
         "ln_2": "ffn_norm", "mlp.c_fc": "ffn_up", "mlp.c_proj": "ffn_down"}


def gguf_name(hf: str) -> str:
    if hf.startswith("transformer.h."):
        layer, rest = hf[len("transformer.h."):].split(".", 1)
        module, kind = rest.rsplit(".", 1)
        return f"blk.{layer}.{NAMES[module]}.{kind}"
    return {"transformer.wte.weight": "token_embd.weight",
            "transformer.wpe.weight": "position_embd.weight",
            "transformer.ln_f.weight": "output_norm.weight",
            "transformer.ln_f.bias": "output_norm.bias"}[hf]


def write(path: Path, model: GPT2LMHeadModel, tokenizer_json: dict, tied: bool) -> None:
    c = model.config
    writer = GGUFWriter(str(path), "gpt2")
    writer.add_context_length(c.n_positions)
    writer.add_embedding_length(c.n_embd)
    writer.add_feed_forward_length(4 * c.n_embd)
    writer.add_block_count(c.n_layer)
    writer.add_head_count(c.n_head)
    writer.add_layer_norm_eps(c.layer_norm_epsilon)
    writer.add_file_type(1)
    add_bpe_tokenizer(writer, tokenizer_json, "gpt-2")
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" or name.endswith((".attn.bias", ".attn.masked_bias")):
            continue
        data = tensor.numpy().astype(np.float32)
        if name.endswith(TRANSPOSED):
            data = np.ascontiguousarray(data.T)
        out = gguf_name(name)
        qtype = Q.F32 if tied else QUANTIZED.get(out, Q.F32)
        if qtype == Q.F32:
            writer.add_tensor(out, data)
        elif qtype == Q.F16:
            writer.add_tensor(out, data.astype(np.float16))
        else:
            writer.add_tensor(out, quantize(data, qtype), raw_dtype=qtype)
        if name == "transformer.wte.weight" and not tied:  # llama.cpp writes the tied head
            writer.add_tensor("output.weight", data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--shared", required=True, type=Path, help="shared/data folder")
    args = parser.parse_args()
    seed_everything(0)
    args.out.mkdir(parents=True, exist_ok=True)
    tokenizer_json = json.loads((args.shared / "tokenizers" / "gpt2" / "tokenizer.json").read_text())
    vocab = len(tokenizer_json["model"]["vocab"])
    model = GPT2LMHeadModel(GPT2Config(vocab_size=vocab, **CONFIG)).eval()
    with torch.no_grad():  # LayerNorms away from 1/0, so that a dropped bias shows
        for name, p in model.named_parameters():
            if ".ln_" in name or "ln_f" in name or name.endswith(".bias"):
                p.add_(0.1 * torch.randn_like(p))
    write(args.out / "gpt2.gguf", model, tokenizer_json, tied=False)
    write(args.out / "tied.gguf", model, tokenizer_json, tied=True)

    broken = GGUFWriter(str(args.out / "no-positions.gguf"), "gpt2")
    broken.add_context_length(16)
    broken.add_embedding_length(32)
    broken.add_feed_forward_length(128)
    broken.add_block_count(1)
    broken.add_head_count(4)
    broken.add_layer_norm_eps(1e-5)
    broken.add_tensor("token_embd.weight", np.zeros((8, 32), dtype=np.float32))
    broken.write_header_to_file()
    broken.write_kv_data_to_file()
    broken.write_tensors_to_file()
    broken.close()

    tokenizer = AutoTokenizer.from_pretrained(str(args.out), gguf_file="gpt2.gguf")
    tensors, ids = {}, []
    with torch.no_grad():
        original = [model(tokenizer(p, return_tensors="pt").input_ids).logits[0] for p in PROMPTS]
    for prefix, name in (("logits", "gpt2.gguf"), ("tied_logits", "tied.gguf")):
        loaded = AutoModelForCausalLM.from_pretrained(str(args.out), gguf_file=name,
                                                      dtype=torch.float32).eval()
        with torch.no_grad():
            for i, prompt in enumerate(PROMPTS):
                enc = tokenizer(prompt, return_tensors="pt")
                if prefix == "logits":
                    ids.append(enc.input_ids[0].tolist())
                tensors[f"{prefix}.{i}"] = loaded(enc.input_ids).logits[0].contiguous()
                if prefix == "tied_logits":  # all float32: the file holds the model exactly
                    diff = (tensors[f"{prefix}.{i}"] - original[i]).abs().max().item()
                    assert diff < 1e-5, f"transformers' GGUF model differs by {diff}"
    save_file(tensors, str(args.out / "expected.safetensors"))
    write_json(args.out / "manifest.json", {
        "prompts": PROMPTS, "ids": ids,
        "config": {**CONFIG, "n_inner": 4 * CONFIG["n_embd"], "vocab_size": vocab}})


if __name__ == "__main__":
    main()
