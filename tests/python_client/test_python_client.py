"""atman-client (client/python) against a real atman-server on 127.0.0.1 (see conftest.py):
every RPC, blocking and asyncio, equals the raw grpcio response; streaming; deadlines,
cancellation and retries; TLS, mutual TLS and tokens; option checks before any call; the HTML
heatmap in headless Chromium and the image overlay.

Colours are checked against the scale of client/heatmap.h, written out again here:
t = score / max|score|; t >= 0 blends white to (215,48,39), t < 0 white to (69,117,180);
image overlays use opacity 0.65 |t|.
"""
import asyncio
import math
import re
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

import atman
from conftest import Server, free_port, pb

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))
from certs import make_certificates  # noqa: E402

HOT, COLD, WHITE = (215, 48, 39), (69, 117, 180), (255, 255, 255)
FRAME = (40, 44, 52)
LONG = ("The quick brown fox jumps over the lazy dog while the cat watches from the warm "
        "windowsill and the bird sings in the old oak tree beside the river.")


def colour(score, max_abs):
    t = max(-1.0, min(1.0, score / max_abs))
    end = HOT if t >= 0 else COLD
    return tuple(int(math.floor(w + (e - w) * abs(t) + 0.5)) for w, e in zip(WHITE, end))


def grey_image(path, width, height):
    """A grey (R = G = B) image with texture, so overlay tints are measurable."""
    y, x = np.mgrid[0:height, 0:width]
    g = (96 + 40 * np.sin(x / 3.0) * np.cos(y / 4.0)).astype(np.uint8)
    Image.fromarray(np.stack([g, g, g], axis=-1)).save(path)
    return path


def without_timings(r):
    """The response less what differs between two runs of one request."""
    r = type(r).FromString(r.SerializeToString())
    r.usage.queue_seconds = 0
    r.usage.compute_seconds = 0
    r.usage.peak_memory_bytes = 0
    return r


def image_request(image_bytes, **options):
    request = pb.ExplainRequest(target=" a cat", request_id="py-test")
    request.prompt.add(text="USER: ")
    request.prompt.add(image=image_bytes)
    request.prompt.add(text=" what is it? ASSISTANT:")
    request.prompt.add(token_ids=pb.TokenIds(ids=[5, 6, 7]))
    request.options.text_granularity = pb.TEXT_GRANULARITY_WORD
    request.options.return_relevance_tensor = True
    return request


def check_views(result, raw):
    """The dataclass views say what the message says."""
    assert result.raw == raw
    assert result.target == raw.target and result.target_token_ids == list(raw.target_token_ids)
    np.testing.assert_array_equal(result.target_log_probs, np.array(raw.target_log_probs))
    assert len(result.explanations) == len(raw.explanations)
    for view, e in zip(result.explanations, raw.explanations):
        assert (view.target_start, view.target_length) == (e.target_start, e.target_length)
        assert view.target_text == raw.target[e.target_start:e.target_start + e.target_length]
        texts = [(i.item, s) for i in e.items for s in i.text]
        assert [(s.item, s.start, s.length, s.score) for s in view.spans] == \
            [(k, s.start, s.length, s.score) for k, s in texts]
        for span in view.spans:
            text = result.request.prompt[span.item].text
            assert span.text == text[span.start:span.start + span.length]
        assert [(r.item, r.left, r.top, r.width, r.height, r.score) for r in view.regions] == \
            [(i.item, s.left, s.top, s.width, s.height, s.score) for i in e.items for s in i.image]
        assert [(t.item, t.token_index, t.score) for t in view.tokens] == \
            [(i.item, s.token_index, s.score) for i in e.items for s in i.tokens]
        assert [(s.start, s.length, s.score) for s in view.target_spans] == \
            [(s.start, s.length, s.score) for s in e.target]
    if raw.unit_relevance.shape:
        np.testing.assert_array_equal(
            result.unit_relevance,
            np.array(raw.unit_relevance.values, np.float32).reshape(raw.unit_relevance.shape))
        assert result.position_relevance.shape == tuple(raw.position_relevance.shape)
    else:
        assert result.unit_relevance is None
    assert result.usage.perturbed_rows == raw.usage.perturbed_rows


