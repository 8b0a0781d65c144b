"""docs/operations.md names every flag `atman-server --help` lists and every metric family the
server serves on /metrics (issue 17: docs that say what the code does). Run by ctest (label
docs) with ATMAN_SERVER and ATMAN_SOURCE_DIR set; a failure names what is undocumented."""
import os
import re
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))
from atman_service import SERVER, SOURCE, Server, pb  # noqa: E402

DOC = SOURCE / "docs" / "operations.md"


def documented(name: str, text: str) -> bool:
    # The whole name: `--max-units` must not count as `--max-units-x`, nor `atman_ready` as
    # `atman_ready_total`.
    return re.search(re.escape(name) + r"(?![A-Za-z0-9_-])", text) is not None


def help_flags() -> list[str]:
    out = subprocess.run([SERVER, "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"atman-server --help exited {out.returncode}:\n{out.stderr}"
    text = out.stdout + out.stderr
    lines = [line for line in text.splitlines() if line.startswith("flags:")]
    assert len(lines) == 1, f"no single 'flags:' line in --help:\n{text}"
    flags = re.findall(r"--[a-z][a-z0-9-]*", lines[0])
    # The usage line's own flag.
    flags += [f for f in re.findall(r"--[a-z][a-z0-9-]*", text.splitlines()[0]) if f != "--flag"]
    assert len(flags) >= 20, f"--help lists only {flags}"
    return sorted(set(flags))


def served_metric_families(text: str) -> list[str]:
    families = re.findall(r"^# TYPE (\S+) \S+$", text, flags=re.MULTILINE)
    assert families, f"no '# TYPE' line on /metrics:\n{text[:2000]}"
    return sorted(set(families))


def test_every_help_flag_is_in_operations_md():
    doc = DOC.read_text()
    missing = [f for f in help_flags() if not documented(f, doc)]
    assert not missing, f"flags of atman-server --help missing from docs/operations.md: {missing}"


def test_every_served_metric_is_in_operations_md():
    doc = DOC.read_text()
    server = Server(model=SOURCE / "models" / "default")
    try:
        # A call first, so that families with labels have a series (and so a TYPE line).
        server.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=60)
        families = served_metric_families(server.metrics_text())
    finally:
        server.stop()
    ours = [f for f in families if f.startswith("atman_")]
    assert ours, f"no atman_ metric served: {families}"
    missing = [f for f in families if not documented(f, doc)]
    assert not missing, f"metrics served on /metrics missing from docs/operations.md: {missing}"
