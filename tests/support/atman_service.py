"""Shared by the Python tests that talk to a real atman-server (tests/server, tests/client):
grpcio stubs generated from proto/ at import time, free loopback ports, and `Server`, one
atman-server process on 127.0.0.1 (CPU, one thread), stopped with SIGTERM.

Import after putting tests/support on sys.path (each suite's conftest.py does). Reads
ATMAN_SOURCE_DIR (the tree) and ATMAN_SERVER (the binary) from the environment, which the
suites' CMakeLists.txt set. Not thread-safe: one test process drives its servers.
"""
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import grpc

SOURCE = Path(os.environ["ATMAN_SOURCE_DIR"])
SERVER = os.environ["ATMAN_SERVER"]


def _generate_stubs() -> Path:
    import grpc_tools
    from grpc_tools import protoc
    out = Path(tempfile.mkdtemp(prefix="atman-stubs-"))
    proto_root = SOURCE / "proto"
    include = Path(grpc_tools.__file__).parent / "_proto"
    rc = protoc.main(["protoc", f"-I{proto_root}", f"-I{include}", f"--python_out={out}",
                      f"--grpc_python_out={out}", str(proto_root / "atman/v1/atman.proto")])
    assert rc == 0, "protoc failed"
    for d in (out / "atman", out / "atman" / "v1"):
        (d / "__init__.py").touch()
    return out


sys.path.insert(0, str(_generate_stubs()))
from atman.v1 import atman_pb2 as pb  # noqa: E402
from atman.v1 import atman_pb2_grpc as pb_grpc  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402


from ports import free_port  # noqa: E402,F401  (re-exported for the suites)


class Server:
    """One atman-server process on 127.0.0.1 serving `model` on the CPU.

    flags: extra command-line flags. port: the gRPC port (default: a free one). wait: block
    until the health service says SERVING. env: added to the environment (ATMAN_* variables
    of the test's own environment are dropped). credentials: grpc channel credentials that make
    the test's channel a TLS one (default: an insecure channel)."""

    def __init__(self, *flags, model: Path, port: int | None = None, wait: bool = True,
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
             "--port", str(self.port), "--metrics-port", str(self.metrics_port),
             # No drain delay unless a test asks for one (a later flag wins): stop() is prompt.
             "--drain-delay-seconds", "0", *map(str, flags)],
            stdout=self.log, stderr=subprocess.STDOUT, env=full_env)
        self.channel = (grpc.insecure_channel(self.address) if credentials is None
                        else grpc.secure_channel(self.address, credentials))
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
        raise AssertionError(f"server not SERVING after {timeout}s:\n{self.output()}")

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def metrics_text(self) -> str:
        """The Prometheus scrape, as served."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        return urllib.request.urlopen(url, timeout=10).read().decode()

    def metrics(self) -> dict:
        """The scrape as {'name{labels}': value}."""
        out = {}
        for line in self.metrics_text().splitlines():
            if line and not line.startswith("#"):
                key, value = line.rsplit(" ", 1)
                out[key] = float(value)
        return out

    def wait_metrics(self, predicate, what: str = "") -> dict:
        """Scrapes until `predicate(metrics)` holds and returns those metrics. No time limit of
        its own (ctest's timeout is the guard): a state the test waits for must come."""
        while True:
            assert self.proc.poll() is None, f"server exited while waiting for {what}:\n{self.output()}"
            m = self.metrics()
            if predicate(m):
                return m
            time.sleep(0.02)

    def idle(self) -> dict:
        """Waits until no call is in flight, nothing is queued and no scoring batch runs (a
        batch may outlive the cancelled calls whose rows it holds); returns the metrics."""
        return self.wait_metrics(lambda m: m.get("atman_inflight_requests") == 0
                                 and m.get("atman_queued_requests") == 0
                                 and m.get("atman_queue_depth_rows") == 0
                                 and m.get("atman_running_batches") == 0, "idle")

    def hold(self):
        """Test hook (server started with --test-hooks true): no scoring batch starts and no
        generation step runs until release(); returns once the hold is in effect."""
        self.proc.send_signal(signal.SIGUSR1)
        self.wait_metrics(lambda m: m.get("atman_test_hold") == 1, "the hold")

    def release(self):
        self.proc.send_signal(signal.SIGUSR2)
        self.wait_metrics(lambda m: m.get("atman_test_hold") == 0, "the release")

    def count(self, method: str, code: str) -> float:
        return self.metrics().get(f'atman_requests_total{{code="{code}",method="{method}"}}', 0)

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
