"""Writes tiny random Qwen2-VL and Qwen2.5-VL vision towers (transformers'
Qwen2VisionTransformerPretrainedModel, Qwen2_5_VisionTransformerPretrainedModel) and what they
compute.

  <out>/<tower>/model/              save_pretrained of the tower: config.json,
                                    model.safetensors (float32; norm weights and biases
                                    randomised too)
  <out>/<tower>/cases/<name>.*.f32  per case, little-endian float32: pixel_values (from
                                    Qwen2VLImageProcessorPil on generated images; several
                                    images are one packed call), last_hidden_state [N, E] and
                                    pooler_output (the patch merger) [N / merge^2, out]
  <out>/manifest.json               per tower and case: grid_thw rows and the files' shapes
  <out>/<tower>_full/model/         a whole tiny Qwen2VLForConditionalGeneration /
                                    Qwen2_5_VLForConditionalGeneration (tower under "visual."
                                    as save_pretrained writes it, vision_config nested), with
                                    the case "two_images" through its model.visual
  manifest["rope_index"]            per model type: token-type sequences (0 text, 1 image) with
                                    their image grids, and what get_rope_index makes of them
                                    (positions [3, L], rope_delta)

Qwen2.5-VL computes in window order and returns last_hidden_state in it; it is written back in
the input's patch order (merge blocks by argsort of the window index), as the merged output is.
The window size (56 px = 2 x 2 merged tokens) cuts the test images into several windows with
smaller ones at the right and bottom edges; blocks 1 and 3 of 4 attend to the whole image.
"""
import argparse
from pathlib import Path

import numpy as np
import torch
from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLConfig,
                          Qwen2VLForConditionalGeneration)
from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (
    Qwen2_5_VisionTransformerPretrainedModel)
from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLVisionConfig
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VisionTransformerPretrainedModel

from transformers.vision_utils import get_vision_window_index

from common import seed_everything, write_json
from make_vision_images import make_images


def randomise(model) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "ln_q" in name:  # default init: weight 1, bias 0
                p.copy_(torch.randn_like(p) * 0.3 + (1.0 if name.endswith("weight") else 0.0))
            else:
                p.copy_(torch.randn_like(p) * 0.1)


def towers():
    """name -> (model class, config)."""
    return {
        "qwen2_vl": (Qwen2VisionTransformerPretrainedModel,
                     Qwen2VLVisionConfig(depth=3, embed_dim=32, hidden_size=48, num_heads=4,
                                         mlp_ratio=4, patch_size=14, spatial_merge_size=2,
                                         temporal_patch_size=2, hidden_act="quick_gelu")),
        "qwen2_5_vl": (Qwen2_5_VisionTransformerPretrainedModel,
                       Qwen2_5_VLVisionConfig(depth=4, hidden_size=32, out_hidden_size=48,
                                              intermediate_size=72, num_heads=4, patch_size=14,
                                              spatial_merge_size=2, temporal_patch_size=2,
                                              window_size=56, fullatt_block_indexes=[1, 3],
                                              hidden_act="silu")),
    }


def full_models():
    """name -> (class, config): the towers inside whole (tiny) vision-language models."""
    text = dict(hidden_size=48, intermediate_size=96, num_hidden_layers=1, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=300, bos_token_id=1, eos_token_id=2,
                rope_parameters={"rope_type": "default", "mrope_section": [2, 2, 2],
                                 "rope_theta": 10000.0})
    return {
        "qwen2_vl_full": (Qwen2VLForConditionalGeneration, Qwen2VLConfig(
            text_config=text, vision_config=towers()["qwen2_vl"][1].to_dict())),
        "qwen2_5_vl_full": (Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLConfig(
            text_config=text, vision_config=towers()["qwen2_5_vl"][1].to_dict())),
    }


