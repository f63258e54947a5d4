"""The results file of bulk captioning (``mmgen caption --out``): JSON Lines that survive kills, written by
several ranks under torchrun and merged into one.

Every image of the source has a position ``index`` (0, 1, ...). Results are appended as one line per
image, ``{"index", "image", "image_id", "caption", "score"}`` (or ``"error"`` for an image that
cannot be decoded), and flushed batch by batch, so a killed run loses at most the batch in flight.
A rerun reads what is already there, drops a half-written last line, and captions only the missing
indices: each image ends up in the file exactly once.

Under ``torchrun`` rank ``r`` of ``W`` captions the indices ``i % W == r`` into its own file
``OUT.part<r>``; when every rank is done, rank 0 merges the parts (and any earlier ``OUT``) into
``OUT`` sorted by index, atomically, and removes the parts. A single process appends to ``OUT``
itself. A rerun with another number of processes works the same way: the parts of any earlier run
count as done. The settings are kept in ``OUT.meta.json`` (the generation settings, the data, and the model by
the SHA-256 of its files, so that new weights at the same path count as another model); a rerun with other
settings or another model is refused rather than mixing captions made two ways.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mmgen.atomic_files import atomic_path, atomic_write_text


class ResumeError(ValueError):
    """An existing output that this run cannot continue (other settings, other data, a damaged line)."""


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

NOT_COMPARED = ("model",)
"""Settings recorded for the reader only: the model's path (a moved model is the same model: its files decide)."""


def read_settings(meta: Path) -> dict:
    """The settings an earlier run recorded in ``meta``.

    Raises:
        ResumeError: The file is damaged (not a JSON object); the message names it.
    """
    try:
        before = json.loads(meta.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ResumeError(
            f"{meta}: damaged, not the JSON settings of the earlier run ({e}); pass --overwrite to start again"
        ) from None
    if not isinstance(before, dict):
        raise ResumeError(f"{meta}: damaged, not a JSON object of settings; pass --overwrite to start again")
    return {**ADDED_SETTINGS, **before}  # a run recorded before these were settings used their defaults


def _difference(key: str, then: Any, now: Any) -> str:
    if key == "model_files":
        if not isinstance(then, dict):
            return "the model's files were not recorded (an earlier mmgen recorded only its path)"
        parts = [part for part in now if then.get(part) != now[part]]
        return f"the model's {' and '.join(parts)} differ (another model, or new files at its path)"
    return f"{key}: {then!r} then, {now!r} now"


def check_settings(out: Path, settings: dict, overwrite: bool = False) -> None:
    """Record the run's settings in ``out.meta.json``, or check them against an earlier run's.

    With ``overwrite``, earlier results (the output, its parts and settings) are deleted first.

    Raises:
        ResumeError: results exist that were made with other settings (the message lists the differences), or
            the settings file is damaged.
    """
    meta = out.with_name(f"{out.name}.meta.json")
    settings = json.loads(json.dumps(settings, default=str))  # as it reads back (tuples become lists)
    if overwrite:
        for p in [out, *_parts(out), meta]:
            p.unlink(missing_ok=True)
    has_results = out.exists() or bool(_parts(out))
    if meta.exists() and has_results:
        before = read_settings(meta)
        diff = [
            _difference(k, before.get(k), v)
            for k, v in settings.items()
            if k not in NOT_COMPARED and before.get(k) != v
        ]
        if diff:
            raise ResumeError(
                f"{out} was started with other settings ({'; '.join(diff)}): rerun with the same ones to resume, "
                "or pass --overwrite to start again"
            )
        return
    if has_results and not meta.exists():
        raise ResumeError(f"{out} exists but was not written by a bulk run (no {meta.name}); pass --overwrite")
    atomic_write_text(meta, json.dumps(settings, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def merge_results(out: Path) -> tuple[int, int]:
    """Merge ``out`` and its parts into ``out``, one line per index, sorted, atomically; removes the parts.

    Returns:
        The number of lines in ``out``, and how many of them are images that could not be decoded (``error``),
        this run's and any earlier run's.
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
        with atomic_path(out, ".merge.tmp") as tmp, open(tmp, "w", encoding="utf-8", errors="backslashreplace") as f:
            for i in sorted(rows):
                f.write(json.dumps(rows[i], ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        for p in parts:
            p.unlink()
    return len(rows), sum("error" in row for row in rows.values())


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def finish(out: str | os.PathLike, rank: int = 0, world_size: int = 1) -> tuple[int, int] | None:
    """Wait for every rank, then merge on rank 0 (see :func:`merge_results`); returns the merged counts there (lines,
    failed images)."""
    from mmgen.distributed import barrier

    if world_size > 1:
        barrier()
    return merge_results(Path(out)) if rank == 0 else None
