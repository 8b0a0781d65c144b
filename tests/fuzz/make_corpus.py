"""Writes the seed corpora and dictionaries of the fuzz targets in tests/fuzz/ (committed; rerun
after changing this script, in the project venv):

    ~/.cache/atman/venv/bin/python tests/fuzz/make_corpus.py

  corpus/safetensors_fuzzer/       small .safetensors files written by the `safetensors`
                                   library: every dtype, scalars, empty tensors, metadata,
                                   several tensors, padding between them
  corpus/gguf_fuzzer/              small .gguf files written by the `gguf` package: every
                                   metadata type and ggml type, a one-layer llama with a
                                   byte-level tokenizer, a SentencePiece tokenizer, version 2
  corpus/tokenizer_json_fuzzer/    tokenizer.json files saved by the `tokenizers` library,
                                   with tiny vocabularies learnt here from a few sentences (so
                                   the seeds stay small), one per pipeline style, covering every
                                   normaliser, pre-tokeniser, post-processor and decoder type
                                   core/text supports and the BPE options; each is followed by
                                   a NUL byte and a text to encode (the target's input format)
  corpus/tokenizer_encode_fuzzer/  texts for the real tokenizers: byte 0 picks the tokenizer,
                                   byte 1 add_special_tokens, then the text
  corpus/image_decode_fuzzer/      PNG (every colour type and bit depth, palette with tRNS,
                                   interlaced), JPEG (baseline, progressive, grey, 4:2:0, 4:4:4,
                                   restart markers) and GIF (palette, transparency, two frames)
                                   images of at most 16x16 pixels, written by Pillow
  corpus/request_fuzzer/           atman.v1 requests as they travel on the wire (byte 0 picks the
                                   type: Explain, Generate, Tokenize, GetModelInfo), encoded
                                   here field by field: prompts of text, image bytes and token
                                   ids, every option set, controls, request ids
  dicts/<target>.dict              libFuzzer dictionaries: the format's keywords and markers

Everything is deterministic: the same library versions give the same bytes. Nothing here is
imported by the C++ code or the oracles.
"""
import io
import json
import shutil
import struct
from collections import Counter
import zlib
from pathlib import Path

import numpy as np
from PIL import Image
from safetensors.numpy import save as save_safetensors
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers
from tokenizers import pre_tokenizers, processors

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus"
DICTS = HERE / "dicts"

TRAINING_TEXTS = [
    "It was the best of times, it was the worst of times.",
    "for i in range(10):\n    total += values[i]\n",
    "Explanations are useful if scores land on the right characters.",
    "caf\u00e9 na\u00efve \u65e5\u672c\u8a9e \U0001F642",
] * 4

SAMPLE_TEXTS = [
    "Hello world",
    "  leading and trailing  ",
    "It's 3:45pm, isn't it? x=42;\n\tdone",
    "caf\u00e9 cafe\u0301 \u00c5 \u65e5\u672c \U0001F44D\U0001F3FD \u00a0nbsp",
    "<s> specials </s> <mask> masked <sep>  sep ok okay",
    "",
]


def write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


# --- safetensors ------------------------------------------------------------------------------

