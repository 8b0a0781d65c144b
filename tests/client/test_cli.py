"""The `atman` tool against a real atman-server process on 127.0.0.1 (see conftest.py).

Colours are checked against the scale documented in client/heatmap.h and docs/cli.md, written
out again here: t = score / max|score|; t >= 0 blends white to (215,48,39), t < 0 white to
(69,117,180); image overlays use opacity 0.65 |t|.
"""
import base64
import json
import math
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf import json_format
from PIL import Image
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

from conftest import CLI, LLAVA, QWEN2_VL, Server, free_port, pb, run_cli

HOT, COLD, WHITE = (215, 48, 39), (69, 117, 180), (255, 255, 255)
FRAME = (40, 44, 52)


def colour(score: float, max_abs: float) -> tuple:
    t = max(-1.0, min(1.0, score / max_abs))
    end = HOT if t >= 0 else COLD
    return tuple(int(math.floor(w + (e - w) * abs(t) + 0.5)) for w, e in zip(WHITE, end))


def grey_image(path: Path, width: int, height: int) -> Path:
    """A grey (R = G = B) image with texture, so overlay tints are measurable."""
    y, x = np.mgrid[0:height, 0:width]
    g = (96 + 40 * np.sin(x / 3.0) * np.cos(y / 4.0)).astype(np.uint8)
    Image.fromarray(np.stack([g, g, g], axis=-1)).save(path)
    return path


def explain_args(server, *more):
    return ["explain", "--address", server.address, "--request-id", "cli-test", *more]


def direct(server, request: "pb.ExplainRequest") -> "pb.ExplainResponse":
    return server.stub.Explain(request, timeout=120)


def without_timings(r: "pb.ExplainResponse") -> "pb.ExplainResponse":
    """The response less what differs between two runs of one request (wall times, the
    process-wide memory peak)."""
    r = type(r).FromString(r.SerializeToString())
    r.usage.queue_seconds = 0
    r.usage.compute_seconds = 0
    r.usage.peak_memory_bytes = 0
    return r


def test_json_output_equals_the_rpc_response(server, tmp_path):
    image = grey_image(tmp_path / "g.png", 40, 30)
    proc = run_cli(*explain_args(server, "--prompt", "USER: ", "--image", image, "--prompt",
                                 " what is it? ASSISTANT:", "--target", " a cat",
                                 "--text-granularity", "word", "--return-relevance-tensor",
                                 "--json"))
    assert proc.returncode == 0, proc.stderr
    ours = json_format.Parse(proc.stdout.decode(), pb.ExplainResponse())
    request = pb.ExplainRequest(target=" a cat", request_id="cli-test")
    request.prompt.add(text="USER: ")
    request.prompt.add(image=image.read_bytes())
    request.prompt.add(text=" what is it? ASSISTANT:")
    request.options.text_granularity = pb.TEXT_GRANULARITY_WORD
    request.options.return_relevance_tensor = True
    theirs = direct(server, request)
    assert len(theirs.explanations[0].items) == 3
    assert len(theirs.unit_relevance.values) > 0
    assert without_timings(ours) == without_timings(theirs)


def test_token_granularity_json_equals_the_rpc_response(server):
    proc = run_cli(*explain_args(server, "--prompt", "The cat sat on the mat.", "--target",
                                 " yes", "--target-granularity", "token", "--control-factor",
                                 "0", "--postprocessing", "absolute", "--normalize", "--json"))
    assert proc.returncode == 0, proc.stderr
    ours = json_format.Parse(proc.stdout.decode(), pb.ExplainResponse())
    request = pb.ExplainRequest(target=" yes", request_id="cli-test")
    request.prompt.add(text="The cat sat on the mat.")
    o = request.options
    o.target_granularity = pb.TARGET_GRANULARITY_TOKEN
    o.control_factor = 0.0
    o.postprocessing = pb.POSTPROCESSING_ABSOLUTE
    o.normalize = True
    theirs = direct(server, request)
    assert len(theirs.explanations) == theirs.usage.target_tokens > 1
    assert without_timings(ours) == without_timings(theirs)
    # Explanation j is about target token j, and its target units are exactly tokens 0 .. j-1
    # (later target tokens are not its units: absent, never scored 0).
    for j, e in enumerate(ours.explanations):
        assert e.HasField("target_token_index") and e.target_token_index == j
        assert [(s.start, s.length) for s in e.target] == \
            [(t.target_start, t.target_length) for t in ours.explanations[:j]]
    as_json = json.loads(proc.stdout.decode())
    assert [e.get("targetTokenIndex", 0) for e in as_json["explanations"]] == \
        list(range(len(ours.explanations)))
    assert [len(e.get("target", [])) for e in as_json["explanations"]] == \
        list(range(len(ours.explanations)))


