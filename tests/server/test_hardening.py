"""Production hardening of atman-server, on 127.0.0.1 (the findings of an outside probe, each
with the test that failed before its fix): every call releases what it held (allocated bytes
back to their level), Generate honours cancellation, deadlines and admission limits and
explains images on a LLaVA model, unparseable requests and invalid UTF-8 get INVALID_ARGUMENT
naming the problem (logged and counted), request ids cannot forge log lines, a table of bad
inputs each answered with a clear status while the server keeps serving, and calls arriving
during shutdown get UNAVAILABLE.

Concurrency is made deterministic with the server's test hooks (--test-hooks true: SIGUSR1
holds every forward pass, SIGUSR2 releases) and by waiting for gauges, never by sleeping."""
import json
import re
import signal
import threading

import grpc
import pytest

from conftest import FIXTURES, MODEL, Server, pb, pb_grpc

PROMPT_A = "Tom lives in Rome. Anna lives in Paris.\n\nWhere does Anna live? She lives in"
LONG = " ".join(["The quick brown fox jumps over the lazy dog."] * 7)
ALLOCATED = 'atman_device_memory_allocated_bytes{device="cpu"}'
CASES = json.loads((MODEL / "cases.json").read_text())


@pytest.fixture(scope="module")
def server():
    s = Server("--test-hooks", "true", "--max-units", "100", "--max-prompt-tokens", "300",
               "--max-image-bytes", "200000", "--max-image-pixels", "10000")
    yield s
    assert s.stop() == 0, s.output()


def big_request():
    return pb.ExplainRequest(prompt=[pb.PromptItem(text=LONG)], target=" It was not amused!",
                             options=pb.ExplainOptions(text_granularity=pb.TEXT_GRANULARITY_WORD))


# ---- Wire format, for requests that the generated code cannot write ---------------------------

def varint(n: int) -> bytes:
    out = b""
    while True:
        byte, n = n & 0x7F, n >> 7
        out += bytes([byte | (0x80 if n else 0)])
        if not n:
            return out


def ld(field: int, payload: bytes) -> bytes:
    """A length-delimited field (string, bytes or message)."""
    return varint(field << 3 | 2) + varint(len(payload)) + payload


def raw_unary(server, method: str, body: bytes, timeout=60):
    call = server.channel.unary_unary(f"/atman.v1.Atman/{method}", request_serializer=lambda b: b,
                                      response_deserializer=lambda b: b)
    return call(body, timeout=timeout)


def raw_stream(server, body: bytes, timeout=60):
    call = server.channel.unary_stream("/atman.v1.Atman/ExplainStream", request_serializer=lambda b: b,
                                       response_deserializer=lambda b: b)
    return list(call(body, timeout=timeout))


def raw_call(server, method: str, body: bytes):
    return raw_stream(server, body) if method == "ExplainStream" else raw_unary(server, method, body)


# ---- 1. Every call releases what it holds ------------------------------------------------------

def one_of_each(server):
    """Explain, streams (whole and cancelled after the first event), an Explain cancelled while
    queued and one whose deadline passes while queued, Generate (whole, cancelled, expired),
    Tokenize and GetModelInfo."""
    stub = server.stub
    for r in (pb.ExplainRequest(prompt=[pb.PromptItem(text=PROMPT_A)], target=" Paris",
                                options=pb.ExplainOptions(text_granularity=pb.TEXT_GRANULARITY_TOKEN)),
              pb.ExplainRequest(prompt=[pb.PromptItem(text="Tom lives in"), pb.PromptItem(token_ids=pb.TokenIds(ids=[5, 17]))],
                                options=pb.ExplainOptions(max_new_tokens=3, return_relevance_tensor=True))):
        assert stub.Explain(r, timeout=120).explanations
    events = list(stub.ExplainStream(big_request(), timeout=120))
    assert events[-1].WhichOneof("event") == "result"
    stream = stub.ExplainStream(big_request(), timeout=120)
    next(stream)  # the first progress event, then the client goes away
    stream.cancel()
    server.hold()
    queued = stub.Explain.future(big_request(), timeout=120)
    server.wait_metrics(lambda m: m["atman_queued_requests"] == 1, "a queued request")
    queued.cancel()
    with pytest.raises(grpc.RpcError):
        stub.Explain(big_request(), timeout=0.3)
    generating = stub.Generate.future(pb.GenerateRequest(prompt=[pb.PromptItem(text=PROMPT_A)],
                                                         max_new_tokens=64, stop_at_eos=False), timeout=120)
    server.wait_metrics(lambda m: m["atman_inflight_requests"] >= 1, "a generation in flight")
    generating.cancel()
    server.idle()
    server.release()
    assert len(stub.Generate(pb.GenerateRequest(prompt=[pb.PromptItem(text=PROMPT_A)], max_new_tokens=8,
                                                stop_at_eos=False), timeout=120).token_ids) == 8
    assert stub.Tokenize(pb.TokenizeRequest(text=PROMPT_A), timeout=60).tokens
    assert stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=60).vocab_size


