"""atman-server against clients that are not ours (Python grpcio with stubs generated from the
proto, and a reflection-only client), on 127.0.0.1: the same scores as the engine computes in
process, concurrency, cancellation, deadlines, overload, drain on SIGTERM, OOM split, TLS, mTLS,
tokens, metrics. Bad inputs and the hardening findings: test_hardening.py."""
import concurrent.futures
import json
import os
import signal
import subprocess
import tempfile
import threading
import urllib.error
import urllib.request
from io import BytesIO
from pathlib import Path

import grpc
import pytest
from PIL import Image

from conftest import (FIXTURES, GRANULARITY, MODEL, Server, assert_scores_close, engine_scores, flat_scores,
                      pb, pb_grpc, to_proto)

PROMPT_A = "Tom lives in Rome. Anna lives in Paris.\n\nWhere does Anna live? She lives in"
PROMPT_B = "Rivers flow to the sea; mountains rise to the sky; people walk between them"
LONG = " ".join(["The quick brown fox jumps over the lazy dog."] * 7)  # about 220 tokens

REQUESTS = [
    {"prompt": [{"text": PROMPT_A}], "target": " Paris", "text_granularity": "token"},
    {"prompt": [{"text": PROMPT_A}], "target": " Paris", "text_granularity": "word"},
    {"prompt": [{"text": PROMPT_B}], "target": " the sea", "text_granularity": "sentence"},
    {"prompt": [{"text": PROMPT_B}], "target": "", "text_granularity": "auto"},
    {"prompt": [{"text": "Tom lives in"}, {"token_ids": [5, 17, 42]}], "target": " Rome",
     "text_granularity": "token", "control_factor": 0.0},
]


def big_request(n_copies=1):
    """About 200 token units over about 220 positions."""
    return pb.ExplainRequest(prompt=[pb.PromptItem(text=LONG)], target=" It was not amused!",
                             options=pb.ExplainOptions(text_granularity=pb.TEXT_GRANULARITY_TOKEN))


def test_scores_equal_the_engine_in_process(server):
    expected = engine_scores(REQUESTS)
    for r, e in zip(REQUESTS, expected):
        response = server.stub.Explain(to_proto(r), timeout=60)
        assert response.target == e["target"]
        assert_scores_close(flat_scores(response), e["scores"], str(r))
        assert response.usage.forward_passes >= 2
        assert response.usage.perturbed_rows == e["units"]
        assert response.usage.positions_computed > 0


def test_text_spans_are_code_points_of_the_item(server):
    text = "Tōm lives in Rome."
    r = server.stub.Explain(pb.ExplainRequest(prompt=[pb.PromptItem(text=text)], target=" Paris",
                                              options=pb.ExplainOptions(text_granularity=pb.TEXT_GRANULARITY_WORD)))
    spans = [(s.start, s.length) for s in r.explanations[0].items[0].text]
    assert [text[a:a + n] for a, n in spans] == ["Tōm", "lives", "in", "Rome."]


def test_relevance_tensor_on_request(server):
    req = to_proto(REQUESTS[0])
    req.options.return_relevance_tensor = True
    r = server.stub.Explain(req)
    m, n = r.unit_relevance.shape
    assert m == len(r.target_token_ids) and n == len(flat_scores(r))
    # One unperturbed log-probability per target token (checked against the oracle in C++).
    assert len(r.target_log_probs) == m and all(-50 < lp <= 0 for lp in r.target_log_probs)
    assert len(r.unit_relevance.values) == m * n
    # complete granularity, no postprocessing: the score is the sum over target tokens
    for k, score in enumerate(flat_scores(r)):
        assert abs(sum(r.unit_relevance.values[j * n + k] for j in range(m)) - score) < 1e-4


