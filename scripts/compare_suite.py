#!/usr/bin/env python
"""``scripts/compare_baseline.py --suite``: every scene distribution of a suite x several seeds, summarised.

Each (distribution, seed) is one run of compare_baseline.py in a process of its own (``--jobs`` at a time,
each with the same ``--threads``), on scenes synthesised once per (distribution, data seed) under
``--data-root`` and written to ``OUT/NAME-sSEED/`` (a finished run is reused, so an interrupted suite goes on
where it stopped). Then, per distribution and mmgen arm against the VisionEncoderDecoder baseline: the CIDEr-D
of every seed, the ratio of the means, the mean and the worst per-seed ratio, a 95% bootstrap interval of the
ratio (images resampled within each seed, paired between the arms), and each attribute accuracy averaged over
the seeds. Written to ``OUT/suite.json`` and ``OUT/suite.md``; printed.

  python scripts/compare_baseline.py --suite design --seeds 0 1 2 --jobs 2 --cpu-seconds 210 \\
      --data-root /tmp/suite --out runs/suite
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BASELINE = "VisionEncoderDecoder"
ATTRIBUTES = ("color", "shape", "size", "number", "count", "position", "relation", "background", "exact")


def suite_names(spec: list[str]) -> list[str]:
    """Distribution names from ``--suite`` words: 'design', 'held-out', 'all', or names (also 'simple'/'hard')."""
    from mmgen.scenes.suite import DESIGN, HELD_OUT, SUITE

    groups = {"design": list(DESIGN), "held-out": list(HELD_OUT), "all": [*DESIGN, *HELD_OUT]}
    out: list[str] = []
    for word in spec:
        names = groups.get(word, [word])
        bad = [n for n in names if n not in SUITE and n not in ("simple", "hard")]
        if bad:
            raise SystemExit(f"compare_baseline --suite: unknown distribution {bad[0]!r}; use design, held-out, all "
                             f"or names of {', '.join(SUITE)}, simple, hard")  # fmt: skip
        out += [n for n in names if n not in out]
    return out


def _strip(argv: list[str], flags: dict[str, int]) -> list[str]:
    """``argv`` without the given flags (flag -> how many values follow it; -1: all up to the next flag)."""
    out, i = [], 0
    while i < len(argv):
        n = flags.get(argv[i].split("=", 1)[0])
        if n is None:
            out.append(argv[i])
            i += 1
            continue
        i += 1
        if "=" in argv[i - 1]:
            continue
        if n < 0:
            while i < len(argv) and not argv[i].startswith("--"):
                i += 1
        else:
            i += n
    return out


def run_suite(args, argv: list[str]) -> dict:
    """Run (or reuse) every (distribution, seed) and summarise."""
    names = suite_names(args.suite)
    out, data_root = Path(args.out), Path(args.data_root)
    out.mkdir(parents=True, exist_ok=True)
    common = _strip(argv, {"--suite": -1, "--seeds": -1, "--jobs": 1, "--data-root": 1, "--out": 1, "--difficulty": 1,
                           "--seed": 1, "--data-seed": 1, "--data-dir": 1})  # fmt: skip
    todo = []
    for name in names:
        for seed in args.seeds:
            run_dir = out / f"{name}-s{seed}"
            if (run_dir / "result.json").is_file():
                continue
            run_dir.mkdir(parents=True, exist_ok=True)
            cmd = [sys.executable, str(ROOT / "scripts" / "compare_baseline.py"), *common, "--difficulty", name,
                   "--seed", str(seed), "--data-seed", str(seed), "--data-dir", str(data_root / f"{name}-s{seed}"),
                   "--out", str(run_dir)]  # fmt: skip
            todo.append((run_dir, cmd))
    running: list[tuple[Path, subprocess.Popen, float]] = []
    failed = []
    while todo or running:
        while todo and len(running) < args.jobs:
            run_dir, cmd = todo.pop(0)
            log = open(run_dir / "log.txt", "w")  # noqa: SIM115 (closed with the process)
            print(f"suite: start {run_dir.name}", flush=True)
            running.append((run_dir, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), time.time()))
        time.sleep(2)
        for item in list(running):
            run_dir, proc, t0 = item
            if proc.poll() is None:
                continue
            running.remove(item)
            status = "done" if proc.returncode == 0 else f"FAILED (exit {proc.returncode}, see {run_dir}/log.txt)"
            print(f"suite: {run_dir.name} {status} in {time.time() - t0:.0f} s", flush=True)
            if proc.returncode:
                failed.append(run_dir.name)
    if failed:
        raise SystemExit(f"compare_baseline --suite: {len(failed)} run(s) failed: {', '.join(failed)}")
    summary = summarise_suite(out, names, args.seeds)
    (out / "suite.json").write_text(json.dumps(summary, indent=1))
    (out / "suite.md").write_text(format_suite(summary))
    print(format_suite(summary))
    return summary


def bootstrap_ratio(pairs: list[tuple[np.ndarray, np.ndarray]], n: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% interval of mean(arm) / mean(baseline) over seeds, resampling each seed's images (paired)."""
    rng = np.random.default_rng(seed)
    ratios = np.empty(n)
    for b in range(n):
        num = den = 0.0
        for arm, base in pairs:
            idx = rng.integers(len(arm), size=len(arm))
            num += arm[idx].mean()
            den += base[idx].mean()
        ratios[b] = num / max(den, 1e-12)
    lo, hi = np.percentile(ratios, [2.5, 97.5])
    return float(lo), float(hi)