def safetensors_seeds() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    seeds = {}
    dtypes = {"f64": np.float64, "f32": np.float32, "f16": np.float16, "i64": np.int64,
              "i32": np.int32, "i16": np.int16, "i8": np.int8, "u64": np.uint64, "u32": np.uint32,
              "u16": np.uint16, "u8": np.uint8, "bool": np.bool_}
    for name, dtype in dtypes.items():
        seeds[f"{name}.safetensors"] = save_safetensors(
            {"w": (rng.integers(0, 2, size=(2, 3)) if dtype == np.bool_
                   else rng.integers(0, 100, size=(2, 3))).astype(dtype)})
    seeds["scalar_and_empty.safetensors"] = save_safetensors(
        {"scalar": np.array(1.5, dtype=np.float32), "empty": np.zeros((0, 4), dtype=np.float32),
         "vector": np.arange(5, dtype=np.int32)})
    seeds["metadata.safetensors"] = save_safetensors(
        {"a.weight": np.ones((2, 2), dtype=np.float16), "b.bias": np.zeros(3, dtype=np.float32)},
        metadata={"format": "pt", "note": "seed"})
    seeds["unaligned.safetensors"] = save_safetensors(
        {"b": np.ones(3, dtype=np.uint8), "c": np.ones(2, dtype=np.float64)})
    # BF16 and F8 (numpy has no such dtypes): header written by hand, as the format specifies.
    header = {"bf16": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]},
              "f8": {"dtype": "F8_E4M3", "shape": [2, 1], "data_offsets": [4, 6]},
              "f8b": {"dtype": "F8_E5M2", "shape": [1], "data_offsets": [6, 7]}}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    seeds["bf16_f8.safetensors"] = struct.pack("<Q", len(text)) + text + bytes(range(7))
    return seeds


# --- gguf ---------------------------------------------------------------------------------------

def gguf_bytes(fill) -> bytes:
    import tempfile
    from gguf import GGUFWriter
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "seed.gguf"
        writer = GGUFWriter(str(path), "llama")
        fill(writer)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        return path.read_bytes()


def gguf_seeds() -> dict[str, bytes]:
    from gguf import GGMLQuantizationType as Q
    from gguf.constants import GGML_QUANT_SIZES
    from gguf.quants import quantize
    rng = np.random.default_rng(0)
    seeds = {}

    def types(writer):
        writer.add_uint32("x.u32", 7)
        writer.add_int64("x.i64", -3)
        writer.add_float64("x.f64", 0.5)
        writer.add_bool("x.b", True)
        writer.add_array("x.nested", [[1, 2], ["a"]])
        for qtype in (Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1):
            data = rng.standard_normal((1, 32)).astype(np.float32)
            raw = data if qtype == Q.F32 else data.astype(np.float16) if qtype == Q.F16 else quantize(data, qtype)
            writer.add_tensor(f"t.{qtype.name}", raw, raw_dtype=None if qtype in (Q.F32, Q.F16) else qtype)
        for qtype in (Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K, Q.IQ4_NL):
            size = GGML_QUANT_SIZES[qtype][1]
            writer.add_tensor(f"t.{qtype.name}", rng.integers(0, 256, (1, size), dtype=np.uint8),
                              raw_dtype=qtype)
    seeds["types.gguf"] = gguf_bytes(types)

    def tiny_llama(writer):
        writer.add_block_count(1)
        writer.add_context_length(64)
        writer.add_embedding_length(64)
        writer.add_feed_forward_length(64)
        writer.add_head_count(2)
        writer.add_head_count_kv(1)
        writer.add_layer_norm_rms_eps(1e-5)
        writer.add_rope_freq_base(10000.0)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("qwen2")
        writer.add_token_list(["a", "b", "ab", "<|end|>"])
        writer.add_token_types([1, 1, 1, 3])
        writer.add_token_merges(["a b"])
        writer.add_bos_token_id(3)
        writer.add_add_bos_token(True)
        writer.add_chat_template("{{ x }}")
        for name, shape in [("token_embd.weight", (4, 64)), ("output_norm.weight", (64,)),
                            ("blk.0.attn_norm.weight", (64,)), ("blk.0.ffn_norm.weight", (64,)),
                            ("blk.0.attn_q.weight", (64, 64)), ("blk.0.attn_k.weight", (32, 64)),
                            ("blk.0.attn_v.weight", (32, 64)), ("blk.0.attn_output.weight", (64, 64)),
                            ("blk.0.ffn_gate.weight", (64, 64)), ("blk.0.ffn_up.weight", (64, 64)),
                            ("blk.0.ffn_down.weight", (64, 64))]:
            writer.add_tensor(name, rng.standard_normal(shape).astype(np.float16))
    seeds["tiny_llama.gguf"] = gguf_bytes(tiny_llama)

    def sentencepiece(writer):
        writer.add_tokenizer_model("llama")
        writer.add_token_list(["<unk>", "<s>", "</s>", "\u2581a", "a", "\u2581", "<0x41>"])
        writer.add_token_scores([0.0, 0.0, 0.0, -1.0, -2.0, -3.0, 0.0])
        writer.add_token_types([2, 3, 3, 1, 1, 1, 6])
        writer.add_bos_token_id(1)
        writer.add_eos_token_id(2)
    seeds["sentencepiece.gguf"] = gguf_bytes(sentencepiece)
    seeds["version2.gguf"] = seeds["sentencepiece.gguf"][:4] + struct.pack("<I", 2) + seeds["sentencepiece.gguf"][8:]
    return seeds


