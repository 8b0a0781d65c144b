"""Writes GGUF files with the `gguf` package (llama.cpp's Python writer) and what they hold.

  <out>/quant-zoo.gguf        one tensor per supported ggml type (F32, F16, BF16, Q8_0, Q4_0,
                              Q4_1, Q5_0, Q5_1 quantized by gguf.quants.quantize from random
                              floats; Q2_K, Q3_K, Q4_K, Q5_K, Q6_K as random block bytes with
                              finite fp16 scales, which the package cannot quantize), plus
                              metadata of every value type, nested arrays included
  <out>/quant-zoo.expected.safetensors
                              gguf.quants.dequantize of each tensor, float32
  <out>/unsupported.gguf      a tensor of a ggml type we do not dequantize (IQ4_NL)
  <out>/broken/*.gguf         malformed files, each with the message substrings the reader's
                              error must contain (manifest.json: file -> [substrings])
  <out>/manifest.json         the zoo's metadata as the gguf package reads it back
"""
import argparse
import struct
from pathlib import Path

import numpy as np
import torch
from gguf import GGMLQuantizationType as Q
from gguf import GGUFReader, GGUFWriter
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import dequantize, quantize
from safetensors.torch import save_file

from common import seed_everything, write_json

FLOAT_TYPES = [Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1]
K_TYPES = [Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K]

# Byte ranges of the fp16 scale fields in each K-quant block (d, and dmin where present).
K_SCALE_FIELDS = {
    Q.Q2_K: [80, 82], Q.Q3_K: [108], Q.Q4_K: [0, 2], Q.Q5_K: [0, 2], Q.Q6_K: [208],
}


def random_k_blocks(rng, qtype, n_blocks):
    _, type_size = GGML_QUANT_SIZES[qtype]
    blocks = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
    for offset in K_SCALE_FIELDS[qtype]:
        scale = rng.uniform(-0.05, 0.05, size=n_blocks).astype(np.float16)
        blocks[:, offset:offset + 2] = scale.view(np.uint8).reshape(n_blocks, 2)
    return blocks