def summarise_suite(out: Path, names: list[str], seeds: list[int]) -> dict:
    """Per distribution and mmgen arm: CIDEr per seed, ratios to the baseline, interval, attributes."""
    summary: dict = {"distributions": {}, "seeds": seeds}
    for name in names:
        results = {s: json.loads((out / f"{name}-s{s}" / "result.json").read_text()) for s in seeds}
        first = next(iter(results.values()))
        summary.setdefault("command", first["command"])
        summary.setdefault("budget", first["budget"])
        arms = {}
        for arm in first["arms"]:
            finals = [results[s]["arms"][arm]["final"] for s in seeds]
            row = {
                "cider": [f["CIDEr"] for f in finals],
                "train_cpu_s": float(np.mean([results[s]["arms"][arm]["train_cpu_s"] for s in seeds])),
                "steps": float(np.mean([results[s]["arms"][arm]["steps"] for s in seeds])),
                "attributes": {
                    a: float(np.mean([f[f"scene_{a}"] for f in finals]))
                    for a in ATTRIBUTES
                    if all(f"scene_{a}" in f for f in finals)
                },
            }
            if arm != BASELINE and BASELINE in first["arms"]:
                base = [results[s]["arms"][BASELINE]["final"] for s in seeds]
                per_seed = [f["CIDEr"] / max(b["CIDEr"], 1e-12) for f, b in zip(finals, base)]
                pairs = [(np.array(f["CIDEr_per_image"]), np.array(b["CIDEr_per_image"])) for f, b in zip(finals, base)]
                row |= {
                    "ratio_of_means": float(np.mean(row["cider"]) / max(np.mean([b["CIDEr"] for b in base]), 1e-12)),
                    "ratio_per_seed": per_seed,
                    "ratio_mean": float(np.mean(per_seed)),
                    "ratio_worst": float(min(per_seed)),
                    "ratio_interval": bootstrap_ratio(pairs),
                }
            arms[arm] = row
        summary["distributions"][name] = arms
    return summary


def format_suite(summary: dict) -> str:
    """Markdown tables: CIDEr and ratios, then attribute accuracies."""
    lines = [f"budget {summary['budget']}, seeds {summary['seeds']}", "",
             "| distribution | arm | CIDEr per seed | mean | ratio (mean of seeds) | worst seed | 95% interval |",
             "| --- | --- | --- | ---: | ---: | ---: | --- |"]  # fmt: skip
    for name, arms in summary["distributions"].items():
        for arm, r in arms.items():
            per = " / ".join(f"{c:.2f}" for c in r["cider"])
            if "ratio_mean" in r:
                lo, hi = r["ratio_interval"]
                ratio = f"**{r['ratio_mean']:.2f}x** | {r['ratio_worst']:.2f}x | {lo:.2f}-{hi:.2f}x"
            else:
                ratio = " | | "
            lines.append(f"| {name} | {arm} | {per} | {np.mean(r['cider']):.3f} | {ratio} |")
    lines += [
        "",
        "| distribution | arm | " + " | ".join(ATTRIBUTES) + " |",
        "| --- | --- |" + " ---: |" * len(ATTRIBUTES),
    ]
    for name, arms in summary["distributions"].items():
        for arm, r in arms.items():
            acc = r["attributes"]
            lines.append(
                f"| {name} | {arm} | " + " | ".join(f"{acc[a]:.2f}" if a in acc else "" for a in ATTRIBUTES) + " |"
            )
    return "\n".join(lines) + "\n"