# --- tokenizer.json -----------------------------------------------------------------------------

def learn_merges(words: list[str], count: int, prefix: str = "", suffix: str = ""):
    """A deterministic BPE learner (the library's trainer breaks ties in hash order): the most
    frequent adjacent pair first, the smallest pair on ties. Returns the alphabet and merges."""
    symbols = []
    for word in words:
        s = [c if i == 0 else prefix + c for i, c in enumerate(word)]
        if s and suffix:
            s[-1] += suffix
        symbols.append(s)
    alphabet = sorted({x for s in symbols for x in s})
    merges = []
    for _ in range(count):
        pairs = Counter(pair for s in symbols for pair in zip(s, s[1:]))
        if not pairs:
            break
        a, b = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merged = a + (b[len(prefix):] if prefix and b.startswith(prefix) else b)
        merges.append((a, b))
        for s in symbols:
            i = 0
            while i + 1 < len(s):
                if s[i] == a and s[i + 1] == b:
                    s[i:i + 2] = [merged]
                i += 1
    return alphabet, merges


def train(merges: int, special=("<unk>", "<s>", "</s>"), byte_alphabet=False,
          byte_fallback=False, model=None, **parts) -> Tokenizer:
    """A BPE tokenizer with `merges` merges learnt from TRAINING_TEXTS through the pipeline
    `parts` (normalizer, pre_tokenizer, decoder), `special` first in the vocabulary."""
    model = dict(model or {})
    words = []
    for text in dict.fromkeys(TRAINING_TEXTS):
        if "normalizer" in parts:
            text = parts["normalizer"].normalize_str(text)
        pieces = (parts["pre_tokenizer"].pre_tokenize_str(text) if "pre_tokenizer" in parts
                  else [(text, None)])
        words += [piece for piece, _ in pieces]
    prefix = model.get("continuing_subword_prefix") or ""
    suffix = model.get("end_of_word_suffix") or ""
    alphabet, merge_list = learn_merges(words, merges, prefix, suffix)
    if byte_alphabet:
        alphabet = sorted(set(alphabet) | set(pre_tokenizers.ByteLevel.alphabet()))
    vocab = {}
    tokens = list(special) + alphabet
    tokens += [a + (b[len(prefix):] if prefix and b.startswith(prefix) else b)
               for a, b in merge_list]
    if byte_fallback:
        tokens += [f"<0x{b:02X}>" for b in range(256)]
    for token in tokens:
        vocab.setdefault(token, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merge_list, byte_fallback=byte_fallback,
                               **model))
    for attr in ("normalizer", "pre_tokenizer", "decoder"):
        if attr in parts:
            setattr(tok, attr, parts[attr])
    tok.add_special_tokens(list(special))
    return tok


def added_tokens() -> list:
    return [AddedToken("<mask>", lstrip=True, special=True, normalized=False),
            AddedToken("<sep>", rstrip=True, special=True, normalized=False),
            AddedToken("ok", single_word=True, normalized=True)]


