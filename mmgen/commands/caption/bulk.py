"""Bulk mode of ``mmgen caption`` (``--out FILE``): captioning into a results file that survives kills,
data-parallel under torchrun.

>>> from mmgen.commands.caption.bulk import caption_to_file
>>> caption_to_file(captioner, records, "results.jsonl")

:func:`run_bulk` is what ``mmgen caption`` runs when ``--out`` is given. Every rank loads the same records
in the same order; rank 0 checks (or records) the run's settings, then each rank captions its share
(:func:`caption_to_file`: every ``world_size``-th image, skipping what an earlier run did) and rank 0 merges
the parts (:mod:`~mmgen.commands.caption.results_file` holds the file's format, resuming and merging).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mmgen.commands import FAILED, UsageError, load_captioner, stderr_is_tty
from mmgen.commands.caption.arguments import expand_arguments, generation_overrides
from mmgen.commands.caption.results_file import (
    ResumeError,
    check_settings,
    done_indices,
    drop_partial_line,
    finish,
    part_path,
)
from mmgen.lock_files import LockFile


@dataclass
class BulkSummary:
    """What one process did.

    Attributes:
        captioned: Images captioned by this run (on this rank).
        failed: Images of this run that could not be decoded (written with ``error``).
        skipped: Images found done by an earlier run.
        merged: Lines in the merged output (rank 0, after the merge; else None).
    """

    captioned: int = 0
    failed: int = 0
    skipped: int = 0
    merged: int | None = None


def _my_records(records: Sequence | Iterable, rank: int, world_size: int) -> Iterator[tuple[int, Any]]:
    """``(index, record)`` of this rank's share: every ``world_size``-th from ``rank`` (a sequence is
    indexed directly, a stream is read through)."""
    if isinstance(records, Sequence):
        for i in range(rank, len(records), world_size):
            yield i, records[i]
    else:
        for i, rec in enumerate(records):
            if i % world_size == rank:
                yield i, rec


def _describe(item: Any) -> tuple[Any, str, Any]:
    """(image source, printable name, image_id) of a :class:`~mmgen.data.records.Record` or a path."""
    from mmgen.data.images import source_name
    from mmgen.data.records import Record

    if isinstance(item, Record):
        return item.image, source_name(item.image, item.image_id), item.image_id
    return str(item), str(item), None


def _caption_batch(captioner, batch: list[tuple[int, Any, str, Any]], gen, prompt, rng) -> list[dict]:
    """Result lines of ``(index, image, name, image_id)`` items, in order; undecodable images get ``error``."""
    from mmgen.data.images import BadImageError

    rows, pixels = [], []
    for i, image, name, image_id in batch:
        row = {"index": i, "image": name, "image_id": image_id}
        try:
            pixels.append(captioner.preprocess(image, name))
        except BadImageError as e:
            row["error"] = e.reason
        rows.append(row)
    if pixels:
        out = captioner.model.generate(torch.stack(pixels), gen, generator=rng, prompt=prompt)
        ok = iter(zip(out.best, (s[0] for s in out.scores)))
        for row in rows:
            if "error" not in row:
                row["caption"], row["score"] = next(ok)
    return rows


def caption_to_file(
    captioner,
    records: Sequence | Iterable,
    out: str | os.PathLike,
    *,
    batch_size: int = 32,
    rank: int = 0,
    world_size: int = 1,
    prompt: str | None = None,
    progress: Any = None,
    **generation: Any,
) -> BulkSummary:
    """Caption this rank's share of ``records`` into its results file, skipping what is already done.

    Call :func:`finish` afterwards (on every rank) to merge the parts.

    Args:
        captioner: A :class:`~mmgen.Captioner`.
        records: Records (:class:`~mmgen.data.records.Record`) or image paths, a sequence or a stream,
            in the same order at every rank and every rerun.
        out: The results file (JSON Lines).
        batch_size: Images per forward pass (and per flush to disk).
        rank: This process's rank.
        world_size: Number of processes.
        prompt: Text the captions continue (see :meth:`~mmgen.Captioner.caption`).
        progress: Called with the number of images handled (done or skipped) after each batch.
        **generation: ``GenerationConfig`` overrides.

    Raises:
        ResumeError: an earlier result at an index names another image than the data now has there.
    """
    out = Path(out)
    gen = captioner.resolve_generation(**generation)
    rng = None
    if gen.do_sample and gen.seed is not None:
        rng = torch.Generator(device=captioner.device).manual_seed(gen.seed + rank)
    mine = part_path(out, rank, world_size)
    drop_partial_line(mine)
    done = done_indices(out, keep=lambda i: i % world_size == rank)
    summary = BulkSummary()
    batch: list[tuple[int, Any, str, Any]] = []

    def flush(f) -> None:
        rows = _caption_batch(captioner, batch, gen, prompt, rng)
        f.write("".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows))
        f.flush()  # a kill loses at most the next batch
        summary.failed += sum("error" in r for r in rows)
        summary.captioned += len(rows)
        if progress is not None:
            progress(len(rows))
        batch.clear()

    # a file name that is not UTF-8 is written as the JSON escape of its bytes (\udcXX), which reads back
    with open(mine, "a", encoding="utf-8", errors="backslashreplace") as f:
        for i, item in _my_records(records, rank, world_size):
            image, name, image_id = _describe(item)
            if i in done:
                if done[i] is not None and done[i] != name:
                    raise ResumeError(
                        f"{out}: index {i} was captioned as {done[i]!r} but the data now has {name!r} there: "
                        "another data source or order; pass --overwrite to start again"
                    )
                summary.skipped += 1
                if progress is not None:
                    progress(1)
                continue
            batch.append((i, image, name, image_id))
            if len(batch) == batch_size:
                flush(f)
        if batch:
            flush(f)
    return summary


def _records(args: argparse.Namespace):
    """The records of ``--data`` (a stream for HF sources) or the image files named on the command line."""
    if not args.data:
        return expand_arguments(args.images)
    from mmgen.data.records import DataFormatError
    from mmgen.data.sources import is_stream, load_records

    try:
        return load_records(
            args.data if len(args.data) > 1 else args.data[0],
            images=args.images_dir,
            split=args.split,
            streaming=is_stream(args.data),
            keep_uncaptioned=True,  # every image is captioned, with or without references
            strict_paths=args.strict_paths,
        )
    except (DataFormatError, FileNotFoundError) as e:
        raise UsageError(f"--data: {e}") from None


def _settings(args: argparse.Namespace, captioner, overrides: dict, model_files: dict) -> dict:
    """What decides the captions: resuming with other values would mix two kinds of caption. The model is its
    files' fingerprint (``model_files``); its path is only recorded."""
    from mmgen.config import to_dict

    resolved = captioner.resolve_generation(**overrides)
    captioner.model.check_generation(resolved, args.prompt)
    gen = to_dict(resolved)
    return {
        "model": str(Path(args.model).resolve()),
        "model_files": model_files,
        "data": [str(Path(d).resolve()) if Path(d).exists() else d for d in (args.data or args.images)],
        "split": args.split,
        **{f"generation.{k}": v for k, v in gen.items()},
        "prompt": args.prompt,
        "quantize": args.quantize,
        "dtype": str(next(captioner.model.parameters()).dtype),
    }