def test_token_granularity_text_and_html_show_only_earlier_target_tokens(server, tmp_path):
    args = ["--prompt", "The cat sat on the mat.", "--target", " yes no", "--target-granularity",
            "token", "--text-granularity", "word"]
    html = tmp_path / "r.html"
    proc = run_cli(*explain_args(server, *args, "--html", html))
    assert proc.returncode == 0, proc.stderr
    response = json_format.Parse(run_cli(*explain_args(server, *args, "--json")).stdout.decode(),
                                 pb.ExplainResponse())
    m = len(response.explanations)
    assert m > 2
    # Terminal: one block per target token; block j's "earlier target tokens" line lists j
    # tokens with the response's scores (block 0 has none).
    blocks = re.split(r"\n\[\d+\] target token ", proc.stdout.decode())[1:]
    assert len(blocks) == m
    for j, block in enumerate(blocks):
        earlier = [line for line in block.splitlines() if line.startswith("earlier target tokens:")]
        if j == 0:
            assert not earlier
            continue
        marks = re.findall(r'\["(.*?)"\|([-+][0-9.e+-]+)\]', earlier[0])
        assert len(marks) == j, block
        for (piece, score), s in zip(marks, response.explanations[j].target):
            assert piece == response.target[s.start:s.start + s.length]
            assert abs(float(score) - s.score) <= 5e-5 + 1e-3 * abs(s.score)
    # HTML: section j's target line colours exactly j earlier tokens.
    page = html.read_text()
    for j in range(m):
        section = page.split(f'id="explanation-{j}"')[1].split("</section>")[0]
        target_line = section.split('<p class="target">')[1].split("</p>")[0]
        assert target_line.count('class="unit"') == j


def test_generate_tokenize_info_health_equal_the_rpcs(server):
    proc = run_cli("generate", "--address", server.address, "--prompt", "Hello",
                   "--max-new-tokens", "5", "--request-id", "g", "--json")
    assert proc.returncode == 0, proc.stderr
    ours = json_format.Parse(proc.stdout.decode(), pb.GenerateResponse())
    request = pb.GenerateRequest(max_new_tokens=5, request_id="g")
    request.prompt.add(text="Hello")
    theirs = server.stub.Generate(request, timeout=60)
    theirs.usage.queue_seconds = ours.usage.queue_seconds
    theirs.usage.compute_seconds = ours.usage.compute_seconds
    theirs.usage.peak_memory_bytes = ours.usage.peak_memory_bytes
    assert ours == theirs and len(ours.token_ids) == 5

    proc = run_cli("tokenize", "--address", server.address, "--text", "héllo wörld", "--json")
    assert proc.returncode == 0, proc.stderr
    ours = json_format.Parse(proc.stdout.decode(), pb.TokenizeResponse())
    assert ours == server.stub.Tokenize(pb.TokenizeRequest(text="héllo wörld"), timeout=60)
    # The plain listing: one line per token with its code-point span and the text under it.
    proc = run_cli("tokenize", "--address", server.address, "--text", "héllo",
                   "--no-special-tokens")
    assert proc.returncode == 0, proc.stderr
    tokens = server.stub.Tokenize(pb.TokenizeRequest(text="héllo", add_special_tokens=False))
    lines = proc.stdout.decode().splitlines()
    assert [int(line.split("\t")[0]) for line in lines] == [t.id for t in tokens.tokens]
    spans = [tuple(map(int, re.search(r"\[(\d+),(\d+)\)", line).groups())) for line in lines]
    assert spans == [(t.start, t.start + t.length) for t in tokens.tokens]
    # Byte-level pieces of one character (é) both show the character they belong to.
    assert [re.search(r'"(.*)"', line).group(1) for line in lines] == \
        ["héllo"[a:b] for a, b in spans]

    proc = run_cli("info", "--address", server.address, "--json")
    assert proc.returncode == 0, proc.stderr
    ours = json_format.Parse(proc.stdout.decode(), pb.ModelInfo())
    assert ours == server.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=60)
    assert ours.supports_images

    proc = run_cli("health", "--address", server.address)
    assert (proc.returncode, proc.stdout) == (0, b"SERVING\n"), proc.stderr
    proc = run_cli("health", "--address", server.address, "--service", "no.such.Service")
    assert proc.returncode == 1 and "NOT_FOUND" in proc.stderr, proc.stderr


