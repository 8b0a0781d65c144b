"""AtMan written plainly on top of transformers: the independent reference of the engine.

For each unit, one forward pass of the whole input (no prefix reuse, one row at a time)
through transformers with its attention patched to apply the manipulation (the "atman"
attention function of make_model_cases.py, registered with transformers' AttentionInterface),
then R[k, j] = CE_j^(k) - CE_j and the scores of docs/method.md. Units come from the
`tokenizers` library's offsets and the text-unit rules written in core/text/units.h, redone
here with regular expressions.

Qwen2-VL / Qwen2.5-VL (transformers' Qwen2VLForConditionalGeneration,
Qwen2_5_VLForConditionalGeneration): an image item is vision_start, one image pad per merged
token, vision_end (Qwen2VLProcessor's expansion); transformers computes the M-RoPE positions
itself (get_rope_index inside the model's forward, from image_grid_thw); the image units follow
docs/vision.md's rule, written here from the rule alone (qwen2_vl_image_units).
"""
import math
import re

import torch

import make_model_cases as patched  # registers the "atman" attention


# ---- Text units (core/text/units.h rules) ---------------------------------------------------

def _trimmed(text, cuts):
    pieces, begin = [], 0
    for cut in list(cuts) + [len(text)]:
        b, e = begin, cut
        while b < e and text[b].isspace():
            b += 1
        while e > b and text[e - 1].isspace():
            e -= 1
        if b < e:
            pieces.append((b, e))
        begin = cut
    return pieces


def _paragraph_cuts(text):
    return [m.end() for m in re.finditer(r"\n[^\S\n]*\n\s*", text)]