def test_every_call_releases_what_it_holds(server):
    # The gauge is read at scrape time: LibTorch's bytes allocated now (weights are mapped
    # from the checkpoint, not allocated). The first round warms up whatever LibTorch keeps
    # (thread-local buffers, cached kernels); after it, an idle server holds a fixed amount.
    one_of_each(server)
    base = server.idle()[ALLOCATED]
    for _ in range(3):
        one_of_each(server)
        assert server.idle()[ALLOCATED] == base, "allocated bytes grew: a finished call left memory behind"


# ---- 3. Generate: cancellation, deadlines, admission, images, enums, int32, NaN -------------

def test_generate_stops_at_its_deadline_and_when_cancelled(server):
    long = pb.GenerateRequest(prompt=[pb.PromptItem(text=PROMPT_A)], max_new_tokens=256, stop_at_eos=False)
    server.hold()  # no generation step can run: the call can only end by its deadline or cancel
    expired = server.count("Generate", "DEADLINE_EXCEEDED")
    with pytest.raises(grpc.RpcError) as e:
        server.stub.Generate(long, timeout=0.3)
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    server.wait_metrics(lambda m: m.get('atman_requests_total{code="DEADLINE_EXCEEDED",method="Generate"}', 0)
                        == expired + 1, "the server ending the expired generation")
    cancelled = server.count("Generate", "CANCELLED")
    f = server.stub.Generate.future(long, timeout=600)
    server.wait_metrics(lambda m: m["atman_inflight_requests"] == 1, "the generation in flight")
    f.cancel()
    server.wait_metrics(lambda m: m.get('atman_requests_total{code="CANCELLED",method="Generate"}', 0)
                        == cancelled + 1, "the server ending the cancelled generation")
    assert server.idle()["atman_test_hold"] == 1  # ended while held: it did not run to the end
    server.release()


def test_generate_steers_like_the_patched_reference(server):
    for case in CASES["generation"]:
        request = pb.GenerateRequest(max_new_tokens=len(case["ids"]), stop_at_eos=False,
                                     control_mode=pb.CONTROL_MODE_MULTIPLICATIVE if case["mode"] == "multiplicative"
                                     else pb.CONTROL_MODE_LOG_ADDITIVE)
        for item in case["prompt"]:
            if "text" in item:
                request.prompt.add(text=item["text"])
            else:
                request.prompt.add(token_ids=pb.TokenIds(ids=item["tokens"]))
        for c in case["controls"]:
            request.controls.add(item=c["item"], factor=c["factor"])
        r = server.stub.Generate(request, timeout=120)
        assert list(r.token_ids) == case["ids"], case["name"]


def test_generate_tiny_temperatures_and_wide_ranges(server):
    greedy = CASES["greedy"]
    for t in (1e-30, 1e-300, 5e-324):
        r = server.stub.Generate(pb.GenerateRequest(prompt=[pb.PromptItem(text=greedy["prompt"])],
                                                    max_new_tokens=len(greedy["ids"]), stop_at_eos=False,
                                                    temperature=t, seed=3), timeout=60)
        assert list(r.token_ids) == greedy["ids"], t  # the argmax, not a draw from NaN
    # start + length beyond int32: to the item's end, no overflow.
    r = server.stub.Generate(pb.GenerateRequest(prompt=[pb.PromptItem(text=PROMPT_A)], max_new_tokens=4,
                                                controls=[pb.AttentionControl(item=0, start=5, length=2**31 - 1,
                                                                              factor=0.0)]), timeout=60)
    assert r.usage.prompt_tokens > 0


