"""Writes tiny random Qwen2-VL and Qwen2.5-VL models (transformers'
Qwen2VLForConditionalGeneration, Qwen2_5_VLForConditionalGeneration: vision tower, patch merger
and a qwen2 language model with multimodal rotary, M-RoPE) and the logits they compute.

  <out>/<family>/model/             save_pretrained: config.json (text_config and vision_config
                                    nested, as transformers 5 writes them), model.safetensors
                                    (float32; every weight randomised, norms around 1).
                                    qwen2_vl: separate lm_head; qwen2_5_vl: tied embeddings.
  <out>/<family>/<case>.<key>.f32   little-endian float32 arrays (shapes in the manifest)
  <out>/<family>/module-layout/     the same weights under transformers' module names
                                    (model.state_dict(): model.language_model.*, model.visual.*,
                                    lm_head.weight) with the same config.json
  <out>/<family>/flat-config/       the same weights with config.json as the hub's exports write
                                    it: text fields at the top level, rope_scaling
                                    {"type": "mrope", "mrope_section"} and rope_theta (checked
                                    here: transformers reads it into the same model)
  <out>/manifest.json               per family and case: ids, image_grid_thw, the M-RoPE
                                    positions [3, T] and rope_delta of get_rope_index, and files

Cases (batch 1):
  text        text-only ids; logits [1, T, V] of the whole model (positions 0..T-1 in all
              three components)
  one_image   text, vision_start, the image's pads, vision_end, text: pixel_values (from
              Qwen2VLImageProcessorPil), merged image rows [N, H], logits [1, T, V]
  two_images  two images of different grids between text runs, as one_image
  mrope_lm    the language model alone on one_image's token embeddings (image pads embedded as
              tokens) with one_image's M-RoPE positions: logits [1, T, V]
"""
import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import torch
from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLConfig,
                          Qwen2VLForConditionalGeneration)
from safetensors.torch import save_file
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from common import seed_everything, write_json
from make_vision_images import make_images

VOCAB = 300
VISION_START, VISION_END, IMAGE, VIDEO = 288, 289, 290, 291


def text_config():
    # head_dim 16: rotary over 8 frequencies, split 2 (temporal) + 3 (height) + 3 (width).
    return dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=VOCAB, bos_token_id=1, eos_token_id=2,
                rms_norm_eps=1e-6,
                rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3],
                                 "rope_theta": 1000.0})


def families():
    """name -> (class, config)."""
    tokens = dict(image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=VISION_START,
                  vision_end_token_id=VISION_END)
    return {
        "qwen2_vl": (Qwen2VLForConditionalGeneration, Qwen2VLConfig(
            text_config=text_config(), tie_word_embeddings=False, **tokens,
            vision_config=dict(depth=2, embed_dim=32, hidden_size=64, num_heads=4, mlp_ratio=2,
                               patch_size=14, spatial_merge_size=2, temporal_patch_size=2))),
        "qwen2_5_vl": (Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLConfig(
            text_config=text_config(), tie_word_embeddings=True, **tokens,
            vision_config=dict(depth=2, hidden_size=32, out_hidden_size=64, intermediate_size=48,
                               num_heads=4, patch_size=14, spatial_merge_size=2,
                               temporal_patch_size=2, window_size=56, fullatt_block_indexes=[1]))),
    }


def randomise(model) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "ln_q" in name:
                p.copy_(torch.randn_like(p) * 0.3 + (1.0 if name.endswith("weight") else 0.0))
            else:
                p.copy_(torch.randn_like(p) * 0.2)


def prompt(text_runs, image_tokens):
    """Text runs (lists of ids) with an image (vision_start, pads, vision_end) between each."""
    ids = list(text_runs[0])
    for run, n in zip(text_runs[1:], image_tokens):
        ids += [VISION_START] + [IMAGE] * n + [VISION_END] + list(run)
    return ids


