"""Throughput of atman-server under concurrent clients vs the same requests one after another.

Starts atman-server (or uses --address), sends --requests explanations sequentially, then the
same requests from --concurrency client threads, and prints requests/s for both, the ratio,
and p50/p99 latency of each phase, plus the server's batch and memory figures from /metrics.

  python bench/server_bench.py --server build/server/atman-server --model build/fixtures/atman_cases/llama
  python bench/server_bench.py --address 10.0.0.5:50051 --metrics 10.0.0.5:9090
"""
import argparse
import concurrent.futures
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parent.parent


def stubs():
    from grpc_tools import protoc
    import grpc_tools
    out = Path(tempfile.mkdtemp(prefix="atman-stubs-"))
    rc = protoc.main(["protoc", f"-I{ROOT / 'proto'}", f"-I{Path(grpc_tools.__file__).parent / '_proto'}",
                      f"--python_out={out}", f"--grpc_python_out={out}", str(ROOT / "proto/atman/v1/atman.proto")])
    assert rc == 0
    for d in (out / "atman", out / "atman/v1"):
        (d / "__init__.py").touch()
    sys.path.insert(0, str(out))
    from atman.v1 import atman_pb2, atman_pb2_grpc
    return atman_pb2, atman_pb2_grpc


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Sentence granularity (4 units a request) is the workload where sharing batches across
# requests pays: one request's rows fill a small batch alone. With word or token granularity
# one request already fills a batch of 32 (see docs/performance.md for all three).
GRANULARITY = os.environ.get("ATMAN_BENCH_GRANULARITY", "sentence")
SENTENCES = ["Tom lives in Rome.", "Anna lives in Paris.", "Rivers flow to the sea.",
             "A red triangle sits left of a blue square.", "The green circle is at the top.",
             "The quick brown fox jumps over the lazy dog."]


def requests(pb, n):
    out = []
    for i in range(n):
        prompt = " ".join(SENTENCES[(i + k) % len(SENTENCES)] for k in range(3)) + " Where does Anna live?"
        out.append(pb.ExplainRequest(prompt=[pb.PromptItem(text=prompt)], target=" Paris",
                                     options=pb.ExplainOptions(text_granularity=getattr(pb, "TEXT_GRANULARITY_" + GRANULARITY.upper()))))
    return out


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def metrics(address):
    text = urllib.request.urlopen(f"http://{address}/metrics", timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            out[k] = float(v)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", help="atman-server binary to start")
    ap.add_argument("--model")
    ap.add_argument("--devices", default="cpu")
    ap.add_argument("--workers-per-device", default="1")
    ap.add_argument("--extra", default="", help="more server flags")
    ap.add_argument("--address")
    ap.add_argument("--metrics")
    ap.add_argument("--requests", type=int, default=48)
    ap.add_argument("--concurrency", type=int, default=8)
    args = ap.parse_args()
    pb, pb_grpc = stubs()
    proc = None
    if args.server:
        port, mport = free_port(), free_port()
        proc = subprocess.Popen([args.server, "--model", args.model, "--devices", args.devices, "--host", "127.0.0.1",
                                 "--port", str(port), "--metrics-port", str(mport), "--workers-per-device",
                                 args.workers_per_device, *args.extra.split()],
                                stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        args.address, args.metrics = f"127.0.0.1:{port}", f"127.0.0.1:{mport}"
    try:
        channel = grpc.insecure_channel(args.address)
        grpc.channel_ready_future(channel).result(timeout=300)
        stub = pb_grpc.AtmanStub(channel)
        end = time.time() + 300
        while True:  # wait for SERVING (the model may still be loading)
            try:
                stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=5)
                break
            except grpc.RpcError:
                if time.time() > end:
                    raise
                time.sleep(0.5)
        reqs = requests(pb, args.requests)
        for r in reqs[:4]:  # warm-up
            stub.Explain(r)

        def timed(r):
            t = time.perf_counter()
            stub.Explain(r, timeout=600)
            return time.perf_counter() - t

        t0 = time.perf_counter()
        seq = [timed(r) for r in reqs]
        seq_wall = time.perf_counter() - t0
        before = metrics(args.metrics)
        t0 = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(args.concurrency) as pool:
            conc = list(pool.map(timed, reqs))
        conc_wall = time.perf_counter() - t0
        after = metrics(args.metrics)
        batches = after["atman_batch_rows_count"] - before["atman_batch_rows_count"]
        rows = after["atman_batch_rows_sum"] - before["atman_batch_rows_sum"]
        print(f"requests: {args.requests} {GRANULARITY}-granularity explanations, devices={args.devices}, "
              f"workers/device={args.workers_per_device}")
        print(f"sequential:     {args.requests / seq_wall:8.2f} req/s  p50 {pct(seq, .5) * 1e3:8.1f} ms  "
              f"p99 {pct(seq, .99) * 1e3:8.1f} ms")
        print(f"concurrency {args.concurrency}:  {args.requests / conc_wall:8.2f} req/s  p50 {pct(conc, .5) * 1e3:8.1f} ms  "
              f"p99 {pct(conc, .99) * 1e3:8.1f} ms")
        print(f"speed-up: {seq_wall / conc_wall:.2f}x   concurrent phase: {batches:.0f} batches, "
              f"{rows / max(batches, 1):.1f} rows/batch")
        mem = {k: v for k, v in after.items() if k.startswith("atman_device_memory")}
        for k, v in sorted(mem.items()):
            print(f"{k} {v / 2**20:.1f} MiB")
    finally:
        if proc:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)


if __name__ == "__main__":
    main()