def call_all(client_calls, server, image_path):
    """Runs every RPC through `client_calls` (a function name, args, kwargs -> result) and
    compares each with the raw stub's response."""
    data = image_path.read_bytes()
    # Explain: text, an image (as a path), text, token ids; word units; raw tensors.
    result = client_calls("explain", ["USER: ", image_path, " what is it? ASSISTANT:", [5, 6, 7]],
                          " a cat", request_id="py-test", text_granularity="word",
                          return_relevance_tensor=True)
    raw = server.stub.Explain(image_request(data), timeout=120)
    assert len(raw.explanations[0].items) == 4
    assert result.request == image_request(data)
    assert without_timings(result.raw) == without_timings(raw)
    check_views(result, result.raw)
    assert [t.token_id for t in result.tokens] == [5, 6, 7]

    # Per target token, generated target (empty), PIL image prompt, non-default options.
    pil = Image.open(image_path)
    result = client_calls("explain", ["Describe: ", pil], "", request_id="py-test",
                          target_granularity="token", max_new_tokens=3, control_factor=0.0,
                          postprocessing="absolute", normalize=True, image_granularity="grid",
                          image_rows=2, image_cols=3, layers=[0, 1], scored_items=[1])
    request = pb.ExplainRequest(request_id="py-test")
    request.prompt.add(text="Describe: ")
    buffer = __import__("io").BytesIO()
    pil.save(buffer, format="PNG")
    request.prompt.add(image=buffer.getvalue())
    o = request.options
    o.target_granularity = pb.TARGET_GRANULARITY_TOKEN
    o.max_new_tokens = 3
    o.control_factor = 0.0
    o.postprocessing = pb.POSTPROCESSING_ABSOLUTE
    o.normalize = True
    o.image_granularity = pb.IMAGE_GRANULARITY_GRID
    o.image_rows, o.image_cols = 2, 3
    o.layers.extend([0, 1])
    o.scored_items.extend([1])
    assert result.request == request
    raw = server.stub.Explain(request, timeout=120)
    assert len(raw.explanations) == 3
    assert without_timings(result.raw) == without_timings(raw)
    check_views(result, result.raw)
    assert len(result.per_token[2].target_spans) == 2 and len(result.per_token[0].regions) == 6
    # scored_items=[1]: the image's units only; the text item is read but not scored.
    assert [i.item for i in raw.explanations[0].items] == [1]

    g = client_calls("generate", "Hello", request_id="g", max_new_tokens=5,
                     controls=[atman.Control(item=0, start=0, length=2, factor=0.5)],
                     temperature=0.7, seed=3, top_k=20)
    request = pb.GenerateRequest(max_new_tokens=5, request_id="g", temperature=0.7, seed=3,
                                 top_k=20, controls=[pb.AttentionControl(item=0, length=2,
                                                                         factor=0.5)])
    request.prompt.add(text="Hello")
    raw = server.stub.Generate(request, timeout=60)
    assert without_timings(g.raw) == without_timings(raw)
    assert (g.text, g.token_ids, g.finish_reason) == (raw.text, list(raw.token_ids), "length")

    tokens = client_calls("tokenize", "héllo wörld", add_special_tokens=False)
    raw = server.stub.Tokenize(pb.TokenizeRequest(text="héllo wörld", add_special_tokens=False),
                               timeout=60)
    assert [(t.id, t.text, t.start, t.length, t.special) for t in tokens] == \
        [(t.id, t.text, t.start, t.length, t.special) for t in raw.tokens]

    info = client_calls("model_info")
    raw = server.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=60)
    assert info.raw == raw and info.supports_images and info.model_type == raw.model_type
    assert info.max_new_tokens == raw.max_new_tokens

    assert client_calls("health") == "SERVING"
    assert client_calls("health", "atman.v1.Atman") == "SERVING"
    with pytest.raises(atman.AtmanError) as e:
        client_calls("health", "no.such.Service")
    assert e.value.code == grpc.StatusCode.NOT_FOUND


def test_every_rpc_equals_the_raw_response(server, tmp_path):
    image = grey_image(tmp_path / "g.png", 40, 30)
    with atman.Client(server.address, timeout=120) as client:
        call_all(lambda name, *a, **k: getattr(client, name)(*a, **k), server, image)


