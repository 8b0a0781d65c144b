"""Fixtures of the atman-client (client/python) tests: the package as built into a wheel by the
python_client.wheel fixture step (on PYTHONPATH, set by CMakeLists.txt), an atman-server
process on 127.0.0.1 serving the random-initialised LLaVA of the atman_cases oracle fixture
(text and images), and its raw grpcio stub, which every result is compared with.

Environment (set by tests/python_client/CMakeLists.txt): ATMAN_SERVER, ATMAN_FIXTURES,
ATMAN_SOURCE_DIR, ATMAN_PYTHON_CLIENT_SITE (where the wheel was installed), PYTHONPATH.
"""
import os
import sys
from pathlib import Path

import pytest

# The built package first: tests/support generates its own stubs under the same `atman`
# name, and with the package imported they resolve to the package's (the same proto).
import atman  # noqa: E402

SITE = Path(os.environ["ATMAN_PYTHON_CLIENT_SITE"])
assert Path(atman.__file__).is_relative_to(SITE), f"atman imported from {atman.__file__}"

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))
import atman_service  # noqa: E402
from atman_service import free_port, pb  # noqa: E402,F401

FIXTURES = Path(os.environ["ATMAN_FIXTURES"])
LLAVA = FIXTURES / "atman_cases" / "llava"
LLAMA = FIXTURES / "atman_cases" / "llama"  # text only (the service suite's default model)


class Server(atman_service.Server):
    """atman-server on the atman_cases LLaVA unless `model` is given; `credentials` makes the
    raw channel a TLS one."""

    def __init__(self, *flags, model=LLAVA, **kwargs):
        super().__init__(*flags, model=model, **kwargs)


@pytest.fixture(scope="module")
def server():
    s = Server()
    yield s
    assert s.stop() == 0, s.output()


@pytest.fixture(scope="module")
def held_server():
    """One row per batch, test hooks on: tests hold it to keep work queued."""
    s = Server("--max-batch-rows", "1", "--max-queue-delay-ms", "0", "--test-hooks", "true")
    yield s
    assert s.stop() == 0, s.output()
