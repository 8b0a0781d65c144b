"""Runs every ```python block of docs/python.md, in order and in one namespace, against a real
atman-server (conftest.py), in a scratch folder; the address 127.0.0.1:50051 of the page is
replaced by the server's."""
import os
import re
from pathlib import Path

SOURCE = Path(os.environ["ATMAN_SOURCE_DIR"])


def test_every_snippet_of_docs_python_md_runs(server, tmp_path, monkeypatch, capsys):
    page = (SOURCE / "docs" / "python.md").read_text()
    blocks = re.findall(r"^```python\n(.*?)^```$", page, flags=re.M | re.S)
    assert len(blocks) >= 10
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__docs__"}
    for k, block in enumerate(blocks):
        code = block.replace("127.0.0.1:50051", server.address)
        try:
            exec(compile(code, f"docs/python.md block {k}", "exec"), namespace)
        except Exception as e:
            raise AssertionError(f"docs/python.md block {k} failed:\n{block}") from e
    out = capsys.readouterr().out
    assert out.startswith("SERVING\n"), out
    assert "control_factor -> control_factor: -1.0 is not a finite number >= 0" in out
    assert "INVALID_ARGUMENT prompt[0].token_ids.ids[2]" in out
    assert (tmp_path / "cat-relevance.png").stat().st_size > 0
    assert "Explanation" in out  # the asyncio block's last event
