"""Writes what transformers' Qwen2-VL image processor (the Pillow backend,
Qwen2VLImageProcessorPil) makes of the vision test images.

  <out>/images/<name>.png          the test images of make_vision_images.py (same generator,
                                   same seed: gradients, noise, edges; tiny, tall, wide; RGBA,
                                   grey, palette, 16-bit grey)
  <out>/processors/<name>/         the processor's config as a folder holds it:
                                   preprocessor_config.json written by save_pretrained, or
                                   (legacy_nested) the Qwen2-VL hub form with top-level
                                   min_pixels / max_pixels nested in processor_config.json
                                   ["image_processor"]; each is read back by transformers
                                   (from_pretrained) to make the expected outputs
  <out>/pixels/<proc>__<img>.f32   pixel_values of that processor on Image.open(<img>.png):
                                   float32, [grid_t * grid_h * grid_w, C * temporal_patch_size *
                                   patch_size * patch_size], little-endian
  <out>/manifest.json              per case: the shape, image_grid_thw, the smart_resize size and
                                   each merged token's rectangle of the original image as exact
                                   fractions; plus smart_resize on a table of sizes (ties,
                                   extreme aspect ratios, the refusal above 200:1)
"""
import argparse
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image
from transformers.image_utils import PILImageResampling
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (Qwen2VLImageProcessorPil,
                                                                         smart_resize)

from common import seed_everything, write_json
from make_vision_images import make_images


def make_processors(out: Path) -> dict:
    """name -> folder holding the config; what transformers loads from it is the reference."""
    built = {
        # The defaults with the pixel budget scaled down so the images stay small: 224x224
        # (50176 px) sits exactly on max_pixels.
        "small": Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=28 * 28 * 64),
        # A budget every larger image exceeds: the downscale branch.
        "downscale": Qwen2VLImageProcessorPil(size={"shortest_edge": 28 * 28,
                                                    "longest_edge": 28 * 28 * 16}),
        # A floor most images are under: the upscale branch.
        "upscale": Qwen2VLImageProcessorPil(min_pixels=28 * 28 * 40, max_pixels=28 * 28 * 80),
        # Other patch, merge and temporal sizes, another filter and normalisation: the
        # flattening order in general.
        "p8_m3_t3_bilinear": Qwen2VLImageProcessorPil(
            min_pixels=2000, max_pixels=20000, patch_size=8, merge_size=3, temporal_patch_size=3,
            resample=PILImageResampling.BILINEAR, image_mean=[0.5, 0.25, 0.75],
            image_std=[0.5, 0.3, 0.2]),
        # No normalisation, a different rescale factor.
        "no_normalize": Qwen2VLImageProcessorPil(min_pixels=3136, max_pixels=28 * 28 * 32,
                                                 do_normalize=False, rescale_factor=1 / 127.5),
    }
    folders = {}
    for name, proc in built.items():
        proc.save_pretrained(out / "processors" / name)
        folders[name] = out / "processors" / name
    # The hub's Qwen2-VL form (min_pixels / max_pixels at the top level, no size), nested the
    # way transformers 5 saves a processor.
    legacy = {"min_pixels": 3136, "max_pixels": 28 * 28 * 48, "patch_size": 14,
              "temporal_patch_size": 2, "merge_size": 2,
              "image_mean": [0.48145466, 0.4578275, 0.40821073],
              "image_std": [0.26862954, 0.26130258, 0.27577711],
              "image_processor_type": "Qwen2VLImageProcessor",
              "processor_class": "Qwen2VLProcessor"}
    folder = out / "processors" / "legacy_nested"
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "processor_config.json", {"image_processor": legacy,
                                                   "processor_class": "Qwen2VLProcessor"})
    folders["legacy_nested"] = folder
    return folders


def load(folder: Path) -> Qwen2VLImageProcessorPil:
    # from_pretrained reads preprocessor_config.json, or processor_config.json's nested
    # "image_processor" when that is all the folder has.
    return Qwen2VLImageProcessorPil.from_pretrained(folder)


def fraction(f: Fraction) -> list:
    return [f.numerator, f.denominator]


