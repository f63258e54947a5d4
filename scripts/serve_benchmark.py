"""Serving benchmark on the CPU: ``mmgen serve`` with dynamic batching vs one request at a time.

Starts two servers of the same model as subprocesses (``--max-batch 1 --max-wait-ms 0``: every request
its own search; and the default dynamic batching), then sends the same requests to each, rounds
interleaved so that a load change on a shared machine hits both alike. Reports per mode the median over
rounds of requests/s, p50/p99 latency and the servers' CPU-seconds per 100 requests, and checks that
every answer equals ``Captioner.caption`` of its image.

    python scripts/serve_benchmark.py --model assets/tiny-scenes-model --requests 200 --clients 16 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_server(model: str, port: int, extra: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "mmgen.cli", "serve", "--model", model, "--port", str(port), "--device", "cpu"]
    proc = subprocess.Popen([*cmd, "--threads", "1", "--log-level", "warning", *extra], env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).read()
            return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"server on port {port} did not start")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(ROOT / "assets" / "tiny-scenes-model"))
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--images", type=int, default=16, help="distinct rendered scenes sent round-robin")
    p.add_argument("--beams", type=int, default=None, help="beams asked by every request (default: the model's)")
    p.add_argument("--port", type=int, default=8730)
    args = p.parse_args(argv)

    import torch

    from mmgen.captioner import Captioner
    from mmgen.data.synthetic import make_scenes
    from mmgen.serve.loadtest import run_load

    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="mmgen-serve-bench-"))
    make_scenes(tmp, args.images, seed=5)
    paths = sorted((tmp / "images" / "train").glob("*.png"))
    images = [(p.name, p.read_bytes()) for p in paths]
    captioner = Captioner.from_pretrained(args.model, device="cpu")
    options = {} if args.beams is None else {"beams": args.beams}
    settings = {} if args.beams is None else {"num_beams": args.beams}
    expected = {p.name: captioner.caption(p, **settings)[0] for p in paths}
    del captioner

    servers = {
        "one request at a time": start_server(args.model, args.port, ["--max-batch", "1", "--max-wait-ms", "0"]),
        "dynamic batching": start_server(args.model, args.port + 1, []),
    }
    ports = {"one request at a time": args.port, "dynamic batching": args.port + 1}
    cases = [(name, clients) for name in servers for clients in (1, args.clients)]
    results: dict[tuple[str, int], list] = {c: [] for c in cases}
    try:
        for name, _ in cases:  # warm-up: first calls allocate and fill caches
            run_load(f"http://127.0.0.1:{ports[name]}", images, 2 * args.clients, args.clients, options)
        for r in range(args.rounds):
            for name, clients in cases:
                pid = servers[name].pid
                before = cpu_seconds(pid)
                rep = run_load(f"http://127.0.0.1:{ports[name]}", images, args.requests, clients, options)
                cpu = cpu_seconds(pid) - before
                wrong = sum(
                    s != 200 or a["caption"] != expected[images[i % len(images)][0]]
                    for i, (s, a) in enumerate(zip(rep.statuses, rep.answers))
                )
                results[(name, clients)].append((rep, cpu, wrong))
                print(f"round {r + 1}: {name}, {clients} clients: {rep.summary()}, server CPU {cpu:.1f} s", flush=True)
    finally:
        for proc in servers.values():
            proc.terminate()
            proc.wait(30)

    base = statistics.median(rep.throughput for rep, _, _ in results[("one request at a time", 1)])
    head = "| server | clients | requests/s | p50 ms | p99 ms | mean batch | CPU-s / 100 req | vs one at a time |"
    print("\n" + head)
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for (name, clients), runs in results.items():
        tput = statistics.median(rep.throughput for rep, _, _ in runs)
        p50 = statistics.median(rep.percentile(50) for rep, _, _ in runs)
        p99 = statistics.median(rep.percentile(99) for rep, _, _ in runs)
        batch = statistics.median(rep.mean_batch for rep, _, _ in runs)
        cpu = statistics.median(100 * c / rep.requests for rep, c, _ in runs)
        cells = [name, clients, f"{tput:.1f}", f"{p50:.0f}", f"{p99:.0f}", f"{batch:.1f}", f"{cpu:.2f}"]
        print("| " + " | ".join(map(str, cells)) + f" | {tput / base:.2f}× |")
    wrong = sum(w for runs in results.values() for _, _, w in runs)
    total = sum(len(v) for v in results.values()) * args.requests
    print(f"\nanswers different from Captioner.caption: {wrong} of {total}")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
