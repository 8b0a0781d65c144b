"""The notebook views of an Explanation, with the look of the `atman` tool (client/heatmap.h,
client/html_report.h, client/overlay.h):

- Colour scale: a score s of an explanation whose largest |score| is m maps to t = s / m in
  [-1, 1]; t >= 0 blends white (255,255,255) towards red (215,48,39), t < 0 towards blue
  (69,117,180), linearly per channel, rounded half away from zero. Image overlays use the same
  colour with opacity 0.65 |t|. All scores 0 give m = 1.
- html_report(): the page of `atman explain --html`: self-contained (images as data: URLs,
  a Content-Security-Policy that forbids fetches), each text unit a background colour (hover:
  the score), each image in a div.frame with a 3 px rgb(40,44,52) border at DisplaySize(),
  one translucent rectangle per image unit, the colour scale, usage and options.
- overlay(): the picture of `atman explain --png`: the image enlarged by the largest integer
  factor keeping its longer side <= 512 px, each rectangle blended over the pixels whose
  centres fall inside it, then a 6 px gap, a 16 px colour bar and 22 px of labels.
"""
from __future__ import annotations

import base64
import html as _html
import io
import math
from typing import TYPE_CHECKING, Optional

from google.protobuf import json_format

from atman._prompt import image_mime_type

if TYPE_CHECKING:
    from atman._results import Explanation, ModelInfo, TargetExplanation

WHITE, HOT, COLD = (255, 255, 255), (215, 48, 39), (69, 117, 180)
FRAME = (40, 44, 52)
OVERLAY_MAX_ALPHA = 0.65
BAR_GAP, BAR_HEIGHT, BAR_LABELS = 6, 16, 22


def _round(x: float) -> int:  # std::lround: half away from zero
    return int(math.floor(x + 0.5)) if x >= 0 else -int(math.floor(-x + 0.5))


class ColourScale:
    def __init__(self, max_abs: float):
        self.max_abs = max_abs if math.isfinite(max_abs) and max_abs > 0 else 1.0

    @staticmethod
    def of(e: "TargetExplanation") -> "ColourScale":
        scores = [abs(u.score) for u in (*e.spans, *e.regions, *e.tokens, *e.target_spans)]
        return ColourScale(max(scores, default=0.0))

    def position(self, score: float) -> float:
        if not math.isfinite(score):
            return 0.0
        return max(-1.0, min(1.0, score / self.max_abs))

    def at(self, score: float) -> tuple[int, int, int]:
        t = self.position(score)
        end = HOT if t >= 0 else COLD
        return tuple(_round(w + (e - w) * abs(t)) for w, e in zip(WHITE, end))  # type: ignore

    def alpha(self, score: float) -> float:
        return OVERLAY_MAX_ALPHA * abs(self.position(score))


def format_score(score: float) -> str:
    if score != 0 and abs(score) < 5e-5:
        return f"{score:+.2e}"
    return f"{score:+.4f}"


