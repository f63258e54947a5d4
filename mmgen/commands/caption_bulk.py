"""Bulk mode of ``mmgen caption`` (``--out FILE``): resumable, data-parallel under torchrun.

Not a subcommand of its own: :func:`run_bulk` is called by ``mmgen caption`` when ``--out`` is given.
Every rank loads the same records in the same order; rank 0 checks (or records) the run's settings,
then each rank captions its share (:func:`mmgen.bulk.caption_to_file`) and rank 0 merges the parts.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mmgen.commands import FAILED, UsageError


def _records(args: argparse.Namespace):
    """The records of ``--data`` (a stream for HF sources) or the image files named on the command line."""
    if not args.data:
        from mmgen.commands.caption_options import expand_arguments

        return expand_arguments(args.images)
    from mmgen.data.formats import DataFormatError
    from mmgen.data.sources import is_stream, load_records

    try:
        return load_records(
            args.data if len(args.data) > 1 else args.data[0],
            images=args.images_dir,
            split=args.split,
            streaming=is_stream(args.data),
            keep_uncaptioned=True,  # every image is captioned, with or without references
        )
    except (DataFormatError, FileNotFoundError) as e:
        raise UsageError(f"--data: {e}") from None


def _settings(args: argparse.Namespace, captioner, overrides: dict) -> dict:
    """What decides the captions: resuming with other values would mix two kinds of caption."""
    from mmgen.config import to_dict

    gen = to_dict(captioner.resolve_generation(**overrides))
    return {
        "model": str(Path(args.model).resolve()),
        "data": [str(Path(d).resolve()) if Path(d).exists() else d for d in (args.data or args.images)],
        "split": args.split,
        **{f"generation.{k}": v for k, v in gen.items()},
        "prompt": args.prompt,
        "quantize": args.quantize,
        "dtype": str(next(captioner.model.parameters()).dtype),
    }


def _on_rank0(state, fn) -> None:
    """Run ``fn`` on rank 0; every rank raises a UsageError when it failed there (the message on rank 0)."""
    import torch

    from mmgen.distributed import broadcast

    error = None
    if state.is_main:
        try:
            fn()
        except (ValueError, OSError) as e:
            error = str(e)
    if state.distributed:
        flag = broadcast(torch.tensor([error is not None], dtype=torch.int32), src=0)
        if bool(flag.item()) and error is None:
            raise UsageError("rank 0 could not start the run (see its message)")
    if error is not None:
        raise UsageError(error)


def run_bulk(args: argparse.Namespace) -> int:
    """Caption into ``args.out``; returns the exit code (1 when some images could not be decoded)."""
    import torch
    from tqdm import tqdm

    from mmgen.bulk import ResumeError, caption_to_file, check_settings, finish
    from mmgen.commands.caption_options import generation_overrides, load_captioner, stderr_is_tty
    from mmgen.distributed import all_reduce_sum, barrier, cleanup_distributed, init_distributed

    out = Path(args.out)
    if not out.parent.is_dir():
        raise UsageError(f"--out {out}: the folder {out.parent} does not exist")
    records = _records(args)
    overrides = generation_overrides(args)
    state = init_distributed(args.device or ("cpu" if args.quantize else None))
    try:
        captioner = load_captioner(args, device=str(state.device))
        settings = _settings(args, captioner, overrides)  # invalid settings fail here, before any image is read
        _on_rank0(state, lambda: check_settings(out, settings, overwrite=args.overwrite))
        barrier()
        total = len(records) if hasattr(records, "__len__") else None
        share = None if total is None else len(range(state.rank, total, state.world_size))
        quiet = args.quiet or not stderr_is_tty() or not state.is_main
        bar = tqdm(total=share, desc="caption", unit="img", file=sys.stderr, disable=quiet)
        try:
            summary = caption_to_file(
                captioner,
                records,
                out,
                batch_size=args.batch_size,
                rank=state.rank,
                world_size=state.world_size,
                prompt=args.prompt,
                progress=bar.update,
                **overrides,
            )
        except ResumeError as e:
            raise UsageError(str(e)) from None
        finally:
            bar.close()
        counts = torch.tensor([summary.captioned, summary.failed, summary.skipped], dtype=torch.long)
        captioned, failed, skipped = all_reduce_sum(counts).tolist()
        merged = finish(out, state.rank, state.world_size)
        barrier()  # no rank exits (and makes torchrun stop the others) before the merge is written
    finally:
        cleanup_distributed()
    if state.is_main:
        print(
            f"mmgen caption: {out}: {merged} images ({captioned} captioned now, {skipped} done before"
            f"{f', {failed} could not be decoded' if failed else ''})",
            file=sys.stderr,
        )
    return FAILED if failed else 0
