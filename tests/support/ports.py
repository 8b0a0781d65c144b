"""Loopback ports for servers under test, safe under parallel ctest runs."""
import fcntl
import os
import random
import socket
import tempfile
from pathlib import Path

# Ports handed to servers under test. bind(0) would pick an ephemeral port, which the kernel
# may hand again to another test running in parallel (ctest -j) or to any outgoing connection
# before our server binds it: "Address already in use", or worse, a test talking to another
# test's server. So ports come from below the ephemeral range, and each is reserved for the
# life of this process by an exclusive lock on a file named after it, which parallel test
# processes respect; the lock goes when the process does.
_PORT_LOCKS = Path(tempfile.gettempdir()) / "atman-test-ports"
_PORT_RANGE = (20000, 32000)
_held_ports: dict[int, int] = {}


def free_port() -> int:
    _PORT_LOCKS.mkdir(exist_ok=True)
    lo, hi = _PORT_RANGE
    first = random.randrange(lo, hi)
    for i in range(hi - lo):
        port = lo + (first - lo + i) % (hi - lo)
        if port in _held_ports:
            continue
        fd = os.open(_PORT_LOCKS / str(port), os.O_CREAT | os.O_RDWR, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        with socket.socket() as s:  # free now (not used by anything outside the tests)?
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
                continue
        _held_ports[port] = fd
        return port
    raise RuntimeError(f"no free port in {_PORT_RANGE}")