def screenshot(html: Path, out: Path) -> str:
    """Headless Chromium's screenshot of `html`; returns its console lines."""
    chromium = shutil.which("chromium")
    assert chromium, "chromium is not installed (scripts/apt-packages-test.txt)"
    proc = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         "--force-device-scale-factor=1", "--force-color-profile=srgb", "--window-size=1000,1600",
         "--enable-logging=stderr", "--v=0", f"--user-data-dir={out.parent / 'chromium'}",
         f"--screenshot={out}", html.as_uri()],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and out.exists(), proc.stderr
    return "\n".join(line for line in proc.stderr.splitlines() if ":CONSOLE" in line)


def check_html_regions(pixels, image: Path, regions, max_abs: float) -> None:
    """The page's one image (`pixels`: Chromium's screenshot) is `image` enlarged by the whole
    factor of the layout contract (longer side to about 320 px) inside the frame, and every
    region's colour is blended over it at the region's centre and just inside its corners (so
    the rectangle is drawn where the server put it, `left, top, width, height` in fractions of
    the original)."""
    ys, xs = np.nonzero(np.all(pixels == FRAME, axis=-1))
    assert len(xs), "no image frame on the page"
    left, top = xs.min() + 3, ys.min() + 3
    width, height = xs.max() - 2 - left, ys.max() - 2 - top
    source = np.asarray(Image.open(image).convert("RGB")).astype(int)
    assert max(source.shape[:2]) < 320, "a small image (enlarged by a whole factor)"
    k = 320 // max(source.shape[:2])
    assert (width, height) == (source.shape[1] * k, source.shape[0] * k)
    for s in regions:
        x0, x1 = left + s.left * width, left + (s.left + s.width) * width
        y0, y1 = top + s.top * height, top + (s.top + s.height) * height
        # Pixels wholly inside the rectangle, one pixel in from its edges.
        xs = (math.ceil(x0) + 1, int((x0 + x1) / 2), math.floor(x1) - 2)
        ys = (math.ceil(y0) + 1, int((y0 + y1) / 2), math.floor(y1) - 2)
        a = 0.65 * abs(s.score) / max_abs
        for cy in ys:
            for cx in xs:
                under = source[(cy - top) // k, (cx - left) // k]
                expected = np.rint((1 - a) * under + a * np.array(colour(s.score, max_abs)))
                got = pixels[cy, cx]
                assert np.abs(got - expected).max() <= 3, f"region {s} at ({cx}, {cy}): {got} vs {expected}"


def html_report(server, tmp_path, image: Path, *options):
    """`atman explain --html` of a question about `image` with `options`: its response (the
    same run's --json), Chromium's screenshot of the page as RGB pixels, and the page."""
    html = tmp_path / "report.html"
    proc = run_cli(*explain_args(server, "--prompt", "USER: ", "--image", image, "--prompt",
                                 " what is it? ASSISTANT:", "--target", " a cat", *options,
                                 "--html", html, "--json"))
    assert proc.returncode == 0, proc.stderr
    response = json_format.Parse(proc.stdout.decode(), pb.ExplainResponse())
    shot = tmp_path / "shot.png"
    console = screenshot(html, shot)
    assert console == "", f"console output:\n{console}"
    return response, np.asarray(Image.open(shot).convert("RGB")).astype(int), html


def image_regions_and_scale(response):
    """The first explanation's image units and its colour scale's max |score| (prompt units)."""
    explanation = response.explanations[0]
    scores = [s.score for item in explanation.items for s in list(item.text) + list(item.image)]
    return [s for item in explanation.items for s in item.image], max(abs(x) for x in scores)


def test_html_report_renders_in_chromium_with_the_heatmap_colours(server, tmp_path):
    image = grey_image(tmp_path / "g.png", 40, 30)
    response, pixels, html = html_report(server, tmp_path, image, "--text-granularity", "token")
    text = html.read_text()
    assert not re.search(r"""(src|href)=["'](?!data:)""", text), "a non-data: reference"

    explanation = response.explanations[0]
    image_scores, max_abs = image_regions_and_scale(response)
    # Text: every strongly scored unit's exact background colour is on the page.
    strong = [s.score for item in explanation.items for s in item.text if abs(s.score) >= 0.5 * max_abs]
    assert strong
    for score in strong:
        c = colour(score, max_abs)
        count = int(np.all(pixels == c, axis=-1).sum())
        assert count >= 30, f"unit colour {c} (score {score}) on {count} pixels"

    # Image: the frame is where the layout contract puts it, each region blended over it.
    assert len(image_scores) > 1
    check_html_regions(pixels, image, image_scores, max_abs)

    # The check can fail: a broken image is reported on the console.
    broken = tmp_path / "broken.html"
    broken.write_text(text.replace(";base64,", ";base64,AAAA", 1))
    assert "image not decoded" in screenshot(broken, tmp_path / "broken.png")


def test_html_report_colours_the_regions_of_a_tiled_llava_next_image(tmp_path):
    """LLaVA-NeXT (anyres): the 40 x 30 image is a base view + 2 x 2 tiles; its 2 x 3 regions
    (base-view and tile tokens each) are drawn where they are on the enlarged image."""
    s = Server(model=LLAVA.parent / "llava-next")
    try:
        response, pixels, _ = html_report(s, tmp_path, grey_image(tmp_path / "g.png", 40, 30),
                                       "--image-granularity", "grid", "--image-rows", "2",
                                       "--image-cols", "3")
    finally:
        assert s.stop() == 0, s.output()
    regions, max_abs = image_regions_and_scale(response)
    assert_rects(regions, [[c / 3, r / 2, 1 / 3, 1 / 2] for r in range(2) for c in range(3)])
    check_html_regions(pixels, tmp_path / "g.png", regions, max_abs)


def test_html_report_colours_the_merged_tokens_of_a_qwen2_vl_image(tmp_path):
    """Qwen2-VL: the 100 x 60 image becomes 112 x 56 (smart_resize changes its aspect), 2 x 4
    merged tokens, each unit a 25 x 30 pixel rectangle of the original, drawn there."""
    image = grey_image(tmp_path / "g.png", 100, 60)
    s = Server(model=QWEN2_VL)
    try:
        assert s.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=30).model_type == "qwen2_vl"
        response, pixels, _ = html_report(s, tmp_path, image, "--image-granularity", "native")
    finally:
        assert s.stop() == 0, s.output()
    regions, max_abs = image_regions_and_scale(response)
    assert_rects(regions, qwen2_vl_token_rects(100, 60))
    check_html_regions(pixels, image, regions, max_abs)


