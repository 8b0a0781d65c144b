"""AtMan on a GPU, one random-initialised model per run, against its alternatives; what
scripts/gpu-check.sh runs on the lent GPU machine (docs/performance.md, "GPU (H200)").

  python bench/gpu_bench.py --build build-gpu --preset llama3-8b --tokens 1024 512 \\
      --phases matmul ours reference ig batcher --out results/bench.jsonl
  python bench/gpu_bench.py --build build-gpu --preset llava-1.5-7b --tokens 1024 \\
      --phases ours reference ig --out results/bench.jsonl
  python bench/gpu_bench.py --build build-gpu --preset qwen2.5-vl-7b --phases ours reference \\
      --out results/bench.jsonl                       # --tokens: the preset's (1024)
  python bench/gpu_bench.py --summarize results/bench.jsonl      # the figures, as a table

The model (seed 0, transformers' own initialisation) is built by transformers directly on the
device in --dtype and saved with save_pretrained into --workdir (tmpfs by default: the engine
loads it from memory), beside a small byte-level BPE tokenizer trained here
(tests/oracle/make_atman_cases.py's) and prompts of about --tokens tokens (words of the same
corpus; the presets' own lengths when --tokens is not given; a vision-language model: one
square image, then text: LLaVA-1.5 336 px = 576 image tokens; LLaVA-NeXT (anyres over
llava-v1.6's pinpoints, image_newline) 336 px = 576 base-view tokens + 600 of the 336 x 672
canvas = 1,176; Qwen2.5-VL 448 px = 16 x 16 merged tokens + vision_start / vision_end = 258;
the setup record says the count, explain_bench's lines the image units). Presets: llama3-8b,
llava-1.5-7b, llava-next-7b, qwen2.5-vl-7b (7-8B shapes) and tiny-* (the dry run's, on a CPU).
Each model is written as the engine loads it: config.json and safetensors (save_pretrained),
preprocessor_config.json as its transformers image processor saves it, tokenizer.json (the
Qwen2-VL one with <|vision_start|>, <|vision_end|>, <|image_pad|>, <|video_pad|> as specials,
their ids in config.json). Target
" Paris", token granularity (every prompt token, and every image patch, is one unit), control
factor 0.1, log-additive: the engine's defaults. Phases, each one JSON line per figure,
appended to --out as soon as it is measured; a phase that fails is recorded ("error") and the
next one runs; a phase that would not fit before --deadline (Unix time) is recorded as
skipped:

  matmul     the dense --dtype matmul rate (8192^3 torch.matmul; forward_compare.py's)
  ours       build/bench/explain_bench, every --tokens in one process (the model loads once):
             plain forward time, explanation time with batches of up to --max-rows rows,
             (a) explanation / ((n + 1) x plain forward), peak memory (batch 1: the prefix
             pass plus the longest row, --batch1 peak), and (e) achieved TFLOP/s: FLOPs of the
             positions actually computed (the engine's batch plan: 2 x matmul parameters per
             position, causal attention over the keys each position sees, the LM head at the
             target positions, plus the unperturbed pass; the LLaVA vision tower, run once, is
             left out) over the explanation time, against the matmul rate (for Qwen2-VL's
             decoder the same formula: its q/k/v biases and M-RoPE are not counted)
  reference  (b) plain Python AtMan on transformers (tests/oracle/atman_reference.py's
             approach: its "atman" patched eager attention, one full pass per unit, no prefix
             reuse), rows batched --reference-batch at a time; timed on the first
             --reference-rows units after one warm-up batch and extrapolated to n + 1 rows
             (said in the record). Also transformers' plain forward (sdpa) for comparison.
             Vision-language models run their tower on every row (the image inputs repeated
             per row: LLaVA-NeXT's views and image_sizes, Qwen2-VL's patches and grid, which
             transformers' processors for those families make here).
  ig         (c) Captum Integrated Gradients w.r.t. the input embeddings (LLaVA: the decoder's
             input embeddings, image features included) for the first target token,
             --ig-steps steps, --ig-batch rows per pass (halved on out-of-memory), sdpa
             attention: time and peak memory; and the peak of IG at one row per pass
  batcher    (d) build/bench/batcher_bench: --batcher-requests requests of about
             --batcher-tokens tokens submitted at once to the dynamic batcher with 1, 2 and 4
             workers on the device: rows per second
"""
import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "oracle"))
sys.path.insert(0, str(ROOT / "bench"))

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
TARGET = " Paris"
FACTOR = 0.1

LLAMA3_8B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                 max_position_embeddings=8192, rms_norm_eps=1e-5, rope_theta=500000.0,
                 rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
# LLaVA-1.5-7B: CLIP ViT-L/14 at 336 px (24 layers, 1024 wide), the two-layer GELU projector,
# the Vicuna/Llama-2-7B decoder (multi-head attention, vocabulary 32064, image token 32000).
CLIP_L_336 = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                  num_attention_heads=16, image_size=336, patch_size=14, projection_dim=768,
                  hidden_act="quick_gelu", layer_norm_eps=1e-5)
VICUNA_7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=32, vocab_size=32064,
                 max_position_embeddings=4096, rms_norm_eps=1e-5)
# LLaVA-NeXT-7B (llava-v1.6-vicuna-7b): the same tower, projector and decoder, anyres over
# llava-v1.6's pinpoints ([height, width]) with image_newline. A 336 x 336 image is the base view
# (24 x 24 = 576 tokens) plus the 336 x 672 canvas' kept 24 x 24 cells, each row followed by
# image_newline (600): 1,176 image tokens.
LLAVA_V16_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
# Qwen2.5-VL-7B-Instruct: the Qwen2 decoder (28 layers, hidden 3584, 28 heads / 4 KV heads,
# SwiGLU 18944, vocabulary 152,064, M-RoPE sections [16, 24, 24]) and the windowed vision
# tower (32 blocks, 1280 wide, full attention in blocks 7, 15, 23, 31, 112 px windows, 2 x 2
# patch merger to 3584). A 448 x 448 image is 32 x 32 patches -> 16 x 16 = 256 merged tokens,
# 258 with vision_start and vision_end.
QWEN25_VL_7B_TEXT = dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                         num_attention_heads=28, num_key_value_heads=4, vocab_size=152064,
                         max_position_embeddings=128000, rms_norm_eps=1e-6,
                         rope_parameters={"rope_type": "default", "mrope_section": [16, 24, 24],
                                          "rope_theta": 1000000.0})
