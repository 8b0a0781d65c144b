"""A rollout as clients see it: two atman-servers on loopback, one client channel with the
published service config (deploy/client/service-config.json: round_robin over both, client-side
health checking on atman.v1.Atman, retries of UNAVAILABLE). One server is SIGTERMed while the
client keeps calling and while a call of that client is in flight on it; the client must see no
error, the in-flight call must finish, and the other server takes every call after.

The resolver lists both addresses (`ipv4:127.0.0.1:A,127.0.0.1:B`), as DNS on the chart's
headless Service lists the ready pods. No sleeps: the test waits for states it can observe
(metrics, process exit, call counts).
"""
import json
import os
import pathlib
import re
import signal
import sys
import threading

import grpc
import pytest

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "support"))
ROOT = pathlib.Path(os.environ.get("ATMAN_SOURCE_DIR", HERE.parents[1]))
SERVER = os.environ.get("ATMAN_SERVER_BINARY", "")
SERVICE_CONFIG = ROOT / "deploy" / "client" / "service-config.json"
MODEL = ROOT / "models" / "default"

pytestmark = pytest.mark.skipif(not SERVER, reason="atman-server is not part of this build "
                                "(configured with ATMAN_BUILD_SERVICE=OFF)")
if SERVER:
    os.environ.setdefault("ATMAN_SERVER", SERVER)
    from atman_service import Server, pb, pb_grpc  # noqa: E402


def explain_request():
    request = pb.ExplainRequest(target=" Paris")
    request.prompt.add(text="The capital of France is")
    return request


def test_published_service_config_is_the_documented_one():
    published = json.loads(SERVICE_CONFIG.read_text())
    docs = (ROOT / "docs" / "deployment.md").read_text()
    block = re.search(r"<!-- service-config.json -->\s*```json\n(.*?)```", docs, re.S).group(1)
    assert json.loads(block) == published
    assert published["loadBalancingConfig"] == [{"round_robin": {}}]
    assert published["healthCheckConfig"] == {"serviceName": "atman.v1.Atman"}
    (method,) = published["methodConfig"]
    assert method["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]


def test_client_sees_no_error_while_a_server_drains_and_another_takes_over():
    # The drain delay is the time clients get to see NOT_SERVING before the GOAWAY.
    leaving = Server("--test-hooks", "true", "--drain-delay-seconds", "2", "--drain-grace-seconds", "600",
                     "--max-batch-rows", "1", "--max-queue-delay-ms", "0", model=MODEL)
    staying = Server(model=MODEL)
    channel = grpc.insecure_channel(f"ipv4:{leaving.address},{staying.address}",
                                    options=[("grpc.service_config", SERVICE_CONFIG.read_text())])
    stub = pb_grpc.AtmanStub(channel)
    errors, calls, progress, stop = [], [0], threading.Condition(), threading.Event()
    held = []
    try:
        # Both backends take calls (round robin, both healthy).
        while leaving.count("Tokenize", "OK") == 0 or staying.count("Tokenize", "OK") == 0:
            stub.Tokenize(pb.TokenizeRequest(text="warm"), timeout=60)
        # A call of this client in flight on the leaving server across the SIGTERM.
        leaving.hold()
        while leaving.metrics().get("atman_queued_requests", 0) == 0:
            held.append(stub.Explain.future(explain_request(), timeout=600))
            leaving.wait_metrics(lambda m: m.get("atman_queued_requests") == 1
                                 or all(f.done() for f in held), "the call to be queued or answered")

        def client():
            while not stop.is_set():
                try:
                    stub.Tokenize(pb.TokenizeRequest(text="Tom"), timeout=60)
                    stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=60)
                except grpc.RpcError as e:
                    with progress:
                        errors.append(f"{e.code().name}: {e.details()}")
                with progress:
                    calls[0] += 1
                    progress.notify_all()

        thread = threading.Thread(target=client)
        thread.start()
        leaving.proc.send_signal(signal.SIGTERM)
        leaving.wait_metrics(lambda m: m.get("atman_ready") == 0, "NOT_SERVING")
        leaving.release()
        assert leaving.proc.wait(timeout=600) == 0, leaving.output()
        served_before = staying.count("Tokenize", "OK")
        with progress:
            after_exit = calls[0]
            # Calls keep coming after the leaving server has gone: all on the staying one.
            progress.wait_for(lambda: calls[0] >= after_exit + 20 or errors)
        stop.set()
        thread.join()
        assert errors == [], errors
        for future in held:
            assert future.result().explanations  # finished on the leaving server, not cut
        assert staying.count("Tokenize", "OK") >= served_before + 20
        output = leaving.output()
        assert "NOT_SERVING; serving 2s more" in output and "drained" in output, output
    finally:
        stop.set()
        channel.close()
        leaving.stop()
        assert staying.stop() == 0, staying.output()