def test_every_async_rpc_equals_the_raw_response(server, tmp_path):
    image = grey_image(tmp_path / "g.png", 40, 30)

    async def main():
        async with atman.AsyncClient(server.address, timeout=120) as client:
            loop = asyncio.get_running_loop()
            # The blocking raw stub and comparisons run on a worker thread; the client's
            # calls are scheduled back onto this loop.
            def calls(name, *a, **k):
                return asyncio.run_coroutine_threadsafe(getattr(client, name)(*a, **k),
                                                        loop).result()
            await asyncio.to_thread(call_all, calls, server, image)
    asyncio.run(main())


def test_stream_yields_progress_then_the_result(server):
    kwargs = dict(target=" It was happy.", request_id="s", text_granularity="token")
    prompt = "The cat sat on the mat. It was warm."
    with atman.Client(server.address, timeout=120) as client:
        events = list(client.explain_stream(prompt, **kwargs))
        plain = client.explain(prompt, **kwargs)

    async def stream():
        async with atman.AsyncClient(server.address, timeout=120) as client:
            return [e async for e in client.explain_stream(prompt, **kwargs)]
    async_events = asyncio.run(stream())
    for evs in (events, async_events):
        *progress, result = evs
        assert isinstance(result, atman.Explanation)
        assert progress and all(isinstance(p, atman.Progress) for p in progress)
        assert progress[0].rows_done == 0
        done = [p.rows_done for p in progress]
        assert done == sorted(done)
        assert all(p.rows_total == result.usage.perturbed_rows > 1 for p in progress)
        assert without_timings(result.raw) == without_timings(plain.raw)
        assert result == result and result != plain  # timings differ between the two runs


def test_deadline_exceeded(held_server):
    server = held_server
    server.hold()
    try:
        before = server.count("Explain", "DEADLINE_EXCEEDED")
        with atman.Client(server.address) as client:
            with pytest.raises(atman.AtmanError) as e:
                client.explain(LONG, " It was not amused!", text_granularity="token",
                               timeout=0.5)
        assert e.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        server.wait_metrics(lambda m: m.get(
            'atman_requests_total{code="DEADLINE_EXCEEDED",method="Explain"}', 0) == before + 1,
            "the server-side deadline")
        server.idle()
    finally:
        server.release()


def test_cancelled_async_task_is_cancelled_on_the_server(held_server):
    server = held_server
    server.hold()
    try:
        before = {m: server.count(m, "CANCELLED") for m in ("Explain", "ExplainStream")}

        async def main():
            async with atman.AsyncClient(server.address, timeout=600) as client:
                async def consume_stream():
                    async for _ in client.explain_stream(LONG, " It was not amused!",
                                                         text_granularity="token"):
                        pass
                tasks = [asyncio.create_task(client.explain(LONG, " It was not amused!",
                                                            text_granularity="token")),
                         asyncio.create_task(consume_stream())]
                # Both are queued on the held server (nothing can finish) before the cancel.
                await asyncio.to_thread(server.wait_metrics,
                                        lambda m: m["atman_queued_requests"] == 2, "two queued")
                for t in tasks:
                    t.cancel()
                for t in tasks:
                    with pytest.raises(asyncio.CancelledError):
                        await t
        asyncio.run(main())
        server.idle()
        assert server.count("Explain", "CANCELLED") == before["Explain"] + 1
        assert server.count("ExplainStream", "CANCELLED") == before["ExplainStream"] + 1
    finally:
        server.release()