QWEN25_VL_7B_VISION = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16,
                           out_hidden_size=3584, patch_size=14, spatial_merge_size=2,
                           temporal_patch_size=2, window_size=112,
                           fullatt_block_indexes=[7, 15, 23, 31], hidden_act="silu")
# The Qwen tokens the trained tokenizer gets as specials (their ids go to the config).
QWEN_SPECIAL = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
TINY_TEXT = dict(hidden_size=64, intermediate_size=172, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=4, vocab_size=512, max_position_embeddings=1024)
TINY_CLIP = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                 image_size=28, patch_size=7, projection_dim=16, hidden_act="quick_gelu",
                 layer_norm_eps=1e-5)
# "image": the side of the square test image, px; "tokens": the default --tokens (prompt
# lengths, image tokens included).
PRESETS = {
    "llama3-8b": {"kind": "llama", "text": LLAMA3_8B},
    "llava-1.5-7b": {"kind": "llava", "text": VICUNA_7B, "vision": CLIP_L_336, "image_token": 32000},
    "llava-next-7b": {"kind": "llava_next", "text": VICUNA_7B, "vision": CLIP_L_336,
                      "image_token": 32000, "pinpoints": LLAVA_V16_PINPOINTS, "image": 336,
                      "tokens": [1280]},
    "qwen2.5-vl-7b": {"kind": "qwen2_vl", "family": "qwen2_5_vl", "text": QWEN25_VL_7B_TEXT,
                      "vision": QWEN25_VL_7B_VISION, "image": 448, "tokens": [1024]},
    # The dry run's (scripts/gpu-check.sh, ATMAN_GPU_CHECK_DRY=1): the same code paths on a CPU.
    "tiny-llama": {"kind": "llama", "text": dict(
        hidden_size=64, intermediate_size=172, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=512, max_position_embeddings=1024, rope_theta=500000.0,
        rope_scaling=LLAMA3_8B["rope_scaling"])},
    "tiny-llava": {"kind": "llava", "text": dict(
        hidden_size=64, intermediate_size=172, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, vocab_size=512, max_position_embeddings=1024),
        "vision": dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                       num_attention_heads=4, image_size=28, patch_size=7, projection_dim=16,
                       hidden_act="quick_gelu", layer_norm_eps=1e-5),
        "image_token": 500},
    # 28 px views of 7 px patches: a 28 x 28 image is 16 base tokens + 4 x (4 + 1) = 36.
    "tiny-llava-next": {"kind": "llava_next", "text": TINY_TEXT, "vision": TINY_CLIP,
                        "image_token": 500, "pinpoints": [[28, 56], [56, 28], [56, 56]],
                        "image": 28, "tokens": [64]},
    # 56 x 56: 4 x 4 patches -> 2 x 2 = 4 merged tokens (6 with vision_start / vision_end).
    "tiny-qwen2.5-vl": {"kind": "qwen2_vl", "family": "qwen2_5_vl", "text": dict(
        hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=512, max_position_embeddings=1024, rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 1000.0}),
        "vision": dict(depth=2, hidden_size=32, out_hidden_size=64, intermediate_size=48,
                       num_heads=4, patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
                       window_size=56, fullatt_block_indexes=[1]),
        "image": 56, "tokens": [64]},
}
# Seconds a phase needs at least on an H200 (per length where it runs per length); a phase is
# skipped when less is left before the deadline.
NEEDS = {"setup": 40, "matmul": 5, "ours": 45, "reference": 15, "ig": 20, "batcher": 40, "noise": 40}