def assert_rects(regions, expected: list) -> None:
    """Each unit's rectangle (left, top, width, height) within 1e-9 of `expected`'s, in order."""
    got = [[r.left, r.top, r.width, r.height] for r in regions]
    assert len(got) == len(expected), got
    for g, e in zip(got, expected):
        assert g == pytest.approx(e, abs=1e-9), f"{got} vs {expected}"


def qwen2_vl_token_rects(width: int, height: int) -> list:
    """Merged-token rectangles (left, top, width, height) of a width x height image for the
    fixture's processor, from transformers' smart_resize: the tokens split each axis evenly."""
    config = json.loads((QWEN2_VL / "preprocessor_config.json").read_text())
    cell = config["patch_size"] * config["merge_size"]
    h, w = smart_resize(height, width, factor=cell, min_pixels=config["size"]["shortest_edge"],
                        max_pixels=config["size"]["longest_edge"])
    rows, cols = h // cell, w // cell
    return [[c / cols, r / rows, 1 / cols, 1 / rows] for r in range(rows) for c in range(cols)]


def test_png_overlay_hottest_pixels_lie_in_the_top_rectangle(server, tmp_path):
    check_png_overlay(server, tmp_path)


def test_png_overlay_of_a_tiled_llava_next_image_lies_in_its_top_region(tmp_path):
    """LLaVA-NeXT (anyres): the 48 x 36 image is a base view + 2 x 2 tiles; each region's unit
    holds base-view and tile tokens, and its rectangle is drawn where the region is."""
    s = Server(model=LLAVA.parent / "llava-next")
    try:
        info = s.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=30)
        assert info.model_type == "llava_next"
        check_png_overlay(s, tmp_path)
    finally:
        assert s.stop() == 0, s.output()


