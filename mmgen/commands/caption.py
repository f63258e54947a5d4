"""``mmgen caption IMAGE_OR_DIR... --model DIR``: caption image files with a saved model.

Prints one ``path<TAB>caption`` line per image (or JSON lines with ``--json``), in input order, as
batches finish. An image that cannot be decoded is reported on stderr with the reason; the others
are still captioned and the exit code is 1.
"""

from __future__ import annotations

import argparse
import json
import sys


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "caption",
        help="caption images with a saved model",
        description="Caption image files; a directory stands for the image files directly inside it (sorted).",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR", help="image files and/or directories")
    p.add_argument("--model", required=True, metavar="DIR", help="saved model directory (config.json, ...)")
    p.add_argument("--beams", type=int, default=None, help="beam size (default: the model's saved setting)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="caption length limit in tokens")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default: 32)")
    p.add_argument("--json", action="store_true", help='print JSON lines {"image", "caption", "score"}')
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    p.add_argument(
        "--dtype", default=None, choices=("float32", "bfloat16", "float16"), help="weights dtype (default: as saved)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mmgen.captioner import Captioner, list_images

    paths = list_images(args.images)
    if not paths:
        print("mmgen caption: no image files found in the given directories", file=sys.stderr)
        return 1
    overrides = {"num_return_sequences": 1}  # one caption per image is printed
    if args.beams is not None:
        overrides["num_beams"] = args.beams
    if args.max_new_tokens is not None:
        overrides["max_new_tokens"] = args.max_new_tokens
    try:
        captioner = Captioner.from_pretrained(args.model, device=args.device, dtype=args.dtype)
    except (FileNotFoundError, OSError) as e:
        print(f"mmgen caption: cannot load the model: {e}", file=sys.stderr)
        return 2
    captioner.resolve_generation(**overrides)  # invalid settings fail before any image is read

    failed = 0
    results = captioner.iter_captions([str(p) for p in paths], args.batch_size, skip_errors=True, **overrides)
    for r in results:
        if r.error is not None:
            failed += 1
            print(f"mmgen caption: {r.source}: {r.error}", file=sys.stderr)
        elif args.json:
            print(json.dumps({"image": r.source, "caption": r.caption, "score": r.scores[0]}), flush=True)
        else:
            print(f"{r.source}\t{r.caption}", flush=True)
    if failed:
        print(f"mmgen caption: {failed} of {len(paths)} images could not be captioned", file=sys.stderr)
    return 1 if failed else 0
