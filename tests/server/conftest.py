"""Fixtures of the service tests: stubs generated from proto/ at test time, and atman-server
processes started on 127.0.0.1 with free ports (each stopped with SIGTERM at the end).

Environment (set by tests/server/CMakeLists.txt): ATMAN_SERVER (the binary), ATMAN_ENGINE_EXPLAIN
(the in-process engine tool), ATMAN_FIXTURES (oracle outputs), ATMAN_SOURCE_DIR (the tree).
"""
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import grpc
import pytest

SOURCE = Path(os.environ["ATMAN_SOURCE_DIR"])
FIXTURES = Path(os.environ["ATMAN_FIXTURES"])
SERVER = os.environ["ATMAN_SERVER"]
ENGINE = os.environ["ATMAN_ENGINE_EXPLAIN"]
MODEL = FIXTURES / "atman_cases" / "llama"


def _generate_stubs() -> Path:
    from grpc_tools import protoc
    out = Path(tempfile.mkdtemp(prefix="atman-stubs-"))
    proto_root = SOURCE / "proto"
    import grpc_tools
    include = Path(grpc_tools.__file__).parent / "_proto"
    rc = protoc.main(["protoc", f"-I{proto_root}", f"-I{include}", f"--python_out={out}",
                      f"--grpc_python_out={out}", str(proto_root / "atman/v1/atman.proto")])
    assert rc == 0, "protoc failed"
    for d in (out / "atman", out / "atman" / "v1"):
        (d / "__init__.py").touch()
    return out


_STUBS = _generate_stubs()
sys.path.insert(0, str(_STUBS))
from atman.v1 import atman_pb2 as pb  # noqa: E402
from atman.v1 import atman_pb2_grpc as pb_grpc  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One atman-server process."""

    def __init__(self, *flags, env=None, secure_channel=None, model=None):
        self.port = free_port()
        self.metrics_port = free_port()
        self.log = tempfile.NamedTemporaryFile(prefix="atman-server-", suffix=".log", delete=False)
        args = [SERVER, "--model", str(model or MODEL), "--devices", "cpu", "--host", "127.0.0.1",
                "--port", str(self.port), "--metrics-port", str(self.metrics_port), *flags]
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("ATMAN_")}
        full_env["OMP_NUM_THREADS"] = "1"
        full_env.update(env or {})
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, env=full_env)
        self.address = f"127.0.0.1:{self.port}"
        self.make_channel = secure_channel or (lambda addr: grpc.insecure_channel(addr))
        self.channel = self.make_channel(self.address)
        self.stub = pb_grpc.AtmanStub(self.channel)
        self.wait_serving()

    def wait_serving(self, timeout=120.0):
        health = health_pb2_grpc.HealthStub(self.channel)
        end = time.time() + timeout
        while time.time() < end:
            assert self.proc.poll() is None, f"server exited early:\n{self.output()}"
            try:
                r = health.Check(health_pb2.HealthCheckRequest(service="atman.v1.Atman"), timeout=2)
                if r.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"server not SERVING after {timeout}s:\n{self.output()}")

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def metrics(self) -> dict:
        """The scrape as {'name{labels}': value}."""
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10).read().decode()
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                key, value = line.rsplit(" ", 1)
                out[key] = float(value)
        return out

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.channel.close()
        return self.proc.returncode


@pytest.fixture(scope="module")
def server():
    s = Server()
    yield s
    assert s.stop() == 0, s.output()


def engine_scores(requests: list) -> list:
    """The engine's scores for `requests`, computed in process by the C++ tool."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(requests, f)
    out = subprocess.run([ENGINE, str(MODEL), f.name], check=True, capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    return json.loads(out.stdout)


GRANULARITY = {"token": pb.TEXT_GRANULARITY_TOKEN, "word": pb.TEXT_GRANULARITY_WORD,
               "sentence": pb.TEXT_GRANULARITY_SENTENCE, "paragraph": pb.TEXT_GRANULARITY_PARAGRAPH,
               "auto": pb.TEXT_GRANULARITY_AUTO}


def to_proto(r: dict) -> "pb.ExplainRequest":
    req = pb.ExplainRequest(target=r.get("target", ""))
    for item in r["prompt"]:
        if "text" in item:
            req.prompt.add(text=item["text"])
        else:
            req.prompt.add(token_ids=pb.TokenIds(ids=item["token_ids"]))
    req.options.text_granularity = GRANULARITY[r.get("text_granularity", "auto")]
    if "control_factor" in r:
        req.options.control_factor = r["control_factor"]
    return req


def flat_scores(response) -> list:
    """Scores in the engine's unit order (items in prompt order; text, tokens, then target)."""
    out = []
    for e in response.explanations:
        for item in e.items:
            out += [s.score for s in item.text] + [s.score for s in item.tokens] + [s.score for s in item.image]
        out += [s.score for s in e.target]
    return out


def assert_scores_close(ours, expected, what=""):
    assert len(ours) == len(expected), f"{what}: {len(ours)} scores, expected {len(expected)}"
    largest = max([abs(x) for x in expected] + [1e-9])
    for k, (a, b) in enumerate(zip(ours, expected)):
        assert abs(a - b) <= 1e-4 * largest, f"{what} score {k}: {a} vs engine {b}"