def text_units(text, kind, delimiter=""):
    """Character spans [begin, end) of the words, sentences, paragraphs or delimited pieces."""
    if kind == "word":
        return [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
    if kind == "paragraph":
        return _trimmed(text, _paragraph_cuts(text))
    if kind == "sentence":
        cuts = set(_paragraph_cuts(text))
        cuts.update(m.end() for m in re.finditer(r"[.!?]+(?=\s|$)", text))
        return _trimmed(text, sorted(cuts))
    if kind == "custom":
        pieces, begin = [], 0
        while True:
            at = text.find(delimiter, begin)
            end = len(text) if at < 0 else at
            pieces += _trimmed(text[:end], [begin])[1:] if begin > 0 else _trimmed(text[:end], [])
            if at < 0:
                return pieces
            begin = at + len(delimiter)
    raise ValueError(kind)


# ---- The prompt as a sequence ----------------------------------------------------------------

def build_sequence(tokenizer, prompt, add_special_tokens=True, image=None):
    """ids, and per item: positions and (text items) token offsets. `image` (for a LLaVA
    model): {"token_id", "tokens_per_image"}; an image item becomes that many image tokens.
    For a Qwen2-VL model, `image` has "vision_start" and "vision_end" too and each image item
    "grid" (rows, cols) of merged tokens: it becomes vision_start, rows * cols pads,
    vision_end; its positions are all of them, "pads" the pads'."""
    ids = []
    if add_special_tokens:
        probe = tokenizer.encode("a", add_special_tokens=True)
        for i, special in enumerate(probe.special_tokens_mask):
            if not special:
                break
            ids.append(probe.ids[i])
    items = []
    for item in prompt:
        if "text" in item:
            enc = tokenizer.encode(item["text"], add_special_tokens=False)
            items.append({"positions": list(range(len(ids), len(ids) + len(enc.ids))),
                          "offsets": list(enc.offsets)})
            ids += enc.ids
        elif "image" in item and "vision_start" in image:
            rows, cols = image["grids"][item["path"]]
            first = len(ids)
            ids += ([image["vision_start"]] + [image["token_id"]] * (rows * cols)
                    + [image["vision_end"]])
            items.append({"positions": list(range(first, len(ids))), "grid": (rows, cols),
                          "pads": list(range(first + 1, first + 1 + rows * cols))})
        elif "image" in item:
            n = image["tokens_per_image"]
            if isinstance(n, list):  # LLaVA-NeXT: a count per image, in prompt order
                n = n[sum(1 for it in prompt[:len(items)] if "image" in it)]
            items.append({"positions": list(range(len(ids), len(ids) + n))})
            ids += [image["token_id"]] * n
        else:
            items.append({"positions": list(range(len(ids), len(ids) + len(item["tokens"])))})
            ids += item["tokens"]
    return ids, items


def image_tiles(width, height, options, processor_size, patch):
    """(patch indices, rect) per tile for an image of width x height under CLIP's shortest-edge
    resize to `processor_size` and centre crop to the same size (transformers' arithmetic)."""
    if width <= height:
        new_w, new_h = processor_size, int(processor_size * height / width)
    else:
        new_w, new_h = int(processor_size * width / height), processor_size
    left, top = int((new_w - processor_size) / 2.0), int((new_h - processor_size) / 2.0)
    grid = processor_size // patch
    granularity = options.get("image_granularity", "native")
    rows, cols = {"native": (grid, grid), "6x6": (min(6, grid), min(6, grid)),
                  "3x3": (min(3, grid), min(3, grid)), "1": (1, 1),
                  "grid": (options.get("image_rows"), options.get("image_cols"))}[granularity]
    tiles = []
    for r in range(rows):
        r0, r1 = r * grid // rows, (r + 1) * grid // rows
        for c in range(cols):
            c0, c1 = c * grid // cols, (c + 1) * grid // cols
            patches = [i * grid + j for i in range(r0, r1) for j in range(c0, c1)]
            x0, x1 = (left + c0 * patch) / new_w, (left + c1 * patch) / new_w
            y0, y1 = (top + r0 * patch) / new_h, (top + r1 * patch) / new_h
            tiles.append((patches, (x0, y0, x1 - x0, y1 - y0)))
    return tiles


def qwen2_vl_image_units(rows, cols, options):
    """(item token indices, [x, y, w, h]) per unit of a Qwen2-VL image of rows x cols merged
    tokens; index 0 is vision_start, 1 + i the pad of token i (row-major), rows * cols + 1
    vision_end. Token (r, c) shows [c / cols, (c + 1) / cols) x [r / rows, (r + 1) / rows) of
    the original (smart_resize scales each axis on its own). native: one unit per token; R x C
    regions (grid, or min(k, side) for the k x k presets): a token joins the region holding its
    centre, a centre on a border the region after it (integer arithmetic here: region row
    floor((2r + 1) R / (2 rows))); regions without tokens are left out; vision_start and
    vision_end join no region. 1 x 1: the whole item, vision_start and vision_end included."""
    granularity = options.get("image_granularity", "native")
    if granularity == "native":
        return [([1 + r * cols + c], [c / cols, r / rows, 1 / cols, 1 / rows])
                for r in range(rows) for c in range(cols)]
    R, C = {"6x6": (min(6, rows), min(6, cols)), "3x3": (min(3, rows), min(3, cols)),
            "1": (1, 1),
            "grid": (options.get("image_rows"), options.get("image_cols"))}[granularity]
    if R == 1 and C == 1:
        return [(list(range(rows * cols + 2)), [0.0, 0.0, 1.0, 1.0])]
    regions = {}
    for r in range(rows):
        region_row = min(R - 1, (2 * r + 1) * R // (2 * rows))
        for c in range(cols):
            region_col = min(C - 1, (2 * c + 1) * C // (2 * cols))
            regions.setdefault((region_row, region_col), []).append(1 + r * cols + c)
    return [(tokens, [rc / C, rr / R, 1 / C, 1 / R])
            for (rr, rc), tokens in sorted(regions.items())]


def _image_grid(options, native_rows, native_cols):
    """rows x cols of an image's units: native, 6x6 / 3x3 (shrunk to the native grid), 1, grid."""
    return {"native": (native_rows, native_cols),
            "6x6": (min(6, native_rows), min(6, native_cols)),
            "3x3": (min(3, native_rows), min(3, native_cols)), "1": (1, 1),
            "grid": (options.get("image_rows"), options.get("image_cols"))}[
                options.get("image_granularity", "native")]


def anyres_token_rects(width, height, anyres):
    """Each packed LLaVA-NeXT image token's rectangle (x0, y0, x1, y1) of the original image,
    normalised and clipped to [0, 1], None for image_newline tokens, in token order: the base
    view (the whole image squashed to S x S) G x G cells, then the kept cells of the tile grid
    row by row, each row followed by image_newline. The tile grid is the best pinpoint's
    canvas: the image resized keeping its aspect ratio (get_patch_output_size), padded with
    zeros centred, cut into S x S tiles of G x G cells of `patch` px; unpad_image's rule keeps
    rows (or columns) [pad, n - pad). Written from transformers' arithmetic, not from ours."""
    from transformers.image_processing_utils import select_best_resolution
    S, patch, pinpoints = anyres["size"], anyres["patch"], anyres["pinpoints"]
    G = S // patch
    best_h, best_w = select_best_resolution((height, width), pinpoints)
    scale_w, scale_h = best_w / width, best_h / height
    if scale_w < scale_h:
        new_w, new_h = best_w, min(math.ceil(height * scale_w), best_h)
    else:
        new_h, new_w = best_h, min(math.ceil(width * scale_h), best_w)
    pad_top, pad_left = (best_h - new_h) // 2, (best_w - new_w) // 2
    tile_rows, tile_cols = best_h // S, best_w // S
    H, W = tile_rows * G, tile_cols * G
    rows, cols = (0, H), (0, W)
    if width / height > W / H:
        kept = int(round(height * (W / width), 7))
        pad = (H - kept) // 2
        rows = (pad, H - pad)
    else:
        kept = int(round(width * (H / height), 7))
        pad = (W - kept) // 2
        cols = (pad, W - pad)

    def clip(v):
        return min(1.0, max(0.0, v))

    rects = []
    for r in range(G):
        for c in range(G):
            rects.append((clip(c * patch / S), clip(r * patch / S),
                          clip((c + 1) * patch / S), clip((r + 1) * patch / S)))
    for r in range(*rows):
        for c in range(*cols):
            x = (c // G) * S + (c % G) * patch - pad_left  # in the resized image's pixels
            y = (r // G) * S + (r % G) * patch - pad_top
            x0, x1 = clip(x / new_w), clip((x + patch) / new_w)
            y0, y1 = clip(y / new_h), clip((y + patch) / new_h)
            rects.append((x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None)
        rects.append(None)  # image_newline
    return rects, (G, G), (max(G, rows[1] - rows[0]), max(G, cols[1] - cols[0]))


def group_by_region(rects, rows, cols):
    """(token indices, (x, y, w, h)) per region of a rows x cols split of the original: a token
    joins the region holding its rectangle's centre (a centre on a border: the region after
    it); tokens without a rectangle join only the whole image (1 x 1); empty regions left
    out. The rule of GroupTokensByRegion (core/model/llava_next.h), written again here."""
    whole = rows == 1 and cols == 1
    members = [[] for _ in range(rows * cols)]
    for t, rect in enumerate(rects):
        if rect is None:
            if whole:
                members[0].append(t)
            continue
        cx, cy = (rect[0] + rect[2]) / 2, (rect[1] + rect[3]) / 2
        c, r = min(cols - 1, int(cx * cols)), min(rows - 1, int(cy * rows))
        members[r * cols + c].append(t)
    out = []
    for k, tokens in enumerate(members):
        if tokens:
            r, c = divmod(k, cols)
            x0, y0, x1, y1 = c / cols, r / rows, (c + 1) / cols, (r + 1) / rows
            out.append((tokens, (x0, y0, x1 - x0, y1 - y0)))
    return out


def make_units(prompt, items, options, prompt_length, num_targets, image=None,
               class_token_in_whole=True):
    """The units, ordered by first position. An image's tokens are its class tokens (LLaVA's
    "full" selection keeps CLIP's one; image["class_tokens"]) then its patches; the class token
    belongs to the image's unit when that unit is the whole image (one tile), to no unit of a
    finer grid. `class_token_in_whole=False`: in no unit at all (the old rule, tests only)."""
    def text_level(kind):
        units = []
        for i, item in enumerate(prompt):
            if "text" not in item:
                continue
            pos, offsets = items[i]["positions"], items[i]["offsets"]
            if kind == "token":
                units += [{"kind": "text", "item": i, "start": b, "length": e - b, "positions": [p]}
                          for p, (b, e) in zip(pos, offsets)]
                continue
            for b, e in text_units(item["text"], kind, options.get("custom_delimiter", "")):
                hit = [p for p, (tb, te) in zip(pos, offsets) if tb < e and b < te and tb < te]
                if hit:
                    units.append({"kind": "text", "item": i, "start": b, "length": e - b, "positions": hit})
        return units

    granularity = options.get("text_granularity", "auto")
    if granularity == "auto":
        for level in ("token", "word", "sentence", "paragraph"):
            units = text_level(level)
            if len(units) <= options.get("auto_max_units", 30):
                break
    else:
        units = text_level(granularity)
    for i, item in enumerate(prompt):
        if "image" in item and "grid" in items[i]:
            for tokens, rect in qwen2_vl_image_units(*items[i]["grid"], options):
                units.append({"kind": "image", "item": i, "start": 0, "length": 0,
                              "positions": [items[i]["positions"][t] for t in tokens],
                              "rect": rect})
        elif "image" in item and image.get("anyres"):
            rects, native, limit = anyres_token_rects(item["width"], item["height"], image["anyres"])
            assert len(rects) == len(items[i]["positions"]), (len(rects), len(items[i]["positions"]))
            rows, cols = _image_grid(options, *native)
            assert 1 <= rows <= limit[0] and 1 <= cols <= limit[1], (rows, cols, limit)
            for tokens, rect in group_by_region(rects, rows, cols):
                units.append({"kind": "image", "item": i, "start": 0, "length": 0,
                              "positions": [items[i]["positions"][t] for t in tokens],
                              "rect": list(rect)})
        elif "image" in item:
            tiles = image_tiles(item["width"], item["height"], options, image["size"], image["patch"])
            cls = image["class_tokens"]
            summary = items[i]["positions"][:cls] if len(tiles) == 1 and class_token_in_whole else []
            for patches, (x, y, w, h) in tiles:
                units.append({"kind": "image", "item": i, "start": 0, "length": 0,
                              "positions": summary + [items[i]["positions"][cls + p] for p in patches],
                              "rect": [x, y, w, h]})
    for i, item in enumerate(prompt):
        if "tokens" in item:
            units += [{"kind": "token", "item": i, "start": t, "length": 1, "positions": [p]}
                      for t, p in enumerate(items[i]["positions"])]
    if options.get("target_granularity", "complete") == "token":
        units += [{"kind": "target", "item": -1, "start": i, "length": 1, "positions": [prompt_length + i]}
                  for i in range(num_targets - 1)]
    units.sort(key=lambda u: u["positions"][0])
    return units


# ---- Forward passes ---------------------------------------------------------------------------

@torch.no_grad()
def target_cross_entropy(model, input_ids, target_ids, prompt_length, control=None,
                         pixel_values=None):
    """CE_j = -log p(t_j | ...) for every target token, one full forward pass. `pixel_values`:
    a tensor (LLaVA), or a dict of the model's image inputs (LLaVA-NeXT: pixel_values,
    image_sizes; Qwen2-VL: pixel_values, image_grid_thw, and image_token_id, from which
    mm_token_type_ids is made here)."""
    patched.CONTROL = control
    if pixel_values is None:
        extra = {}
    elif isinstance(pixel_values, dict):
        extra = dict(pixel_values)
        token = extra.pop("image_token_id", None)
        if token is not None:
            extra["mm_token_type_ids"] = (torch.tensor([input_ids]) == token).int()
    else:
        extra = {"pixel_values": pixel_values}
    try:
        logits = model(input_ids=torch.tensor([input_ids]), **extra).logits[0].double()
    finally:
        patched.CONTROL = None
    logp = torch.log_softmax(logits, dim=-1)
    return torch.stack([-logp[prompt_length - 1 + j, t] for j, t in enumerate(target_ids)])


def suppression_factors(unit_positions, factor, threshold, embeddings, length, spread_to=None):
    """Factors [length] for suppressing the unit. Conceptual suppression spreads into every
    other input position (prompt and teacher-forced target tokens: the spec and the research
    code's similarity matrix over the whole input); `spread_to` = P gives the old, wrong rule
    (prompt positions only), kept so that the test can show the two differ."""
    f = torch.ones(length, dtype=torch.float64)
    for p in unit_positions:
        f[p] = factor
    if threshold is not None:
        x = embeddings.double()
        x = x / x.norm(dim=-1, keepdim=True)
        sim = x @ x.T
        for j in range(length if spread_to is None else spread_to):
            if j in unit_positions:
                continue
            best = max(sim[j, u].item() for u in unit_positions)
            if best >= threshold:
                f[j] = (1 - factor) * (1 - best) + factor
    return f


def image_tokens(config):
    """Tokens per image and class tokens among them: LLaVA's "full" selection keeps CLIP's class
    token before the (image_size // patch_size)^2 patches, "default" drops it."""
    grid = config.vision_config.image_size // config.vision_config.patch_size
    cls = 1 if config.vision_feature_select_strategy == "full" else 0
    return grid * grid + cls, cls


def is_qwen2_vl(model):
    return model.config.model_type in ("qwen2_vl", "qwen2_5_vl")


@torch.no_grad()
def qwen2_vl_inputs(model, processor, prompt):
    """For a Qwen2-VL model and its (Pillow) image processor: the `image` of build_sequence
    (grids keyed by the items' "path"), the model's image inputs and the merged image rows
    [N, H] of the prompt's images in order."""
    from PIL import Image
    config = model.config
    paths = [item["path"] for item in prompt if "image" in item]
    merge = config.vision_config.spatial_merge_size
    image = {"token_id": config.image_token_id, "vision_start": config.vision_start_token_id,
             "vision_end": config.vision_end_token_id, "grids": {}}
    if not paths:
        return image, None, None
    batch = processor(images=[Image.open(p).convert("RGB") for p in paths], return_tensors="pt")
    for path, (t, h, w) in zip(paths, batch["image_grid_thw"].tolist()):
        assert t == 1, "videos are not supported"
        image["grids"][path] = (h // merge, w // merge)
    rows = torch.cat(model.model.get_image_features(
        batch["pixel_values"], batch["image_grid_thw"], return_dict=True).pooler_output, dim=0)
    inputs = {"pixel_values": batch["pixel_values"], "image_grid_thw": batch["image_grid_thw"],
              "image_token_id": config.image_token_id}
    return image, inputs, rows


@torch.no_grad()
def vision_inputs(model, processor, prompt):
    """(image dict for build_sequence / make_units, the model's image inputs, feature rows
    [sum of tokens, H]) for the prompt's images; image items get "width" and "height". LLaVA:
    pixel_values [N, 3, S, S]. LLaVA-NeXT: {"pixel_values" [N, max views, 3, S, S] (views
    zero-padded, as the processor batches them), "image_sizes" [N, 2]}, the token count per
    image from transformers' packed features, and the anyres settings for the units.
    Qwen2-VL / Qwen2.5-VL: qwen2_vl_inputs."""
    if is_qwen2_vl(model):
        return qwen2_vl_inputs(model, processor, prompt)
    from PIL import Image
    config = model.config
    images = [it for it in prompt if "image" in it]
    pictures = [Image.open(item["path"]).convert("RGB") for item in images]
    for item, picture in zip(images, pictures):
        item["width"], item["height"] = picture.size
    if config.model_type == "llava_next":
        outs = [processor(images=p, return_tensors="pt") for p in pictures]
        pixels = [o["pixel_values"][0] for o in outs]
        sizes = [o["image_sizes"][0] for o in outs]
        packed = [model.get_image_features(pixel_values=p[None], image_sizes=s[None]).pooler_output[0]
                  for p, s in zip(pixels, sizes)]
        image = {"token_id": config.image_token_index,
                 "tokens_per_image": [int(f.shape[0]) for f in packed],
                 "anyres": {"size": config.vision_config.image_size,
                            "patch": config.vision_config.patch_size,
                            "pinpoints": config.image_grid_pinpoints}}
        if not pictures:
            return image, None, None
        views = max(p.shape[0] for p in pixels)
        batch = torch.stack([torch.cat([p, p.new_zeros(views - p.shape[0], *p.shape[1:])])
                             for p in pixels])
        return image, {"pixel_values": batch, "image_sizes": torch.stack(sizes)}, torch.cat(packed)
    per_image, cls = image_tokens(config)
    image = {"token_id": config.image_token_index, "tokens_per_image": per_image,
             "class_tokens": cls,
             "size": config.vision_config.image_size, "patch": config.vision_config.patch_size}
    if not pictures:
        return image, None, None
    pixel_values = torch.cat([processor(images=p, return_tensors="pt")["pixel_values"] for p in pictures])
    features = torch.stack(list(model.get_image_features(pixel_values=pixel_values).pooler_output))
    return image, pixel_values, features.reshape(-1, features.shape[-1])


def explain(model, tokenizer, prompt, target, options, processor=None, spread_to_prompt_only=False,
            class_token_in_whole=True):
    """The reference explanation: units, raw relevance [m, n] and the score rows. For a LLaVA
    model, `processor` is its (Pillow) CLIP image processor and image items carry "path"; for
    a Qwen2-VL / Qwen2.5-VL model, its Qwen2VLImageProcessorPil.
    `spread_to_prompt_only`: the old conceptual-suppression rule; `class_token_in_whole=False`:
    the class token in no unit (both for tests only)."""
    # The manipulation lives in the language model's attention (a LLaVA vision tower keeps its
    # own, unmanipulated attention).
    language_model = model.model.language_model if processor is not None else model
    model.set_attn_implementation("eager")
    language_model.set_attn_implementation("atman")
    image, pixel_values, features = None, None, None
    if processor is not None:
        image, pixel_values, features = vision_inputs(model, processor, prompt)
    ids, items = build_sequence(tokenizer, prompt, options.get("add_special_tokens", True), image)
    target_enc = tokenizer.encode(target, add_special_tokens=False)
    target_ids = target_enc.ids
    P, m = len(ids), len(target_ids)
    input_ids = ids + target_ids[:-1]
    L = len(input_ids)
    base = target_cross_entropy(model, input_ids, target_ids, P, pixel_values=pixel_values)
    units = make_units(prompt, items, options, P, m, image, class_token_in_whole)
    with torch.no_grad():
        embeddings = model.get_input_embeddings()(torch.tensor(input_ids)).detach()
        if features is not None:
            mask = torch.tensor(input_ids) == image["token_id"]
            embeddings[mask] = features.to(embeddings.dtype)
    factor = options.get("control_factor", 0.1)
    mode = options.get("mode", "log_additive")
    layers = options.get("layers") or None
    threshold = options.get("contextual_control_threshold")

    R = torch.zeros(len(units), m, dtype=torch.float64)
    applicable = torch.ones(len(units), m, dtype=torch.bool)
    suppressed_extra = 0
    for k, unit in enumerate(units):
        f = suppression_factors(unit["positions"], factor, threshold, embeddings, L,
                                P if spread_to_prompt_only else None)
        suppressed_extra += int((f != 1).sum()) - len(unit["positions"])
        ce = target_cross_entropy(model, input_ids, target_ids, P,
                                  {"mode": mode, "layers": layers, "factors": f[None].float()},
                                  pixel_values)
        R[k] = ce - base
        if unit["kind"] == "target":
            applicable[k, : unit["start"] + 1] = False
    R = torch.where(applicable, R, torch.zeros_like(R))

    if options.get("target_granularity", "complete") == "complete":
        rows, mask = R.sum(1)[None], applicable.any(1)[None]
    else:
        rows, mask = R.T.clone(), applicable.T
    post = options.get("postprocessing", "none")
    if post == "absolute":
        rows = rows.abs()
    elif post == "square":
        rows = rows * rows
    if options.get("normalize", False):
        out = torch.zeros_like(rows)
        for r in range(rows.shape[0]):
            vals = rows[r][mask[r]]
            lo, hi = vals.min(), vals.max()
            if hi > lo:
                out[r] = torch.where(mask[r], (rows[r] - lo) / (hi - lo), torch.zeros_like(rows[r]))
        rows = out
    else:
        rows = torch.where(mask, rows, torch.zeros_like(rows))
    return {
        "units": units,
        "unit_relevance": R.T.tolist(),
        # Row r lists only its units (TOKEN granularity: the prompt units and the target tokens
        # before token r; the later ones are not units of that row), in unit order.
        "scores": [[rows[r, k].item() for k in range(len(units)) if mask[r, k]]
                   for r in range(rows.shape[0])],
        "row_units": [[k for k in range(len(units)) if mask[r, k]] for r in range(rows.shape[0])],
        "target_ids": target_ids,
        "target_offsets": [list(o) for o in target_enc.offsets],
        "prompt_tokens": P,
        "similarity_suppressed": suppressed_extra,
        "base_cross_entropy": base.tolist(),
        # Image items: the item, its first position (vision_start for Qwen2-VL) and, for
        # Qwen2-VL, its merged-token grid.
        "image_items": [dict({"item": i, "first": items[i]["positions"][0]},
                             **({"grid": list(items[i]["grid"])} if "grid" in items[i] else {}))
                        for i, item in enumerate(prompt) if "image" in item],
    }


# ---- Steered generation --------------------------------------------------------------------

@torch.no_grad()
def steered_greedy(model, tokenizer, prompt, controls, steps, mode="log_additive",
                   processor=None):
    """Greedy generation of `steps` tokens with attention controls on whole prompt items
    ({"item": i, "factor": f}: every position of item i), applied at every step: each step is
    one full forward pass of prompt + generated tokens through the patched attention (no KV
    cache), the factors covering the prompt positions and 1 for generated ones."""
    language_model = model.model.language_model if processor is not None else model
    model.set_attn_implementation("eager")
    language_model.set_attn_implementation("atman")
    image, pixel_values = None, None
    if processor is not None:
        image, pixel_values, _ = vision_inputs(model, processor, prompt)
    ids, items = build_sequence(tokenizer, prompt, True, image)
    prompt_factors = torch.ones(len(ids), dtype=torch.float64)
    for control in controls:
        for p in items[control["item"]]["positions"]:
            prompt_factors[p] = control["factor"]
    out = []
    extra = ({} if pixel_values is None else
             pixel_values if isinstance(pixel_values, dict) else {"pixel_values": pixel_values})
    for _ in range(steps):
        f = torch.cat([prompt_factors, torch.ones(len(out), dtype=torch.float64)])
        patched.CONTROL = None if not controls else {"mode": mode, "layers": None,
                                                     "factors": f[None].float()}
        try:
            logits = model(input_ids=torch.tensor([ids + out]), **extra).logits[0, -1]
        finally:
            patched.CONTROL = None
        out.append(int(logits.argmax()))
    return out