def log(message):
    print(f"[gpu-bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Recorder:
    """Appends one JSON line per figure to the output file, flushed at once."""

    def __init__(self, path, preset, deadline):
        self.path, self.preset, self.deadline = path, preset, deadline

    def write(self, phase, **fields):
        row = {"phase": phase, "preset": self.preset, **fields}
        with open(self.path, "a") as out:
            out.write(json.dumps(row) + "\n")
        return row

    def left(self):
        return self.deadline - time.time()

    def run(self, phase, needs, fn, **context):
        """Runs one phase unless it would not fit; records its failure and carries on."""
        if self.left() < needs:
            log(f"{phase} {context or ''}: skipped, {self.left():.0f} s left, needs ~{needs} s")
            self.write(phase, **context, skipped=f"{self.left():.0f} s left before the deadline, "
                                                 f"the phase needs about {needs} s")
            return None
        start = time.perf_counter()
        log(f"{phase} {context or ''}: start")
        try:
            result = fn()
            log(f"{phase} {context or ''}: done in {time.perf_counter() - start:.1f} s")
            return result
        except Exception as e:  # recorded, and the next phase runs
            log(f"{phase} {context or ''}: FAILED after {time.perf_counter() - start:.1f} s: {e!r}")
            self.write(phase, **context, error=repr(e)[:2000],
                       traceback=traceback.format_exc()[-3000:],
                       seconds=round(time.perf_counter() - start, 2))
            return None
        finally:
            # What this process's allocator caches (IG's activations: tens of GiB) goes back
            # to the device before the next phase, which may be another process (the engine).
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


# ---- The model, its tokenizer and prompts ----------------------------------------------------

def build_model(preset, device, dtype, tokenizer):
    from transformers import (AutoModelForCausalLM, AutoModelForImageTextToText, CLIPVisionConfig,
                              LlamaConfig, LlavaConfig, LlavaNextConfig)
    spec = PRESETS[preset]
    torch.manual_seed(0)
    if spec["kind"] == "qwen2_vl":
        from transformers import Qwen2_5_VLConfig, Qwen2VLConfig
        names = ("vision_start_token_id", "vision_end_token_id", "image_token_id", "video_token_id")
        ids = {name: tokenizer.token_to_id(token) for name, token in zip(names, QWEN_SPECIAL)}
        family = Qwen2_5_VLConfig if spec["family"] == "qwen2_5_vl" else Qwen2VLConfig
        config = family(text_config=dict(spec["text"], bos_token_id=None, eos_token_id=None),
                        vision_config=dict(spec["vision"]), tie_word_embeddings=False, **ids)
        with torch.device(device):
            return AutoModelForImageTextToText.from_config(config, dtype=dtype).eval()
    text = LlamaConfig(**spec["text"], tie_word_embeddings=False)
    with torch.device(device):
        if spec["kind"] == "llama":
            return AutoModelForCausalLM.from_config(text, dtype=dtype).eval()
        vision = CLIPVisionConfig(**spec["vision"])
        common = dict(vision_config=vision, text_config=text, image_token_index=spec["image_token"],
                      projector_hidden_act="gelu", vision_feature_layer=-2,
                      vision_feature_select_strategy="default")
        if spec["kind"] == "llava_next":
            config = LlavaNextConfig(**common, image_grid_pinpoints=spec["pinpoints"])
        else:
            config = LlavaConfig(**common,
                                 image_seq_length=(vision.image_size // vision.patch_size) ** 2)
        return AutoModelForImageTextToText.from_config(config, dtype=dtype).eval()


def pick_workdir(requested, need_bytes):
    """tmpfs when it has room for the checkpoint (and a margin), else the disk's /tmp."""
    for base in ([requested] if requested else [Path("/dev/shm"), Path("/tmp")]):
        base.mkdir(parents=True, exist_ok=True)
        if requested or shutil.disk_usage(base).free > need_bytes * 1.15 + (1 << 30):
            return base
    raise RuntimeError(f"no folder with {need_bytes / 2**30:.1f} GiB free for the checkpoint")


def prompt_text(tokenizer, tokens, offset=0):
    """Words of the oracle corpus from word `offset` on, until the text plus a BOS is at least
    `tokens` tokens long."""
    from make_atman_cases import CORPUS
    words = " ".join(CORPUS).split()
    text, i = "", offset
    # Whole sentences first (fast), then word by word.
    while len(tokenizer.encode(text).ids) < tokens:
        step = max(1, (tokens - len(tokenizer.encode(text).ids)) // 4)
        for _ in range(step):
            text += (" " if text else "") + words[i % len(words)]
            i += 1
    return text


def image_png(path, size):
    """A deterministic size x size RGB image (no resize or crop needed at size = image_size)."""
    import numpy as np
    from PIL import Image
    yy, xx = np.mgrid[0:size, 0:size]
    pixels = np.stack([xx * 255 // size, yy * 255 // size, ((xx // 14 + yy // 14) % 2) * 255], -1)
    Image.fromarray(pixels.astype(np.uint8)).save(path)


def pixel_values(path, device, dtype):
    """CLIP preprocessing of an image already at the tower's size: rescale and normalise."""
    import numpy as np
    from PIL import Image
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(3, 1, 1)
    x = torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)).permute(2, 0, 1)
    return ((x / 255.0 - mean) / std)[None].to(device=device, dtype=dtype)


CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]


def write_processor_config(folder, size):
    """preprocessor_config.json of LLaVA-1.5's CLIPImageProcessor (shortest edge = crop = size)."""
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "crop_size": {"height": size, "width": size}, "do_center_crop": True,
        "do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
        "image_mean": CLIP_MEAN, "image_processor_type": "CLIPImageProcessor",
        "image_std": CLIP_STD, "resample": 3,
        "rescale_factor": 1 / 255, "size": {"shortest_edge": size}}, indent=1))


def write_llava_next_processor_config(folder, size, pinpoints):
    """preprocessor_config.json of LLaVA-NeXT's LlavaNextImageProcessor (as save_pretrained
    writes it: views of size x size, anyres over `pinpoints`)."""
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "crop_size": {"height": size, "width": size}, "do_center_crop": True,
        "do_convert_rgb": True, "do_normalize": True, "do_pad": True, "do_rescale": True,
        "do_resize": True, "image_grid_pinpoints": pinpoints, "image_mean": CLIP_MEAN,
        "image_processor_type": "LlavaNextImageProcessor", "image_std": CLIP_STD, "resample": 3,
        "rescale_factor": 1 / 255, "size": {"shortest_edge": size}}, indent=1))


def write_qwen2_vl_processor_config(folder, vision):
    """preprocessor_config.json of Qwen2-VL's Qwen2VLImageProcessor (its defaults: 4 to 1,280
    merged tokens per image, as save_pretrained writes them)."""
    unit = vision.patch_size * vision.spatial_merge_size
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
        "image_mean": CLIP_MEAN, "image_processor_type": "Qwen2VLImageProcessor",
        "image_std": CLIP_STD, "merge_size": vision.spatial_merge_size,
        "patch_size": vision.patch_size, "resample": 3, "rescale_factor": 1 / 255,
        "size": {"longest_edge": unit * unit * 1280, "shortest_edge": unit * unit * 4},
        "temporal_patch_size": vision.temporal_patch_size}, indent=1))