def rope_index_cases(model) -> list:
    """get_rope_index on sequences of text runs and images (spatial_merge_size 2)."""
    def seq(*parts):
        types, grids = [], []
        for part in parts:
            if isinstance(part, int):
                types += [0] * part
            else:
                t, h, w = part
                types += [1] * (t * (h // 2) * (w // 2))
                grids.append(list(part))
        return types, grids
    sequences = [seq(3, (1, 4, 6), 4), seq((1, 4, 6), 5), seq(2, (1, 22, 2), 3),
                 seq(3, (1, 4, 6), 2, (1, 8, 10), 1), seq(6), seq(1, (2, 4, 4), 2)]
    cases = []
    for types, grids in sequences:
        ids = torch.tensor([[5 if t == 0 else 7 for t in types]])
        grid = torch.tensor(grids, dtype=torch.long) if grids else None
        positions, delta = model.model.get_rope_index(
            ids, mm_token_type_ids=torch.tensor([types], dtype=torch.int32), image_grid_thw=grid)
        cases.append({"token_types": types, "image_grid_thw": grids,
                      "positions": positions[:, 0].tolist(), "rope_delta": int(delta[0, 0])})
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    seed_everything(0)
    out = args.out
    images = make_images(np.random.default_rng(0))
    processor = Qwen2VLImageProcessorPil(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 24)
    cases = {"wide": ["wide_336x100"], "tiny": ["tiny_5x3"],
             "two_images": ["gradient_640x480", "thin_37x300"]}
    manifest = {}
    for tower, (cls, config) in towers().items():
        (out / tower / "cases").mkdir(parents=True, exist_ok=True)
        model = cls(config).eval()
        randomise(model)
        model.save_pretrained(out / tower / "model")
        model = cls.from_pretrained(out / tower / "model").eval()
        manifest[tower] = {}
        for name, image_names in cases.items():
            batch = processor(images=[images[n].convert("RGB") for n in image_names],
                              return_tensors="pt")
            pixels, grid = batch["pixel_values"], batch["image_grid_thw"]
            with torch.no_grad():
                result = model(pixels, grid_thw=grid)
            hidden = result.last_hidden_state
            if tower == "qwen2_5_vl":
                window_index, cu_windows = get_vision_window_index(
                    grid, spatial_merge_size=2, window_size=56, patch_size=14)
                assert len(cu_windows) > len(grid) + 1, "the case must have several windows"
                unit = 4
                hidden = hidden.reshape(-1, unit, hidden.shape[-1])[torch.argsort(window_index)]
                hidden = hidden.reshape(-1, hidden.shape[-1])
            files = {}
            for key, tensor in (("pixel_values", pixels), ("last_hidden_state", hidden),
                                ("merged", result.pooler_output)):
                rel = f"{tower}/cases/{name}.{key}.f32"
                tensor.float().numpy().astype("<f4").tofile(out / rel)
                files[key] = {"file": rel, "shape": list(tensor.shape)}
            manifest[tower][name] = {"images": image_names, "grid_thw": grid.tolist(), **files}
    for full, (cls, config) in full_models().items():
        (out / full / "cases").mkdir(parents=True, exist_ok=True)
        model = cls(config).eval()
        randomise(model.model.visual)
        model.save_pretrained(out / full / "model")
        model = cls.from_pretrained(out / full / "model").eval()
        image_names = cases["two_images"]
        batch = processor(images=[images[n].convert("RGB") for n in image_names],
                          return_tensors="pt")
        pixels, grid = batch["pixel_values"], batch["image_grid_thw"]
        with torch.no_grad():
            merged = model.model.visual(pixels, grid_thw=grid).pooler_output
        files = {}
        for key, tensor in (("pixel_values", pixels), ("merged", merged)):
            rel = f"{full}/cases/two_images.{key}.f32"
            tensor.float().numpy().astype("<f4").tofile(out / rel)
            files[key] = {"file": rel, "shape": list(tensor.shape)}
        manifest[full] = {"two_images": {"images": image_names, "grid_thw": grid.tolist(),
                                         **files}}
        manifest.setdefault("rope_index", {})[full] = rope_index_cases(model)
    write_json(out / "manifest.json", manifest)


if __name__ == "__main__":
    main()