def test_unavailable_is_retried_until_the_server_is_up():
    # The port is held by a listener that accepts and hangs up: the first attempt is observable
    # and fails as UNAVAILABLE; only then does the real server take the port.
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    client = atman.Client(f"127.0.0.1:{port}", retries=100, max_backoff=0.5, timeout=600)
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.update(info=client.model_info()))
    thread.start()
    connection, _ = listener.accept()  # the first attempt arrived
    connection.close()
    listener.close()
    server = Server(port=port, wait=False)
    try:
        thread.join()
        assert outcome["info"].model_type == "llava"
    finally:
        client.close()
        assert server.stop() == 0, server.output()
    # Without retries, one refused attempt is the answer; with retries, the deadline bounds them.
    with atman.Client(f"127.0.0.1:{free_port()}", retries=0) as c:
        with pytest.raises(atman.AtmanError) as e:
            c.tokenize("x")
        assert e.value.code == grpc.StatusCode.UNAVAILABLE
    with atman.Client(f"127.0.0.1:{free_port()}", retries=100, max_backoff=0.2,
                      timeout=1.0) as c:
        with pytest.raises(atman.AtmanError) as e:
            c.tokenize("x")
        assert e.value.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def test_tls_mutual_tls_and_token(tmp_path):
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
        raw = server.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=30,
                                       metadata=[("authorization", "Bearer secret-1")])
        tls = atman.Tls(ca=certs / "ca.pem", cert=certs / "client.pem", key=certs / "client.key")
        with atman.Client(server.address, tls=tls, token="secret-1") as c:
            assert c.model_info().raw == raw
        pem = atman.Tls(ca=(certs / "ca.pem").read_bytes(), cert=(certs / "client.pem").read_bytes(),
                        key=(certs / "client.key").read_bytes(), server_name="localhost")

        async def async_info():
            async with atman.AsyncClient(server.address, tls=pem, token="secret-1") as c:
                return await c.model_info()
        assert asyncio.run(async_info()).raw == raw
        with atman.Client(server.address, tls=tls, token="secret-2") as c:
            with pytest.raises(atman.AtmanError) as e:
                c.model_info()
            assert e.value.code == grpc.StatusCode.UNAUTHENTICATED
        with atman.Client(server.address, tls=tls) as c:
            with pytest.raises(atman.AtmanError) as e:
                c.tokenize("x")
            assert e.value.code == grpc.StatusCode.UNAUTHENTICATED
            assert c.health() == "SERVING"  # health needs no token
        no_client_cert = atman.Tls(ca=certs / "ca.pem")
        with atman.Client(server.address, tls=no_client_cert, token="secret-1", retries=0,
                          timeout=10) as c:
            with pytest.raises(atman.AtmanError) as e:
                c.model_info()
            assert e.value.code == grpc.StatusCode.UNAVAILABLE
        with atman.Client(server.address, token="secret-1", retries=0, timeout=10) as c:
            with pytest.raises(atman.AtmanError) as e:  # plaintext to a TLS port
                c.model_info()
            assert e.value.code == grpc.StatusCode.UNAVAILABLE
    finally:
        assert server.stop() == 0, server.output()


BAD_OPTIONS = [
    (dict(text_granularity="letters"), "text_granularity"),
    (dict(text_granularity=True), "text_granularity"),
    (dict(text_granularity="custom"), "custom_delimiter"),
    (dict(auto_max_units=0), "auto_max_units"),
    (dict(auto_max_units=2.5), "auto_max_units"),
    (dict(image_granularity="hexagons"), "image_granularity"),
    (dict(image_granularity="grid", image_rows=2), "image_cols"),
    (dict(image_rows=-1), "image_rows"),
    (dict(image_cols=2**31), "image_cols"),
    (dict(control_factor=float("nan")), "control_factor"),
    (dict(control_factor=-0.5), "control_factor"),
    (dict(control_factor=float("inf")), "control_factor"),
    (dict(control_factor="0.1"), "control_factor"),
    (dict(control_mode="additive"), "control_mode"),
    (dict(contextual_control_threshold=0.0), "contextual_control_threshold"),
    (dict(contextual_control_threshold=1.5), "contextual_control_threshold"),
    (dict(control_token_overlap="some"), "control_token_overlap"),
    (dict(target_granularity="sentence"), "target_granularity"),
    (dict(postprocessing="cube"), "postprocessing"),
    (dict(normalize="yes"), "normalize"),
    (dict(layers=[0, -1]), "layers[1]"),
    (dict(layers="0,1"), "layers"),
    (dict(scored_items=[1, -2]), "scored_items[1]"),
    (dict(scored_items=1), "scored_items"),
    (dict(add_special_tokens=1), "add_special_tokens"),
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(max_forward_passes=-1), "max_forward_passes"),
    (dict(return_relevance_tensor=None), "return_relevance_tensor"),
    (dict(contol_factor=0.1), "contol_factor"),
    (dict(request_id="a b"), "request_id"),
    (dict(request_id="x" * 129), "request_id"),
]
BAD_GENERATE = [
    (dict(max_new_tokens=-3), "max_new_tokens"),
    (dict(temperature=-1.0), "temperature"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(top_k=-1), "top_k"),
    (dict(top_p=1.5), "top_p"),
    (dict(seed=-1), "seed"),
    (dict(seed=2**64), "seed"),
    (dict(controls=[atman.Control(item=0, factor=-1.0)]), "controls[0].factor"),
    (dict(controls=[(0, 0, 0, 0.5), (-1, 0, 0, 0.5)]), "controls[1].item"),
    (dict(controls=[{"item": 0, "strength": 2}]), "controls[0]"),
    (dict(controls=atman.Control(item=0)), "controls"),
    (dict(stop_at_eos="no"), "stop_at_eos"),
    (dict(control_mode=7), "control_mode"),
]
BAD_PROMPTS = [
    ([], "prompt"),
    (["x", 3.5], "prompt[1]"),
    (["x", [1, -2]], "prompt[1][1]"),
    (["x", b"not an image"], "prompt[1]"),
    ([Path("/nonexistent/cat.png")], "prompt[0]"),
    (atman.TokenIds([]), "prompt[0]"),
    (None, "prompt[0]"),
]