def test_token_granularity_rows_list_only_their_units(server):
    """TOKEN granularity: explanation j says which target token it explains and lists the prompt
    units and the target tokens 0 .. j-1 only (a later target token is not a unit of j: absent,
    not scored 0); its scores are the engine's and the relevance tensor's, where the later
    target tokens' entries are 0."""
    r = {"prompt": [{"text": PROMPT_A}], "target": " Paris. Yes", "text_granularity": "word",
         "target_granularity": "token"}
    expected = engine_scores([r])[0]
    req = to_proto(r)
    req.options.return_relevance_tensor = True
    response = server.stub.Explain(req, timeout=60)
    m = len(response.target_token_ids)
    assert m >= 3 and len(response.explanations) == m
    prompt_units = sum(len(item.text) for item in response.explanations[0].items)
    assert list(response.unit_relevance.shape) == [m, prompt_units + m - 1]
    n = prompt_units + m - 1
    values = response.unit_relevance.values
    largest = max(abs(v) for v in values)
    for j, e in enumerate(response.explanations):
        assert e.HasField("target_token_index") and e.target_token_index == j
        assert sum(len(item.text) for item in e.items) == prompt_units
        assert len(e.target) == j, f"explanation {j} lists {len(e.target)} target units"
        for i, s in enumerate(e.target):
            earlier = response.explanations[i]
            assert (s.start, s.length) == (earlier.target_start, earlier.target_length)
            assert abs(s.score - values[j * n + prompt_units + i]) <= 1e-5 * largest
        assert all(values[j * n + prompt_units + i] == 0 for i in range(j, m - 1))
    assert expected["row_units"] == [prompt_units + j for j in range(m)]
    assert_scores_close(flat_scores(response), expected["scores"], "token granularity")
    # COMPLETE: one explanation of no target token, without target units.
    complete = server.stub.Explain(to_proto({**r, "target_granularity": "complete"}), timeout=60)
    assert len(complete.explanations) == 1
    assert not complete.explanations[0].HasField("target_token_index")
    assert len(complete.explanations[0].target) == 0


def test_scored_items_get_the_scores_of_the_whole_explanation(server):
    """options.scored_items: only the listed items are scored (the others absent), with the
    scores the whole-prompt explanation gives them, for fewer perturbed rows; an index outside
    the prompt is INVALID_ARGUMENT naming options.scored_items[k]."""
    prompt = [pb.PromptItem(text="Tom lives in Rome."), pb.PromptItem(text=" Anna lives in Paris."),
              pb.PromptItem(token_ids=pb.TokenIds(ids=[5, 17, 42])),
              pb.PromptItem(text=" Where does Anna live? She lives in")]
    options = pb.ExplainOptions(text_granularity=pb.TEXT_GRANULARITY_TOKEN)
    whole = server.stub.Explain(pb.ExplainRequest(prompt=prompt, target=" Paris",
                                                  options=options), timeout=60)
    options.scored_items.extend([2, 1])
    part = server.stub.Explain(pb.ExplainRequest(prompt=prompt, target=" Paris",
                                                 options=options), timeout=60)
    by_item = {it.item: it for it in whole.explanations[0].items}
    assert [it.item for it in part.explanations[0].items] == [1, 2]
    largest = max(abs(s) for s in flat_scores(whole))
    for it in part.explanations[0].items:
        ref = by_item[it.item]
        assert [(s.start, s.length) for s in it.text] == [(s.start, s.length) for s in ref.text]
        assert [s.token_index for s in it.tokens] == [s.token_index for s in ref.tokens]
        for got, want in zip(list(it.text) + list(it.tokens), list(ref.text) + list(ref.tokens)):
            assert abs(got.score - want.score) <= 1e-4 * largest
    assert part.usage.perturbed_rows == len(by_item[1].text) + 3 < whole.usage.perturbed_rows
    options.scored_items.append(4)
    with pytest.raises(grpc.RpcError) as e:
        server.stub.Explain(pb.ExplainRequest(prompt=prompt, target=" Paris", options=options),
                            timeout=60)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.details().startswith(
        "options.scored_items[2]: 4 is outside [0, 4) (the prompt's items)"), e.value.details()


def test_stream_sends_progress_then_the_result(server):
    events = list(server.stub.ExplainStream(big_request(), timeout=60))
    assert events[-1].WhichOneof("event") == "result"
    progress = [e.progress for e in events[:-1]]
    assert all(e.WhichOneof("event") == "progress" for e in events[:-1])
    assert progress and progress[0].rows_total == events[-1].result.usage.perturbed_rows
    done = [p.rows_done for p in progress]
    assert done == sorted(done)
    unary = server.stub.Explain(big_request(), timeout=60)
    assert_scores_close(flat_scores(events[-1].result), flat_scores(unary), "stream vs unary")