def test_generate_explains_images_on_a_llava_model():
    """Also --max-image-tokens (16 image tokens per image here): reported by GetModelInfo,
    two images over it are INVALID_ARGUMENT naming the count and the limit."""
    folder = FIXTURES / "atman_cases" / "llava"
    cases = json.loads((folder / "cases.json").read_text())["generation"]
    s = Server("--max-image-tokens", "31", model=folder)
    try:
        info = s.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=60)
        assert info.supports_images and info.max_image_tokens == 31
        png = (folder / "images" / "wide_40x28.png").read_bytes()
        two = [pb.PromptItem(image=png), pb.PromptItem(text=" and "), pb.PromptItem(image=png)]
        for call, request in ((s.stub.Explain, pb.ExplainRequest(prompt=two, target=" red")),
                              (s.stub.Generate, pb.GenerateRequest(prompt=two, max_new_tokens=1))):
            with pytest.raises(grpc.RpcError) as e:
                call(request, timeout=60)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "2 images x 16 image tokens = 32 image tokens, over the limit of 31" in e.value.details()
        for case in cases:
            request = pb.GenerateRequest(max_new_tokens=len(case["ids"]), stop_at_eos=False,
                                         control_mode=pb.CONTROL_MODE_MULTIPLICATIVE if case["mode"] == "multiplicative"
                                         else pb.CONTROL_MODE_LOG_ADDITIVE)
            for item in case["prompt"]:
                if "image" in item:
                    request.prompt.add(image=(folder / "images" / item["image"]).read_bytes())
                else:
                    request.prompt.add(text=item["text"])
            for c in case["controls"]:
                request.controls.add(item=c["item"], factor=c["factor"])
            assert list(s.stub.Generate(request, timeout=120).token_ids) == case["ids"], case["name"]
    finally:
        assert s.stop() == 0


# ---- 4, 5, 7: the bad-input table ----------------------------------------------------------

def _png(width, height):
    import io
    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 10, 10)).save(buf, format="PNG")
    return buf.getvalue()


def E(prompt=None, target=" Paris", **options):
    """An ExplainRequest (prompt: PromptItems or one text)."""
    items = [pb.PromptItem(text=PROMPT_A)] if prompt is None else prompt
    request_id = options.pop("request_id", "")
    return pb.ExplainRequest(prompt=items, target=target, options=pb.ExplainOptions(**options),
                             request_id=request_id)


def G(prompt=None, **fields):
    items = [pb.PromptItem(text=PROMPT_A)] if prompt is None else prompt
    return pb.GenerateRequest(prompt=items, **fields)


T = pb.PromptItem
VALID_E = E().SerializeToString()
VALID_OPTIONS_TARGET = ld(2, b" Paris")