class Setup:
    """The model in memory (transformers) and on disk (for the engine), prompts and image."""

    def __init__(self, args, rec):
        from make_atman_cases import train_tokenizer
        self.args, self.device, self.dtype = args, torch.device(args.device), DTYPES[args.dtype]
        self.spec = PRESETS[args.preset]
        self.kind = self.spec["kind"]  # llama, llava, llava_next, qwen2_vl
        self.vlm, self.llava = self.kind != "llama", self.kind == "llava"
        self.tokenizer = train_tokenizer(bos=self.kind != "qwen2_vl")
        if self.kind == "qwen2_vl":
            self.tokenizer.add_special_tokens(QWEN_SPECIAL)
        t0 = time.perf_counter()
        self.model = build_model(args.preset, self.device, self.dtype, self.tokenizer)
        sync(self.device)
        create_s = time.perf_counter() - t0
        self.params = sum(p.numel() for p in self.model.parameters())
        nbytes = sum(p.numel() * p.element_size() for p in self.model.parameters())
        base = pick_workdir(args.workdir, nbytes)
        self.folder = base / f"atman-gpu-bench-{args.preset}-{os.getpid()}"
        t0 = time.perf_counter()
        self.model.save_pretrained(self.folder)
        save_s = time.perf_counter() - t0
        self.tokenizer.save(str(self.folder / "tokenizer.json"))
        self.config = self.model.config.text_config if self.vlm else self.model.config
        self.image, self.image_tokens, self.image_side = None, 0, 0
        if self.vlm:
            vision = self.model.config.vision_config
            self.image_side = self.spec.get("image", getattr(vision, "image_size", 0))
            self.image = self.folder / "image.png"
            image_png(self.image, self.image_side)
            if self.kind == "llava":
                write_processor_config(self.folder, vision.image_size)
                self.image_tokens = (vision.image_size // vision.patch_size) ** 2
            elif self.kind == "llava_next":
                from atman_reference import anyres_token_rects
                write_llava_next_processor_config(self.folder, vision.image_size,
                                                  self.spec["pinpoints"])
                rects, _, _ = anyres_token_rects(self.image_side, self.image_side, self.anyres())
                self.image_tokens = len(rects)  # base view, kept tile cells, image_newline
            else:
                write_qwen2_vl_processor_config(self.folder, vision)
                merged = self.image_side // (vision.patch_size * vision.spatial_merge_size)
                self.image_tokens = merged * merged + 2  # vision_start, pads, vision_end
        self.prompts = {}
        for tokens in args.tokens:
            text_tokens = tokens - self.image_tokens
            if text_tokens < 8:
                continue  # said by the caller's records
            path = self.folder / f"prompt_{tokens}.txt"
            path.write_text(prompt_text(self.tokenizer, text_tokens))
            self.prompts[tokens] = path
        self.target_ids = self.tokenizer.encode(TARGET, add_special_tokens=False).ids
        rec.write("setup", model_parameters=self.params, weight_bytes=nbytes, device=args.device,
                  dtype=args.dtype, create_seconds=round(create_s, 2), save_seconds=round(save_s, 2),
                  checkpoint_folder_kind="tmpfs" if str(base).startswith("/dev/shm") else str(base),
                  model_type=self.model.config.model_type,
                  image=(f"{self.image_side}x{self.image_side}" if self.vlm else None),
                  image_tokens=self.image_tokens,
                  prompt_lengths={t: len(self.tokenizer.encode(p.read_text()).ids) + self.image_tokens
                                  for t, p in self.prompts.items()},
                  target_tokens=len(self.target_ids))

    def anyres(self):
        vision = self.model.config.vision_config
        return {"size": vision.image_size, "patch": vision.patch_size,
                "pinpoints": self.model.config.image_grid_pinpoints}

    def language_model(self):
        return self.model.model.language_model if self.vlm else self.model

    def prompt_items(self, tokens):
        items = [{"text": self.prompts[tokens].read_text()}]
        if self.vlm:
            items.insert(0, {"image": "image.png", "path": str(self.image),
                             "width": self.image_side, "height": self.image_side})
        return items

    def image_spec(self):
        """The `image` of atman_reference.build_sequence / make_units."""
        if not self.vlm:
            return None
        config, vision = self.model.config, self.model.config.vision_config
        if self.kind == "llava":
            return {"token_id": config.image_token_index, "tokens_per_image": self.image_tokens,
                    "class_tokens": 0, "size": vision.image_size, "patch": vision.patch_size}
        if self.kind == "llava_next":
            return {"token_id": config.image_token_index, "tokens_per_image": [self.image_tokens],
                    "anyres": self.anyres()}
        merged = self.image_side // (vision.patch_size * vision.spatial_merge_size)
        return {"token_id": config.image_token_id, "vision_start": config.vision_start_token_id,
                "vision_end": config.vision_end_token_id, "grids": {str(self.image): (merged, merged)}}

    def image_inputs(self, input_ids):
        """The model's image inputs for one row of input_ids [1, L] (transformers' own image
        processors for LLaVA-NeXT and Qwen2-VL: the Pillow ones where this transformers has
        them), as a function of the row count."""
        if not self.vlm:
            return lambda rows: {}
        if self.llava:
            pv = pixel_values(self.image, self.device, self.dtype)
            return lambda rows: {"pixel_values": pv.expand(rows, *pv.shape[1:])}
        from PIL import Image
        picture = Image.open(self.image).convert("RGB")
        if self.kind == "llava_next":
            try:
                from transformers.models.llava_next.image_processing_pil_llava_next import (
                    LlavaNextImageProcessorPil as Processor)
                processor = Processor.from_pretrained(self.folder)
            except ImportError:
                from transformers import AutoImageProcessor
                processor = AutoImageProcessor.from_pretrained(self.folder)
            batch = processor(images=picture, return_tensors="pt")
            pv = batch["pixel_values"].to(self.device, self.dtype)
            sizes = batch["image_sizes"].to(self.device)
            return lambda rows: {"pixel_values": pv.expand(rows, *pv.shape[1:]),
                                 "image_sizes": sizes.expand(rows, 2)}
        try:
            from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
                Qwen2VLImageProcessorPil as Processor)
            processor = Processor.from_pretrained(self.folder)
        except ImportError:
            from transformers import AutoImageProcessor
            processor = AutoImageProcessor.from_pretrained(self.folder)
        batch = processor(images=[picture], return_tensors="pt")
        pv = batch["pixel_values"].to(self.device, self.dtype)
        grid = batch["image_grid_thw"].to(self.device)
        types = (input_ids == self.model.config.image_token_id).int()
        import inspect
        with_types = "mm_token_type_ids" in inspect.signature(self.model.forward).parameters

        def rows_of(rows):
            extra = {"pixel_values": pv.repeat(rows, 1), "image_grid_thw": grid.repeat(rows, 1)}
            if with_types:
                extra["mm_token_type_ids"] = types.expand(rows, -1)
            return extra
        return rows_of

    def input_embeds(self, ids):
        """Decoder input embeddings [1, T, H] of ids (image features at the image tokens)."""
        if self.vlm and not self.llava:
            raise NotImplementedError(f"the ig phase's input embeddings for {self.kind}")
        with torch.no_grad():
            embeds = self.model.get_input_embeddings()(ids)
            if self.llava:
                pv = pixel_values(self.image, self.device, self.dtype)
                features = self.model.get_image_features(pixel_values=pv)
                features = getattr(features, "pooler_output", features)
                features = torch.cat(list(features)) if isinstance(features, (list, tuple)) else features
                mask = ids[0] == self.model.config.image_token_index
                embeds[0, mask] = features.reshape(-1, embeds.shape[-1]).to(embeds.dtype)
        return embeds

    def cleanup(self):
        shutil.rmtree(self.folder, ignore_errors=True)


