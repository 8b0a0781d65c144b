"""Random Qwen2 and Qwen3 models written as llama.cpp GGUFs (architectures "qwen2" and "qwen3",
the layout of llama.cpp's convert_hf_to_gguf.py: Q and K rows stored as transformers has them,
not permuted as for llama; qwen2's q/k/v biases; qwen3's per-head attn_q_norm / attn_k_norm),
with the GPT-2 tokenizer of shared/data under tokenizer.ggml.pre "qwen2", and what
transformers' GGUF loader makes of them.

  <out>/<arch>.gguf       qwen2: untied (output.weight), blk.0.attn_v.weight and
                          blk.1.ffn_up.weight stored as Q8_0, the rest F32; qwen3: tied
                          embeddings, head_dim 128 (attention.key_length, which transformers
                          does not read: its Qwen3Config default is 128), all F32
  <out>/expected.safetensors
                          <arch>.<i>: logits [T, V] float32 of
                          AutoModelForCausalLM.from_pretrained(out, gguf_file=<arch>.gguf) on
                          prompt i (the file's ids)
  <out>/manifest.json     {"prompts": [...], "ids": {arch: [[...]]} (transformers' GGUF
                           tokenizer), "config": {arch: {hidden_size, ...}}}
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
from transformers import (AutoModelForCausalLM, AutoTokenizer, Qwen2Config, Qwen2ForCausalLM,
                          Qwen3Config, Qwen3ForCausalLM)

from common import add_bpe_tokenizer, seed_everything, write_json

PROMPTS = ["The capital of France is", "def fibonacci(n): return n"]
COMMON = dict(num_hidden_layers=2, max_position_embeddings=256, rms_norm_eps=1e-6,
              initializer_range=0.2)
CONFIGS = {
    "qwen2": (Qwen2ForCausalLM, dict(hidden_size=32, intermediate_size=64, num_attention_heads=4,
                                     num_key_value_heads=2, rope_theta=1e6,
                                     tie_word_embeddings=False)),
    "qwen3": (Qwen3ForCausalLM, dict(hidden_size=64, intermediate_size=96, num_attention_heads=2,
                                     num_key_value_heads=1, head_dim=128, rope_theta=1e6,
                                     tie_word_embeddings=True)),
}
QUANTIZED = {"qwen2": {"blk.0.attn_v.weight": Q.Q8_0, "blk.1.ffn_up.weight": Q.Q8_0}}
BLOCK = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
         "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
         "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm",
         "self_attn.k_norm": "attn_k_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
         "mlp.down_proj": "ffn_down"}


def gguf_name(hf: str) -> str:
    if hf.startswith("model.layers."):
        layer, rest = hf[len("model.layers."):].split(".", 1)
        module, kind = rest.rsplit(".", 1)
        return f"blk.{layer}.{BLOCK[module]}.{kind}"
    return {"model.embed_tokens.weight": "token_embd.weight",
            "model.norm.weight": "output_norm.weight", "lm_head.weight": "output.weight"}[hf]


def write(path: Path, arch: str, model, tokenizer_json: dict) -> None:
    c = model.config
    writer = GGUFWriter(str(path), arch)
    writer.add_context_length(c.max_position_embeddings)
    writer.add_embedding_length(c.hidden_size)
    writer.add_feed_forward_length(c.intermediate_size)
    writer.add_block_count(c.num_hidden_layers)
    writer.add_head_count(c.num_attention_heads)
    writer.add_head_count_kv(c.num_key_value_heads)
    writer.add_layer_norm_rms_eps(c.rms_norm_eps)
    writer.add_rope_freq_base(c.rope_parameters["rope_theta"])
    if arch == "qwen3":
        writer.add_key_length(c.head_dim)
        writer.add_value_length(c.head_dim)
    writer.add_file_type(1)
    add_bpe_tokenizer(writer, tokenizer_json, "qwen2")
    writer.add_add_bos_token(False)
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and c.tie_word_embeddings:
            continue
        data = tensor.numpy().astype(np.float32)
        out = gguf_name(name)
        qtype = QUANTIZED.get(arch, {}).get(out, Q.F32)
        if qtype == Q.F32:
            writer.add_tensor(out, data)
        else:
            writer.add_tensor(out, quantize(data, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--shared", required=True, type=Path, help="shared/data folder")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    tokenizer_json = json.loads((args.shared / "tokenizers" / "gpt2" / "tokenizer.json").read_text())
    vocab = len(tokenizer_json["model"]["vocab"])
    tensors, ids, configs = {}, {}, {}
    for arch, (cls, kwargs) in CONFIGS.items():
        seed_everything(0)
        config_cls = Qwen2Config if arch == "qwen2" else Qwen3Config
        model = cls(config_cls(vocab_size=vocab, **COMMON, **kwargs)).eval()
        with torch.no_grad():  # norms and biases away from 1 / 0, so that a dropped one shows
            for name, p in model.named_parameters():
                if "norm" in name or name.endswith(".bias"):
                    p.add_(0.3 * torch.randn_like(p))
        file = f"{arch}.gguf"
        write(args.out / file, arch, model, tokenizer_json)
        tokenizer = AutoTokenizer.from_pretrained(str(args.out), gguf_file=file)
        loaded = AutoModelForCausalLM.from_pretrained(str(args.out), gguf_file=file,
                                                      dtype=torch.float32).eval()
        assert type(loaded) is cls, type(loaded)
        ids[arch] = []
        with torch.no_grad():
            for i, prompt in enumerate(PROMPTS):
                enc = tokenizer(prompt, return_tensors="pt").input_ids
                ids[arch].append(enc[0].tolist())
                tensors[f"{arch}.{i}"] = loaded(enc).logits[0].contiguous()
                if arch == "qwen3":  # all float32: the file holds the model exactly
                    diff = (tensors[f"{arch}.{i}"] - model(enc).logits[0]).abs().max().item()
                    assert diff < 1e-5, f"transformers' GGUF {arch} differs by {diff}"
        c = model.config
        configs[arch] = {k: getattr(c, k) for k in
                         ("hidden_size", "intermediate_size", "num_hidden_layers",
                          "num_attention_heads", "num_key_value_heads", "tie_word_embeddings",
                          "vocab_size")}
        configs[arch]["head_dim"] = getattr(c, "head_dim", c.hidden_size // c.num_attention_heads)
        configs[arch]["model_type"] = arch
    save_file(tensors, str(args.out / "expected.safetensors"))
    write_json(args.out / "manifest.json", {"prompts": PROMPTS, "ids": ids, "config": configs})


if __name__ == "__main__":
    main()
