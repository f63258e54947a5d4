"""Bulk captioning into a JSON Lines file that survives kills and runs data-parallel under torchrun.

>>> from mmgen.bulk import caption_to_file
>>> caption_to_file(captioner, records, "results.jsonl")

Every image of the source has a position ``index`` (0, 1, ...). Results are appended as one line per
image, ``{"index", "image", "image_id", "caption", "score"}`` (or ``"error"`` for an image that
cannot be decoded), and flushed batch by batch, so a killed run loses at most the batch in flight.
A rerun reads what is already there, drops a half-written last line, and captions only the missing
indices: each image ends up in the file exactly once.

Under ``torchrun`` rank ``r`` of ``W`` captions the indices ``i % W == r`` into its own file
``OUT.part<r>``; when every rank is done, rank 0 merges the parts (and any earlier ``OUT``) into
``OUT`` sorted by index, atomically, and removes the parts. A single process appends to ``OUT``
itself. A rerun with another number of processes works the same way: the parts of any earlier run
count as done. The generation settings are kept in ``OUT.meta.json``; a rerun with other settings
or another model is refused rather than mixing captions made two ways.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


class ResumeError(ValueError):
    """An existing output that this run cannot continue (other settings, other data, a damaged line)."""


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


def part_path(out: Path, rank: int, world_size: int) -> Path:
    """The file this rank appends to: ``out`` itself for one process, else ``out.part<rank>``."""
    return out if world_size == 1 else out.with_name(f"{out.name}.part{rank}")


def _parts(out: Path) -> list[Path]:
    return sorted(p for p in out.parent.glob(f"{out.name}.part*") if p.name[len(out.name) + 5 :].isdigit())


def drop_partial_line(path: Path) -> int:
    """Cut a last line that has no newline (a write cut short by a kill); returns the bytes removed."""
    if not path.exists():
        return 0
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        pos = size
        while pos > 0:
            step = min(65536, pos)
            f.seek(pos - step)
            chunk = f.read(step)
            nl = chunk.rfind(b"\n")
            if nl >= 0:
                end = pos - step + nl + 1
                break
            pos -= step
        else:
            end = 0
        if end < size:
            f.truncate(end)
        return size - end


def read_results(path: Path) -> Iterator[dict]:
    """The complete lines of a results file (a last line without newline is ignored).

    Raises:
        ResumeError: a complete line that is not a JSON object with an integer ``index`` (naming file and line).
    """
    if not path.exists():
        return
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.endswith("\n"):
                return  # half-written by a killed run: not done
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ResumeError(f"{path}:{n}: not a JSON line ({e.msg}); the file is damaged") from None
            if not isinstance(row, dict) or not isinstance(row.get("index"), int):
                raise ResumeError(f"{path}:{n}: a result line needs an integer 'index'; the file is not mmgen's")
            yield row


def done_indices(out: Path, keep: Any = None) -> dict[int, str]:
    """``index -> image`` of every result already in ``out`` or in its parts (``keep(index)`` filters)."""
    done: dict[int, str] = {}
    for path in [out, *_parts(out)]:
        for row in read_results(path):
            if keep is None or keep(row["index"]):
                done.setdefault(row["index"], row.get("image"))
    return done


ADDED_SETTINGS = {"generation.padded_head": None, "generation.decode_sdpa": "efficient,math"}
"""Settings recorded since they became generation options, with the value every earlier run used."""


def check_settings(out: Path, settings: dict, overwrite: bool = False) -> None:
    """Record the run's settings in ``out.meta.json``, or check them against an earlier run's.

    With ``overwrite``, earlier results (the output, its parts and settings) are deleted first.

    Raises:
        ResumeError: results exist that were made with other settings (the message lists the differences).
    """
    meta = out.with_name(f"{out.name}.meta.json")
    settings = json.loads(json.dumps(settings, default=str))  # as it reads back (tuples become lists)
    if overwrite:
        for p in [out, *_parts(out), meta]:
            p.unlink(missing_ok=True)
    has_results = out.exists() or bool(_parts(out))
    if meta.exists() and has_results:
        before = json.loads(meta.read_text(encoding="utf-8"))
        before = {**ADDED_SETTINGS, **before}  # a run recorded before these were settings used their defaults
        diff = [f"{k}: {before.get(k)!r} then, {v!r} now" for k, v in settings.items() if before.get(k) != v]
        if diff:
            raise ResumeError(
                f"{out} was started with other settings ({'; '.join(diff)}): rerun with the same ones to resume, "
                "or pass --overwrite to start again"
            )
        return
    if has_results and not meta.exists():
        raise ResumeError(f"{out} exists but was not written by a bulk run (no {meta.name}); pass --overwrite")
    tmp = meta.with_name(meta.name + ".tmp")
    tmp.write_text(json.dumps(settings, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, meta)


def merge_results(out: Path) -> int:
    """Merge ``out`` and its parts into ``out``, one line per index, sorted, atomically; removes the parts.

    Returns:
        The number of lines in ``out``.
    """
    parts = _parts(out)
    rows: dict[int, dict] = {}
    in_order, last = True, -1
    for path in [out, *parts]:
        for row in read_results(path):
            i = row["index"]
            in_order = in_order and path == out and i > last
            last = i
            rows.setdefault(i, row)
    if parts or not in_order or (out.exists() and out.stat().st_size and not _ends_with_newline(out)):
        tmp = out.with_name(out.name + ".merge.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            for i in sorted(rows):
                f.write(json.dumps(rows[i], ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)  # readers see the old or the new file, never half of one
        for p in parts:
            p.unlink()
    return len(rows)


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


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
    """(image source, printable name, image_id) of a :class:`~mmgen.data.formats.Record` or a path."""
    from mmgen.data.formats import Record
    from mmgen.data.images import source_name

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
        records: Records (:class:`~mmgen.data.formats.Record`) or image paths, a sequence or a stream,
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

    with open(mine, "a", encoding="utf-8") as f:
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


def finish(out: str | os.PathLike, rank: int = 0, world_size: int = 1) -> int | None:
    """Wait for every rank, then merge on rank 0 (see :func:`merge_results`); returns the merged count there."""
    from mmgen.distributed import barrier

    if world_size > 1:
        barrier()
    return merge_results(Path(out)) if rank == 0 else None
