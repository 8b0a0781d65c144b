"""Writes checkpoint folders with the real libraries, and a manifest of each.

  <out>/llama/          LlamaForCausalLM (random init, seed 0) saved by save_pretrained
  <out>/llama-sharded/  the same model saved in several shards with an index
  <out>/dtype-zoo/      one tensor of every safetensors dtype, a scalar, an empty tensor and
                        __metadata__, written by safetensors.torch.save_file

Each folder gets manifest.json: every tensor's file, dtype, shape and the sha256 of its bytes
as read back by the safetensors library, plus the config values the C++ test checks.
"""
import argparse
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

from common import describe_safetensors, seed_everything, write_json


def tiny_llama() -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=97, hidden_size=32, intermediate_size=56, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config).eval()


def manifest(folder: Path, config_keys) -> None:
    import json
    config = json.loads((folder / "config.json").read_text())
    files = sorted(folder.glob("*.safetensors"))
    write_json(folder / "manifest.json", {
        "tensors": describe_safetensors(files),
        "config": {k: config[k] for k in config_keys},
    })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    seed_everything(0)

    model = tiny_llama()
    keys = ["model_type", "hidden_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "vocab_size", "intermediate_size"]
    model.save_pretrained(args.out / "llama", safe_serialization=True)
    manifest(args.out / "llama", keys)
    model.save_pretrained(args.out / "llama-sharded", safe_serialization=True,
                          max_shard_size="20KB")
    assert (args.out / "llama-sharded" / "model.safetensors.index.json").exists()
    manifest(args.out / "llama-sharded", keys)

    zoo = args.out / "dtype-zoo"
    zoo.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(1)
    base = torch.randn(3, 5, generator=g)
    tensors = {
        "f64": base.double(), "f32": base, "f16": base.half(), "bf16": base.bfloat16(),
        "i64": (base * 1e6).long(), "i32": (base * 1e4).int(), "i16": (base * 100).short(),
        "i8": (base * 20).to(torch.int8), "u8": (base.abs() * 40).to(torch.uint8),
        "u16": (base.abs() * 900).to(torch.uint16), "u32": (base.abs() * 1e6).to(torch.uint32),
        "u64": (base.abs() * 1e9).to(torch.uint64), "bool": base > 0,
        "f8_e4m3": base.to(torch.float8_e4m3fn), "f8_e5m2": base.to(torch.float8_e5m2),
        "scalar": torch.tensor(3.25), "empty": torch.zeros(0, 4),
        "odd_length": torch.arange(7, dtype=torch.int8),
    }
    save_file(tensors, str(zoo / "model.safetensors"), metadata={"format": "pt", "made_by": "atman-oracle"})
    write_json(zoo / "config.json", {"model_type": "dtype-zoo"})
    manifest(zoo, ["model_type"])


if __name__ == "__main__":
    main()