def bad_inputs():
    """(name, method, request: message or raw bytes, the start of the error message)."""
    nan, inf = float("nan"), float("inf")
    word = pb.TEXT_GRANULARITY_WORD
    cases = [
        ("empty prompt", "Explain", E(prompt=[]), "prompt: empty (no items)"),
        ("empty text item", "Explain", E(prompt=[T(text="")]), "prompt: empty (its items hold no tokens)"),
        ("unset item", "Explain", E(prompt=[T()]), "prompt[0]: no text, image or token_ids set"),
        ("unset third item", "Explain", E(prompt=[T(text="a"), T(text="b"), T()]), "prompt[2]: no text"),
        ("empty token ids only", "Explain", E(prompt=[T(token_ids=pb.TokenIds(ids=[]))]), "prompt: empty"),
        ("unknown text granularity", "Explain", E(text_granularity=99), "options.text_granularity: unknown value 99"),
        ("negative text granularity", "Explain", E(text_granularity=-1), "options.text_granularity: unknown value -1"),
        ("unknown image granularity", "Explain", E(image_granularity=42), "options.image_granularity: unknown value 42"),
        ("unknown control mode", "Explain", E(control_mode=7), "options.control_mode: unknown value 7"),
        ("unknown token overlap", "Explain", E(control_token_overlap=3), "options.control_token_overlap: unknown value 3"),
        ("unknown target granularity", "Explain", E(target_granularity=9), "options.target_granularity: unknown value 9"),
        ("unknown postprocessing", "Explain", E(postprocessing=9), "options.postprocessing: unknown value 9"),
        ("NaN factor", "Explain", E(control_factor=nan), "options.control_factor: nan"),
        ("inf factor", "Explain", E(control_factor=inf), "options.control_factor: inf"),
        ("-inf factor", "Explain", E(control_factor=-inf), "options.control_factor: -inf"),
        ("negative factor", "Explain", E(control_factor=-0.5), "options.control_factor: -0.5"),
        ("threshold 0", "Explain", E(contextual_control_threshold=0), "options.contextual_control_threshold: 0"),
        ("threshold > 1", "Explain", E(contextual_control_threshold=1.5), "options.contextual_control_threshold: 1.5"),
        ("threshold NaN", "Explain", E(contextual_control_threshold=nan), "options.contextual_control_threshold: nan"),
        ("threshold negative", "Explain", E(contextual_control_threshold=-0.2), "options.contextual_control_threshold"),
        ("layer = layers", "Explain", E(layers=[3]), "options.layers: 3 is outside [0, 3)"),
        ("layer negative", "Explain", E(layers=[0, -1]), "options.layers: -1 is outside"),
        ("layer 99", "Explain", E(layers=[99]), "options.layers: 99 is outside"),
        ("scored item = items", "Explain", E(scored_items=[1]),
         "options.scored_items[0]: 1 is outside [0, 1) (the prompt's items)"),
        ("scored item negative", "Explain", E(scored_items=[0, -3]), "options.scored_items[1]: -3 is outside"),
        ("scored item twice", "Explain", E(scored_items=[0, 0]), "options.scored_items[1]: item 0 is listed twice"),
        ("scored item without units", "Explain",
         E(prompt=[T(text="a b"), T(token_ids=pb.TokenIds(ids=[]))], scored_items=[1]),
         "units: the scored items (options.scored_items: 1) have no units to score"),
        ("auto_max_units 0", "Explain", E(auto_max_units=0), "options.auto_max_units: 0 < 1"),
        ("auto_max_units negative", "Explain", E(auto_max_units=-5), "options.auto_max_units: -5 < 1"),
        ("custom without delimiter", "Explain", E(text_granularity=pb.TEXT_GRANULARITY_CUSTOM),
         "options.custom_delimiter: empty"),
        ("grid without rows", "Explain", E(image_granularity=pb.IMAGE_GRANULARITY_GRID, image_cols=2),
         "options.image_rows, options.image_cols: 0 x 2"),
        ("grid without cols", "Explain", E(image_granularity=pb.IMAGE_GRANULARITY_GRID, image_rows=3),
         "options.image_rows, options.image_cols: 3 x 0"),
        ("max_new_tokens 0", "Explain", E(target="", max_new_tokens=0), "options.max_new_tokens: 0 is outside [1, 256]"),
        ("max_new_tokens negative", "Explain", E(target="", max_new_tokens=-1), "options.max_new_tokens: -1"),
        ("max_new_tokens huge", "Explain", E(target="", max_new_tokens=10**6), "options.max_new_tokens: 1000000"),
        ("max_forward_passes negative", "Explain", E(max_forward_passes=-1), "options.max_forward_passes: -1 < 0"),
        ("forward pass budget", "Explain", E(text_granularity=pb.TEXT_GRANULARITY_TOKEN, max_forward_passes=3),
         "options.max_forward_passes: the request needs"),
        ("token id out of range", "Explain", E(prompt=[T(token_ids=pb.TokenIds(ids=[1, 100000]))]),
         "prompt[0].token_ids.ids[1]: 100000 is outside the vocabulary"),
        ("negative token id", "Explain", E(prompt=[T(token_ids=pb.TokenIds(ids=[-1]))]),
         "prompt[0].token_ids.ids[0]: -1 is outside"),
        ("token id in second item", "Explain", E(prompt=[T(text="Tom"), T(token_ids=pb.TokenIds(ids=[2**31 - 1]))]),
         "prompt[1].token_ids.ids[0]"),
        ("image for a text-only model", "Explain", E(prompt=[T(image=_png(8, 8))]),
         "prompt[0].image: an image, but the loaded model (llama) is text-only"),
        ("corrupt image", "Explain", E(prompt=[T(text="Look"), T(image=b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)]),
         "prompt[1].image"),
        ("too many units", "Explain", E(prompt=[T(text=LONG)], text_granularity=pb.TEXT_GRANULARITY_TOKEN),
         "units: the request has"),
        ("prompt too long", "Explain", E(prompt=[T(text=LONG * 3)]), "prompt: "),
        ("target over the context", "Explain", E(target=LONG + LONG), "prompt + target: "),
        ("request_id too long", "Explain", E(request_id="x" * 129), "request_id: 129 bytes, more than the limit of 128"),
        ("request_id newline", "Explain", E(request_id="abc\nrequest r0 Explain OK"), "request_id: byte 3 (0x0a)"),
        ("request_id space", "Explain", E(request_id="a b"), "request_id: byte 1 (0x20)"),
        ("request_id NUL", "Explain", E(request_id="a\x00"), "request_id: byte 1 (0x00)"),
        ("request_id non-ASCII", "Explain", E(request_id="caf\u00e9"), "request_id: byte 3 (0xc3)"),
        ("request_id escape", "Explain", E(request_id="\x1b[31mred"), "request_id: byte 0 (0x1b)"),
        # Raw bytes: not a message, or a message with invalid UTF-8 in a string field.
        ("garbage bytes", "Explain", b"\xff\xff\xff\xff", "request: the 4 bytes received are not a valid atman.v1.ExplainRequest"),
        ("truncated varint", "Explain", b"\x08\x80", "request: "),
        ("length past the end", "Explain", b"\x0a\x64abc", "request: "),
        ("garbage inside options", "Explain", VALID_E + ld(3, b"\xff\xff\xff"), "request: "),
        ("end-group tag", "Explain", b"\x0c", "request: "),
        ("invalid UTF-8 text", "Explain", ld(1, ld(1, b"Tom \xff lives")) + VALID_OPTIONS_TARGET,
         "prompt[0].text: invalid UTF-8 at byte offset 4"),
        ("invalid UTF-8 second item", "Explain", ld(1, ld(1, b"ok")) + ld(1, ld(1, b"\xc3")) + VALID_OPTIONS_TARGET,
         "prompt[1].text: invalid UTF-8 at byte offset 0"),
        ("invalid UTF-8 target", "Explain", ld(1, ld(1, b"Tom")) + ld(2, b"\x80 Paris"),
         "target: invalid UTF-8 at byte offset 0"),
        ("invalid UTF-8 request_id", "Explain", ld(1, ld(1, b"Tom")) + ld(4, b"id\xfe"),
         "request_id: invalid UTF-8 at byte offset 2"),
        ("invalid UTF-8 delimiter", "Explain", ld(1, ld(1, b"Tom")) + ld(3, ld(2, b"\xf8")),
         "options.custom_delimiter: invalid UTF-8 at byte offset 0"),
        ("overlong encoding", "Explain", ld(1, ld(1, b"a\xc0\x80")), "prompt[0].text: invalid UTF-8 at byte offset 1"),
        ("surrogate", "Explain", ld(1, ld(1, b"\xed\xa0\x80")), "prompt[0].text: invalid UTF-8 at byte offset 0"),
        ("truncated sequence", "Explain", ld(1, ld(1, b"Paris\xe2\x82")), "prompt[0].text: invalid UTF-8 at byte offset 5"),
        ("no bytes at all", "Explain", b"", "prompt: empty (no items)"),
        ("wrong wire type is skipped", "Explain", b"\x08\x01", "prompt: empty (no items)"),
        # ExplainStream: the same conversion.
        ("stream garbage", "ExplainStream", b"\xff\xff", "request: "),
        ("stream invalid UTF-8", "ExplainStream", ld(1, ld(1, b"\xff")), "prompt[0].text: invalid UTF-8"),
        ("stream empty prompt", "ExplainStream", E(prompt=[]), "prompt: empty"),
        ("stream unknown mode", "ExplainStream", E(control_mode=5), "options.control_mode: unknown value 5"),
        # Generate.
        ("generate empty prompt", "Generate", G(prompt=[]), "prompt: empty"),
        ("generate max_new_tokens 0", "Generate", G(max_new_tokens=0), "max_new_tokens: 0 is outside [1, 256]"),
        ("generate max_new_tokens 1000", "Generate", G(max_new_tokens=1000), "max_new_tokens: 1000 is outside"),
        ("generate temperature NaN", "Generate", G(temperature=nan), "temperature: nan"),
        ("generate temperature negative", "Generate", G(temperature=-1), "temperature: -1"),
        ("generate temperature inf", "Generate", G(temperature=inf), "temperature: inf"),
        ("generate top_k negative", "Generate", G(top_k=-1), "top_k: -1 < 0"),
        ("generate top_p > 1", "Generate", G(top_p=1.5), "top_p: 1.5 is outside [0, 1]"),
        ("generate top_p NaN", "Generate", G(top_p=nan), "top_p: nan"),
        ("generate top_p negative", "Generate", G(top_p=-0.1), "top_p: -0.1"),
        ("generate control item", "Generate", G(controls=[pb.AttentionControl(item=5, factor=0.5)]),
         "controls[0].item: 5 is not a prompt item index"),
        ("generate control item negative", "Generate", G(controls=[pb.AttentionControl(item=-1, factor=0.5)]),
         "controls[0].item: -1"),
        ("generate control factor NaN", "Generate",
         G(controls=[pb.AttentionControl(item=0, factor=0.5), pb.AttentionControl(item=0, factor=nan)]),
         "controls[1].factor: nan"),
        ("generate control factor negative", "Generate", G(controls=[pb.AttentionControl(item=0, factor=-2)]),
         "controls[0].factor: -2"),
        ("generate control start negative", "Generate", G(controls=[pb.AttentionControl(item=0, start=-4, factor=0.5)]),
         "controls[0].start: -4 < 0"),
        ("generate control length negative", "Generate", G(controls=[pb.AttentionControl(item=0, length=-1, factor=0.5)]),
         "controls[0].length: -1 < 0"),
        ("generate unknown control mode", "Generate", G(control_mode=9), "control_mode: unknown value 9"),
        ("generate unknown token overlap", "Generate", G(control_token_overlap=7), "control_token_overlap: unknown value 7"),
        ("generate layer outside", "Generate", G(layers=[3]), "layers[0]: 3 is outside [0, 3)"),
        ("generate image on a text-only model", "Generate", G(prompt=[T(image=_png(8, 8))]), "prompt[0].image"),
        ("generate token id out of range", "Generate", G(prompt=[T(token_ids=pb.TokenIds(ids=[100000]))]),
         "prompt[0].token_ids.ids[0]"),
        ("generate unset item", "Generate", G(prompt=[T(text="a"), T()]), "prompt[1]: no text"),
        ("generate request_id newline", "Generate", G(request_id="x\ny"), "request_id: byte 1 (0x0a)"),
        ("generate request_id too long", "Generate", G(request_id="g" * 500), "request_id: 500 bytes"),
        ("generate garbage", "Generate", b"\xff\x00\xff", "request: the 3 bytes received are not a valid atman.v1.GenerateRequest"),
        ("generate invalid UTF-8", "Generate", ld(1, ld(1, b"a")) + ld(1, ld(1, b"b\xff")), "prompt[1].text: invalid UTF-8"),
        ("generate prompt too long", "Generate", G(prompt=[T(text=LONG * 3)]), "prompt: "),
        # Tokenize, GetModelInfo.
        ("tokenize garbage", "Tokenize", b"\xff", "request: "),
        ("tokenize invalid UTF-8", "Tokenize", ld(1, b"ok \xff"), "text: invalid UTF-8 at byte offset 3"),
        ("tokenize too long", "Tokenize", pb.TokenizeRequest(text=LONG * 3), "text: "),
        ("model info garbage", "GetModelInfo", b"\x0a\x05ab", "request: "),
    ]
    return cases