def test_a_reflection_only_client_gets_the_engine_scores(server):
    """No generated code: the schema comes from the server's reflection service."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
    stub = reflection_pb2_grpc.ServerReflectionStub(server.channel)
    services = next(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    names = [s.name for s in services.list_services_response.service]
    assert "atman.v1.Atman" in names and "grpc.health.v1.Health" in names
    reply = next(stub.ServerReflectionInfo(iter([
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="atman.v1.Atman")])))
    pool = descriptor_pool.DescriptorPool()
    for raw in reply.file_descriptor_response.file_descriptor_proto:
        pool.Add(descriptor_pb2.FileDescriptorProto.FromString(raw))
    method = pool.FindServiceByName("atman.v1.Atman").FindMethodByName("Explain")
    Request = message_factory.GetMessageClass(method.input_type)
    Response = message_factory.GetMessageClass(method.output_type)
    req = Request()
    req.prompt.add(text=PROMPT_A)
    req.target = " Paris"
    req.options.text_granularity = 1  # TOKEN
    call = server.channel.unary_unary("/atman.v1.Atman/Explain", request_serializer=Request.SerializeToString,
                                      response_deserializer=Response.FromString)
    r = call(req, timeout=60)
    scores = [s.score for e in r.explanations for i in e.items for s in i.text]
    assert_scores_close(scores, engine_scores([REQUESTS[0]])[0]["scores"], "reflection")


def test_sixteen_concurrent_clients_get_their_own_results(server):
    words = ["Rome", "Paris", "Berlin", "Madrid"]
    requests = []
    for i in range(16):
        requests.append({"prompt": [{"text": f"{PROMPT_A} {words[i % 4]}" + " again" * (i // 4)}],
                         "target": f" {words[(i + 1) % 4]}", "text_granularity": ["token", "word"][i % 2]})
    expected = engine_scores(requests)
    barrier = threading.Barrier(16)

    def client(i):
        channel = grpc.insecure_channel(server.address)
        stub = pb_grpc.AtmanStub(channel)
        barrier.wait()
        r = stub.Explain(to_proto(requests[i]), timeout=120)
        channel.close()
        return r

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(client, range(16)))
    for i, r in enumerate(results):
        assert_scores_close(flat_scores(r), expected[i]["scores"], f"client {i}")


@pytest.fixture(scope="module")
def held_server():
    """One row per batch, one worker, test hooks on: tests hold it to keep work queued."""
    s = Server("--max-batch-rows", "1", "--max-queue-delay-ms", "0", "--test-hooks", "true")
    yield s
    assert s.stop() == 0, s.output()


def test_cancellation_drops_the_request(held_server):
    server = held_server
    server.hold()
    before = server.count("Explain", "CANCELLED")
    futures = [server.stub.Explain.future(big_request(), timeout=60) for _ in range(4)]
    # All four are in the batcher (held: none can finish) before any is cancelled.
    server.wait_metrics(lambda m: m["atman_queued_requests"] == 4, "four queued requests")
    for f in futures:
        f.cancel()
    for f in futures:
        assert f.cancelled()
    # The server saw the cancellations: its queue is empty again although nothing ran.
    m = server.idle()
    assert server.count("Explain", "CANCELLED") == before + 4
    assert m["atman_test_hold"] == 1
    server.release()
    assert server.stub.Explain(to_proto(REQUESTS[0]), timeout=60).explanations


def test_deadline_exceeded(held_server):
    server = held_server
    server.hold()
    before = server.count("Explain", "DEADLINE_EXCEEDED")
    with pytest.raises(grpc.RpcError) as e:
        server.stub.Explain(big_request(), timeout=0.5)
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # The server dropped the work by itself (still held: nothing ran it to completion).
    server.wait_metrics(lambda m: m.get('atman_requests_total{code="DEADLINE_EXCEEDED",method="Explain"}', 0)
                        == before + 1, "the server-side deadline")
    server.idle()
    server.release()
    assert server.stub.Explain(to_proto(REQUESTS[0]), timeout=60).explanations


def test_overload_is_resource_exhausted():
    s = Server("--max-queued-requests", "1", "--max-batch-rows", "1", "--max-queue-delay-ms", "0",
               "--test-hooks", "true")
    try:
        s.hold()
        first = s.stub.Explain.future(big_request(), timeout=120)
        s.wait_metrics(lambda m: m["atman_inflight_requests"] == 1, "the first call admitted")
        for call in (lambda: s.stub.Explain(to_proto(REQUESTS[0]), timeout=60),
                     lambda: list(s.stub.ExplainStream(to_proto(REQUESTS[0]), timeout=60)),
                     lambda: s.stub.Generate(pb.GenerateRequest(prompt=[pb.PromptItem(text="Tom")]), timeout=60)):
            with pytest.raises(grpc.RpcError) as e:
                call()
            assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "max_queued_requests" in e.value.details()
        # Tokenize and GetModelInfo do not queue.
        assert s.stub.Tokenize(pb.TokenizeRequest(text="Tom"), timeout=60).tokens
        s.release()
        assert first.result().explanations
        assert s.stub.Explain(to_proto(REQUESTS[0]), timeout=60).explanations
    finally:
        assert s.stop() == 0


def test_sigterm_drains_in_flight_requests_and_exits_zero():
    # --drain-delay-seconds 0: new calls are refused right after NOT_SERVING (the drain test
    # of tests/deploy covers the delay, with clients that move away).
    s = Server("--max-batch-rows", "1", "--max-queue-delay-ms", "0", "--drain-grace-seconds", "600",
               "--drain-delay-seconds", "0", "--test-hooks", "true")
    s.hold()
    in_flight = [s.stub.Explain.future(big_request(), timeout=600) for _ in range(2)]
    s.wait_metrics(lambda m: m["atman_queued_requests"] == 2, "two queued requests")
    s.proc.send_signal(signal.SIGTERM)
    s.wait_metrics(lambda m: m["atman_ready"] == 0, "NOT_SERVING")
    # Once the delay is over, new calls are UNAVAILABLE (retryable elsewhere).
    while True:
        try:
            s.stub.Tokenize(pb.TokenizeRequest(text="Tom"), timeout=30)
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.UNAVAILABLE
            break
    with pytest.raises(grpc.RpcError) as e:
        s.stub.Explain(to_proto(REQUESTS[0]), timeout=30)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    # The held calls are still in flight (the drain waits for them) until the hold ends.
    assert s.proc.poll() is None and not any(f.done() for f in in_flight)
    s.release()
    for f in in_flight:
        assert f.result().explanations  # finished, not cut
    assert s.proc.wait(timeout=600) == 0, s.output()
    assert "drained" in s.output()
    s.stop()


def test_out_of_memory_splits_and_still_succeeds():
    s = Server("--simulated-device-bytes", "300000")
    try:
        expected = engine_scores(REQUESTS[:1])[0]["scores"]
        r = s.stub.Explain(to_proto(REQUESTS[0]), timeout=60)
        assert_scores_close(flat_scores(r), expected, "after OOM split")
        metrics = s.metrics()
        assert metrics["atman_oom_retries_total"] > 0
        assert metrics['atman_memory_budget_bytes{device="cpu"}'] > 0
    finally:
        assert s.stop() == 0


def _certs(tmp: Path):
    def run(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True)
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=atman-test-ca",
        "-keyout", str(tmp / "ca.key"), "-out", str(tmp / "ca.pem"))
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1,DNS:localhost"), ("client", "extendedKeyUsage=clientAuth")):
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", str(tmp / f"{name}.key"),
            "-out", str(tmp / f"{name}.csr"))
        (tmp / f"{name}.ext").write_text(ext + "\n")
        run("x509", "-req", "-in", str(tmp / f"{name}.csr"), "-CA", str(tmp / "ca.pem"), "-CAkey", str(tmp / "ca.key"),
            "-CAcreateserial", "-days", "1", "-extfile", str(tmp / f"{name}.ext"), "-out", str(tmp / f"{name}.pem"))
    return {p.stem + p.suffix: p.read_bytes() for p in tmp.iterdir()}


def test_tls_and_mutual_tls():
    tmp = Path(tempfile.mkdtemp(prefix="atman-certs-"))
    c = _certs(tmp)
    server_creds = grpc.ssl_channel_credentials(root_certificates=c["ca.pem"])
    s = Server("--tls-cert", str(tmp / "server.pem"), "--tls-key", str(tmp / "server.key"),
               credentials=server_creds)
    try:
        assert s.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10).vocab_size > 0
        with pytest.raises(grpc.RpcError) as e:  # plaintext to a TLS port
            pb_grpc.AtmanStub(grpc.insecure_channel(s.address)).GetModelInfo(pb.GetModelInfoRequest(), timeout=5)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        assert s.stop() == 0

    mutual = grpc.ssl_channel_credentials(root_certificates=c["ca.pem"], private_key=c["client.key"],
                                          certificate_chain=c["client.pem"])
    s = Server("--tls-cert", str(tmp / "server.pem"), "--tls-key", str(tmp / "server.key"),
               "--tls-client-ca", str(tmp / "ca.pem"), credentials=mutual)
    try:
        assert s.stub.Explain(to_proto(REQUESTS[0]), timeout=60).explanations
        with pytest.raises(grpc.RpcError) as e:  # TLS without a client certificate
            pb_grpc.AtmanStub(grpc.secure_channel(s.address, server_creds)).GetModelInfo(
                pb.GetModelInfoRequest(), timeout=5)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        assert s.stop() == 0


def test_bearer_tokens():
    tokens = Path(tempfile.mkdtemp()) / "tokens"
    tokens.write_text("# comment\nfile-token-1\n")
    s = Server("--auth-tokens-file", str(tokens), env={"ATMAN_AUTH_TOKENS": "env-token-a, env-token-b"})
    try:
        req = pb.GetModelInfoRequest()
        for metadata in ([], [("authorization", "Bearer nope")], [("authorization", "file-token-1")],
                         [("authorization", "Bearer file-token-")]):
            with pytest.raises(grpc.RpcError) as e:
                s.stub.GetModelInfo(req, metadata=metadata, timeout=10)
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED, metadata
        for token in ("file-token-1", "env-token-a", "env-token-b"):
            assert s.stub.GetModelInfo(req, metadata=[("authorization", f"Bearer {token}")], timeout=10).vocab_size
        r = s.stub.Explain(to_proto(REQUESTS[0]), metadata=[("authorization", "Bearer env-token-a")], timeout=60)
        assert r.explanations
    finally:
        assert s.stop() == 0


def test_auth_without_a_token_refuses_to_start():
    tokens = Path(tempfile.mkdtemp()) / "tokens"
    tokens.write_text("# no token yet\n\n")
    for flags, env, message in (
            (("--auth-tokens-file", tokens), {}, f"--auth-tokens-file {tokens}: holds no token; "),
            ((), {"ATMAN_AUTH_TOKENS": " , "}, "env ATMAN_AUTH_TOKENS: holds no token; ")):
        s = Server(*flags, env=env, wait=False)
        try:
            assert s.proc.wait(timeout=60) == 2, s.output()
            assert s.output().startswith(f"atman-server: {message}refusing to start without auth"), s.output()
        finally:
            s.stop()


def test_metrics_host_binds_the_metrics_endpoint():
    # Every 127.x.y.z address is the loopback interface: gRPC on one, metrics on another.
    s = Server("--metrics-host", "127.0.0.2")
    try:
        text = urllib.request.urlopen(f"http://127.0.0.2:{s.metrics_port}/metrics", timeout=10).read().decode()
        assert '\natman_build_info{version="0.1.0"} 1\n' in text
        with pytest.raises(urllib.error.URLError) as e:
            urllib.request.urlopen(f"http://127.0.0.1:{s.metrics_port}/metrics", timeout=10)
        assert isinstance(e.value.reason, ConnectionRefusedError), e.value
    finally:
        assert s.stop() == 0

def test_an_ipv6_host_serves_grpc_and_metrics():
    # --host ::1: gRPC on [::1] and, with no --metrics-host, /metrics there too (not on 127.0.0.1).
    s = Server("--host", "::1", wait=False)
    try:
        s.channel = grpc.insecure_channel(f"[::1]:{s.port}")
        s.wait_serving()
        text = urllib.request.urlopen(f"http://[::1]:{s.metrics_port}/metrics", timeout=10).read().decode()
        assert '\natman_build_info{version="0.1.0"} 1\n' in text
        with pytest.raises(urllib.error.URLError) as e:
            urllib.request.urlopen(f"http://127.0.0.1:{s.metrics_port}/metrics", timeout=10)
        assert isinstance(e.value.reason, ConnectionRefusedError), e.value
        assert f"SERVING on [::1]:{s.port}" in s.output() and f"metrics on [::1]:{s.metrics_port}" in s.output()
    finally:
        assert s.stop() == 0, s.output()


def test_metrics_move_after_requests(server):
    before = server.metrics()
    n = 3
    for _ in range(n):
        server.stub.Explain(to_proto(REQUESTS[0]), timeout=60)
    after = server.idle()
    ok = 'atman_requests_total{code="OK",method="Explain"}'
    assert after[ok] - before.get(ok, 0) == n
    assert after['atman_request_duration_seconds_count{method="Explain"}'] - \
        before.get('atman_request_duration_seconds_count{method="Explain"}', 0) == n
    assert after["atman_queue_wait_seconds_count"] - before.get("atman_queue_wait_seconds_count", 0) == n
    assert after["atman_forward_passes_total"] - before["atman_forward_passes_total"] >= 2 * n
    assert after["atman_positions_computed_total"] > before["atman_positions_computed_total"]
    assert after["atman_batch_rows_count"] > before.get("atman_batch_rows_count", 0)
    assert after["atman_batch_rows_sum"] - before.get("atman_batch_rows_sum", 0) >= n * 20  # ~24 units each
    assert after['atman_device_memory_allocated_bytes{device="cpu"}'] >= 0  # idle: maybe nothing
    assert after['atman_device_memory_peak_bytes{device="cpu"}'] > 0
    assert after['atman_device_memory_reserved_bytes{device="cpu"}'] > 0
    assert after['atman_device_memory_peak_bytes{device="cpu"}'] > 0
    assert after["atman_ready"] == 1
    assert after['atman_build_info{version="0.1.0"}'] == 1
    assert after["atman_inflight_requests"] == 0 and after["atman_queued_requests"] == 0
    assert after["atman_queue_depth_rows"] == 0 and after["atman_oom_retries_total"] == 0


def test_generate_tokenize_and_model_info(server):
    info = server.stub.GetModelInfo(pb.GetModelInfoRequest())
    assert info.model_type == "llama" and info.num_layers == 3 and info.max_units == 1024
    assert not info.supports_images
    import json
    greedy = json.loads((MODEL / "cases.json").read_text())["greedy"]
    r = server.stub.Generate(pb.GenerateRequest(prompt=[pb.PromptItem(text=greedy["prompt"])],
                                                max_new_tokens=len(greedy["ids"]), stop_at_eos=False))
    assert list(r.token_ids) == greedy["ids"]  # transformers' greedy generate
    sampled = [server.stub.Generate(pb.GenerateRequest(prompt=[pb.PromptItem(text=PROMPT_A)], max_new_tokens=8,
                                                       temperature=1.0, top_k=20, seed=7, stop_at_eos=False))
               for _ in range(2)]
    assert sampled[0].token_ids == sampled[1].token_ids and len(sampled[0].token_ids) == 8
    steered = server.stub.Generate(pb.GenerateRequest(
        prompt=[pb.PromptItem(text=PROMPT_A)], max_new_tokens=8, stop_at_eos=False,
        controls=[pb.AttentionControl(item=0, start=0, length=18, factor=0.0)]))
    assert len(steered.token_ids) == 8
    t = server.stub.Tokenize(pb.TokenizeRequest(text="Tom lives"))
    assert t.tokens[0].special and [x.text for x in t.tokens if not x.special]
    with pytest.raises(grpc.RpcError) as e:
        server.stub.Generate(pb.GenerateRequest(prompt=[pb.PromptItem(text=PROMPT_A)], temperature=float("nan")))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "temperature" in e.value.details()


def test_llava_next_images_are_explained_like_the_reference():
    """A LLaVA-NeXT model (anyres: a base view and tiles) behind the server: GetModelInfo says
    llava_next with images, and an image's units (regions grouping base-view and tile tokens)
    come back as rectangles of the original image with the Python reference's scores."""
    folder = FIXTURES / "atman_cases" / "llava-next"
    case = next(c for c in json.loads((folder / "cases.json").read_text())["cases"]
                if c["name"] == "image-grid-suppression")
    s = Server(model=folder)
    try:
        info = s.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=30)
        response = s.stub.Explain(to_proto_with_images(case, folder), timeout=120)
    finally:
        s.stop()
    assert info.model_type == "llava_next" and info.supports_images
    assert len(response.explanations[0].items[0].image) == 6  # a 2 x 3 grid of regions
    assert_explained_like_the_reference(response, case, "llava-next image-grid-suppression")


