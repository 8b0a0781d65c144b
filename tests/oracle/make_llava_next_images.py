"""Writes what transformers' Pillow-based LLaVA-NeXT image processor makes of the test images.

The images are make_vision_images.py's (same generator, same seed: gradients, noise, sharp
edges, tiny 5x3, tall 37x300, wide 336x100, RGBA, grey, palette, 16-bit grey).

  <out>/images/<name>.png           the test images, saved losslessly
  <out>/processors/<name>/          preprocessor_config.json written by save_pretrained of
                                    LlavaNextImageProcessorPil, constructed explicitly
  <out>/pixels/<proc>__<img>.f32    pixel_values[0] of that processor on Image.open(<img>.png):
                                    float32, [1 + tiles, 3, S, S], little-endian
  <out>/manifest.json               per case: the shape, image_sizes, and transformers'
                                    select_best_resolution / get_patch_output_size results
"""
import argparse
from pathlib import Path

import numpy as np
from PIL import Image
from transformers.image_processing_utils import get_patch_output_size, select_best_resolution
from transformers.image_utils import ChannelDimension, PILImageResampling
from transformers.models.llava_next.image_processing_pil_llava_next import (
    LlavaNextImageProcessorPil,
)

from common import seed_everything, write_json
from make_vision_images import make_images


def make_processors():
    """name -> slow (Pillow backend) LLaVA-NeXT image processor, built explicitly."""
    return {
        # llava-v1.6 (llava-hf/llava-v1.6-mistral-7b-hf): 336 px views, the default pinpoints.
        "next336": LlavaNextImageProcessorPil(size={"shortest_edge": 336},
                                              crop_size={"height": 336, "width": 336}),
        # Small views, size as height/width, bilinear, mean/std 0.5, a 3x3 and a 1x4 pinpoint.
        "next56_bilinear": LlavaNextImageProcessorPil(
            size={"height": 56, "width": 56}, crop_size={"height": 56, "width": 56},
            image_grid_pinpoints=[[56, 112], [112, 56], [112, 112], [168, 168], [56, 224]],
            resample=PILImageResampling.BILINEAR, image_mean=[0.5, 0.5, 0.5],
            image_std=[0.5, 0.5, 0.5]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    seed_everything(0)
    rng = np.random.default_rng(0)
    out = args.out
    for sub in ("images", "processors", "pixels"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    manifest = {"images": {}, "processors": {}, "pixels": []}

    images = make_images(rng)
    for name, image in images.items():
        image.save(out / "images" / f"{name}.png")
        manifest["images"][name] = {"file": f"images/{name}.png", "width": image.width,
                                    "height": image.height}

    for pname, proc in make_processors().items():
        proc.save_pretrained(out / "processors" / pname)
        manifest["processors"][pname] = {"dir": f"processors/{pname}",
                                         "pinpoints": proc.image_grid_pinpoints,
                                         "side": proc.crop_size["height"]}
        for iname in images:
            image = Image.open(out / "images" / f"{iname}.png")
            result = proc(images=image, return_tensors="np")
            pixels = result["pixel_values"][0]
            assert pixels.dtype == np.float32 and pixels.ndim == 4, pixels.shape
            height, width = (int(v) for v in result["image_sizes"][0])
            best = select_best_resolution((height, width), proc.image_grid_pinpoints)
            resized = get_patch_output_size(np.zeros((1, height, width)), best,
                                            ChannelDimension.FIRST)
            rel = f"pixels/{pname}__{iname}.f32"
            pixels.astype("<f4").tofile(out / rel)
            manifest["pixels"].append({
                "processor": pname, "image": iname, "file": rel, "shape": list(pixels.shape),
                "image_size": [height, width], "best_resolution": [int(v) for v in best],
                "resized": [int(v) for v in resized]})

    write_json(out / "manifest.json", manifest)


if __name__ == "__main__":
    main()
