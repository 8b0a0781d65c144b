"""Encode throughput: ours (bench/tokenizer_bench) vs Hugging Face `tokenizers`, one core.

  python bench/tokenizer_compare.py --build build [--repeats 20]

Both sides encode the same texts (the parity-test corpus of tests/oracle/make_tokenizer_cases.py
plus paragraphs of prose and code built from it, one encode() call per text, special tokens
added) with each real tokenizer under ../shared/data/tokenizers/. The library runs with
RAYON_NUM_THREADS=1 and TOKENIZERS_PARALLELISM=false; our binary is pinned to the same core
with taskset when available. Prints MB/s for both and ours/library.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "oracle"))
from make_tokenizer_cases import CORPUS, TRAIN_EXTRA, load_real  # noqa: E402

NAMES = ["gpt2", "gpt-neox-20b", "phi-2", "llama2", "mistral-7b-v0.1"]


def texts():
    body = [t for t in CORPUS if t]
    long_texts = ["\n\n".join(body[i:] + body[:i]) for i in range(len(body))]
    return body + long_texts + TRAIN_EXTRA[:3]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--build", default=str(ROOT / "build"))
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    binary = Path(args.build) / "bench" / "tokenizer_bench"
    if not binary.exists():
        raise SystemExit(f"{binary} missing: build the target tokenizer_bench")
    corpus = texts()
    total_bytes = sum(len(t.encode()) for t in corpus)
    shared = ROOT.parent / "shared" / "data" / "tokenizers"
    pin = ["taskset", "-c", "0"] if shutil.which("taskset") else []
    if pin:
        os.sched_setaffinity(0, {0})
    with tempfile.TemporaryDirectory() as tmp:
        texts_path = Path(tmp) / "texts.json"
        texts_path.write_text(json.dumps(corpus), encoding="utf-8")
        print(f"{len(corpus)} texts, {total_bytes} bytes, x{args.repeats} repeats, one core")
        print(f"{'tokenizer':18} {'library MB/s':>13} {'ours MB/s':>10} {'ours/library':>13}")
        for name in NAMES:
            path = shared / name / "tokenizer.json"
            tok = load_real(path)
            for t in corpus:
                tok.encode(t)
            start = time.perf_counter()
            for _ in range(args.repeats):
                for t in corpus:
                    tok.encode(t)
            lib_s = time.perf_counter() - start
            out = subprocess.run(pin + [str(binary), str(path), str(texts_path),
                                        str(args.repeats)],
                                 check=True, capture_output=True, text=True)
            ours_s = json.loads(out.stdout)["seconds"]
            mb = total_bytes * args.repeats / 1e6
            print(f"{name:18} {mb / lib_s:13.2f} {mb / ours_s:10.2f} {lib_s / ours_s:13.2f}")


if __name__ == "__main__":
    main()