# ---- FLOPs -----------------------------------------------------------------------------------

def flops(config, rows, start, positions, targets):
    """Forward FLOPs of `rows` rows computing `positions` positions from index `start`: matmul
    weights (2 per parameter per position), causal attention (QK^T and PV over the start+t+1
    keys position start+t sees), and the LM head at `targets` positions per row."""
    h, layers = config.hidden_size, config.num_hidden_layers
    heads, d = config.num_attention_heads, config.hidden_size // config.num_attention_heads
    kv = config.num_key_value_heads * d
    per_layer = h * (h + 2 * kv) + h * h + 3 * h * config.intermediate_size
    keys = positions * (2 * start + positions + 1) / 2  # sum of start + t + 1 over t
    attention = 4 * layers * heads * d * keys
    return rows * (2 * per_layer * layers * positions + attention + 2 * h * config.vocab_size * targets)


# ---- Phases ----------------------------------------------------------------------------------

def phase_matmul(args, rec, state):
    from forward_compare import matmul_tflops
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    n = 8192 if device.type == "cuda" else 512
    rate = matmul_tflops(device, dtype, n=n, repeats=20 if device.type == "cuda" else 3)
    state["matmul_tflops"] = rate
    rec.write("matmul", device=args.device, dtype=args.dtype, n=n, tflops=round(rate, 1))


def run_streaming(command, timeout, on_line):
    """Runs `command`, calling on_line(dict) for every JSON line of its stdout as it comes;
    kills it after `timeout` seconds."""
    log("$ " + " ".join(str(c) for c in command))
    proc = subprocess.Popen([str(c) for c in command], stdout=subprocess.PIPE, text=True)
    watchdog = threading.Timer(min(max(1.0, timeout), 86400.0), proc.kill)
    watchdog.start()
    try:
        for line in proc.stdout:
            line = line.strip()
            if line.startswith("{"):
                on_line(json.loads(line))
        if proc.wait() != 0:
            raise RuntimeError(f"{Path(command[0]).name} exited with {proc.returncode}"
                               + (f" (killed after {timeout:.0f} s)" if not watchdog.is_alive() else ""))
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def phase_ours(args, rec, state, setup):
    lengths = [t for t in args.tokens if t in setup.prompts]
    command = [args.build / "bench" / "explain_bench", setup.folder,
               ",".join(str(setup.prompts[t]) for t in lengths), TARGET,
               "--device", args.device, "--dtype", args.dtype, "--threads", args.threads,
               "--repeats", args.repeats, "--max-rows", args.max_rows, "--batch1", args.batch1]
    if setup.vlm:
        command += ["--image", setup.image]
    config, m = setup.config, len(setup.target_ids)
    pending = list(lengths)

    def on_line(ours):
        tokens = pending.pop(0)
        L = ours["sequence_length"]
        total = flops(config, 1, 0, L, m)  # the unperturbed pass
        for rows, start, positions in ours["batches"]:
            total += flops(config, rows, start, positions, m)
        row = {"tokens": tokens, **{k: v for k, v in ours.items() if k != "prompt_file"},
               "explain_flops": total, "explain_tflops": round(total / ours["explain_batched_seconds"] / 1e12, 1),
               "forward_tflops": round(flops(config, 1, 0, L, m) / ours["forward_seconds"] / 1e12, 1),
               # The batch plan plus the unperturbed pass must be what the engine counted.
               "plan_matches_usage": ours["planned_positions"] + L == ours["positions_computed"],
               "paper_seconds_6b_1024_tokens_80gb": 160}
        if state.get("matmul_tflops"):
            row["matmul_tflops"] = round(state["matmul_tflops"], 1)
            row["explain_fraction_of_matmul"] = round(row["explain_tflops"] / state["matmul_tflops"], 3)
            row["forward_fraction_of_matmul"] = round(row["forward_tflops"] / state["matmul_tflops"], 3)
        state.setdefault("ours", {})[tokens] = row
        rec.write("ours", **row)
        log(f"ours {tokens}: L={L} n={ours['units']} explain {ours['explain_batched_seconds']:.2f} s, "
            f"ratio {ours['batched_over_n_plus_1_forwards']:.3f}, {row['explain_tflops']} TFLOP/s")

    run_streaming(command, rec.left() - 5, on_line)