def test_png_overlay_of_a_qwen2_vl_image_lies_in_its_top_token(tmp_path):
    """Qwen2-VL at native resolution: the 100 x 60 image (5:3) becomes 112 x 56 (2:1), 2 x 4
    merged tokens; each native unit is a 25 x 30 pixel rectangle of the original (not a square),
    and the overlay draws the top one there."""
    s = Server(model=QWEN2_VL)
    try:
        regions = check_png_overlay(s, tmp_path, 100, 60, ["--image-granularity", "native"], 8)
    finally:
        assert s.stop() == 0, s.output()
    assert_rects(regions, qwen2_vl_token_rects(100, 60))


def check_png_overlay(server, tmp_path, width=48, height=36,
                      granularity=("--image-granularity", "grid", "--image-rows", "3", "--image-cols", "4"),
                      count=12):
    """`count` units (default a 3 x 4 grid) on a width x height grey image, normalised: the
    overlay's hottest pixels lie in, and spread over, the top-scoring unit's rectangle. Returns
    the units."""
    image = grey_image(tmp_path / "g.png", width, height)
    out = tmp_path / "overlay.png"
    proc = run_cli(*explain_args(server, "--prompt", "USER: ", "--image", image, "--prompt",
                                 " describe it. ASSISTANT:", "--target", " a grey square",
                                 *granularity, "--normalize", "--png", out, "--json"))
    assert proc.returncode == 0, proc.stderr
    response = json_format.Parse(proc.stdout.decode(), pb.ExplainResponse())
    regions = [s for item in response.explanations[0].items for s in item.image]
    assert len(regions) == count
    top_region = max(regions, key=lambda s: s.score)
    assert sorted(s.score for s in regions)[-2] < top_region.score

    picture = np.asarray(Image.open(out).convert("RGB")).astype(int)
    k = 512 // max(width, height)
    assert picture.shape == (height * k + 6 + 16 + 22, width * k, 3)  # picture, gap, bar, labels
    picture = picture[: height * k]
    heat = picture[..., 0] - picture[..., 2]  # the grey image has R = B: this is the tint
    ys, xs = np.nonzero(heat == heat.max())
    w, h = picture.shape[1], picture.shape[0]
    cx, cy = (xs + 0.5) / w, (ys + 0.5) / h
    inside = ((cx >= top_region.left) & (cx < top_region.left + top_region.width) &
              (cy >= top_region.top) & (cy < top_region.top + top_region.height))
    assert inside.all(), f"{(~inside).sum()} of {len(xs)} hottest pixels outside {top_region}"
    # ... and they spread over it (rounding of the blend leaves some a unit cooler).
    assert (cx.max() - cx.min()) >= 0.8 * top_region.width
    assert (cy.max() - cy.min()) >= 0.8 * top_region.height
    return regions


def explain_total(metrics: str) -> dict:
    """atman_requests_total{method="Explain"} by code."""
    out = {}
    for line in metrics.splitlines():
        if line.startswith("atman_requests_total{") and 'method="Explain"' in line:
            code = re.search(r'code="([A-Z_]+)"', line).group(1)
            out[code] = out.get(code, 0) + int(float(line.rsplit(" ", 1)[1]))
    return out