def test_bad_values_raise_before_the_call_naming_the_field(tmp_path):
    # Nothing listens at the address: a call would fail with AtmanError, not OptionError.
    address = f"127.0.0.1:{free_port()}"
    cases = 0

    def expect(field, call):
        nonlocal cases
        with pytest.raises(atman.OptionError) as e:
            call()
        assert e.value.field == field, (field, str(e.value))
        assert str(e.value).startswith(f"{field}: ")
        cases += 1

    with atman.Client(address, retries=0) as client:
        for options, field in BAD_OPTIONS:
            expect(field, lambda: client.explain("x", "y", **options))
            expect(field, lambda: next(client.explain_stream("x", "y", **options)))
        for options, field in BAD_GENERATE:
            expect(field, lambda: client.generate("x", **options))
        for prompt, field in BAD_PROMPTS:
            expect(field, lambda: client.explain(prompt, "y"))
        expect("target", lambda: client.explain("x", 5))
        expect("text", lambda: client.tokenize(b"x"))
        expect("timeout", lambda: client.tokenize("x", timeout=-1))

    async def async_cases():
        async with atman.AsyncClient(address, retries=0) as client:
            for options, field in BAD_OPTIONS:
                with pytest.raises(atman.OptionError) as e:
                    await client.explain("x", "y", **options)
                assert e.value.field == field
    asyncio.run(async_cases())
    for kwargs, field in [(dict(retries=-1), "retries"), (dict(timeout=float("nan")), "timeout"),
                          (dict(tls=atman.Tls(cert=tmp_path / "c.pem")), "tls.key"),
                          (dict(tls=atman.Tls(ca=tmp_path / "missing.pem")), "tls.ca"),
                          (dict(token=""), "token"), (dict(tls="yes"), "tls"),
                          (dict(initial_backoff=3.0, max_backoff=1.0), "initial_backoff"),
                          (dict(max_message_bytes=10), "max_message_bytes")]:
        expect(field, lambda: atman.Client(address, **kwargs))
    assert cases >= 80


def screenshot(html, out):
    """Headless Chromium's screenshot of `html`; returns its console lines.

    On a loaded machine headless Chromium now and then captures before anything is painted: an
    all-white image, no iframe border even. Such a capture is taken again (3 tries); a page
    that really renders blank stays blank and fails the caller's checks."""
    for attempt in range(3):
        console = _screenshot_once(html, out)
        pixels = np.asarray(Image.open(out).convert("RGB"))
        if (pixels != pixels[0, 0]).any():
            break
    return console


def _screenshot_once(html, out):
    chromium = shutil.which("chromium")
    assert chromium, "chromium is not installed (scripts/apt-packages.txt)"
    proc = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         "--force-device-scale-factor=1", "--force-color-profile=srgb", "--window-size=1000,1600",
         "--enable-logging=stderr", "--v=0", f"--user-data-dir={out.parent / 'chromium'}",
         # The notebook view is an iframe whose document loads after the host page: the
         # screenshot waits until the page and its frames have nothing left to do (virtual
         # time), not for the host page's load event alone, which on a loaded machine came
         # before the frame was painted.
         "--virtual-time-budget=30000", f"--screenshot={out}", html.as_uri()],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and out.exists(), proc.stderr
    return "\n".join(line for line in proc.stderr.splitlines() if ":CONSOLE" in line)


