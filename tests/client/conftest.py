"""Fixtures of the `atman` tool tests: an atman-server process on 127.0.0.1 (free ports, the
random-initialised LLaVA of the atman_cases oracle fixture: text and images), Python grpcio stubs
generated from proto/ at test time for the direct RPCs the tool's output is compared with, and
a runner of the tool. Process handling: tests/support/atman_service.py, shared with tests/server.

Environment (set by tests/client/CMakeLists.txt): ATMAN_CLI, ATMAN_SERVER, ATMAN_FIXTURES,
ATMAN_SOURCE_DIR.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))
import atman_service  # noqa: E402
from atman_service import free_port, pb  # noqa: E402,F401

FIXTURES = Path(os.environ["ATMAN_FIXTURES"])
CLI = os.environ["ATMAN_CLI"]
LLAVA = FIXTURES / "atman_cases" / "llava"
QWEN2_VL = FIXTURES / "qwen2_vl_atman_cases" / "qwen2_vl"  # tests that use it require that fixture


class Server(atman_service.Server):
    """atman-server on the LLaVA of the atman_cases oracle fixture unless `model` is given;
    `credentials` (grpc channel credentials) makes the test's channel a TLS one."""

    def __init__(self, *flags, model=LLAVA, **kwargs):
        super().__init__(*flags, model=model, **kwargs)


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