def test_bench_counts_match_the_server_metrics(server, tmp_path):
    image = grey_image(tmp_path / "g.png", 40, 30)
    requests = tmp_path / "requests.jsonl"
    lines = [
        {"prompt": [{"text": "The cat sat on the mat."}], "target": " yes"},
        {"prompt": [{"text": "USER: "}, {"image": base64.b64encode(image.read_bytes()).decode()},
                    {"text": " what? ASSISTANT:"}], "target": " grey",
         "options": {"imageGranularity": "IMAGE_GRANULARITY_WHOLE"}},
        {"prompt": [{"text": "x"}], "options": {"maxForwardPasses": 1, "textGranularity":
                                                "TEXT_GRANULARITY_TOKEN"}, "target": "y y y"},
    ]
    requests.write_text("\n".join(json.dumps(line) for line in lines) + "\n")

    def measured(*args):
        before = explain_total(server.metrics_text())
        proc = run_cli("bench", "--address", server.address, "--requests", requests, *args)
        assert proc.returncode == 0, proc.stderr
        return before, proc.stdout.decode()

    def server_delta(before, expected_total):
        # The server counts a call before it sends the call's status, so its counters are
        # complete when the tool has every answer.
        after = explain_total(server.metrics_text())
        delta = {c: after.get(c, 0) - before.get(c, 0) for c in after}
        delta = {c: n for c, n in delta.items() if n}
        assert sum(delta.values()) == expected_total
        return delta

    before, out = measured("--concurrency", "1,4", "--duration", "2s")
    levels = json.loads(out)
    assert [lvl["concurrency"] for lvl in levels] == [1, 4]
    total = sum(lvl["requests"] for lvl in levels)
    codes = {}
    for lvl in levels:
        assert lvl["requests"] == sum(lvl["codes"].values()) > 0
        assert lvl["seconds"] >= 1.9  # the level's duration (no upper bound: loaded machines)
        assert lvl["ok"] == lvl["codes"].get("OK", 0) > 0
        assert lvl["latency_ms"]["p50"] <= lvl["latency_ms"]["p90"] <= lvl["latency_ms"]["p99"]
        assert lvl["server_compute_mean_seconds"] > 0
        for c, n in lvl["codes"].items():
            codes[c] = codes.get(c, 0) + n
    assert codes.get("INVALID_ARGUMENT", 0) > 0  # the over-budget request
    assert server_delta(before, total) == codes

    # The request budget bounds a level exactly, long before its duration.
    before, out = measured("--concurrency", "3", "--duration", "120s", "--max-requests", "7",
                           "--format", "csv")
    header, row = out.strip().splitlines()
    assert header.startswith("concurrency,requests,ok,seconds,")
    fields = dict(zip(header.split(","), row.split(",")))
    assert (fields["concurrency"], fields["requests"]) == ("3", "7")
    csv_codes = dict(part.split("=") for part in fields["codes"].split(";"))
    assert server_delta(before, 7) == {c: int(n) for c, n in csv_codes.items()}


def test_bad_arguments_exit_2_with_usage(tmp_path):
    not_image = tmp_path / "notes.txt"
    not_image.write_text("not an image")
    cases = [
        [],
        ["explian"],
        ["explain", "--prompt", "x", "--colour"],
        ["explain", "--prompt"],
        ["explain", "--prompt", "x", "--image", tmp_path / "missing.png"],
        ["explain", "--prompt", "x", "--image", not_image],
        ["explain", "--prompt", "x", "--text-granularity", "letters"],
        ["explain", "--prompt", "x", "--timeout", "forever"],
        ["generate", "--prompt", "x", "--control", "1:2"],
        ["tokenize"],
        ["bench", "--requests", tmp_path / "missing.jsonl"],
        ["bench", "--requests", not_image],
        ["bench", "--requests", not_image, "--concurrency", "1,0"],
        ["bench", "--requests", not_image, "--address", "192.0.2.1:50051"],
    ]
    for args in cases:
        # A port where nothing listens: no case may get as far as a call.
        proc = run_cli(*args, env={"ATMAN_ADDRESS": f"127.0.0.1:{free_port()}"}, timeout=60)
        assert proc.returncode == 2, (args, proc.returncode, proc.stderr)
        assert "usage: atman" in proc.stderr, (args, proc.stderr)
        for crash in ("terminate called", "what():", "Aborted", "Segmentation", "Traceback"):
            assert crash not in proc.stderr, (args, proc.stderr)
        assert proc.stdout == b"", args


