"""``mmgen score``: score a COCO results file against a COCO annotation file.

Prints ``name: value`` lines (full precision), or with ``--json`` one JSON object of the same metrics.
Exit codes: 2 when an argument is wrong (a missing or malformed file, results that do not match the
references, a metric or tokenizer that needs the missing Java), one line on stderr; 0 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mmgen.commands import USAGE, UsageError


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``score`` subcommand."""
    p = subparsers.add_parser(
        "score",
        help="score captions with the official COCO metrics",
        description=(
            "Score a COCO results file ([{'image_id', 'caption'}]) against a COCO caption annotation file with "
            "the official COCO caption metrics (numbers equal to pycocoevalcap's)."
        ),
    )
    p.add_argument("--refs", required=True, help="COCO caption annotation file (images + annotations)")
    p.add_argument("--results", required=True, help="COCO results file: a JSON list of {image_id, caption}")
    p.add_argument(
        "--tokenizer",
        choices=("auto", "java", "python"),
        default="auto",
        help="PTB tokenizer: the Stanford jar (java), its pure-Python port (python), or java when available (auto)",
    )
    p.add_argument(
        "--metrics",
        nargs="+",
        default=None,
        metavar="NAME",
        help="metrics among Bleu METEOR ROUGE_L CIDEr SPICE (default: all but SPICE; METEOR only when java is present)",
    )
    p.add_argument("--json", action="store_true", help="print the scores as a JSON object")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Load both files, score, print the table; returns the exit status."""
    from mmgen.evaluation import ScorerUnavailableError, load_coco_references, load_coco_results
    from mmgen.evaluation.metrics import score_captions_detailed

    missing = [
        f"--{k} {getattr(args, k)}: no such file" for k in ("refs", "results") if not Path(getattr(args, k)).is_file()
    ]
    if missing:
        raise UsageError("\n".join(missing))
    try:
        refs = load_coco_references(args.refs)
        cands = load_coco_results(args.results)
        result = score_captions_detailed(refs, cands, metrics=args.metrics, tokenizer=args.tokenizer)
    except (OSError, ValueError, ScorerUnavailableError) as e:
        print(f"mmgen score: error: {e}", file=sys.stderr)
        return USAGE
    if result.empty_candidates:
        print(f"mmgen score: {len(result.empty_candidates)} empty candidate captions", file=sys.stderr)
    if args.json:
        print(json.dumps(result.overall, indent=1))
    else:
        for name, value in result.overall.items():
            print(f"{name}: {value!r}")
    return 0
