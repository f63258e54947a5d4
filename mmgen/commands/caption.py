"""``mmgen caption IMAGE_OR_DIR... --model DIR``: caption image files with a saved model.

Prints one ``path<TAB>caption`` line per image (or JSON lines with ``--json``), in input order, as
batches finish, with a progress bar on stderr when stderr is a terminal. Exit codes: 2 when an
argument is wrong (a missing file, a directory with no images, a bad option, a model that cannot be
loaded), reported before any captioning; 1 when some images could not be decoded (each reported on
stderr with the reason; the others are still captioned); 0 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mmgen.commands import FAILED, USAGE, UsageError, add_threads_option, apply_threads, positive_int


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
    p.add_argument("--batch-size", type=positive_int, default=32, help="images per forward pass (default: 32)")
    p.add_argument("--json", action="store_true", help='print JSON lines {"image", "caption", "score"}')
    p.add_argument("--quiet", action="store_true", help="no progress bar on stderr")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    p.add_argument(
        "--dtype", default=None, choices=("float32", "bfloat16", "float16"), help="weights dtype (default: as saved)"
    )
    add_threads_option(p)
    p.set_defaults(func=run)


def expand_arguments(arguments: list[str]) -> list[Path]:
    """The image files the arguments name (directories: the image files directly inside, sorted).

    Raises:
        UsageError: one line per argument that is missing or a directory without image files.
    """
    from mmgen.captioner import IMAGE_EXTENSIONS, list_images

    problems = []
    for arg in map(Path, arguments):
        if not arg.exists():
            problems.append(f"{arg}: no such file or directory")
        elif arg.is_dir() and not list_images([arg]):
            folders = any(f.is_dir() for f in arg.iterdir())
            hint = "; subdirectories are not searched, name them" if folders else ""
            kinds = ", ".join(IMAGE_EXTENSIONS)
            problems.append(f"{arg}: a directory with no image files ({kinds}) directly inside it{hint}")
    if problems:
        raise UsageError("\n".join(problems))
    return list_images(arguments)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from mmgen.captioner import Captioner

    paths = expand_arguments(args.images)
    apply_threads(args)
    overrides = {"num_return_sequences": 1}  # one caption per image is printed
    if args.beams is not None:
        overrides["num_beams"] = args.beams
    if args.max_new_tokens is not None:
        overrides["max_new_tokens"] = args.max_new_tokens
    try:
        captioner = Captioner.from_pretrained(args.model, device=args.device, dtype=args.dtype)
    except (FileNotFoundError, OSError) as e:
        print(f"mmgen caption: cannot load the model: {e}", file=sys.stderr)
        return USAGE
    captioner.resolve_generation(**overrides)  # invalid settings fail before any image is read

    failed = 0
    bar = tqdm(total=len(paths), desc="caption", unit="img", file=sys.stderr, disable=args.quiet or not _tty())
    results = captioner.iter_captions([str(p) for p in paths], args.batch_size, skip_errors=True, **overrides)
    for r in results:
        with tqdm.external_write_mode(file=sys.stderr):  # lines never land inside the bar
            if r.error is not None:
                failed += 1
                print(f"mmgen caption: {r.source}: {r.error}", file=sys.stderr)
            elif args.json:
                print(json.dumps({"image": r.source, "caption": r.caption, "score": r.scores[0]}), flush=True)
            else:
                print(f"{r.source}\t{r.caption}", flush=True)
        bar.update(1)
    bar.close()
    if failed:
        print(f"mmgen caption: {failed} of {len(paths)} images could not be captioned", file=sys.stderr)
    return FAILED if failed else 0


def _tty() -> bool:
    return hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