IMAGE_GRANULARITY = {"native": pb.IMAGE_GRANULARITY_NATIVE, "6x6": pb.IMAGE_GRANULARITY_TILES_6X6,
                     "3x3": pb.IMAGE_GRANULARITY_TILES_3X3, "1": pb.IMAGE_GRANULARITY_WHOLE,
                     "grid": pb.IMAGE_GRANULARITY_GRID}


def to_proto_with_images(case: dict, folder) -> "pb.ExplainRequest":
    """A cases.json case (tests/oracle) with image items as the bytes of folder/images/<name>
    and its options (granularities, grid, mode, factor, threshold) as the proto's."""
    req = pb.ExplainRequest(target=case["target"])
    for item in case["prompt"]:
        if "image" in item:
            req.prompt.add(image=(folder / "images" / item["image"]).read_bytes())
        else:
            req.prompt.add(text=item["text"])
    o = case["options"]
    req.options.text_granularity = GRANULARITY[o.get("text_granularity", "auto")]
    req.options.image_granularity = IMAGE_GRANULARITY[o.get("image_granularity", "native")]
    if "image_rows" in o:
        req.options.image_rows, req.options.image_cols = o["image_rows"], o["image_cols"]
    if o.get("mode") == "multiplicative":
        req.options.control_mode = pb.CONTROL_MODE_MULTIPLICATIVE
    if "control_factor" in o:
        req.options.control_factor = o["control_factor"]
    if "contextual_control_threshold" in o:
        req.options.contextual_control_threshold = o["contextual_control_threshold"]
    assert o.get("target_granularity", "complete") == "complete", "not converted here"
    return req


