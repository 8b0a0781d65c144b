"""Helpers shared by the oracle scripts: deterministic set-up and tensor manifests.

The oracles are the independent side of our parity tests: they build models and files with
the real Hugging Face libraries and describe them (manifests, expected outputs) for the C++
tests to compare against. They never import our code.
"""
import hashlib
import json
import os
import random
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open


def seed_everything(seed: int = 0) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(1)


def tensor_bytes(t: torch.Tensor) -> bytes:
    """The little-endian bytes of a tensor as safetensors stores them."""
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


SAFETENSORS_DTYPE = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint64: "U64", torch.uint32: "U32", torch.uint16: "U16", torch.uint8: "U8",
    torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
}


def describe_safetensors(paths) -> dict:
    """name -> {file, dtype, shape, sha256}, read back with the safetensors library."""
    out = {}
    for path in paths:
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                t = f.get_tensor(name)
                out[name] = {
                    "file": Path(path).name,
                    "dtype": SAFETENSORS_DTYPE[t.dtype],
                    "shape": list(t.shape),
                    "sha256": hashlib.sha256(tensor_bytes(t)).hexdigest(),
                }
    return out


def write_json(path, obj) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.write("\n")


def add_bpe_tokenizer(writer, tokenizer_json: dict, pre: str) -> None:
    """Writes a byte-level BPE tokenizer.json (GPT-2's) into a GGUFWriter as llama.cpp stores
    it: tokenizer.ggml.model "gpt2", the split regex named by `pre`, tokens by id,
    <|endoftext|> a control token and the BOS and EOS token, merges as "left right"."""
    from gguf import TokenType
    vocab = tokenizer_json["model"]["vocab"]
    tokens = [None] * len(vocab)
    for token, index in vocab.items():
        tokens[index] = token
    merges = [m if isinstance(m, str) else " ".join(m) for m in tokenizer_json["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types([TokenType.CONTROL if t == "<|endoftext|>" else TokenType.NORMAL
                            for t in tokens])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(len(tokens) - 1)
    writer.add_eos_token_id(len(tokens) - 1)