def write_zoo(out: Path) -> None:
    rng = np.random.default_rng(0)
    writer = GGUFWriter(str(out / "quant-zoo.gguf"), "llama")
    writer.add_uint8("zoo.u8", 200)
    writer.add_int8("zoo.i8", -100)
    writer.add_uint16("zoo.u16", 60000)
    writer.add_int16("zoo.i16", -30000)
    writer.add_uint32("zoo.u32", 4000000000)
    writer.add_int32("zoo.i32", -2000000000)
    writer.add_uint64("zoo.u64", 2**63 - 5)
    writer.add_int64("zoo.i64", -(2**62))
    writer.add_float32("zoo.f32", 0.125)
    writer.add_float64("zoo.f64", -1.0e300)
    writer.add_bool("zoo.bool", True)
    writer.add_string("zoo.string", "héllo ✓")
    writer.add_array("zoo.ints", [1, -2, 3])
    writer.add_array("zoo.floats", [0.5, -1.5])
    writer.add_array("zoo.strings", ["a", "", "ß"])
    writer.add_array("zoo.nested", [[1, 2], [3]])
    expected = {}
    for qtype in FLOAT_TYPES:
        data = rng.standard_normal((3, 64)).astype(np.float32)
        if qtype == Q.F32:
            raw = data
        elif qtype == Q.F16:
            raw = data.astype(np.float16)
        else:
            raw = quantize(data, qtype)
        name = f"t.{qtype.name}"
        if qtype in (Q.F32, Q.F16):
            writer.add_tensor(name, raw)
        else:
            writer.add_tensor(name, raw, raw_dtype=qtype)
        expected[name] = torch.from_numpy(np.ascontiguousarray(dequantize(raw, qtype), dtype=np.float32))
    for qtype in K_TYPES:
        blocks = random_k_blocks(rng, qtype, 2 * 2)  # 2 rows of 512 elements
        raw = blocks.reshape(2, -1)
        name = f"t.{qtype.name}"
        writer.add_tensor(name, raw, raw_dtype=qtype)
        expected[name] = torch.from_numpy(np.ascontiguousarray(dequantize(raw, qtype), dtype=np.float32))
    # A 3-D tensor, to check the dimension order.
    cube = rng.standard_normal((2, 3, 32)).astype(np.float32)
    writer.add_tensor("t.cube", quantize(cube, Q.Q8_0), raw_dtype=Q.Q8_0)
    expected["t.cube"] = torch.from_numpy(dequantize(quantize(cube, Q.Q8_0), Q.Q8_0).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    save_file(expected, str(out / "quant-zoo.expected.safetensors"))

    reader = GGUFReader(str(out / "quant-zoo.gguf"))
    tensors = {t.name: {"type": t.tensor_type.name, "shape": [int(x) for x in reversed(t.shape)]}
               for t in reader.tensors}
    write_json(out / "manifest.json", {"tensors": tensors, "alignment": reader.alignment})

    writer = GGUFWriter(str(out / "unsupported.gguf"), "llama")
    _, type_size = GGML_QUANT_SIZES[Q.IQ4_NL]
    writer.add_tensor("blk.0.odd.weight", rng.integers(0, 256, size=(2, type_size), dtype=np.uint8),
                      raw_dtype=Q.IQ4_NL)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


# --- malformed files, written byte by byte -----------------------------------------------

def gstr(s: bytes) -> bytes:
    return struct.pack("<Q", len(s)) + s


def kv(key: str, vtype: int, payload: bytes) -> bytes:
    return gstr(key.encode()) + struct.pack("<I", vtype) + payload


def tensor_info(name: str, dims, ggml_type: int, offset: int) -> bytes:
    out = gstr(name.encode()) + struct.pack("<I", len(dims))
    for d in dims:
        out += struct.pack("<Q", d)
    return out + struct.pack("<IQ", ggml_type, offset)


def gguf(kvs, infos, data=b"", version=3, align=32, n_tensors=None, n_kv=None) -> bytes:
    head = b"GGUF" + struct.pack("<IQQ", version, len(infos) if n_tensors is None else n_tensors,
                                 len(kvs) if n_kv is None else n_kv)
    body = head + b"".join(kvs) + b"".join(infos)
    body += b"\0" * ((-len(body)) % align)
    return body + data


ARCH = kv("general.architecture", 8, gstr(b"llama"))
F32_4 = tensor_info("w", [4], 0, 0)
DATA_4 = struct.pack("<4f", 1, 2, 3, 4)


def write_broken(out: Path) -> None:
    broken = out / "broken"
    broken.mkdir(parents=True, exist_ok=True)
    cases = {
        "bad-magic": (b"GGUX" + gguf([ARCH], [F32_4], DATA_4)[4:], ["not a GGUF file"]),
        "version-1": (gguf([ARCH], [F32_4], DATA_4, version=1), ["GGUF version 1", "not supported"]),
        "version-99": (gguf([ARCH], [F32_4], DATA_4, version=99), ["GGUF version 99"]),
        "big-endian": (b"GGUF" + struct.pack(">I", 3) + b"\0" * 16, ["big-endian"]),
        "truncated-header": (b"GGUF" + struct.pack("<I", 3) + b"\1\0\0", ["tensor count", "truncated"]),
        "kv-count-huge": (gguf([ARCH], [F32_4], DATA_4, n_kv=2**62), ["metadata count"]),
        "tensor-count-huge": (gguf([ARCH], [F32_4], DATA_4, n_tensors=2**40), ["tensor count"]),
        "string-past-end": (gguf([kv("general.name", 8, struct.pack("<Q", 10**12) + b"abc")], []),
                            ["key 'general.name'", "string length 1000000000000"]),
        "bad-value-type": (gguf([kv("general.thing", 13, b"\0" * 8)], []),
                           ["key 'general.thing'", "value type 13"]),
        "bad-array-type": (gguf([kv("general.list", 9, struct.pack("<IQ", 42, 1) + b"\0" * 8)], []),
                           ["key 'general.list'", "array element type 42"]),
        "array-absurd": (gguf([kv("tokenizer.ggml.tokens", 9, struct.pack("<IQ", 8, 2**61))], []),
                         ["key 'tokenizer.ggml.tokens'", "array of 2305843009213693952"]),
        "array-too-deep": (gguf([kv("general.deep", 9, struct.pack("<IQ", 9, 1) * 9 + struct.pack("<IQ", 4, 0))], []),
                           ["key 'general.deep'", "nest deeper"]),
        "bad-bool": (gguf([kv("general.flag", 7, b"\x07")], []), ["key 'general.flag'", "bool value 7"]),
        "duplicate-key": (gguf([ARCH, ARCH], []), ["key 'general.architecture' appears twice"]),
        "tensor-past-end": (gguf([ARCH], [tensor_info("w", [4], 0, 64)], DATA_4),
                            ["tensor 'w'", "runs past the end"]),
        "tensor-truncated-data": (gguf([ARCH], [tensor_info("w", [64], 0, 0)], DATA_4),
                                  ["tensor 'w'", "truncated"]),
        "dims-overflow": (gguf([ARCH], [tensor_info("w", [2**40, 2**40], 0, 0)], DATA_4),
                          ["tensor 'w'", "overflow"]),
        "dims-zero": (gguf([ARCH], [tensor_info("w", [4, 0], 0, 0)], DATA_4), ["tensor 'w'", "zero"]),
        "too-many-dims": (gguf([ARCH], [tensor_info("w", [1, 1, 1, 1, 4], 0, 0)], DATA_4),
                          ["tensor 'w'", "5 dimensions"]),
        "unknown-ggml-type": (gguf([ARCH], [tensor_info("w", [4], 77, 0)], DATA_4),
                              ["tensor 'w'", "unknown ggml type 77"]),
        "block-mismatch": (gguf([ARCH], [tensor_info("w", [16], 8, 0)], b"\0" * 64),
                           ["tensor 'w'", "not a multiple of the Q8_0 block size 32"]),
        "misaligned-offset": (gguf([ARCH], [tensor_info("w", [4], 0, 4)], DATA_4 * 2),
                              ["tensor 'w'", "not a multiple of the alignment 32"]),
        "bad-alignment": (gguf([ARCH, kv("general.alignment", 4, struct.pack("<I", 12))], [F32_4], DATA_4),
                          ["key 'general.alignment'", "power of two"]),
        "alignment-not-integer": (gguf([ARCH, kv("general.alignment", 8, gstr(b"32"))], [F32_4], DATA_4),
                                  ["key 'general.alignment'", "must be an integer"]),
        "duplicate-tensor": (gguf([ARCH], [F32_4, tensor_info("w", [4], 0, 32)], DATA_4 + b"\0" * 16 + DATA_4),
                             ["tensor 'w' appears twice"]),
        "overlapping-tensors": (gguf([ARCH], [F32_4, tensor_info("v", [8], 0, 0)], DATA_4 * 2),
                                ["overlap"]),
        "truncated-tensor-info": (gguf([ARCH], [F32_4])[:-40], ["tensor 'w'"]),
    }
    manifest = {}
    for name, (data, substrings) in cases.items():
        (broken / f"{name}.gguf").write_bytes(data)
        manifest[f"{name}.gguf"] = substrings
    write_json(broken / "manifest.json", manifest)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    seed_everything(0)
    args.out.mkdir(parents=True, exist_ok=True)
    write_zoo(args.out)
    write_broken(args.out)


if __name__ == "__main__":
    main()