def tokenizer_styles() -> dict[str, Tokenizer]:
    styles = {}

    tok = train(60, special=("<|endoftext|>",), byte_alphabet=True,
                pre_tokenizer=pre_tokenizers.ByteLevel(add_prefix_space=False),
                decoder=decoders.ByteLevel())
    tok.post_processor = processors.ByteLevel(trim_offsets=True)
    tok.add_tokens(added_tokens())
    styles["bytelevel"] = tok

    tok = train(60, special=("<|begin_of_text|>",), byte_alphabet=True,
                model={"ignore_merges": True},
                pre_tokenizer=pre_tokenizers.Sequence([
                    pre_tokenizers.Split(Regex(r"\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+|\s+"),
                                         behavior="isolated"),
                    pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=False)]),
                decoder=decoders.ByteLevel())
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                      pair="<|begin_of_text|> $A <|begin_of_text|> $B:1",
                                      special_tokens=[("<|begin_of_text|>", 0)])])
    styles["split_sequence"] = tok

    tok = train(40, byte_fallback=True, model={"unk_token": "<unk>", "fuse_unk": True},
                pre_tokenizer=pre_tokenizers.Metaspace(replacement="\u2581",
                                                       prepend_scheme="first", split=False),
                decoder=decoders.Sequence([decoders.Replace("\u2581", " "),
                                           decoders.ByteFallback(), decoders.Fuse(),
                                           decoders.Strip(content=" ", left=1, right=0)]))
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> $B:1 </s>:1",
        special_tokens=[("<s>", 1), ("</s>", 2)])
    tok.add_tokens(added_tokens())
    styles["metaspace_byte_fallback"] = tok

    tok = train(40, model={"unk_token": "<unk>", "fuse_unk": True},
                normalizer=normalizers.Sequence([normalizers.Prepend("\u2581"),
                                                 normalizers.Replace(" ", "\u2581")]),
                decoder=decoders.Sequence([decoders.Replace("\u2581", " "), decoders.Fuse(),
                                           decoders.Strip(content=" ", left=1, right=0)]))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", 1)])
    styles["prepend_replace"] = tok

    tok = train(40, model={"unk_token": "<unk>", "fuse_unk": True},
                normalizer=normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase(),
                                                 normalizers.Replace(Regex(r"\s+"), " "),
                                                 normalizers.Strip()]),
                pre_tokenizer=pre_tokenizers.Metaspace(replacement="\u2581",
                                                       prepend_scheme="always", split=True),
                decoder=decoders.Metaspace(replacement="\u2581", prepend_scheme="always",
                                           split=True))
    tok.post_processor = processors.BertProcessing(("</s>", 2), ("<s>", 1))
    styles["nfkc_lowercase_metaspace"] = tok

    tok = train(40, model={"unk_token": "<unk>", "continuing_subword_prefix": "##"},
                normalizer=normalizers.NFD(), pre_tokenizer=pre_tokenizers.Whitespace())
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 1),
                                                      trim_offsets=True, add_prefix_space=True)
    styles["whitespace_subword_prefix"] = tok

    tok = train(40, model={"unk_token": "<unk>", "end_of_word_suffix": "</w>"},
                normalizer=normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()]),
                pre_tokenizer=pre_tokenizers.WhitespaceSplit(),
                decoder=decoders.BPEDecoder(suffix="</w>"))
    styles["clip_suffix"] = tok

    tok = train(30, model={"unk_token": "<unk>"}, normalizer=normalizers.NFKD(),
                pre_tokenizer=pre_tokenizers.Sequence([
                    pre_tokenizers.Split(" ", behavior="removed"),
                    pre_tokenizers.Split(Regex(r"\d"), behavior="merged_with_previous"),
                    pre_tokenizers.Split(",", behavior="merged_with_next"),
                    pre_tokenizers.Split(Regex(r"[aeiou]"), behavior="contiguous", invert=True)]))
    styles["split_behaviours"] = tok
    return styles