def token_rects(width, height, resized_w, resized_h, cell):
    """Each merged token's rectangle of the original image, row-major: [x0, y0, x1, y1] as
    exact fractions. The resize maps pixel edges linearly, so resized pixel x shows original
    x * width / resized_w; normalised by width that is x / resized_w."""
    rects = []
    for r in range(resized_h // cell):
        for c in range(resized_w // cell):
            rects.append([fraction(Fraction(c * cell, resized_w)),
                          fraction(Fraction(r * cell, resized_h)),
                          fraction(Fraction((c + 1) * cell, resized_w)),
                          fraction(Fraction((r + 1) * cell, resized_h))])
    return rects


def smart_resize_table(rng) -> list:
    cases = []
    sizes = [(1, 1), (1, 200), (200, 1), (1, 201), (3, 700), (14, 14), (42, 42), (70, 70),
             (98, 126), (27, 29), (28, 28), (56, 56), (1080, 1920), (1920, 1080), (4000, 3000),
             (11, 2200), (7, 5), (300, 37), (10000, 10000)]
    sizes += [(int(h), int(w)) for h, w in rng.integers(1, 3000, size=(60, 2))]
    budgets = [(28, 56 * 56, 28 * 28 * 1280), (28, 3136, 12845056), (28, 28 * 28 * 100,
                                                                     28 * 28 * 200),
               (28, 784, 12544), (24, 2000, 20000), (32, 4096, 1003520)]
    for h, w in sizes:
        for factor, lo, hi in budgets:
            try:
                rh, rw = smart_resize(h, w, factor=factor, min_pixels=lo, max_pixels=hi)
                cases.append({"height": h, "width": w, "factor": factor, "min_pixels": lo,
                              "max_pixels": hi, "resized": [int(rh), int(rw)]})
            except ValueError as e:
                assert "aspect ratio" in str(e)
                cases.append({"height": h, "width": w, "factor": factor, "min_pixels": lo,
                              "max_pixels": hi, "refused": True})
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    seed_everything(0)
    out = args.out
    for sub in ("images", "processors", "pixels"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    # The same generator and seed as make_vision_images.py: the same images.
    images = make_images(np.random.default_rng(0))
    manifest = {"images": {}, "processors": {}, "cases": [],
                "smart_resize": smart_resize_table(np.random.default_rng(1))}
    for name, image in images.items():
        image.save(out / "images" / f"{name}.png")
        manifest["images"][name] = {"file": f"images/{name}.png", "width": image.width,
                                    "height": image.height}

    for pname, folder in make_processors(out).items():
        proc = load(folder)
        cell = proc.patch_size * proc.merge_size
        manifest["processors"][pname] = {
            "dir": f"processors/{pname}", "min_pixels": proc.size["shortest_edge"],
            "max_pixels": proc.size["longest_edge"], "patch_size": proc.patch_size,
            "merge_size": proc.merge_size, "temporal_patch_size": proc.temporal_patch_size}
        for iname, image in images.items():
            reopened = Image.open(out / "images" / f"{iname}.png")
            result = proc(images=reopened, return_tensors="np")
            pixels, grid = result["pixel_values"], result["image_grid_thw"]
            assert pixels.dtype == np.float32 and pixels.ndim == 2, (pixels.dtype, pixels.shape)
            rh, rw = smart_resize(image.height, image.width, factor=cell,
                                  min_pixels=proc.size["shortest_edge"],
                                  max_pixels=proc.size["longest_edge"])
            grid = [int(v) for v in grid[0]]
            assert grid == [1, rh // proc.patch_size, rw // proc.patch_size], (grid, rh, rw)
            rel = f"pixels/{pname}__{iname}.f32"
            pixels.astype("<f4").tofile(out / rel)
            manifest["cases"].append({
                "processor": pname, "image": iname, "file": rel, "shape": list(pixels.shape),
                "grid_thw": grid, "resized": [int(rh), int(rw)],
                "token_rects": token_rects(image.width, image.height, rw, rh, cell)})
    write_json(out / "manifest.json", manifest)


if __name__ == "__main__":
    main()
