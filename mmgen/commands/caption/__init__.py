"""``mmgen caption IMAGE_OR_DIR... --model DIR``: caption image files with a saved model (the home of the
command: its options here and in :mod:`~mmgen.commands.caption.arguments`, bulk mode in
:mod:`~mmgen.commands.caption.bulk` and :mod:`~mmgen.commands.caption.results_file`).

Prints one ``path<TAB>caption`` line per image (or JSON lines with ``--json``), in input order, as
batches finish, with a progress bar on stderr when stderr is a terminal. Exit codes: 2 when an
argument is wrong (a missing file, a directory with no images, a bad option, a model that cannot be
loaded), reported before any captioning; 1 when some images could not be decoded (each reported on
stderr with the reason; the others are still captioned); 0 otherwise.

Bulk mode, ``--out results.jsonl`` (with image files or ``--data SOURCE``: COCO json, JSONL/CSV table,
HF dataset folder, parquet/webdataset shards, hub name): results are appended to the file as they are
made, a rerun after a kill captions only what is missing, and under ``torchrun`` every rank captions
its share and rank 0 merges them into one file (see :mod:`mmgen.commands.caption.results_file`).
"""

from __future__ import annotations

import argparse
import json
import sys

from mmgen.commands import (
    FAILED,
    UsageError,
    add_device_option,
    add_generation_flags,
    add_strict_paths_option,
    add_threads_option,
    apply_threads,
    load_captioner,
    model_line,
    positive_int,
    split_generation_overrides,
    stderr_is_tty,
)
from mmgen.commands.caption.arguments import expand_arguments, generation_overrides


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "caption",
        help="caption images with a saved model",
        description="Caption image files; a directory stands for the image files directly inside it (sorted).",
    )
    p.add_argument(
        "images",
        nargs="*",
        metavar="IMAGE_OR_DIR",
        help="image files and/or directories; generation.KEY=VALUE arguments among them override the model's "
        "generation settings (e.g. generation.num_beams=5), as in mmgen train",
    )
    p.add_argument("--model", required=True, metavar="DIR", help="saved model directory (config.json, ...)")
    p.add_argument("--data", nargs="+", metavar="SOURCE", help="caption a dataset (COCO, JSONL/CSV, HF); needs --out")
    p.add_argument("--images-dir", default=None, metavar="DIR", help="images of a COCO/table --data source")
    add_strict_paths_option(p)
    p.add_argument("--split", default=None, help="with --data: only this split (train, val, test)")
    p.add_argument("--out", default=None, metavar="FILE", help="bulk mode: append JSON lines here; resumable")
    p.add_argument("--overwrite", action="store_true", help="bulk mode: start again instead of resuming")
    p.add_argument("--prompt", default=None, help="text the captions continue (default: the model's own prompt)")
    p.add_argument("--bad-words", default=None, metavar="W1,W2", help="comma-separated words never to generate")
    p.add_argument("--quantize", default=None, choices=("int8",), help="int8: dynamic int8 CPU inference")
    add_generation_flags(p)
    p.add_argument("--batch-size", type=positive_int, default=32, help="images per forward pass (default: 32)")
    p.add_argument("--json", action="store_true", help='print JSON lines {"image", "caption", "score"}')
    p.add_argument("--quiet", action="store_true", help="no progress bar on stderr")
    add_device_option(p)
    p.add_argument(
        "--dtype", default=None, choices=("float32", "bfloat16", "float16"), help="weights dtype (default: as saved)"
    )
    add_threads_option(p)
    p.set_defaults(func=run, positionals="images")


_ESCAPES = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}


def one_field(text: str) -> str:
    r"""``text`` as one field of a TSV line: a backslash, a tab, a line break or another control character in a
    file name (or a caption) is escaped (``\\``, ``\t``, ``\n``, ``\r``, ``\xNN``, ``\uNNNN``), so that each
    image stays one line; other text is unchanged."""
    if text.isprintable() and "\\" not in text:
        return text
    escaped = (_ESCAPES.get(c, c if c.isprintable() else c.encode("unicode_escape").decode()) for c in text)
    return "".join(escaped)


def run(args: argparse.Namespace) -> int:
    apply_threads(args)
    args.images, args.overrides = split_generation_overrides(args.images)
    if args.data:  # --data takes every argument after it
        args.data, more = split_generation_overrides(args.data)
        args.overrides += more
    if args.data and args.images:
        raise UsageError("give image files or --data, not both")
    if not args.data and not args.images:
        raise UsageError("nothing to caption: give image files or directories, or --data SOURCE with --out")
    if args.data and not args.out:
        raise UsageError("--data needs --out FILE (bulk captioning writes a JSON Lines file)")
    if args.out:
        from mmgen.commands.caption.bulk import run_bulk

        return run_bulk(args)
    from tqdm import tqdm

    paths = expand_arguments(args.images)
    overrides = generation_overrides(args)
    captioner = load_captioner(args)
    # invalid settings, and captions longer than the decoder's positions, fail before any image is read
    captioner.model.check_generation(captioner.resolve_generation(**overrides), args.prompt)
    if not args.quiet:  # which model answers: on stderr, never among the captions
        print(f"mmgen caption: {model_line(captioner, args.model)}", file=sys.stderr)

    failed = 0
    bar = tqdm(total=len(paths), desc="caption", unit="img", file=sys.stderr, disable=args.quiet or not stderr_is_tty())
    images = [str(p) for p in paths]
    results = captioner.iter_captions(images, args.batch_size, skip_errors=True, prompt=args.prompt, **overrides)
    for r in results:
        with tqdm.external_write_mode(file=sys.stderr):  # lines never land inside the bar
            if r.error is not None:
                failed += 1
                print(f"mmgen caption: {one_field(r.source)}: {one_field(r.error)}", file=sys.stderr)
            elif args.json:
                print(json.dumps({"image": r.source, "caption": r.caption, "score": r.scores[0]}), flush=True)
            else:
                print(f"{one_field(r.source)}\t{one_field(r.caption)}", flush=True)
        bar.update(1)
    bar.close()
    if failed:
        print(f"mmgen caption: {failed} of {len(paths)} images could not be captioned", file=sys.stderr)
    return FAILED if failed else 0
