#!/usr/bin/env python3
"""Prints the end of each failed test's output from the latest ctest run in each build folder
given, newer than --since (epoch seconds). scripts/test.sh calls it last, so that a CI log
whose middle is cut still shows why a test failed.

    python3 scripts/ctest-digest.py --since EPOCH [--lines N] BUILD_DIR...
"""
import argparse
import re
import sys
from pathlib import Path


def failed_outputs(log: str, names: set[str]) -> dict[str, list[str]]:
    """Test name -> its output lines, for the tests in `names`, from a LastTest.log."""
    out: dict[str, list[str]] = {}
    current, lines, inside = None, [], False
    for line in log.splitlines():
        m = re.match(r"^\d+/\d+ Test: (.+)$", line)
        if m:
            current, lines, inside = m.group(1), [], False
        elif line == "Output:" and current:
            inside = True
        elif line == "<end of output>" and current:
            if current in names:
                out[current] = lines[1:]  # the first line is a row of dashes
            current, inside = None, False
        elif inside:
            lines.append(line)
    return out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--since", type=float, default=0)
    p.add_argument("--lines", type=int, default=40)
    p.add_argument("build_dirs", nargs="+")
    a = p.parse_args()
    for d in a.build_dirs:
        temp = Path(d) / "Testing" / "Temporary"
        failed, log = temp / "LastTestsFailed.log", temp / "LastTest.log"
        if not failed.is_file() or not log.is_file() or failed.stat().st_mtime < a.since:
            continue
        names = {l.split(":", 1)[1] for l in failed.read_text().splitlines() if ":" in l}
        outputs = failed_outputs(log.read_text(errors="replace"), names)
        for name in sorted(names):
            print(f"==== {d}: {name} failed; the last {a.lines} lines of its output:")
            for line in outputs.get(name, ["(no output recorded)"])[-a.lines:]:
                print(f"  {line[:400]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
