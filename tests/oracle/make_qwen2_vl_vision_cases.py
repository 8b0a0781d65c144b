"""Writes a tiny random Qwen2-VL vision tower (transformers' Qwen2VisionTransformerPretrainedModel)
and what it computes.

  <out>/model/                  save_pretrained of the tower: config.json, model.safetensors
                                (float32; LayerNorm weights and biases randomised too)
  <out>/cases/<name>.*.f32      per case, little-endian float32: pixel_values (from
                                Qwen2VLImageProcessorPil on generated images; several images
                                are one packed call), last_hidden_state [N, embed_dim] and
                                pooler_output (the patch merger) [N / merge^2, hidden_size]
  <out>/manifest.json           per case: grid_thw rows and the files' shapes
"""
import argparse
from pathlib import Path

import numpy as np
import torch
from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLVisionConfig
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VisionTransformerPretrainedModel

from common import seed_everything, write_json
from make_vision_images import make_images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    seed_everything(0)
    out = args.out
    (out / "cases").mkdir(parents=True, exist_ok=True)

    config = Qwen2VLVisionConfig(depth=3, embed_dim=32, hidden_size=48, num_heads=4, mlp_ratio=4,
                                 patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
                                 hidden_act="quick_gelu")
    model = Qwen2VisionTransformerPretrainedModel(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "ln_q" in name:  # default init: weight 1, bias 0
                p.copy_(torch.randn_like(p) * 0.3 + (1.0 if name.endswith("weight") else 0.0))
            else:
                p.copy_(torch.randn_like(p) * 0.1)
    model.save_pretrained(out / "model")
    model = Qwen2VisionTransformerPretrainedModel.from_pretrained(out / "model").eval()

    images = make_images(np.random.default_rng(0))
    processor = Qwen2VLImageProcessorPil(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 24)
    cases = {"wide": ["wide_336x100"], "tiny": ["tiny_5x3"],
             "two_images": ["gradient_640x480", "thin_37x300"]}
    manifest = {"cases": {}}
    for name, image_names in cases.items():
        batch = processor(images=[images[n].convert("RGB") for n in image_names],
                          return_tensors="pt")
        pixels, grid = batch["pixel_values"], batch["image_grid_thw"]
        with torch.no_grad():
            result = model(pixels, grid_thw=grid)
        files = {}
        for key, tensor in (("pixel_values", pixels), ("last_hidden_state",
                                                       result.last_hidden_state),
                            ("merged", result.pooler_output)):
            rel = f"cases/{name}.{key}.f32"
            tensor.float().numpy().astype("<f4").tofile(out / rel)
            files[key] = {"file": rel, "shape": list(tensor.shape)}
        manifest["cases"][name] = {"images": image_names, "grid_thw": grid.tolist(), **files}
    write_json(out / "manifest.json", manifest)


if __name__ == "__main__":
    main()
