"""Draws docs/examples/tiled-units.png (docs/vision.md, "Model: LLaVA-NeXT", "In the
engine"): how a LLaVA-NeXT image's tokens, a base view and anyres tiles, fall into an R x C
grid of units.

Four panels, each the original image enlarged K times (the overlay: as the tool enlarges it):
  1. the base view's G x G cells (the whole image squashed to one view), tinted by unit;
  2. the tile cells kept after unpad_image (in original coordinates; thick lines: the tiles),
     tinted by unit;
  3. the units: the rectangles of the server's answer (`atman explain --json`), each labelled
     with its number and its base-view + tile token counts;
  4. the `atman explain --png` overlay of the same request (the tool's own drawing).
Token rectangles and the grouping come from the plain Python reference
(tests/oracle/atman_reference.py: transformers' arithmetic, the rule the engine is tested
against); panel 3 checks that the server's rectangles are the reference's regions.

Usage: draw-tiled-units.py --model DIR --image PNG --response JSON --overlay PNG --rows R
       --cols C --out PNG  (called by make-tiled-units-example.sh)
"""
import argparse
import json
import math
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests" / "oracle"))
from atman_reference import anyres_token_rects, group_by_region  # noqa: E402

K = 12  # enlargement, as `atman explain --png` draws a 40 px wide image (512 // 40)
PALETTE = [(228, 26, 28), (55, 126, 184), (77, 175, 74), (152, 78, 163), (255, 127, 0),
           (166, 86, 40), (247, 129, 191), (153, 153, 153), (23, 190, 207)]


def font(size):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType sizes
        return ImageFont.load_default()


def tinted(picture, cells, unit_of, outline=(255, 255, 255), width=1):
    """picture with each cell (x0, y0, x1, y1 in [0, 1]) filled with its unit's colour."""
    layer = Image.new("RGBA", picture.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    w, h = picture.size
    for t, rect in cells:
        box = [rect[0] * w, rect[1] * h, rect[2] * w - 1, rect[3] * h - 1]
        draw.rectangle(box, fill=PALETTE[unit_of[t] % len(PALETTE)] + (120,), outline=outline + (255,),
                       width=width)
    return Image.alpha_composite(picture.convert("RGBA"), layer).convert("RGB")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name in ("model", "image", "response", "overlay", "out"):
        parser.add_argument(f"--{name}", required=True, type=Path)
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--cols", type=int, required=True)
    args = parser.parse_args()

    config = json.loads((args.model / "config.json").read_text())
    anyres = {"size": config["vision_config"]["image_size"], "patch": config["vision_config"]["patch_size"],
              "pinpoints": config["image_grid_pinpoints"]}
    original = Image.open(args.image).convert("RGB")
    rects, (g, _), _ = anyres_token_rects(original.width, original.height, anyres)
    units = group_by_region(rects, args.rows, args.cols)
    unit_of = {t: u for u, (tokens, _) in enumerate(units) for t in tokens}
    base = [(t, rects[t]) for t in range(g * g)]
    tiles = [(t, r) for t, r in enumerate(rects) if t >= g * g and r is not None]

    # The server's unit rectangles are the reference's regions.
    answer = json.loads(args.response.read_text())
    served = [s for item in answer["explanations"][0]["items"] for s in item.get("image", [])]
    assert len(served) == len(units), (len(served), len(units))
    for s, (_, (x, y, w, h)) in zip(served, units):
        got = [s.get("left", 0.0), s.get("top", 0.0), s["width"], s["height"]]
        assert max(abs(a - b) for a, b in zip(got, [x, y, w, h])) < 1e-9, (got, (x, y, w, h))

    big = original.resize((original.width * K, original.height * K), Image.NEAREST)
    panel_base = tinted(big, base, unit_of, width=2)
    panel_tiles = tinted(big, tiles, unit_of)
    draw = ImageDraw.Draw(panel_tiles)
    best = tile_borders(anyres, original)
    for x in best["x_borders"]:
        draw.line([(x * big.width, 0), (x * big.width, big.height)], fill=(0, 0, 0), width=4)
    for y in best["y_borders"]:
        draw.line([(0, y * big.height), (big.width, y * big.height)], fill=(0, 0, 0), width=4)

    panel_units = big.copy()
    draw = ImageDraw.Draw(panel_units, "RGBA")
    label = font(18)
    for u, (tokens, (x, y, w, h)) in enumerate(units):
        colour = PALETTE[u % len(PALETTE)]
        box = [x * big.width + 2, y * big.height + 2, (x + w) * big.width - 3, (y + h) * big.height - 3]
        draw.rectangle(box, fill=colour + (70,), outline=colour + (255,), width=4)
        n_base = sum(t < g * g for t in tokens)
        text = f"unit {u}\n{n_base} base\n+ {len(tokens) - n_base} tile"
        draw.multiline_text((box[0] + 8, box[1] + 6), text, fill=(0, 0, 0), font=label, spacing=2)

    overlay = Image.open(args.overlay).convert("RGB")
    tile_rows, tile_cols = len(best["y_borders"]) + 1, len(best["x_borders"]) + 1
    captions = [
        f"1. base view: the whole image squashed, {g} x {g} cells",
        f"2. {tile_rows} x {tile_cols} tiles (thick lines): {len(tiles)} kept cells",
        f"3. {args.rows} x {args.cols} units (server's rectangles)",
        "4. atman explain --png (random model)",
    ]
    panels = [panel_base, panel_tiles, panel_units, overlay]
    gap, head = 16, 30
    col_w = max(p.width for p in panels)
    row_h = [max(panels[0].height, panels[1].height), max(panels[2].height, panels[3].height)]
    sheet = Image.new("RGB", (2 * col_w + 3 * gap, sum(row_h) + 2 * head + 3 * gap), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    caption_font = font(17)
    for i, (panel, caption) in enumerate(zip(panels, captions)):
        r, c = divmod(i, 2)
        x = gap + c * (col_w + gap)
        y = gap + r * (row_h[0] + head + gap) + head
        draw.text((x, y - head + 4), caption, fill=(0, 0, 0), font=caption_font)
        sheet.paste(panel, (x, y))
    sheet.save(args.out, optimize=True)


def tile_borders(anyres, original):
    """The tiles' borders in original coordinates (inner borders only): the best pinpoint's
    canvas, the image resized into it keeping its aspect and centred (transformers'
    select_best_resolution / get_patch_output_size, as atman_reference.anyres_token_rects)."""
    from transformers.image_processing_utils import select_best_resolution
    width, height, size = original.width, original.height, anyres["size"]
    best_h, best_w = select_best_resolution((height, width), anyres["pinpoints"])
    if best_w / width < best_h / height:
        new_w, new_h = best_w, min(math.ceil(height * best_w / width), best_h)
    else:
        new_h, new_w = best_h, min(math.ceil(width * best_h / height), best_w)
    pad_top, pad_left = (best_h - new_h) // 2, (best_w - new_w) // 2
    xs = [(j * size - pad_left) / new_w for j in range(1, best_w // size)]
    ys = [(i * size - pad_top) / new_h for i in range(1, best_h // size)]
    return {"x_borders": [x for x in xs if 0 < x < 1], "y_borders": [y for y in ys if 0 < y < 1]}


if __name__ == "__main__":
    main()