def write_layouts(root: Path, model, cls, ids, pixels, grid, types, logits) -> None:
    """module-layout/ and flat-config/ (see the module docstring); the arguments are the last
    image case, which the flat config must reproduce."""
    config = json.loads((root / "model" / "config.json").read_text())
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    assert "model.language_model.embed_tokens.weight" in state and any(
        k.startswith("model.visual.") for k in state), sorted(state)[:5]
    (root / "module-layout").mkdir(parents=True, exist_ok=True)
    save_file(state, root / "module-layout" / "model.safetensors", metadata={"format": "pt"})
    shutil.copy(root / "model" / "config.json", root / "module-layout" / "config.json")

    flat = dict(config)
    text = flat.pop("text_config")
    text.pop("model_type")
    rope = text.pop("rope_parameters")
    flat.update(text)
    flat["rope_scaling"] = {"type": "mrope", "mrope_section": rope["mrope_section"]}
    flat["rope_theta"] = rope["rope_theta"]
    (root / "flat-config").mkdir(parents=True, exist_ok=True)
    (root / "flat-config" / "config.json").write_text(json.dumps(flat, indent=1))
    shutil.copy(root / "model" / "model.safetensors", root / "flat-config" / "model.safetensors")
    reread = cls.from_pretrained(root / "flat-config").eval()
    with torch.no_grad():
        again = reread(input_ids=ids, pixel_values=pixels, image_grid_thw=grid,
                       mm_token_type_ids=types).logits
    assert torch.equal(again, logits), "transformers reads the flat config differently"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    seed_everything(0)
    out = args.out
    images = make_images(np.random.default_rng(0))
    processor = Qwen2VLImageProcessorPil(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 12)
    image_cases = {"one_image": (["wide_336x100"], [[5, 17, 3], [40, 41, 42, 43]]),
                   "two_images": (["gradient_640x480", "thin_37x300"],
                                  [[5, 6], [7, 8, 9], [10, 11, 12, 13]])}
    manifest = {}
    for family, (cls, config) in families().items():
        (out / family).mkdir(parents=True, exist_ok=True)
        model = cls(config).eval()
        randomise(model)
        if config.tie_word_embeddings:
            model.tie_weights()
        model.save_pretrained(out / family / "model")
        model = cls.from_pretrained(out / family / "model").eval()
        cases = {}

        def save(case, key, tensor):
            rel = f"{family}/{case}.{key}.f32"
            tensor.detach().float().numpy().astype("<f4").tofile(out / rel)
            cases.setdefault(case, {})[key] = {"file": rel, "shape": list(tensor.shape)}

        ids = torch.tensor([[3, 14, 15, 92, 65, 35, 89, 79, 32, 38]])
        with torch.no_grad():
            save("text", "logits", model(input_ids=ids).logits)
        cases["text"]["ids"] = ids[0].tolist()

        for case, (names, runs) in image_cases.items():
            batch = processor(images=[images[n].convert("RGB") for n in names],
                              return_tensors="pt")
            pixels, grid = batch["pixel_values"], batch["image_grid_thw"]
            counts = [int(t * h * w) // 4 for t, h, w in grid.tolist()]
            ids = torch.tensor([prompt(runs, counts)])
            types = (ids == IMAGE).to(torch.int32)
            with torch.no_grad():
                logits = model(input_ids=ids, pixel_values=pixels, image_grid_thw=grid,
                               mm_token_type_ids=types).logits
                merged = torch.cat(model.model.get_image_features(
                    pixels, grid, return_dict=True).pooler_output, dim=0)
                positions, delta = model.model.get_rope_index(
                    ids, image_grid_thw=grid, mm_token_type_ids=types)
            save(case, "pixel_values", pixels)
            save(case, "merged", merged)
            save(case, "logits", logits)
            cases[case].update({"images": names, "ids": ids[0].tolist(),
                                "image_grid_thw": grid.tolist(),
                                "positions": positions[:, 0].tolist(),
                                "rope_delta": int(delta[0, 0])})
            if case == "one_image":
                with torch.no_grad():
                    embeds = model.model.get_input_embeddings()(ids)
                    hidden = model.model.language_model(inputs_embeds=embeds,
                                                        position_ids=positions).last_hidden_state
                    save("mrope_lm", "logits", model.lm_head(hidden))
                cases["mrope_lm"].update({"ids": ids[0].tolist(), "image_grid_thw": grid.tolist(),
                                          "positions": positions[:, 0].tolist()})
        manifest[family] = cases
        write_layouts(out / family, model, cls, ids, pixels, grid, types, logits)
    write_json(out / "manifest.json", manifest)


if __name__ == "__main__":
    main()