def assert_explained_like_the_reference(response, case: dict, what: str) -> None:
    """Every image unit's rectangle (left, top, width, height) within 1e-9 of the reference's
    and every score within 1e-4 of its largest, in the reference's unit order (the engine
    orders units by position, which is prompt order here)."""
    expected = case["expected"]
    ours = {item.item: item for item in response.explanations[0].items}
    rects = [[r.left, r.top, r.width, r.height] for i in sorted(ours) for r in ours[i].image]
    reference_rects = [u["rect"] for u in expected["units"] if u["kind"] == "image"]
    assert len(rects) == len(reference_rects), what
    for got, want in zip(rects, reference_rects):
        assert got == pytest.approx(want, abs=1e-9), what
    flat = []
    for i in range(len(case["prompt"])):
        if i in ours:
            flat += [x.score for x in ours[i].text] + [x.score for x in ours[i].image]
    assert_scores_close(flat, expected["scores"][0], what)


QWEN_FIXTURES = FIXTURES / "qwen2_vl_atman_cases"


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_qwen2_vl_images_are_explained_like_the_reference(family):
    """A Qwen2-VL / Qwen2.5-VL model (images at their own resolution, smart_resize to 28 px
    merged tokens, M-RoPE) behind the server: GetModelInfo names the family with images, and
    native units (one per merged token: 3 x 3 for the 40 x 28 image resized to 84 x 84) and
    3x3 regions of two images come back as rectangles of the original image with the Python
    reference's scores."""
    folder = QWEN_FIXTURES / family
    cases = {c["name"]: c for c in json.loads((folder / "cases.json").read_text())["cases"]}
    names = ["image-native", "images-3x3-multiplicative"]
    s = Server(model=folder)
    try:
        info = s.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=30)
        responses = {n: s.stub.Explain(to_proto_with_images(cases[n], folder), timeout=120) for n in names}
    finally:
        assert s.stop() == 0, s.output()
    assert info.model_type == family and info.supports_images
    native = responses["image-native"].explanations[0].items
    assert [len(item.image) for item in native] == [0, 9, 0]  # 3 x 3 merged tokens
    for name in names:
        assert_explained_like_the_reference(responses[name], cases[name], f"{family} {name}")