def tokenizer_json_seeds() -> dict[str, bytes]:
    seeds = {}
    for name, tok in tokenizer_styles().items():
        text = json.dumps(json.loads(tok.to_str()), ensure_ascii=False,
                          separators=(",", ":")).encode()
        seeds[f"{name}.json"] = text  # encodes the target's built-in sample text
        for i, sample in enumerate(SAMPLE_TEXTS[:3]):
            seeds[f"{name}.{i}.bin"] = text + b"\0" + sample.encode()
    return seeds


# --- real tokenizers ------------------------------------------------------------------------------

# The order of tests/fuzz/tokenizer_encode_fuzzer.cc.
REAL_TOKENIZERS = ["gpt2", "gpt2-vocab-merges", "phi-2", "gpt-neox-20b", "llama2", "mistral",
                   "clip"]


def tokenizer_encode_seeds() -> dict[str, bytes]:
    texts = SAMPLE_TEXTS + ["<|endoftext|>mid<|endoftext|>", "\t\t  \n\n   x", "\u2581 \u0120 <0x41>"]
    seeds = {}
    for index, name in enumerate(REAL_TOKENIZERS):
        for i, text in enumerate(texts):
            seeds[f"{name}.{i}.bin"] = bytes([index, i % 2]) + text.encode()
    return seeds


# --- images -------------------------------------------------------------------------------------

def pattern(width: int, height: int) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1),
                     (x + y) * 255 // max(width + height - 2, 1), 255 - (x * y) % 256],
                    axis=-1).astype(np.uint8)


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **kwargs)
    return out.getvalue()


def image_seeds() -> dict[str, bytes]:
    rgba = Image.fromarray(pattern(8, 6), "RGBA")
    rgb = rgba.convert("RGB")
    grey = rgba.convert("L")
    seeds = {
        "rgb.png": encode(rgb, "PNG"),
        "rgba.png": encode(rgba, "PNG"),
        "grey.png": encode(grey, "PNG"),
        "grey_alpha.png": encode(rgba.convert("LA"), "PNG"),
        "palette.png": encode(rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=8), "PNG"),
        "bilevel.png": encode(grey.convert("1"), "PNG"),
        "grey16.png": encode(Image.fromarray(np.arange(48, dtype=np.uint16).reshape(6, 8) * 1300),
                             "PNG"),
        "baseline.jpg": encode(rgb, "JPEG", quality=90),
        "grey.jpg": encode(grey, "JPEG", quality=75),
        "progressive.jpg": encode(Image.fromarray(pattern(16, 16), "RGBA").convert("RGB"), "JPEG",
                                  progressive=True, quality=80),
        "subsampled_420.jpg": encode(Image.fromarray(pattern(16, 16), "RGBA").convert("RGB"),
                                     "JPEG", subsampling=2, quality=70),
        "subsampled_444.jpg": encode(rgb, "JPEG", subsampling=0, quality=95),
        "palette.gif": encode(rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16), "GIF"),
        "grey.gif": encode(grey, "GIF"),
    }
    # A palette PNG with a tRNS chunk and a GIF with a transparent index.
    p = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    seeds["palette_trns.png"] = encode(p, "PNG", transparency=0)
    seeds["transparent.gif"] = encode(p, "GIF", transparency=0)
    frames = [p, p.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    seeds["two_frames.gif"] = encode(frames[0], "GIF", save_all=True, append_images=frames[1:],
                                     duration=10, loop=0)
    seeds["restarts.jpg"] = encode(rgb, "JPEG", restart_marker_blocks=1)
    # Pillow does not write interlaced PNG: one built here from the raw scanlines.
    seeds["interlaced.png"] = adam7_png(np.asarray(rgb))
    return seeds


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def adam7_png(pixels: np.ndarray) -> bytes:
    """An RGB 8-bit PNG with Adam7 interlacing (filter type 0 on every scanline)."""
    height, width, _ = pixels.shape
    passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
              (0, 1, 1, 2)]
    raw = b""
    for x0, y0, dx, dy in passes:
        sub = pixels[y0::dy, x0::dx]
        if sub.size == 0:
            continue
        for row in sub:
            raw += b"\0" + row.tobytes()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 1)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) +
            png_chunk(b"IDAT", zlib.compress(raw, 9)) + png_chunk(b"IEND", b""))