def display_size(width: int, height: int) -> tuple[int, int]:
    width, height = max(1, width), max(1, height)
    longer = max(width, height)
    if longer < 320:
        k = max(1, 320 // longer)
        return width * k, height * k
    if width <= 640:
        return width, height
    return 640, max(1, _round(height * 640.0 / width))


def _pil():
    try:
        from PIL import Image
    except ImportError:
        raise ImportError("image views need Pillow, which atman-client does not install: "
                          "pip install pillow (or atman-client[images])") from None
    return Image


def _decode(data: bytes):
    return _pil().open(io.BytesIO(data)).convert("RGB")


_STYLE = """
body { font: 16px/1.6 system-ui, sans-serif; color: #222; background: #fff; margin: 24px; }
h1 { font-size: 22px; margin: 0 0 8px; } h2 { font-size: 18px; margin: 24px 0 8px; }
.target { font-size: 17px; } .target .piece { outline: 2px solid #222; padding: 0 2px; }
.text { white-space: pre-wrap; font-family: ui-monospace, monospace; max-width: 60em; }
.unit { padding: 2px 0; border-radius: 2px; }
.frame { position: relative; display: inline-block; border: 3px solid rgb(40,44,52); }
.frame img { display: block; }
.frame img.pixelated { image-rendering: pixelated; }
.cell { position: absolute; }
figure { margin: 8px 0; } figcaption { font-size: 13px; color: #555; }
.scale { display: flex; align-items: center; gap: 8px; font-size: 13px; margin: 8px 0; }
.bar { width: 240px; height: 14px;
  background: linear-gradient(to right, rgb(69,117,180), rgb(255,255,255), rgb(215,48,39)); }
table { border-collapse: collapse; font-size: 14px; }
td, th { border: 1px solid #ccc; padding: 2px 8px; text-align: left; }
pre { background: #f6f6f6; padding: 8px; font-size: 13px; max-width: 60em; overflow: auto; }
"""

_SCRIPT = """
document.addEventListener('securitypolicyviolation', function (e) {
  console.error('blocked by the report policy: ' + e.blockedURI);
});
window.addEventListener('load', function () {
  for (const img of document.images) {
    if (!img.complete || img.naturalWidth === 0) console.error('image not decoded: ' + img.alt);
  }
});
"""


def _esc(text: str) -> str:
    return _html.escape(text, quote=True).replace("&#x27;", "&#39;")


def _css(c) -> str:
    return f"rgb({c[0]},{c[1]},{c[2]})"


def _span(text: str, score: float, scale: ColourScale) -> str:
    return (f'<span class="unit" style="background:{_css(scale.at(score))}" '
            f'title="{format_score(score)}" data-score="{score:.9g}">{_esc(text)}</span>')


def _cut(text: str, spans) -> str:
    """`text` with each (start, length, score) span coloured; code points."""
    out, at = [], 0
    for start, length, score, scale in sorted(spans, key=lambda s: s[0]):
        if start < at or start + length > len(text):
            raise ValueError(f"text span [{start}, {start + length}) does not fit the text")
        out.append(_esc(text[at:start]))
        out.append(_span(text[start:start + length], score, scale))
        at = start + length
    out.append(_esc(text[at:]))
    return "".join(out)


def html_report(result: "Explanation", model: Optional["ModelInfo"] = None) -> str:
    request, response = result.request, result.raw
    parts = [
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n'
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        'img-src data:; style-src \'unsafe-inline\'; script-src \'unsafe-inline\'">\n'
        f"<title>atman explanation</title>\n<style>{_STYLE}</style>\n<script>{_SCRIPT}</script>\n"
        "</head><body>\n<h1>AtMan explanation</h1>\n"
        f'<p class="target">Target: <b>{_esc(result.target)}</b></p>\n']
    sizes = {}
    for i, item in enumerate(request.prompt):
        if item.WhichOneof("item") == "image":
            sizes[i] = _decode(item.image).size
    per_token = request.options.target_granularity == 2  # TARGET_GRANULARITY_TOKEN
    for k, e in enumerate(result.explanations):
        scale = ColourScale.of(e)
        parts.append(f'<section class="explanation" id="explanation-{k}">\n')
        if per_token:
            earlier = [(s.start, s.length, s.score, scale) for s in e.target_spans
                       if s.start + s.length <= e.target_start]
            start, end = e.target_start, e.target_start + e.target_length
            line = (_cut(result.target[:start], earlier) + '<span class="piece">'
                    + _esc(result.target[start:end]) + "</span>" + _esc(result.target[end:]))
            parts.append(f'<h2>Target token {k}: "{_esc(e.target_text)}"</h2>\n'
                         f'<p class="target">{line}</p>\n')
        else:
            parts.append("<h2>Relevance of the prompt for the target</h2>\n")
        parts.append(f'<div class="scale"><span>{format_score(-scale.max_abs)}</span>'
                     f'<div class="bar"></div><span>{format_score(scale.max_abs)}</span></div>\n')
        for scores in response.explanations[k].items:
            i = scores.item
            prompt = request.prompt[i]
            kind = prompt.WhichOneof("item")
            if kind == "text":
                body = _cut(prompt.text, [(s.start, s.length, s.score, scale)
                                          for s in scores.text])
                parts.append(f'<p class="text" data-item="{i}">{body}</p>\n')
            elif kind == "image":
                w, h = sizes[i]
                dw, dh = display_size(w, h)
                pixelated = ' class="pixelated"' if dw > w else ""
                data = base64.b64encode(prompt.image).decode()
                parts.append(f'<figure><div class="frame" data-item="{i}"><img alt="prompt[{i}] '
                             f'image" width="{dw}" height="{dh}"{pixelated} src="data:'
                             f'{image_mime_type(prompt.image)};base64,{data}">')
                for s in scores.image:
                    c = scale.at(s.score)
                    parts.append(
                        f'<div class="cell" style="left:{100 * s.left:.4f}%;top:{100 * s.top:.4f}%;'
                        f"width:{100 * s.width:.4f}%;height:{100 * s.height:.4f}%;"
                        f'background:rgba({c[0]},{c[1]},{c[2]},{scale.alpha(s.score):.4f})" '
                        f'title="{format_score(s.score)}"></div>')
                parts.append(f"</div><figcaption>prompt[{i}]: image {w}x{h}, {len(scores.image)} "
                             "regions</figcaption></figure>\n")
            else:
                ids = prompt.token_ids.ids
                body = "".join(
                    _span(str(ids[s.token_index]) if 0 <= s.token_index < len(ids) else "?",
                          s.score, scale) + " " for s in scores.tokens)
                parts.append(f'<p class="text" data-item="{i}">{body}</p>\n')
        parts.append("</section>\n")
    u = result.usage
    rows = [("prompt tokens", u.prompt_tokens), ("target tokens", u.target_tokens),
            ("forward passes", u.forward_passes), ("perturbed rows", u.perturbed_rows),
            ("positions computed", u.positions_computed),
            ("queue", f"{u.queue_seconds:.3f} s"), ("compute", f"{u.compute_seconds:.3f} s"),
            ("peak device memory", f"{u.peak_memory_bytes} bytes")]
    parts.append('<h2>Usage</h2>\n<table class="usage">'
                 + "".join(f"<tr><th>{a}</th><td>{b}</td></tr>" for a, b in rows)
                 + f"</table>\n<p>request id: <code>{_esc(result.request_id)}</code></p>\n")
    options = json_format.MessageToJson(request.options, indent=1)
    parts.append(f"<h2>Options</h2>\n<pre>{_esc(options)}</pre>\n")
    if model is not None:
        parts.append(f"<h2>Model</h2>\n<p>{_esc(model.name)} ({_esc(model.model_type)}, "
                     f"{model.num_layers} layers) on {_esc(model.device)}, {_esc(model.dtype)}; "
                     f"server {_esc(model.server_version)}</p>\n")
    parts.append("</body></html>\n")
    return "".join(parts)


def notebook_html(result: "Explanation") -> str:
    """html_report() inside a sandboxed iframe, sized to fit its content (estimated: the page
    scrolls inside the frame when the estimate is short)."""
    page = html_report(result)
    height = 700  # title, target, usage table and options
    for e in result.explanations:
        height += 110 + 30 * len(result.target) // 60
        for i, item in enumerate(result.request.prompt):
            kind = item.WhichOneof("item")
            if kind == "image":
                height += display_size(*_decode(item.image).size)[1] + 50
            elif kind == "text":
                height += 26 * (1 + sum(max(1, len(line) // 90 + 1)
                                        for line in item.text.split("\n")))
            else:
                height += 26 * (1 + len(item.token_ids.ids) // 12)
    return (f'<iframe sandbox="allow-scripts" style="width:100%;height:{height}px;border:none" '
            f'srcdoc="{_esc(page)}"></iframe>')


def overlay(result: "Explanation", item: Optional[int], explanation: int):
    import numpy as np
    Image = _pil()
    prompt = result.request.prompt
    images = [i for i, p in enumerate(prompt) if p.WhichOneof("item") == "image"]
    if item is None:
        if not images:
            raise ValueError("overlay(): the prompt has no image item")
        item = images[0]
    if item not in images:
        raise ValueError(f"overlay(): item {item} is not an image item of the prompt "
                         f"(image items: {images})")
    if not 0 <= explanation < len(result.explanations):
        raise ValueError(f"overlay(): explanation {explanation} not in "
                         f"[0, {len(result.explanations)})")
    e = result.explanations[explanation]
    scale = ColourScale.of(e)
    source = np.asarray(_decode(prompt[item].image))
    h, w = source.shape[:2]
    k = max(1, 512 // max(1, w, h))
    ph, pw = h * k, w * k
    out = np.full((ph + BAR_GAP + BAR_HEIGHT + BAR_LABELS, pw, 3), 255, dtype=np.float64)
    out[:ph] = source.repeat(k, axis=0).repeat(k, axis=1)

    def first(edge: float, size: int) -> int:
        return min(max(math.ceil(edge * size - 0.5), 0), size)

    for r in e.regions:
        if r.item != item:
            continue
        c, a = np.array(scale.at(r.score), dtype=np.float64), scale.alpha(r.score)
        x0, x1 = first(r.left, pw), first(r.left + r.width, pw)
        y0, y1 = first(r.top, ph), first(r.top + r.height, ph)
        block = out[y0:y1, x0:x1]
        # lround of a non-negative value: floor(x + 0.5).
        out[y0:y1, x0:x1] = np.floor((1 - a) * block + a * c + 0.5)
    xs = (np.arange(pw) + 0.5) / pw * 2.0 - 1.0
    bar = np.array([scale.at(scale.max_abs * x) for x in xs], dtype=np.float64)
    out[ph + BAR_GAP:ph + BAR_GAP + BAR_HEIGHT] = bar[None, :, :]
    picture = Image.fromarray(out.astype(np.uint8), "RGB")
    from PIL import ImageDraw
    draw = ImageDraw.Draw(picture)
    top = ph + BAR_GAP + BAR_HEIGHT + 4
    low, high = format_score(-scale.max_abs), format_score(scale.max_abs)
    ink = (34, 34, 34)
    draw.text((2, top), low, fill=ink)
    draw.text(((pw - draw.textlength("0")) / 2, top), "0", fill=ink)
    draw.text((pw - draw.textlength(high) - 2, top), high, fill=ink)
    return picture