BAD = bad_inputs()


def test_bad_input_table_has_at_least_80_cases():
    assert len(BAD) >= 80
    assert len({name for name, *_ in BAD}) == len(BAD)


@pytest.mark.parametrize("name,method,request_,prefix", BAD, ids=[b[0] for b in BAD])
def test_bad_inputs_get_invalid_argument_naming_the_field(server, name, method, request_, prefix):
    body = request_ if isinstance(request_, bytes) else request_.SerializeToString()
    before = server.count(method, "INVALID_ARGUMENT")
    with pytest.raises(grpc.RpcError) as e:
        raw_call(server, method, body)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (name, e.value.code(), e.value.details())
    assert e.value.details().startswith(prefix), (name, e.value.details())
    # Counted and logged like any other call; and the server serves on.
    assert server.count(method, "INVALID_ARGUMENT") == before + 1, name
    assert server.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=60).vocab_size


def test_unparseable_requests_are_logged(server):
    before = server.output().count(" Explain INVALID_ARGUMENT ")
    with pytest.raises(grpc.RpcError):
        raw_unary(server, "Explain", b"\xff\xff\xff\xff")
    lines = [l for l in server.output().splitlines() if " Explain INVALID_ARGUMENT " in l]
    assert len(lines) == before + 1
    assert 'error="request: the 4 bytes received are not a valid atman.v1.ExplainRequest message"' in lines[-1]


