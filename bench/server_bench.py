"""Throughput of atman-server under concurrent clients vs the same requests one after another.

Starts atman-server (or uses --address), sends --requests explanations sequentially, then the
same requests from --concurrency client threads (--rounds times, alternating, so that both
phases share the machine's load), and prints requests/s for both, the ratio, p50/p99 latency
of each phase, the server's batches and positions computed per request in each phase (from
/metrics), and its memory figures.

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


def cpu_seconds(pid):
    """User + system CPU seconds of a process so far (Linux), or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", help="atman-server binary to start")
    ap.add_argument("--model")
    ap.add_argument("--devices", default="cpu")
    ap.add_argument("--workers-per-device", default="0", help="0: the server's auto setting")
    ap.add_argument("--extra", default="", help="more server flags")
    ap.add_argument("--address")
    ap.add_argument("--metrics")
    ap.add_argument("--requests", type=int, default=48)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=1, help="sequential + concurrent phases, alternated")
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

        def phase(run):
            """Runs one phase; returns (wall seconds, latencies, server figures of the phase)."""
            before = metrics(args.metrics)
            cpu0 = cpu_seconds(proc.pid) if proc else None
            t0 = time.perf_counter()
            latencies = run()
            wall = time.perf_counter() - t0
            cpu1 = cpu_seconds(proc.pid) if proc else None
            after = metrics(args.metrics)
            d = {k: after[k] - before.get(k, 0) for k in ("atman_batch_rows_count", "atman_batch_rows_sum",
                                                         "atman_positions_computed_total",
                                                         "atman_batch_duration_seconds_sum")}
            d["wall"] = wall
            d["server_cpu_seconds"] = cpu1 - cpu0 if cpu0 is not None and cpu1 is not None else float("nan")
            return wall, latencies, d

        def in_parallel():
            with concurrent.futures.ThreadPoolExecutor(args.concurrency) as pool:
                return list(pool.map(timed, reqs))

        # Side by side in one run (one server): sequential, then concurrent, `--rounds` times, so
        # that both phases see the same machine load (other processes on a shared machine).
        n = args.requests
        totals = {"sequential": [0.0, [], None], "concurrent": [0.0, [], None]}
        for k in range(args.rounds):
            for name, run in (("sequential", lambda: [timed(r) for r in reqs]), ("concurrent", in_parallel)):
                wall, lat, d = phase(run)
                t = totals[name]
                t[0] += wall
                t[1] += lat
                t[2] = d if t[2] is None else {key: t[2][key] + d[key] for key in d}
                totals[name + str(k)] = wall
            if args.rounds > 1:
                print(f"round {k + 1}: speed-up {totals['sequential' + str(k)] / totals['concurrent' + str(k)]:.2f}x")

        workers = metrics(args.metrics).get("atman_batch_workers", 1.0)

        def batches(d):
            b = max(d["atman_batch_rows_count"], 1)
            return (f"{d['atman_batch_rows_count'] / (n * args.rounds):5.1f} batches/request, "
                    f"{d['atman_batch_rows_sum'] / b:5.1f} rows/batch, "
                    f"{d['atman_positions_computed_total'] / (n * args.rounds):7.0f} positions/request, "
                    f"server CPU {d['server_cpu_seconds'] / (n * args.rounds) * 1e3:5.1f} ms/request, "
                    f"workers busy {d['atman_batch_duration_seconds_sum'] / (d['wall'] * workers):4.0%}")

        seq_wall, seq, seq_d = totals["sequential"]
        conc_wall, conc, conc_d = totals["concurrent"]
        total = n * args.rounds
        print(f"requests: {n} {GRANULARITY}-granularity explanations x {args.rounds} rounds, devices={args.devices}, "
              f"--workers-per-device {args.workers_per_device} ({workers:.0f} workers)")
        print(f"sequential:     {total / seq_wall:8.2f} req/s  p50 {pct(seq, .5) * 1e3:8.1f} ms  "
              f"p99 {pct(seq, .99) * 1e3:8.1f} ms  {batches(seq_d)}")
        print(f"concurrency {args.concurrency}:  {total / conc_wall:8.2f} req/s  p50 {pct(conc, .5) * 1e3:8.1f} ms  "
              f"p99 {pct(conc, .99) * 1e3:8.1f} ms  {batches(conc_d)}")
        print(f"speed-up: {seq_wall / conc_wall:.2f}x")
        after = metrics(args.metrics)
        mem = {k: v for k, v in after.items() if k.startswith("atman_device_memory")}
        for k, v in sorted(mem.items()):
            print(f"{k} {v / 2**20:.1f} MiB")
    finally:
        if proc:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)


if __name__ == "__main__":
    main()
