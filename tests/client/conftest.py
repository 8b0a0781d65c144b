"""Fixtures of the `atman` tool tests: an atman-server process on 127.0.0.1 (free ports, the
random-initialised LLaVA of the atman_cases oracle fixture: text and images), Python grpcio stubs
generated from proto/ at test time for the direct RPCs the tool's output is compared with, and
a runner of the tool.

Environment (set by tests/client/CMakeLists.txt): ATMAN_CLI, ATMAN_SERVER, ATMAN_FIXTURES,
ATMAN_SOURCE_DIR.
"""
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
CLI = os.environ["ATMAN_CLI"]
LLAVA = FIXTURES / "atman_cases" / "llava"


def _generate_stubs() -> Path:
    from grpc_tools import protoc
    import grpc_tools
    out = Path(tempfile.mkdtemp(prefix="atman-client-stubs-"))
    include = Path(grpc_tools.__file__).parent / "_proto"
    rc = protoc.main(["protoc", f"-I{SOURCE / 'proto'}", f"-I{include}", f"--python_out={out}",
                      f"--grpc_python_out={out}", str(SOURCE / "proto/atman/v1/atman.proto")])
    assert rc == 0, "protoc failed"
    for d in (out / "atman", out / "atman" / "v1"):
        (d / "__init__.py").touch()
    return out


sys.path.insert(0, str(_generate_stubs()))
from atman.v1 import atman_pb2 as pb  # noqa: E402
from atman.v1 import atman_pb2_grpc as pb_grpc  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One atman-server process on 127.0.0.1."""

    def __init__(self, *flags, model: Path = LLAVA, port: int | None = None, wait: bool = True,
                 env: dict | None = None, credentials=None):
        self.port = port or free_port()
        self.metrics_port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.log = tempfile.NamedTemporaryFile(prefix="atman-server-", suffix=".log", delete=False)
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("ATMAN_")}
        full_env["OMP_NUM_THREADS"] = "1"
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            [SERVER, "--model", str(model), "--devices", "cpu", "--host", "127.0.0.1",
             "--port", str(self.port), "--metrics-port", str(self.metrics_port), *map(str, flags)],
            stdout=self.log, stderr=subprocess.STDOUT, env=full_env)
        self.channel = (grpc.secure_channel(self.address, credentials) if credentials
                        else grpc.insecure_channel(self.address))
        self.stub = pb_grpc.AtmanStub(self.channel)
        if wait:
            self.wait_serving()

    def wait_serving(self, timeout: float = 120.0):
        health = health_pb2_grpc.HealthStub(self.channel)
        end = time.time() + timeout
        while time.time() < end:
            assert self.proc.poll() is None, f"server exited early:\n{self.output()}"
            try:
                request = health_pb2.HealthCheckRequest(service="atman.v1.Atman")
                if health.Check(request, timeout=2).status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"server not answering after {timeout}s:\n{self.output()}")

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        return urllib.request.urlopen(url, timeout=10).read().decode()

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


def run_cli(*args, env=None, timeout=300) -> subprocess.CompletedProcess:
    """Runs the tool; stdout as bytes (it may hold an arbitrary generation), stderr as text."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("ATMAN_")}
    full_env.pop("COLORTERM", None)
    full_env.update(env or {})
    proc = subprocess.run([CLI, *map(str, args)], capture_output=True, env=full_env,
                          timeout=timeout)
    proc.stderr = proc.stderr.decode(errors="replace")
    return proc
