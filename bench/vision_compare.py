"""Decode + CLIP preprocessing time: ours (bench/vision_bench) vs transformers' Pillow path.

  python bench/vision_compare.py --build build [--repeats 10]

Both sides take the same generated files (PNG and JPEG, 640x480 to 1500x900) and the LLaVA-1.5
configuration (shortest edge 336, centre crop 336, bicubic) of CLIPImageProcessorPil. The
reference side times Image.open(...).load() for decoding and processor(images=...) on the
opened image for preprocessing, one thread. Prints milliseconds per image for both.
"""
import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "oracle"))
from make_vision_images import edges, gradient, noise  # noqa: E402
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil  # noqa: E402


def images(rng):
    photo = (gradient(1024, 768).astype(np.int32) // 2 + edges(1024, 768) // 4 +
             noise(rng, 1024, 768) // 8).astype(np.uint8)
    return {
        "gradient_640x480.png": (Image.fromarray(gradient(640, 480)), "PNG"),
        "noise_1500x900.png": (Image.fromarray(noise(rng, 1500, 900)), "PNG"),
        "photo_1024x768.jpg": (Image.fromarray(photo), "JPEG"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--build", default=str(ROOT / "build"))
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        proc = CLIPImageProcessorPil(size={"shortest_edge": 336},
                                     crop_size={"height": 336, "width": 336})
        proc.save_pretrained(tmp)
        files = []
        for name, (image, fmt) in images(rng).items():
            image.save(tmp / name, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
            files.append(tmp / name)
        out = subprocess.run([str(Path(args.build) / "bench" / "vision_bench"),
                              str(tmp / "preprocessor_config.json"), "14", str(args.repeats),
                              *map(str, files)], check=True, capture_output=True, text=True)
        ours = {Path(r["file"]).name: r for r in map(json.loads, out.stdout.splitlines())}
        print("| image | ref decode ms | ours decode ms | ref preprocess ms | ours preprocess ms |")
        print("|---|---:|---:|---:|---:|")
        for path in files:
            data = path.read_bytes()
            Image.open(io.BytesIO(data)).load()
            start = time.perf_counter()
            for _ in range(args.repeats):
                Image.open(io.BytesIO(data)).load()
            decode = (time.perf_counter() - start) / args.repeats
            opened = Image.open(io.BytesIO(data))
            opened.load()
            proc(images=opened, return_tensors="np")
            start = time.perf_counter()
            for _ in range(args.repeats):
                proc(images=opened, return_tensors="np")
            pre = (time.perf_counter() - start) / args.repeats
            r = ours[path.name]
            print(f"| {path.name} | {decode * 1e3:.2f} | {r['decode_seconds'] * 1e3:.2f} | "
                  f"{pre * 1e3:.2f} | {r['preprocess_seconds'] * 1e3:.2f} |")


if __name__ == "__main__":
    main()