def test_html_renders_in_chromium_with_the_scale_colours(server, tmp_path):
    image = grey_image(tmp_path / "g.png", 40, 30)
    with atman.Client(server.address, timeout=120) as client:
        result = client.explain(["USER: ", image, " what is it? ASSISTANT:"], " a cat",
                                text_granularity="token")
    page = result.html()
    assert not re.search(r"""(src|href)=["'](?!data:)""", page), "a non-data: reference"
    # As a notebook shows it: the page in a sandboxed iframe, inside a host page.
    view = result._repr_html_()
    assert view.startswith('<iframe sandbox="allow-scripts"') and "<style>" not in view
    text = f"<!DOCTYPE html><html><body>{view}</body></html>"
    html = tmp_path / "notebook.html"
    html.write_text(text)
    shot = tmp_path / "shot.png"
    console = screenshot(html, shot)
    assert console == "", f"console output:\n{console}"
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)

    scores = [u.score for u in (*result.spans, *result.regions)]
    max_abs = max(abs(s) for s in scores)
    strong = [s.score for s in result.spans if abs(s.score) >= 0.5 * max_abs]
    assert strong
    for score in strong:
        c = colour(score, max_abs)
        count = int(np.all(pixels == c, axis=-1).sum())
        assert count >= 30, f"unit colour {c} (score {score}) on {count} pixels"

    ys, xs = np.nonzero(np.all(pixels == FRAME, axis=-1))
    assert len(xs), "no image frame on the page"
    left, top = xs.min() + 3, ys.min() + 3
    width, height = xs.max() - 2 - left, ys.max() - 2 - top
    assert (width, height) == (320, 240)  # 40 x 30 enlarged 8 times
    source = np.asarray(Image.open(image).convert("RGB")).astype(int)
    assert len(result.regions) > 1
    for s in result.regions:
        cx = left + int((s.left + s.width / 2) * width)
        cy = top + int((s.top + s.height / 2) * height)
        under = source[(cy - top) // 8, (cx - left) // 8]
        a = 0.65 * abs(s.score) / max_abs
        expected = np.rint((1 - a) * under + a * np.array(colour(s.score, max_abs)))
        assert np.abs(pixels[cy, cx] - expected).max() <= 3, f"region {s}: {pixels[cy, cx]}"
    # The check can fail: a broken image is reported on the console.
    broken = tmp_path / "broken.html"
    broken.write_text(text.replace(";base64,", ";base64,AAAA", 1))
    assert "image not decoded" in screenshot(broken, tmp_path / "broken.png")


def test_overlay_hottest_pixels_lie_in_the_top_rectangle(server, tmp_path):
    image = grey_image(tmp_path / "g.png", 48, 36)
    with atman.Client(server.address, timeout=120) as client:
        result = client.explain(["USER: ", image, " describe it. ASSISTANT:"], " a grey square",
                                image_granularity="grid", image_rows=3, image_cols=4,
                                normalize=True)
    regions = result.regions
    assert len(regions) == 12
    top_region = max(regions, key=lambda s: s.score)
    assert sorted(s.score for s in regions)[-2] < top_region.score
    picture = np.asarray(result.overlay().convert("RGB")).astype(int)
    k = 512 // 48
    assert picture.shape == (36 * k + 6 + 16 + 22, 48 * k, 3)  # picture, gap, bar, labels
    picture = picture[: 36 * k]
    heat = picture[..., 0] - picture[..., 2]  # the grey image has R = B: this is the tint
    ys, xs = np.nonzero(heat == heat.max())
    w, h = picture.shape[1], picture.shape[0]
    cx, cy = (xs + 0.5) / w, (ys + 0.5) / h
    inside = ((cx >= top_region.left) & (cx < top_region.left + top_region.width) &
              (cy >= top_region.top) & (cy < top_region.top + top_region.height))
    assert inside.all(), f"{(~inside).sum()} of {len(xs)} hottest pixels outside {top_region}"
    assert (cx.max() - cx.min()) >= 0.8 * top_region.width
    assert (cy.max() - cy.min()) >= 0.8 * top_region.height
    with pytest.raises(ValueError, match="item 0 is not an image item"):
        result.overlay(item=0)


def test_to_pandas_and_to_dict(server):
    import json
    with atman.Client(server.address, timeout=120) as client:
        result = client.explain(["The cat sat.", [5, 6]], " yes", target_granularity="token",
                                text_granularity="word", return_relevance_tensor=True)
    frame = result.to_pandas()
    n = sum(len(e.scores) for e in result.explanations)
    assert len(frame) == n
    np.testing.assert_array_equal(frame["score"].to_numpy(),
                                  np.concatenate([e.scores for e in result.explanations]))
    words = frame[(frame.kind == "text") & (frame.explanation == 0)]
    assert list(words.text) == ["The", "cat", "sat."]
    assert list(frame[frame.kind == "tokens"].token_id.unique()) == [5, 6]
    d = json.loads(json.dumps(result.to_dict()))
    assert d["target"] == " yes" and len(d["explanations"]) == len(result.explanations)
    assert np.array(d["unit_relevance"]).shape == result.unit_relevance.shape
    assert d["explanations"][0]["spans"][1]["text"] == "cat"


def test_retry_policy_attempts_reach_a_draining_server():
    """A draining server answers UNAVAILABLE and counts each call: the count shows how many
    attempts gRPC's retry policy (the channel's service config) made for one client call."""
    s = Server("--test-hooks", "true", "--max-batch-rows", "1", "--max-queue-delay-ms", "0",
               "--drain-grace-seconds", "600")
    try:
        s.hold()
        in_flight = s.stub.Explain.future(pb.ExplainRequest(
            prompt=[pb.PromptItem(text=LONG)], target=" yes"), timeout=600)
        s.wait_metrics(lambda m: m["atman_queued_requests"] == 1, "a queued request")
        s.proc.send_signal(__import__("signal").SIGTERM)
        with atman.Client(s.address, retries=0) as c:
            while c.health("atman.v1.Atman") != "NOT_SERVING":  # an observable state
                pass
        for retries, attempts in ((0, 1), (2, 3), (4, 5), (6, 10)):
            before = s.count("Tokenize", "UNAVAILABLE")
            with atman.Client(s.address, retries=retries, initial_backoff=0.01,
                              max_backoff=0.02, timeout=600) as c:
                with pytest.raises(atman.AtmanError) as e:
                    c.tokenize("Tom")
            assert e.value.code == grpc.StatusCode.UNAVAILABLE
            # The server counts a call before it sends its status.
            assert s.count("Tokenize", "UNAVAILABLE") - before == attempts, retries
        s.release()
        assert in_flight.result().explanations
        assert s.proc.wait(timeout=600) == 0, s.output()
    finally:
        s.stop()


def test_server_errors_name_the_field_on_a_text_only_model(tmp_path):
    from conftest import LLAMA
    image = grey_image(tmp_path / "g.png", 8, 8)
    s = Server(model=LLAMA)
    try:
        with atman.Client(s.address, timeout=120) as client:
            assert not client.model_info().supports_images
            result = client.explain("Tom lives in Rome.", " yes", request_id="t",
                                    text_granularity="word")
            raw = s.stub.Explain(pb.ExplainRequest(
                prompt=[pb.PromptItem(text="Tom lives in Rome.")], target=" yes", request_id="t",
                options=pb.ExplainOptions(text_granularity=pb.TEXT_GRANULARITY_WORD)), timeout=120)
            assert without_timings(result.raw) == without_timings(raw)
            assert [sp.text for sp in result.spans] == ["Tom", "lives", "in", "Rome."]
            vocab = client.model_info().vocab_size
            for prompt, field in ((["x", image], "prompt[1].image"),
                                  ([[1, vocab]], "prompt[0].token_ids.ids[1]")):
                with pytest.raises(atman.AtmanError) as e:
                    client.explain(prompt, " yes")
                assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
                assert e.value.field == field, e.value.details
    finally:
        assert s.stop() == 0, s.output()


def test_closing_a_stream_cancels_it_on_the_server(held_server):
    server = held_server
    server.hold()
    try:
        before = server.count("ExplainStream", "CANCELLED")
        with atman.Client(server.address, timeout=600) as client:
            stream = client.explain_stream(LONG, " It was not amused!", text_granularity="token")
            # The rows are planned (first progress event) but none can run: the server is held.
            first = next(stream)
            assert isinstance(first, atman.Progress) and first.rows_done == 0
            stream.close()
        server.wait_metrics(lambda m: m.get(
            'atman_requests_total{code="CANCELLED",method="ExplainStream"}', 0) == before + 1,
            "the cancel")
        m = server.idle()
        assert m["atman_test_hold"] == 1  # cancelled, not finished
    finally:
        server.release()