def png_bytes(width: int, height: int) -> bytes:
    """A grey PNG of width x height (Pillow's encoder)."""
    out = BytesIO()
    Image.new("RGB", (width, height), (120, 120, 120)).save(out, format="PNG")
    return out.getvalue()


def test_qwen2_vl_image_token_limit_counts_each_images_tokens():
    """--max-image-tokens on a Qwen2-VL model, whose image token count grows with the image
    (6 to 12 merged tokens per image in this fixture): an image within the limit is explained,
    a larger one alone (112 x 84 -> 4 x 3 = 12 tokens) and two small ones together (9 + 8) are
    INVALID_ARGUMENT naming their counts and the limit; GetModelInfo reports the limit."""
    folder = QWEN_FIXTURES / "qwen2_vl"
    wide = (folder / "images" / "wide_40x28.png").read_bytes()   # 84 x 84: 9 tokens
    tall = (folder / "images" / "tall_21x35.png").read_bytes()   # 56 x 112: 8 tokens
    s = Server("--max-image-tokens", "10", model=folder)
    try:
        assert s.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=30).max_image_tokens == 10
        ok = s.stub.Explain(pb.ExplainRequest(prompt=[pb.PromptItem(image=wide)], target=" red"), timeout=120)
        assert len(ok.explanations[0].items[0].image) == 9
        refused = {
            "prompt[1].image: image 112x84 becomes 112x84 pixels, 12 image tokens (2x2 merged patches "
            "of 14 px), over the limit max_image_tokens = 10":
                [pb.PromptItem(text="Look: "), pb.PromptItem(image=png_bytes(112, 84))],
            "prompt: 2 images of 9 + 8 image tokens = 17 image tokens, over the limit of 10 image tokens "
            "per request (max_image_tokens)":
                [pb.PromptItem(image=wide), pb.PromptItem(text=" and "), pb.PromptItem(image=tall)],
        }
        for message, prompt in refused.items():
            for call, request in ((s.stub.Explain, pb.ExplainRequest(prompt=prompt, target=" red")),
                                  (s.stub.Generate, pb.GenerateRequest(prompt=prompt, max_new_tokens=1))):
                with pytest.raises(grpc.RpcError) as e:
                    call(request, timeout=60)
                assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert message in e.value.details()
    finally:
        assert s.stop() == 0, s.output()


