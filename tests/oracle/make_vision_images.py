"""Writes generated images and what Pillow and transformers make of them.

  <out>/images/<name>.png         test images made with numpy (gradients, noise, sharp edges,
                                  alpha, grey, palette, 16-bit grey), saved losslessly
  <out>/processors/<name>/        preprocessor_config.json written by save_pretrained of the
                                  slow (Pillow) image processors, CLIPImageProcessorPil and
                                  LlavaImageProcessorPil, constructed explicitly
  <out>/pixels/<proc>__<img>.f32  pixel_values[0] of that processor on Image.open(<img>.png):
                                  float32, [3, H, W], little-endian
  <out>/resize/<name>.u8          Image.resize((w, h), filter) of an RGB image: uint8 [H, W, 3]
  <out>/decode/<name>.<ext>       JPEG / PNG / GIF files written by Pillow, and PNGs in
                                  layouts Pillow does not write (Adam7, 1/2/4-bit, 16-bit
                                  colour) encoded here
  <out>/decode/<name>.rgb         Pillow's decode of it, made RGB the way transformers does
                                  (convert_to_rgb: alpha composited onto white): uint8 [H, W, 3]
  <out>/decode/<name>.drop.rgb    Image.open(...).convert("RGB") (alpha dropped), the
                                  transformers.image_utils.load_image convention
  <out>/decode/<name>.llava336.f32  for JPEGs: pixel_values of the llava336 processor
  <out>/reject/<name>.<ext>       files DecodeImage must refuse: other formats written by
                                  Pillow (WebP, BMP, TIFF), and decompression bombs (valid
                                  headers claiming a huge canvas over a few bytes of data)
  <out>/manifest.json             what each file is: sizes, modes, processors, filters
"""
import argparse
import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image
from transformers.image_transforms import convert_to_rgb
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

from common import seed_everything, write_json


def gradient(w, h):
    x = np.linspace(0, 255, w)[None, :]
    y = np.linspace(0, 255, h)[:, None]
    r = np.broadcast_to(x, (h, w))
    g = np.broadcast_to(y, (h, w))
    b = (r + g) / 2
    return np.stack([r, g, b], -1).round().astype(np.uint8)


def noise(rng, w, h, channels=3):
    return rng.integers(0, 256, size=(h, w, channels), dtype=np.uint8)