# --- requests (protobuf wire format, written field by field) -------------------------------------

def varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative int32/int64 values are ten-byte varints
    out = b""
    while True:
        byte, n = n & 0x7F, n >> 7
        out += bytes([byte | (0x80 if n else 0)])
        if not n:
            return out


def field_varint(number: int, value: int) -> bytes:
    return varint(number << 3) + varint(value)


def field_double(number: int, value: float) -> bytes:
    return varint(number << 3 | 1) + struct.pack("<d", value)


def field_bytes(number: int, payload: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def text_item(text: str) -> bytes:
    return field_bytes(1, field_bytes(1, text.encode()))


def request_seeds() -> dict[str, bytes]:
    image = encode(Image.fromarray(pattern(4, 4)), "PNG")
    ids = field_bytes(1, field_bytes(3, field_bytes(1, b"".join(varint(i) for i in (5, 17, 42)))))
    options = (field_varint(1, 2) + field_bytes(2, b";") + field_varint(3, 6) + field_varint(4, 5)
               + field_varint(5, 2) + field_varint(6, 3) + field_double(7, 0.1) + field_varint(8, 2)
               + field_double(9, 0.3) + field_varint(10, 2) + field_varint(11, 2) + field_varint(12, 1)
               + field_varint(13, 1) + field_bytes(14, varint(0) + varint(1)) + field_varint(15, 0)
               + field_varint(16, 4) + field_varint(17, 100) + field_varint(18, 1))
    explain = {
        "explain-text": text_item("Tom lives in Rome.") + field_bytes(2, b" Rome"),
        "explain-mixed": text_item("Look: ") + field_bytes(1, field_bytes(2, image)) + ids
        + field_bytes(2, b" red") + field_bytes(4, b"tenant-7/job_42"),
        "explain-options": text_item("caf\u00e9 \U0001F642 a;b") + field_bytes(3, options),
        "explain-empty": b"",
    }
    control = field_varint(1, 0) + field_varint(2, 3) + field_varint(3, 2**31 - 1) + field_double(4, 0.0)
    generate = {
        "generate-greedy": text_item("Tom lives in") + field_varint(2, 8),
        "generate-steered": text_item("Tom lives in Rome.") + ids + field_double(3, 0.7) + field_varint(4, 5)
        + field_double(5, 0.9) + field_varint(6, 7) + field_bytes(7, control) + field_varint(8, 2)
        + field_varint(9, 2) + field_bytes(10, varint(1)) + field_varint(11, 1) + field_varint(12, 0)
        + field_bytes(13, b"g-1"),
    }
    seeds = {f"{name}.bin": b"\x00" + data for name, data in explain.items()}
    seeds.update({f"{name}.bin": b"\x01" + data for name, data in generate.items()})
    seeds["tokenize.bin"] = b"\x02" + field_bytes(1, "Hello w\u00f6rld".encode()) + field_varint(2, 1)
    seeds["model-info.bin"] = b"\x03"
    return seeds


# --- dictionaries -------------------------------------------------------------------------------

def dictionary(entries: list[bytes]) -> str:
    lines = []
    for entry in entries:
        escaped = "".join(chr(b) if 0x20 <= b < 0x7F and b not in b'"\\' else f"\\x{b:02X}"
                          for b in entry)
        lines.append(f'"{escaped}"')
    return "\n".join(lines) + "\n"


def dictionaries() -> dict[str, str]:
    st = [b'"dtype"', b'"shape"', b'"data_offsets"', b'"__metadata__"', b'"F64"', b'"F32"',
          b'"F16"', b'"BF16"', b'"I64"', b'"I32"', b'"I16"', b'"I8"', b'"U64"', b'"U32"',
          b'"U16"', b'"U8"', b'"BOOL"', b'"F8_E4M3"', b'"F8_E5M2"', b"18446744073709551615",
          b"9223372036854775807", b"4294967296"]
    types = ["BPE", "NFC", "NFD", "NFKC", "NFKD", "Lowercase", "Prepend", "Replace", "Strip",
             "Sequence", "ByteLevel", "Split", "Metaspace", "Whitespace", "WhitespaceSplit",
             "TemplateProcessing", "RobertaProcessing", "BertProcessing", "ByteFallback", "Fuse",
             "BPEDecoder", "Removed", "Isolated", "MergedWithPrevious", "MergedWithNext",
             "Contiguous", "always", "first", "never"]
    keys = ["type", "model", "vocab", "merges", "normalizer", "pre_tokenizer", "post_processor",
            "decoder", "added_tokens", "normalizers", "pretokenizers", "processors", "decoders",
            "unk_token", "continuing_subword_prefix", "end_of_word_suffix", "fuse_unk",
            "byte_fallback", "ignore_merges", "dropout", "pattern", "String", "Regex", "content",
            "behavior", "invert", "add_prefix_space", "trim_offsets", "use_regex", "replacement",
            "prepend_scheme", "split", "single", "pair", "special_tokens", "SpecialToken",
            "Sequence", "id", "ids", "tokens", "sep", "cls", "prefix", "suffix", "start", "stop",
            "left", "right", "lstrip", "rstrip", "single_word", "normalized", "special",
            "type_id"]
    tok = [f'"{k}"'.encode() for k in keys + types] + [b"\\u2581", b"<0x41>", b"null", b"true"]
    image = [b"\x89PNG\r\n\x1a\n", b"IHDR", b"IDAT", b"IEND", b"PLTE", b"tRNS", b"acTL",
             b"\xff\xd8\xff", b"\xff\xc0", b"\xff\xc2", b"\xff\xc4", b"\xff\xda", b"\xff\xd9",
             b"\xff\xdb", b"\xff\xdd", b"\xff\xd0", b"\xff\xe0", b"\xff\xee", b"GIF87a",
             b"GIF89a", b"\x21\xf9\x04", b"\x2c", b"\x3b", b"NETSCAPE2.0"]
    gguf = [b"GGUF", b"\x03\x00\x00\x00", b"general.architecture", b"general.alignment",
            b"llama", b"qwen2", b"tokenizer.ggml.model", b"tokenizer.ggml.tokens",
            b"tokenizer.ggml.merges", b"tokenizer.ggml.scores", b"tokenizer.ggml.token_type",
            b"llama.block_count", b"llama.embedding_length", b"llama.attention.head_count",
            b"\xff\xff\xff\xff\xff\xff\xff\xff", b"\x00\x00\x00\x00\x00\x00\x00\x80"]
    return {"safetensors_fuzzer.dict": dictionary(st),
            "gguf_fuzzer.dict": dictionary(gguf),
            "tokenizer_json_fuzzer.dict": dictionary(tok),
            "image_decode_fuzzer.dict": dictionary(image)}


def main() -> None:
    targets = {"safetensors_fuzzer": safetensors_seeds(),
               "gguf_fuzzer": gguf_seeds(),
               "tokenizer_json_fuzzer": tokenizer_json_seeds(),
               "tokenizer_encode_fuzzer": tokenizer_encode_seeds(),
               "image_decode_fuzzer": image_seeds(),
               "request_fuzzer": request_seeds()}
    for target, seeds in targets.items():
        shutil.rmtree(CORPUS / target, ignore_errors=True)
        for name, data in sorted(seeds.items()):
            write(CORPUS / target / name, data)
        print(f"{target}: {len(seeds)} seeds, {sum(map(len, seeds.values()))} bytes")
    shutil.rmtree(DICTS, ignore_errors=True)
    for name, text in dictionaries().items():
        write(DICTS / name, text.encode())


if __name__ == "__main__":
    main()