def _on_rank0(state, fn) -> Any:
    """Run ``fn`` on rank 0 (returns its result there, None elsewhere); every rank raises a UsageError when it
    failed there (the message on rank 0)."""
    from mmgen.distributed import broadcast

    error, result = None, None
    if state.is_main:
        try:
            result = fn()
        except (ValueError, OSError) as e:
            error = str(e)
    if state.distributed:
        flag = broadcast(torch.tensor([error is not None], dtype=torch.int32), src=0)
        if bool(flag.item()) and error is None:
            raise UsageError("rank 0 could not start the run (see its message)")
    if error is not None:
        raise UsageError(error)
    return result


def _start(out: Path, settings: dict, overwrite: bool) -> LockFile:
    """Rank 0's start: take ``OUT.lock`` (one run at a time appends to a results file), then check or record the
    settings; returns the lock.

    Raises:
        ResumeError: Another run holds the file, or the settings differ from the earlier run's.
    """
    lock = LockFile.take(out.with_name(f"{out.name}.lock"), "bulk captioning run", str(out), ResumeError, "is writing")
    try:
        check_settings(out, settings, overwrite=overwrite)
    except BaseException:
        lock.release()
        raise
    return lock


def run_bulk(args: argparse.Namespace) -> int:
    """Caption into ``args.out``; returns the exit code (1 when some images could not be decoded)."""
    from tqdm import tqdm

    from mmgen.distributed import all_reduce_sum, barrier, broadcast, cleanup_distributed, init_distributed
    from mmgen.models.files import model_fingerprint

    out = Path(args.out)
    if not out.parent.is_dir():
        raise UsageError(f"--out {out}: the folder {out.parent} does not exist")
    records = _records(args)
    overrides = generation_overrides(args)
    state = init_distributed(args.device or ("cpu" if args.quantize else None))
    lock = None
    try:
        captioner = load_captioner(args, device=str(state.device))
        model_files = model_fingerprint(args.model)  # the model is its files, wherever they lie
        settings = _settings(args, captioner, overrides, model_files)  # invalid settings fail before any image
        lock = _on_rank0(state, lambda: _start(out, settings, args.overwrite))
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
        merged, failed_all = finish(out, state.rank, state.world_size) or (None, 0)
        barrier()  # no rank exits (and makes torchrun stop the others) before the merge is written
        failed_all = int(broadcast(torch.tensor([failed_all], dtype=torch.long), src=0).item())
    finally:
        if lock is not None:
            lock.release()
        cleanup_distributed()
    if state.is_main:
        before = failed_all - failed  # images of the earlier run(s) that could not be decoded: still missing
        failures = f", {failed} could not be decoded" if failed else ""
        failures += f", {before} could not be decoded in an earlier run" if before else ""
        print(
            f"mmgen caption: {out}: {merged} images ({captioned} captioned now, {skipped} done before{failures})"
            + ("; their lines hold 'error'" if failed_all else ""),
            file=sys.stderr,
        )
    return FAILED if failed_all else 0