def edges(w, h):
    """Checkerboard of 7-pixel squares plus hard stripes: the worst case for resampling."""
    yy, xx = np.mgrid[0:h, 0:w]
    checker = (((xx // 7) + (yy // 7)) % 2) * 255
    stripes = ((xx // 3) % 2) * 255
    diagonal = ((xx + 2 * yy) % 23 < 11) * 255
    return np.stack([checker, stripes, diagonal], -1).astype(np.uint8)


def make_images(rng):
    """name -> PIL image (mode as stored in the PNG)."""
    images = {
        "gradient_640x480": Image.fromarray(gradient(640, 480)),
        "noise_1500x900": Image.fromarray(noise(rng, 1500, 900)),
        "edges_480x640": Image.fromarray(edges(480, 640)),
        "tiny_5x3": Image.fromarray(noise(rng, 5, 3)),
        "noise_224x224": Image.fromarray(noise(rng, 224, 224)),
        "thin_37x300": Image.fromarray(edges(37, 300)),
        "wide_336x100": Image.fromarray(gradient(336, 100) ^ noise(rng, 336, 100) // 8),
    }
    rgba = np.concatenate([edges(300, 200), gradient(300, 200)[..., :1]], -1)
    rgba[:20, :20, 3] = 0  # fully transparent corner: composited to white
    images["rgba_300x200"] = Image.fromarray(rgba, "RGBA")
    images["gray_200x150"] = Image.fromarray(gradient(200, 150)[..., 0] ^ noise(rng, 200, 150)[..., 0] // 4, "L")
    la = np.stack([edges(150, 150)[..., 0], gradient(150, 150)[..., 1]], -1)
    images["la_150x150"] = Image.fromarray(la, "LA")
    palette = Image.fromarray(edges(120, 90)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    images["palette_120x90"] = palette
    ptrans = palette.copy()
    ptrans.info["transparency"] = 3
    images["palette_trns_120x90"] = ptrans
    gray16 = (gradient(64, 48)[..., 0].astype(np.uint16) * 3)  # values 0..765: Pillow clips at 255
    images["gray16_64x48"] = Image.fromarray(gray16)  # mode I;16
    return images


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(
        ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


ADAM7 = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
         (0, 1, 1, 2)]


def encode_png(samples: np.ndarray, bit_depth: int, color_type: int, interlace=False,
               palette=None, trns=None) -> bytes:
    """A PNG of `samples` ([H, W, C] integers of `bit_depth` bits), filter 0 on every row."""
    h, w = samples.shape[:2]

    def rows(img):
        out = b""
        for row in img:
            flat = row.reshape(-1)
            if bit_depth == 16:
                data = flat.astype(">u2").tobytes()
            elif bit_depth == 8:
                data = flat.astype(np.uint8).tobytes()
            else:  # pack samples MSB first, rows padded to whole bytes
                data = np.packbits(np.unpackbits(flat.astype(np.uint8)[:, None], axis=1)
                                   [:, 8 - bit_depth:].reshape(-1)).tobytes()
            out += b"\0" + data
        return out

    if interlace:
        raw = b"".join(rows(samples[y0::dy, x0::dx]) for x0, y0, dx, dy in ADAM7
                       if samples[y0::dy, x0::dx].size)
    else:
        raw = rows(samples)
    chunks = png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, bit_depth, color_type, 0, 0,
                                            int(interlace)))
    if palette is not None:
        chunks += png_chunk(b"PLTE", bytes(np.asarray(palette, np.uint8).reshape(-1)))
    if trns is not None:
        chunks += png_chunk(b"tRNS", trns)
    return (b"\x89PNG\r\n\x1a\n" + chunks + png_chunk(b"IDAT", zlib.compress(raw)) +
            png_chunk(b"IEND", b""))


def raw_pngs(rng):
    """name -> PNG bytes in layouts Pillow does not write."""
    out = {}
    rgb = edges(29, 23) ^ noise(rng, 29, 23) // 4
    out["interlaced_rgb_29x23"] = encode_png(rgb, 8, 2, interlace=True)
    rgba16 = rng.integers(0, 65536, size=(11, 13, 4))
    rgba16[0, :, 3] = 0
    out["rgba16_13x11"] = encode_png(rgba16, 16, 6)
    out["rgb16_interlaced_9x10"] = encode_png(rng.integers(0, 65536, size=(10, 9, 3)), 16, 2,
                                              interlace=True)
    for bits in (1, 2, 4):
        out[f"gray{bits}_19x7"] = encode_png(rng.integers(0, 2 ** bits, size=(7, 19, 1)), bits, 0)
    palette = rng.integers(0, 256, size=(16, 3))
    out["palette4_trns_17x9"] = encode_png(rng.integers(0, 16, size=(9, 17, 1)), 4, 3,
                                           palette=palette, trns=bytes([0, 128, 255, 7]))
    return out


def make_processors():
    """name -> slow (Pillow backend) image processor, built explicitly."""
    from transformers.image_utils import PILImageResampling
    return {
        "clip224": CLIPImageProcessorPil(),
        "llava336": CLIPImageProcessorPil(size={"shortest_edge": 336},
                                          crop_size={"height": 336, "width": 336}),
        "llava336_pad": LlavaImageProcessorPil(size={"shortest_edge": 336},
                                               crop_size={"height": 336, "width": 336},
                                               do_pad=True),
        # Fixed (height, width) resize and no crop: a non-square output.
        "squash_224x160": CLIPImageProcessorPil(size={"height": 224, "width": 160},
                                                do_center_crop=False),
        # Shortest edge below the crop: the centre crop pads with zeros.
        "crop_pads_112": CLIPImageProcessorPil(size={"shortest_edge": 100},
                                               crop_size={"height": 112, "width": 112}),
        "bilinear64": CLIPImageProcessorPil(size={"shortest_edge": 64},
                                            crop_size={"height": 64, "width": 64},
                                            resample=PILImageResampling.BILINEAR,
                                            image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5]),
    }


def reference_rgb(image: Image.Image) -> np.ndarray:
    return convert_to_rgb(image, return_numpy=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    seed_everything(0)
    rng = np.random.default_rng(0)
    out = args.out
    for sub in ("images", "processors", "pixels", "resize", "decode"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    manifest = {"images": {}, "processors": {}, "pixels": [], "resize": [], "decode": []}

    images = make_images(rng)
    for name, image in images.items():
        path = out / "images" / f"{name}.png"
        image.save(path)
        reopened = Image.open(path)
        manifest["images"][name] = {"file": f"images/{name}.png", "width": image.width,
                                    "height": image.height, "mode": reopened.mode}

    processors = make_processors()
    for pname, proc in processors.items():
        proc.save_pretrained(out / "processors" / pname)
        manifest["processors"][pname] = {"dir": f"processors/{pname}",
                                         "class": type(proc).__name__}
        for iname in images:
            image = Image.open(out / "images" / f"{iname}.png")
            pixels = proc(images=image, return_tensors="np")["pixel_values"][0]
            assert pixels.dtype == np.float32 and pixels.shape[0] == 3, pixels.shape
            rel = f"pixels/{pname}__{iname}.f32"
            pixels.astype("<f4").tofile(out / rel)
            manifest["pixels"].append({"processor": pname, "image": iname, "file": rel,
                                       "shape": list(pixels.shape)})

    # Pillow's resampling on its own, every convolution filter, up and down, one axis only.
    filters = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
               "lanczos": Image.Resampling.LANCZOS, "box": Image.Resampling.BOX,
               "hamming": Image.Resampling.HAMMING}
    resizes = [("noise_1500x900", 373, 224, "bicubic"), ("edges_480x640", 336, 448, "bicubic"),
               ("tiny_5x3", 373, 224, "bicubic"), ("thin_37x300", 37, 111, "bicubic"),
               ("thin_37x300", 100, 300, "bicubic"), ("gradient_640x480", 299, 224, "bicubic"),
               ("edges_480x640", 97, 131, "bilinear"), ("edges_480x640", 97, 131, "lanczos"),
               ("edges_480x640", 97, 131, "box"), ("edges_480x640", 97, 131, "hamming"),
               ("tiny_5x3", 17, 11, "lanczos"),
               # Height shrinks by more than twice the width's loss: Pillow 13 goes vertical
               # first (37 -> 160 wide, 300 -> 224 high; 1500 -> 1400, 900 -> 500), and the
               # boundary case (loss exactly twice) that stays horizontal first.
               ("thin_37x300", 160, 224, "bicubic"), ("noise_1500x900", 1400, 500, "bicubic"),
               ("noise_1500x900", 1300, 500, "bicubic")]
    for iname, w, h, fname in resizes:
        image = Image.open(out / "images" / f"{iname}.png").convert("RGB")
        resized = np.asarray(image.resize((w, h), resample=filters[fname]))
        rel = f"resize/{iname}__{w}x{h}__{fname}.u8"
        resized.tofile(out / rel)
        manifest["resize"].append({"image": iname, "width": w, "height": h, "filter": fname,
                                   "file": rel})

    # Decoding: lossless formats must match Pillow exactly; JPEG is measured.
    def add_decode(name, data: bytes, ext: str, lossy: bool):
        (out / "decode" / f"{name}.{ext}").write_bytes(data)
        image = Image.open(io.BytesIO(data))
        image.load()
        mode = image.mode
        rgb = reference_rgb(image)
        rgb.tofile(out / "decode" / f"{name}.rgb")
        np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).tofile(
            out / "decode" / f"{name}.drop.rgb")
        pixels = None
        if lossy:  # what a JPEG's decoding difference becomes after LLaVA preprocessing
            pixels = f"decode/{name}.llava336.f32"
            processors["llava336"](images=Image.open(io.BytesIO(data)),
                                   return_tensors="np")["pixel_values"][0].astype(
                                       "<f4").tofile(out / pixels)
        manifest["decode"].append({"name": name, "file": f"decode/{name}.{ext}",
                                   "llava336_pixels": pixels,
                                   "rgb": f"decode/{name}.rgb",
                                   "drop_rgb": f"decode/{name}.drop.rgb", "mode": mode,
                                   "width": image.width, "height": image.height,
                                   "lossy": lossy})

    def encode(image: Image.Image, fmt: str, **kw) -> bytes:
        buf = io.BytesIO()
        image.save(buf, format=fmt, **kw)
        return buf.getvalue()

    for name in ("rgba_300x200", "gray_200x150", "la_150x150", "palette_120x90",
                 "palette_trns_120x90", "gray16_64x48", "tiny_5x3"):
        add_decode(name, (out / "images" / f"{name}.png").read_bytes(), "png", False)
    # PNG layouts Pillow does not write, encoded here (the reference is still Pillow's
    # decoding of the file): Adam7 interlacing, 1/2/4-bit grey and palette, 16-bit RGB(A).
    for name, data in raw_pngs(rng).items():
        add_decode(name, data, "png", False)
    rgb_trns = images["gradient_640x480"].copy()
    rgb_trns.info["transparency"] = (0, 0, 0)  # tRNS colour key: the black corner pixel
    add_decode("rgb_trns_640x480", encode(rgb_trns, "PNG", transparency=(0, 0, 0)), "png", False)
    add_decode("palette_trns_gif", encode(images["palette_trns_120x90"], "GIF",
                                          transparency=3), "gif", False)
    add_decode("palette_gif", encode(images["palette_120x90"], "GIF"), "gif", False)
    photo = Image.fromarray((gradient(640, 480).astype(np.int32) // 2 +
                             edges(640, 480) // 4 + noise(rng, 640, 480) // 8).astype(np.uint8))
    add_decode("jpeg_420_q90", encode(photo, "JPEG", quality=90), "jpg", True)
    add_decode("jpeg_444_q95", encode(photo, "JPEG", quality=95, subsampling=0), "jpg", True)
    add_decode("jpeg_progressive", encode(photo, "JPEG", quality=85, progressive=True), "jpg",
               True)
    add_decode("jpeg_gray", encode(images["gray_200x150"], "JPEG", quality=90), "jpg", True)
    add_decode("jpeg_odd_7x5", encode(Image.fromarray(noise(rng, 7, 5)), "JPEG", quality=90),
               "jpg", True)
    # Four components: Pillow writes Adobe (inverted) CMYK; print workflows produce these.
    add_decode("jpeg_cmyk", encode(photo.convert("CMYK"), "JPEG", quality=90), "jpg", True)

    # Files to refuse. Other formats, as Pillow writes them:
    (out / "reject").mkdir(exist_ok=True)
    manifest["reject"] = {}
    small = images["tiny_5x3"]
    for fmt, ext in (("WEBP", "webp"), ("BMP", "bmp"), ("TIFF", "tiff")):
        (out / "reject" / f"image.{ext}").write_bytes(encode(small, fmt))
        manifest["reject"][fmt] = f"reject/image.{ext}"
    # Bombs: headers claiming width x height, followed by almost nothing.
    bomb = (b"\x89PNG\r\n\x1a\n" +
            png_chunk(b"IHDR", struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0)) +
            png_chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + png_chunk(b"IEND", b""))
    (out / "reject" / "bomb.png").write_bytes(bomb)
    jpeg = bytearray(encode(small, "JPEG", quality=90))
    sof = jpeg.index(b"\xff\xc0")  # baseline SOF0: length(2) precision(1) height(2) width(2)
    jpeg[sof + 5:sof + 9] = struct.pack(">HH", 65000, 65000)
    (out / "reject" / "bomb.jpg").write_bytes(bytes(jpeg))
    gif = bytearray(encode(images["palette_120x90"], "GIF"))
    gif[6:10] = struct.pack("<HH", 65535, 65535)  # logical screen size
    (out / "reject" / "bomb.gif").write_bytes(bytes(gif))
    manifest["bombs"] = {"png": {"file": "reject/bomb.png", "width": 100000, "height": 100000},
                         "jpeg": {"file": "reject/bomb.jpg", "width": 65000, "height": 65000},
                         "gif": {"file": "reject/bomb.gif", "width": 65535, "height": 65535}}

    write_json(out / "manifest.json", manifest)


if __name__ == "__main__":
    main()