def target_ce(model, ids, target_ids, extra):
    """CE_j = -log p(t_j | ...) per row [B, m] (the target positions are the last m)."""
    m = len(target_ids)
    logits = model(input_ids=ids, logits_to_keep=m, use_cache=False, **extra).logits.double()
    logp = torch.log_softmax(logits, dim=-1)
    return -logp.gather(-1, torch.tensor(target_ids, device=ids.device)[None, :, None].expand(ids.shape[0], m, 1))[..., 0]


def phase_reference(args, rec, state, setup, tokens):
    import make_model_cases as patched  # registers the "atman" attention; CONTROL switches it
    from atman_reference import build_sequence, make_units
    device, model = setup.device, setup.model
    items = setup.prompt_items(tokens)
    image = setup.image_spec()
    ids, seq_items = build_sequence(setup.tokenizer, items, True, image)
    target_ids = setup.target_ids
    P, m = len(ids), len(target_ids)
    input_ids = torch.tensor([ids + target_ids[:-1]], device=device)
    L = input_ids.shape[1]
    units = make_units(items, seq_items, {"text_granularity": "token", "image_granularity": "native"},
                       P, m, image)
    n = len(units)
    inputs = setup.image_inputs(input_ids)  # rows -> the model's image inputs
    extra = inputs(1)

    # transformers' own plain forward (sdpa) at this length, for comparison with ours.
    model.set_attn_implementation("sdpa")
    times = []
    with torch.no_grad():
        for r in range(4):
            sync(device)
            t0 = time.perf_counter()
            target_ce(model, input_ids, target_ids, extra)
            sync(device)
            if r:
                times.append(time.perf_counter() - t0)
    forward_s = sorted(times)[len(times) // 2]

    model.set_attn_implementation("eager")
    setup.language_model().set_attn_implementation("atman")
    B = args.reference_batch
    sample = units[:min(n, args.reference_rows)]

    def run_rows(chunk):
        rows = len(chunk)
        f = torch.ones(rows, L, dtype=torch.float32, device=device)
        for b, unit in enumerate(chunk):
            f[b, unit["positions"]] = FACTOR
        patched.CONTROL = {"mode": "log_additive", "layers": None, "factors": f}
        try:
            return target_ce(model, input_ids.expand(rows, L), target_ids, inputs(rows))
        finally:
            patched.CONTROL = None

    try:
        with torch.no_grad():
            base = target_ce(model, input_ids, target_ids, extra)
            run_rows(sample[:B])  # warm-up
            sync(device)
            t0 = time.perf_counter()
            relevance = []
            for i in range(0, len(sample), B):
                relevance.append(run_rows(sample[i:i + B]) - base)
            sync(device)
            seconds = time.perf_counter() - t0
    finally:
        model.set_attn_implementation("sdpa")
    per_row = seconds / len(sample)
    row = {"tokens": tokens, "sequence_length": L, "units": n, "rows_timed": len(sample),
           "batch": B, "seconds_timed": round(seconds, 3), "seconds_per_row": per_row,
           "sampled": len(sample) < n + 1,
           "extrapolated_to_rows": n + 1,
           "reference_seconds": per_row * (n + 1),
           "transformers_sdpa_forward_seconds": forward_s,
           "note": (f"timed {len(sample)} of {n + 1} rows (batches of {B}, after one warm-up "
                    f"batch), extrapolated linearly: every row is a full pass of L = {L}")}
    ours = state.get("ours", {}).get(tokens)
    if ours:
        row["units_ours"] = ours["units"]
        row["reference_over_ours"] = round(row["reference_seconds"] / ours["explain_batched_seconds"], 2)
        row["ours_forward_over_transformers_sdpa"] = round(ours["forward_seconds"] / forward_s, 3)
        if setup.vlm:
            row["forward_note"] = ("transformers' forward includes the vision tower; ours (the "
                                   "engine's plain pass) starts from the input embeddings")
    rec.write("reference", **row)
    log(f"reference {tokens}: {per_row * 1e3:.1f} ms/row -> {row['reference_seconds']:.1f} s for n + 1 rows")


def phase_ig(args, rec, state, setup, tokens):
    from captum.attr import IntegratedGradients
    device, model = setup.device, setup.model
    cuda = device.type == "cuda"
    ids, _ = __import__("atman_reference").build_sequence(setup.tokenizer, setup.prompt_items(tokens),
                                                          True, setup.image_spec())
    ids = torch.tensor([ids], device=device)
    embeds = setup.input_embeds(ids)
    target = setup.target_ids[0]
    model.set_attn_implementation("sdpa")
    for p in model.parameters():
        p.requires_grad_(False)

    def forward(x):
        logits = model(inputs_embeds=x, logits_to_keep=1, use_cache=False).logits[:, -1].float()
        return torch.log_softmax(logits, dim=-1)[:, target]

    ig = IntegratedGradients(forward)

    def attribute(steps, batch):
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        resident = torch.cuda.memory_allocated(device) if cuda else 0
        sync(device)
        t0 = time.perf_counter()
        attr = ig.attribute(embeds, baselines=torch.zeros_like(embeds), n_steps=steps,
                            internal_batch_size=batch)
        float(attr.float().sum())
        sync(device)
        seconds = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated(device) if cuda else None
        return seconds, peak, resident

    batch, attempts = args.ig_batch, []
    while True:
        try:
            seconds, peak, resident = attribute(args.ig_steps, batch)
            break
        except torch.OutOfMemoryError:
            attempts.append(batch)
            if batch == 1:
                raise
            batch //= 2
            log(f"ig {tokens}: out of memory, internal_batch_size {attempts[-1]} -> {batch}")
    _, peak1, _ = attribute(2, 1)
    row = {"tokens": tokens, "sequence_length": ids.shape[1], "target": "first target token",
           "n_steps": args.ig_steps, "internal_batch_size": batch, "oom_at_batch": attempts,
           "method": "gausslegendre (captum default)", "ig_seconds": seconds,
           "ig_peak_bytes": peak, "ig_peak_batch1_bytes": peak1, "resident_bytes": resident,
           "note": "peaks are torch.cuda.max_memory_allocated, weights included"}
    ours = state.get("ours", {}).get(tokens)
    if ours:
        row["ig_over_ours_seconds"] = round(seconds / ours["explain_batched_seconds"], 3)
        if peak is not None:
            our_peak = ours["explain_batched_peak_bytes"] + ours["weight_bytes"]
            row["ours_peak_bytes"] = our_peak
            row["ig_peak_over_ours"] = round(peak / our_peak, 3)
            if "explain_batch1_peak_bytes" in ours:
                our_peak1 = ours["explain_batch1_peak_bytes"] + ours["weight_bytes"]
                row["ours_peak_batch1_bytes"] = our_peak1
                row["ig_peak_batch1_over_ours_batch1"] = round(peak1 / our_peak1, 3)
    rec.write("ig", **row)
    log(f"ig {tokens}: {seconds:.2f} s, peak {peak}")


def phase_batcher(args, rec, state, setup):
    prompts = setup.folder / "batcher_prompts.txt"
    lines = [prompt_text(setup.tokenizer, args.batcher_tokens, offset=37 * r)
             for r in range(args.batcher_requests)]
    prompts.write_text("\n".join(lines) + "\n")
    command = [args.build / "bench" / "batcher_bench", setup.folder, prompts, TARGET,
               "--device", args.device, "--dtype", args.dtype, "--workers", "1,2,4",
               "--max-rows", args.max_rows, "--threads", args.threads]

    def on_line(result):
        rec.write("batcher", tokens_per_request=args.batcher_tokens, **result)
        log(f"batcher W={result['workers_per_device']}: {result['rows_per_second']:.1f} rows/s")

    run_streaming(command, rec.left() - 5, on_line)


def phase_noise(args, rec, state, setup):
    """Batch invariance: null rows' drift per batch shape against the typical |relevance|, and
    the batcher at 1 and 4 workers (different batches) without and with subtract_null_row."""
    prompts = setup.folder / "noise_prompts.txt"
    lines = [prompt_text(setup.tokenizer, args.batcher_tokens, offset=37 * r)
             for r in range(args.batcher_requests)]
    prompts.write_text("\n".join(lines) + "\n")
    command = [args.build / "bench" / "batcher_bench", setup.folder, prompts, TARGET,
               "--device", args.device, "--dtype", args.dtype, "--workers", "1,4",
               "--max-rows", args.max_rows, "--threads", args.threads,
               "--null-row", "both", "--noise-floor", "on"]

    def on_line(result):
        if result.get("noise_floor"):
            rec.write("noise", **result)
            log(f"noise B={result['batch_rows']} from {result['recompute_from']}: drift "
                f"{result['max_abs_log_prob_drift']:.3g} (median |R| {result['median_abs_relevance']:.3g})")
        else:
            rec.write("noise-batcher", tokens_per_request=args.batcher_tokens, **result)
            log(f"noise batcher null_row={result['subtract_null_row']} W={result['workers_per_device']}: "
                f"diff vs W=1 {result['max_abs_log_prob_diff_vs_first']:.3g}")

    run_streaming(command, rec.left() - 5, on_line)


# ---- Summary ---------------------------------------------------------------------------------

def _round(x, digits=3):
    return "-" if x is None else round(x, digits)


def summarize(path):
    """The figures of a bench.jsonl as a few plain lines."""
    lines = []
    for raw in Path(path).read_text().splitlines():
        r = json.loads(raw)
        head = f"{r['preset']:<15} {r['phase']:<9}"
        if "skipped" in r or "error" in r:
            what = r.get("skipped") or r["error"]
            lines.append(f"{head} {r.get('tokens', '')} {'SKIPPED' if 'skipped' in r else 'FAILED'}: {what[:160]}")
        elif r["phase"] == "setup":
            image = (f", image {r['image']} = {r['image_tokens']} tokens" if r.get("image") else "")
            lines.append(f"{head} {r.get('model_type', '')} {r['model_parameters'] / 1e9:.2f} B params, "
                         f"create {r['create_seconds']} s, save {r['save_seconds']} s "
                         f"({r['checkpoint_folder_kind']}){image}, prompts {r['prompt_lengths']}")
        elif r["phase"] == "matmul":
            lines.append(f"{head} dense {r['dtype']} matmul {r['tflops']} TFLOP/s")
        elif r["phase"] == "ours":
            gib = (r["explain_batched_peak_bytes"] + r["weight_bytes"]) / 2**30
            lines.append(
                f"{head} {r['tokens']}: {r.get('family', '')} L={r['sequence_length']} n={r['units']}"
                f"{' (' + str(r['image_units']) + ' image)' if r.get('image_units') else ''} explain "
                f"{r['explain_batched_seconds']:.2f} s (forward {r['forward_seconds'] * 1e3:.1f} ms), "
                f"(a) ratio {r['batched_over_n_plus_1_forwards']:.3f}, positions "
                f"{r['positions_over_n_plus_1_times_L']:.3f}, (e) {r['explain_tflops']} TFLOP/s = "
                f"{r.get('explain_fraction_of_matmul', '-')} of matmul, peak {gib:.1f} GiB "
                f"(batch 1 / plain, weights included: {_round(r.get('peak_with_weights_batch1_over_plain'))})"
                + ("" if r.get("plan_matches_usage") else " [batch plan != positions counted: FLOPs off]"))
        elif r["phase"] == "reference":
            lines.append(f"{head} {r['tokens']}: (b) {r['reference_seconds']:.1f} s for n + 1 rows "
                         f"({r['rows_timed']} timed), reference / ours {r.get('reference_over_ours', '-')}")
        elif r["phase"] == "ig":
            peak = r["ig_peak_bytes"] / 2**30 if r["ig_peak_bytes"] else float("nan")
            lines.append(f"{head} {r['tokens']}: (c) IG {r['n_steps']} steps x batch "
                         f"{r['internal_batch_size']}: {r['ig_seconds']:.2f} s, peak {peak:.1f} GiB, "
                         f"IG / ours peak {r.get('ig_peak_over_ours', '-')}, at batch 1 "
                         f"{r.get('ig_peak_batch1_over_ours_batch1', '-')}")
        elif r["phase"] == "noise":
            lines.append(f"{head} noise floor: {r['batch_rows']} rows from {r['recompute_from']}: "
                         f"max |log p - base| {r['max_abs_log_prob_drift']:.3g}; |R| median "
                         f"{r['median_abs_relevance']:.3g}, p90 {r['p90_abs_relevance']:.3g}, max {r['max_abs_relevance']:.3g}")
        elif r["phase"] == "noise-batcher":
            lines.append(f"{head} noise batcher: subtract_null_row {r['subtract_null_row']}, W={r['workers_per_device']}: "
                         f"max |diff| vs W=1 {r['max_abs_log_prob_diff_vs_first']:.3g}, {r['rows_per_second']:.1f} rows/s")
        elif r["phase"] == "batcher":
            lines.append(f"{head} (d) W={r['workers_per_device']}: {r['rows_per_second']:.1f} rows/s, "
                         f"{r['rows_per_batch']:.1f} rows/batch, {r['requests']} requests x "
                         f"{r['tokens_per_request']} tokens")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--summarize", type=Path, help="print the figures of a bench.jsonl and exit")
    p.add_argument("--build", default="build", type=Path)
    p.add_argument("--preset", choices=sorted(PRESETS))
    p.add_argument("--device", default="cuda:0")
    p.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES))
    p.add_argument("--tokens", default=None, type=int, nargs="+",
                   help="prompt lengths, image tokens included (default: the preset's, else 1024 512)")
    p.add_argument("--phases", default=["matmul", "ours", "reference", "ig", "batcher"], nargs="+",
                   choices=["matmul", "ours", "reference", "ig", "batcher", "noise"])
    p.add_argument("--threads", default=os.cpu_count(), type=int)
    p.add_argument("--repeats", default=3, type=int, help="plain passes (explanations: repeats // 2)")
    p.add_argument("--max-rows", default=32, type=int)
    p.add_argument("--batch1", default="peak", choices=["full", "peak", "off"])
    p.add_argument("--reference-rows", default=32, type=int)
    p.add_argument("--reference-batch", default=8, type=int)
    p.add_argument("--ig-steps", default=50, type=int)
    p.add_argument("--ig-batch", default=10, type=int)
    p.add_argument("--batcher-requests", default=16, type=int)
    p.add_argument("--batcher-tokens", default=128, type=int)
    p.add_argument("--workdir", default=None, type=Path, help="default: /dev/shm when it has room")
    p.add_argument("--deadline", default=None, type=float, help="Unix time; default: none")
    p.add_argument("--reserve", default=0, type=float,
                   help="seconds the comparisons at the second and later --tokens must leave "
                        "before --deadline (for the runs after this one)")
    p.add_argument("--reserve-first", action="store_true",
                   help="the first --tokens' comparisons must leave --reserve seconds too "
                        "(only the explanations, phase ours, may use them)")
    p.add_argument("--out", default=Path("bench.jsonl"), type=Path)
    args = p.parse_args()
    if args.summarize:
        print(summarize(args.summarize))
        return
    if not args.preset:
        p.error("--preset is required")
    args.build = args.build.resolve()
    if args.tokens is None:
        args.tokens = PRESETS[args.preset].get("tokens", [1024, 512])
    # `timeout` ends a run with SIGTERM: exit through the finally blocks (the checkpoint on
    # tmpfs is removed, a running benchmark binary is killed).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    rec = Recorder(args.out, args.preset, args.deadline or math.inf)
    torch.set_num_threads(args.threads)
    state = {}
    if "matmul" in args.phases:
        rec.run("matmul", NEEDS["matmul"], lambda: phase_matmul(args, rec, state))
    setup = rec.run("setup", NEEDS["setup"], lambda: Setup(args, rec))
    if setup is None:
        return
    try:
        for tokens in args.tokens:
            if tokens not in setup.prompts:
                rec.write("ours", tokens=tokens, skipped=f"{tokens} tokens cannot hold the "
                          f"{setup.image_tokens} image tokens of one image plus text")
        first = args.tokens[0]
        if "ours" in args.phases:
            rec.run("ours", NEEDS["ours"], lambda: phase_ours(args, rec, state, setup))
        # The first length's comparisons, the batcher, then the other lengths' (which must
        # leave --reserve seconds for what runs after this process).
        for tokens in args.tokens:
            if tokens not in setup.prompts:
                continue
            extra = 0 if tokens == first and not args.reserve_first else args.reserve
            if "reference" in args.phases:
                rec.run("reference", NEEDS["reference"] + extra,
                        lambda: phase_reference(args, rec, state, setup, tokens), tokens=tokens)
            if "ig" in args.phases:
                rec.run("ig", NEEDS["ig"] + extra,
                        lambda: phase_ig(args, rec, state, setup, tokens), tokens=tokens)
            if tokens == first and "batcher" in args.phases and not setup.vlm:
                rec.run("batcher", NEEDS["batcher"], lambda: phase_batcher(args, rec, state, setup))
            if tokens == first and "noise" in args.phases and not setup.vlm:
                rec.run("noise", NEEDS["noise"], lambda: phase_noise(args, rec, state, setup))
    finally:
        setup.cleanup()


if __name__ == "__main__":
    main()
