"""``mmgen demo``: synthesise scenes, train a tiny captioner, evaluate it against a baseline, offline on CPU."""

from __future__ import annotations

import argparse
from pathlib import Path

from mmgen.commands import add_threads_option, apply_threads


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="the whole pipeline offline on CPU in a few minutes (synthetic scenes)",
        description="Synthesise a scenes dataset, train a tiny captioner from scratch, evaluate it on held-out "
        "scenes with beam search beside a trivial baseline (the most frequent training caption), caption a few "
        "images and write an HTML report. No network needed.",
    )
    p.add_argument("--out", type=Path, default=Path("mmgen-demo"), help="output directory (default: ./mmgen-demo)")
    p.add_argument(
        "--budget",
        choices=("small", "default", "large"),
        default="default",
        help="small: ~1 min, default: a few minutes, large: longer and better (2 CPU cores)",
    )
    p.add_argument("--steps", type=int, default=None, help="override the budget's number of training steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tokenizer", choices=("auto", "java", "python"), default="auto", help="PTB tokenizer backend")
    add_threads_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mmgen.demo import run_demo

    apply_threads(args)
    res = run_demo(args.out, budget=args.budget, steps=args.steps, seed=args.seed, tokenizer=args.tokenizer)
    return 0 if res.cider_ratio >= 3 else 1