def test_images_are_explained_like_the_reference():
    """A LLaVA model behind the server: an image item's tiles come back as rectangles of the
    original image with the scores of the plain Python reference (tests/oracle)."""
    folder = FIXTURES / "atman_cases" / "llava"
    case = next(c for c in json.loads((folder / "cases.json").read_text())["cases"]
                if c["name"] == "image-native")
    s = Server(model=folder)
    try:
        req = pb.ExplainRequest(target=case["target"])
        for item in case["prompt"]:
            if "image" in item:
                req.prompt.add(image=(folder / "images" / item["image"]).read_bytes())
            else:
                req.prompt.add(text=item["text"])
        req.options.text_granularity = pb.TEXT_GRANULARITY_WORD
        req.options.image_granularity = pb.IMAGE_GRANULARITY_NATIVE
        response = s.stub.Explain(req, timeout=120)
        assert s.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=30).supports_images
    finally:
        s.stop()
    expected = case["expected"]
    ours = {}
    for item in response.explanations[0].items:
        ours[item.item] = item
    reference_rects = [u for u in expected["units"] if u["kind"] == "image"]
    image_item = next(i for i, it in enumerate(case["prompt"]) if "image" in it)
    rects = list(ours[image_item].image)
    assert len(rects) == len(reference_rects) == 16
    for got, want in zip(rects, reference_rects):
        assert [got.left, got.top, got.width, got.height] == pytest.approx(want["rect"], abs=1e-9)
    # Scores in unit order: the engine orders units by position, which is prompt order here.
    flat = []
    for i in range(len(case["prompt"])):
        if i in ours:
            flat += [x.score for x in ours[i].text] + [x.score for x in ours[i].image]
    assert_scores_close(flat, expected["scores"][0], "image-native")