def test_unavailable_at_start_is_retried(tmp_path):
    # The port is held by a listener that accepts and hangs up: the tool's first attempt is
    # observable (an accepted connection) and fails as UNAVAILABLE; only then does the real
    # server take the port, and the tool's retries reach it.
    import socket
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    cli = subprocess.Popen([CLI, "info", "--address", f"127.0.0.1:{port}", "--retries", "10",
                            "--timeout", "600s"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    connection, _ = listener.accept()  # the first attempt arrived
    connection.close()
    listener.close()
    assert cli.poll() is None, "the tool gave up after one failed attempt"
    server = Server(port=port, wait=False)
    try:
        out, err = cli.communicate(timeout=600)
        assert cli.returncode == 0, err.decode()
        assert b"model: llava" in out
    finally:
        assert server.stop() == 0, server.output()


def make_certificates(folder: Path) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, by openssl."""
    def openssl(*args):
        subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca",
            "-keyout", folder / "ca.key", "-out", folder / "ca.pem")
    for name, extension in (("server", "subjectAltName=IP:127.0.0.1"),
                            ("client", "extendedKeyUsage=clientAuth")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                "-keyout", folder / f"{name}.key", "-out", folder / f"{name}.csr")
        (folder / f"{name}.ext").write_text(extension + "\n")
        openssl("x509", "-req", "-in", folder / f"{name}.csr", "-CA", folder / "ca.pem",
                "-CAkey", folder / "ca.key", "-CAcreateserial", "-days", "1",
                "-extfile", folder / f"{name}.ext", "-out", folder / f"{name}.pem")
    return folder


def test_mutual_tls_and_bearer_token(tmp_path):
    certs = make_certificates(tmp_path)
    tokens = tmp_path / "tokens"
    tokens.write_text("secret-1\n")
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(certs / "ca.pem").read_bytes(),
        private_key=(certs / "client.key").read_bytes(),
        certificate_chain=(certs / "client.pem").read_bytes())
    server = Server("--tls-cert", certs / "server.pem", "--tls-key", certs / "server.key",
                    "--tls-client-ca", certs / "ca.pem", "--auth-tokens-file", tokens,
                    credentials=credentials)
    try:
        tls = ["--address", server.address, "--tls-ca", certs / "ca.pem",
               "--tls-cert", certs / "client.pem", "--tls-key", certs / "client.key"]
        ok = run_cli("info", *tls, "--token", "secret-1", "--json")
        assert ok.returncode == 0, ok.stderr
        assert json_format.Parse(ok.stdout.decode(), pb.ModelInfo()) == server.stub.GetModelInfo(
            pb.GetModelInfoRequest(), metadata=[("authorization", "Bearer secret-1")], timeout=30)
        token_file = tmp_path / "token"
        token_file.write_text("secret-1\n")
        from_file = run_cli("info", *tls, "--token-file", token_file)
        assert from_file.returncode == 0, from_file.stderr
        from_env = run_cli("info", *tls, env={"ATMAN_TOKEN": "secret-1"})
        assert from_env.returncode == 0, from_env.stderr

        wrong = run_cli("info", *tls, "--token", "secret-2")
        assert wrong.returncode == 1 and "UNAUTHENTICATED" in wrong.stderr, wrong.stderr
        no_client_cert = run_cli("info", "--address", server.address, "--tls-ca", certs / "ca.pem",
                                 "--token", "secret-1", "--retries", "0", "--timeout", "10s")
        assert no_client_cert.returncode == 1, no_client_cert.stderr
        plaintext = run_cli("info", "--address", server.address, "--token", "secret-1",
                            "--retries", "0", "--timeout", "10s")
        assert plaintext.returncode == 1 and "UNAVAILABLE" in plaintext.stderr, plaintext.stderr
    finally:
        assert server.stop() == 0, server.output()


def test_stream_prints_progress_and_the_rpc_result(server):
    args = ["--prompt", "The cat sat on the mat. It was happy.", "--target", " yes",
            "--text-granularity", "token", "--json"]
    streamed = run_cli(*explain_args(server, *args, "--stream"))
    assert streamed.returncode == 0, streamed.stderr
    assert re.search(r"progress: \d+/\d+ rows", streamed.stderr), streamed.stderr
    plain = run_cli(*explain_args(server, *args))
    assert plain.returncode == 0, plain.stderr
    ours = json_format.Parse(streamed.stdout.decode(), pb.ExplainResponse())
    assert without_timings(ours) == without_timings(
        json_format.Parse(plain.stdout.decode(), pb.ExplainResponse()))
