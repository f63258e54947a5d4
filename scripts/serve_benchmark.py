"""Serving benchmark on the CPU: ``mmgen serve`` with dynamic batching vs one request at a time.

Starts two servers of the same model as subprocesses (``--max-batch 1 --max-wait-ms 0``: every request
its own search; and the default dynamic batching), then sends the same requests to each, rounds
interleaved so that a load change on a shared machine hits both alike. Reports per mode the median over
rounds of requests/s, p50/p99 latency and the servers' CPU-seconds per 100 requests, and checks that
every answer equals ``Captioner.caption`` of its image. Then, in this process, the search alone
(the model's ``generate`` on the preprocessed images) at batch 1 and at the mean batch the dynamic batching
reached: CPU-ms per image, whose ratio bounds what batching can gain.

``--no-search`` serves a constant caption instead of searching: what HTTP, multipart parsing, the image
decoder and preprocessing cost per request on their own; with ``--pure-python-http`` uvicorn parses HTTP with
h11 on asyncio's own event loop, as it does when httptools and uvloop are not installed.

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


def serve_without_search(argv: list[str], pure_python: bool = False) -> int:
    """``mmgen serve ARGV`` with every search replaced by a constant caption (``--no-search``); ``pure_python``:
    uvicorn with h11 and the asyncio loop (``--pure-python-http``)."""
    from mmgen.commands.cli import build_parser
    from mmgen.commands.serve_command import build_app
    from mmgen.generation import GeneratedCaptions
    from mmgen.serve.server import serve

    def constant(pixels, gen=None, **kwargs):
        return GeneratedCaptions([["a caption"]] * len(pixels), [[0.0]] * len(pixels))

    args = build_parser().parse_args(["serve", *argv])
    app = build_app(args, generate=constant)  # the batcher calls this in place of the model's search
    serve(app, args.host, args.port, args.log_level, **({"http": "h11", "loop": "asyncio"} if pure_python else {}))
    return 0


def start_server(model: str, port: int, extra: list[str], search: bool = True, pure: bool = False) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    entry = ["-m", "mmgen", "serve"] if search else [__file__, "--serve-pure" if pure else "--serve-without-search"]
    cmd = [sys.executable, *entry, "--model", model, "--port", str(port), "--device", "cpu"]
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


def run_rounds(args, images, expected, options) -> dict[tuple[str, int], list]:
    """Both servers, every case each round: (load report, server CPU-seconds, wrong answers) per case and round."""
    from mmgen.serve.loadtest import run_load

    search = not args.no_search

    servers = {
        "one request at a time": start_server(
            args.model, args.port, ["--max-batch", "1", "--max-wait-ms", "0"], search, args.pure_python_http
        ),
        "dynamic batching": start_server(args.model, args.port + 1, [], search, args.pure_python_http),
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
                    s != 200 or (search and a["caption"] != expected[images[i % len(images)][0]])
                    for i, (s, a) in enumerate(zip(rep.statuses, rep.answers))
                )
                results[(name, clients)].append((rep, cpu, wrong))
                print(f"round {r + 1}: {name}, {clients} clients: {rep.summary()}, server CPU {cpu:.1f} s", flush=True)
    finally:
        for proc in servers.values():
            proc.terminate()
            proc.wait(30)
    return results


def print_table(results: dict[tuple[str, int], list]) -> None:
    """Medians over rounds; the ratio to one request at a time, with 1 client and with as many clients."""

    def median(runs, fn):
        return statistics.median(fn(rep, cpu) for rep, cpu, _ in runs)

    alone = {c: median(runs, lambda rep, _: rep.throughput) for (n, c), runs in results.items() if n.startswith("one")}
    head = "| server | clients | requests/s | p50 ms | p99 ms | mean batch | CPU-s / 100 req | vs one at a time |"
    print("\n" + head + " same clients |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for (name, clients), runs in results.items():
        tput = median(runs, lambda rep, _: rep.throughput)
        cells = [name, clients, f"{tput:.1f}", f"{median(runs, lambda rep, _: rep.percentile(50)):.0f}"]
        cells += [
            f"{median(runs, lambda rep, _: rep.percentile(99)):.0f}",
            f"{median(runs, lambda rep, _: rep.mean_batch):.1f}",
        ]
        cells += [f"{median(runs, lambda rep, cpu: 100 * cpu / rep.requests):.2f}", f"{tput / alone[1]:.2f}×"]
        print("| " + " | ".join(map(str, cells)) + f" | {tput / alone[clients]:.2f}× |")


def search_alone(captioner, paths, batch: int, settings: dict, rounds: int = 5) -> dict[int, float]:
    """CPU-ms per image of the search alone (preprocessed images) at batch 1 and ``batch``, median of ``rounds``."""
    import torch

    pixels = torch.stack([captioner.preprocess(p) for p in paths])
    pixels = pixels.repeat(-(-batch // len(paths)), 1, 1, 1)[:batch] if batch > len(paths) else pixels
    gen = captioner.resolve_generation(**settings)
    times: dict[int, list[float]] = {1: [], batch: []}
    for _ in range(rounds):  # interleaved; batch 1 goes over as many images as the batch holds
        for size in times:
            started = time.process_time()
            for i in range(0, batch, size):
                captioner.model.generate(pixels[i : i + size], gen)
            times[size].append(1000 * (time.process_time() - started) / batch)
    return {size: statistics.median(t) for size, t in times.items()}


def main(argv: list[str] | None = None) -> int:
    if argv is None and sys.argv[1:2] in (["--serve-without-search"], ["--serve-pure"]):
        return serve_without_search(sys.argv[2:], pure_python=sys.argv[1] == "--serve-pure")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(ROOT / "assets" / "tiny-scenes-model"))
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--images", type=int, default=16, help="distinct rendered scenes sent round-robin")
    p.add_argument("--beams", type=int, default=None, help="beams asked by every request (default: the model's)")
    p.add_argument("--port", type=int, default=8730)
    p.add_argument("--no-search", action="store_true", help="serve a constant caption: the cost of all but the search")
    p.add_argument("--pure-python-http", action="store_true", help="with --no-search: uvicorn with h11 and asyncio")
    args = p.parse_args(argv)
    if args.pure_python_http and not args.no_search:
        p.error("--pure-python-http goes with --no-search")

    import torch

    from mmgen.captioner import Captioner
    from mmgen.scenes.writer import make_scenes

    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="mmgen-serve-bench-"))
    make_scenes(tmp, args.images, seed=5)
    paths = sorted((tmp / "images" / "train").glob("*.png"))
    images = [(p.name, p.read_bytes()) for p in paths]
    options = {} if args.beams is None else {"beams": args.beams}
    settings = {} if args.beams is None else {"num_beams": args.beams}
    captioner = None if args.no_search else Captioner.from_pretrained(args.model, device="cpu")
    expected = {p.name: captioner.caption(p, **settings)[0] for p in paths} if captioner else {}

    results = run_rounds(args, images, expected, options)
    print_table(results)
    wrong = sum(w for runs in results.values() for _, _, w in runs)
    total = sum(len(v) for v in results.values()) * args.requests
    print(f"\nanswers {'failed' if args.no_search else 'different from Captioner.caption'}: {wrong} of {total}")
    if captioner is not None:
        reached = statistics.median(rep.mean_batch for rep, _, _ in results[("dynamic batching", args.clients)])
        batch = max(1, round(reached))
        cost = search_alone(captioner, paths, batch, settings)
        print(
            f"search alone, CPU-ms per image: {cost[1]:.1f} at batch 1, {cost[batch]:.1f} at batch {batch}"
            f" ({cost[1] / cost[batch]:.2f}×)"
        )
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