def test_request_ids_cannot_forge_log_lines(server):
    forged = "abc\n2026-01-01T00:00:00.000 info request FORGED Explain OK 0.0001s peer=ipv4:1.2.3.4:5"
    for call in (lambda: server.stub.Explain(E(request_id=forged), timeout=60),
                 lambda: server.stub.Generate(G(request_id=forged), timeout=60)):
        with pytest.raises(grpc.RpcError) as e:
            call()
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "FORGED" not in server.output()
    # Every line the server wrote is one of its own: a timestamp, a level, a message.
    for line in server.output().splitlines():
        assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3} \w+ |[EIWD]\d{4} ", line), line
    # A valid id is echoed and logged as sent.
    ok = "tenant-7/job_42:attempt=1+retry@eu.west"
    assert server.stub.Explain(E(request_id=ok), timeout=60).request_id == ok
    assert server.stub.Generate(G(request_id=ok, max_new_tokens=2), timeout=60).request_id == ok
    assert f"request {ok} Generate OK" in server.output()


# ---- 8. Calls arriving during shutdown ---------------------------------------------------------

def test_calls_arriving_during_shutdown_are_unavailable_and_counted():
    """Clients keep calling through a SIGTERM, retrying UNAVAILABLE a few times each before they
    give up on this replica (as a client with a retry policy does): every call they make is OK or
    UNAVAILABLE, none CANCELLED, and the server logged every call it answered."""
    s = Server("--test-hooks", "true", "--max-batch-rows", "1", "--max-queue-delay-ms", "0",
               "--drain-grace-seconds", "600", "--drain-delay-seconds", "0")
    s.hold()
    in_flight = s.stub.Explain.future(big_request(), timeout=600)
    s.wait_metrics(lambda m: m["atman_queued_requests"] == 1, "a queued request")
    codes, lock = [], threading.Lock()
    seen_unavailable = threading.Barrier(5)

    def client():
        channel = grpc.insecure_channel(s.address)
        stub = pb_grpc.AtmanStub(channel)
        unavailable = 0
        while unavailable < 3:
            try:
                stub.Tokenize(pb.TokenizeRequest(text="Tom"), timeout=60)
                code = "OK"
            except grpc.RpcError as e:
                code = e.code().name
            with lock:
                codes.append(code)
            if code == "UNAVAILABLE":
                unavailable += 1
            elif code != "OK":
                break
        channel.close()
        seen_unavailable.wait()

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    s.proc.send_signal(signal.SIGTERM)
    seen_unavailable.wait()  # every client has had its UNAVAILABLEs and stopped
    for t in threads:
        t.join()
    s.release()
    assert in_flight.result().explanations
    assert s.proc.wait(timeout=600) == 0, s.output()
    assert set(codes) <= {"OK", "UNAVAILABLE"}, codes
    logged = len(re.findall(r" Tokenize (?:OK|UNAVAILABLE) ", s.output()))
    assert logged == len(codes)
    s.stop()
