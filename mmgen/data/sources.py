"""One entry point for caption data: :func:`load_records` detects the format of each source from its
content (not its name) and returns records from the matching reader.

Supported: COCO caption json + images directory, Karpathy split json, JSONL/CSV tables (the table
:data:`mmgen.data.formats.FILE_FORMATS`), and Hugging Face sources -- save_to_disk folders, image folders
with metadata, parquet/webdataset shards, hub names, streaming (:data:`mmgen.data.hf.HF_FORMATS`). Which
records a split holds is decided by :mod:`mmgen.data.splits`.
"""

from __future__ import annotations

import filecmp
import glob
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from mmgen.data.formats import FILE_FORMATS, ReadOptions, sniff_json
from mmgen.data.hf import HF_FORMATS, detect_hf_kind, hf_records
from mmgen.data.records import DataFormatError, DerivedId, Record
from mmgen.data.splits import filter_records

FORMATS = (*FILE_FORMATS, *HF_FORMATS)
"""Every format :func:`load_records` reads, by name."""


def _detect(source: str | Path) -> tuple[str, Any]:
    """(format, the parsed json for COCO/Karpathy files or None)."""
    kind = detect_hf_kind(source)  # binary shards, dataset folders, hub names; needs no `datasets`
    if kind is not None:
        return kind, None
    p = Path(source)
    if p.is_dir():
        raise DataFormatError(
            f"{p}: folder holds no recognised dataset (a save_to_disk folder, an image folder with "
            "metadata.jsonl/csv, or parquet/tar shards); for a COCO/Karpathy json pass the file"
        )
    return sniff_json(p)


def detect_format(source: str | Path) -> str:
    """The format of a data source, from its content: one of :data:`FORMATS`.

    Raises:
        FileNotFoundError: a path-like source that does not exist.
        DataFormatError: a folder or file that holds no recognised dataset.
    """
    return _detect(source)[0]


def _merge_duplicates(records: list[Record], sources: str) -> list[Record]:
    """Merge records of the same image_id and image (several caption files); conflicting ids are an error."""
    by_id: dict[Any, Record] = {}
    out = []
    for r in records:
        prev = by_id.get(r.image_id)
        if prev is None:
            by_id[r.image_id] = r
            out.append(r)
        elif isinstance(prev.image, (str, Path)) and str(prev.image) == str(r.image):
            prev.captions = prev.captions + r.captions
        else:
            raise DataFormatError(f"{sources}: image_id {r.image_id!r} names two images: {prev.image} and {r.image}")
    return out


def _expand_globs(sources: list, dirs: list) -> tuple[list, list]:
    """A glob over caption files (``captions_*2017.json``) becomes one source per file; shard globs stay."""
    out_s, out_d = [], []
    for s, d in zip(sources, dirs):
        if isinstance(s, str) and glob.has_magic(s) and detect_hf_kind(s) is None:
            files = sorted(glob.glob(s))
            out_s += files
            out_d += [d] * len(files)
        else:
            out_s.append(s)
            out_d.append(d)
    return out_s, out_d


def _load_one(source: str | Path, images: str | Path | None, split: str | None, restval: bool, kw: dict) -> Any:
    fmt, data = (kw["format"], None) if kw.get("format") else _detect(source)
    cols = {"image_column": kw.get("image_column"), "caption_column": kw.get("caption_column")}
    if fmt in HF_FORMATS:
        return hf_records(
            source,
            fmt,
            split,
            kw.get("streaming", False),
            restval=restval,
            cache_dir=kw.get("cache_dir"),
            rank=kw.get("rank", 0),
            world_size=kw.get("world_size", 1),
            **cols,
        )
    if fmt not in FILE_FORMATS:
        raise DataFormatError(f"{source}: unknown format {fmt!r}; expected one of {FORMATS}")
    flags = {k: kw.get(k, False) for k in ("keep_uncaptioned", "strict_paths")}
    options = ReadOptions(restval=restval, **flags, **cols)
    records = FILE_FORMATS[fmt](Path(source), images, options, data)  # data: parsed once, during detection
    return filter_records(records, split, restval, Path(source))


def load_records(
    source: str | Path | Sequence[str | Path],
    images: str | Path | Sequence[str | Path | None] | None = None,
    split: str | None = None,
    restval: bool = True,
    *,
    image_column: str | None = None,
    caption_column: str | Sequence[str] | None = None,
    streaming: bool = False,
    cache_dir: str | None = None,
    rank: int = 0,
    world_size: int = 1,
    format: str | None = None,
    keep_uncaptioned: bool = False,
    strict_paths: bool = False,
) -> Sequence[Record] | Iterable[Record]:
    """Load caption records from any supported source; the format is detected from the content.

    Args:
        source: A COCO caption json, a Karpathy split json, a JSONL/CSV table, a HF save_to_disk
            folder, an image folder with metadata, parquet/webdataset shard files or a glob, a hub
            name; or a list of those, combined (e.g. a COCO train and val file).
        images: The images directory for COCO/Karpathy files and relative table paths (one for all
            sources, or one per source).
        split: Keep this split ('train', 'val', 'test'; 'val' also finds 'validation') where the source
            records splits: Karpathy files, a ``split`` column of JSONL/CSV tables and of HF datasets, the
            named splits of HF dataset folders and hub datasets. Sources without split information (COCO
            files, tables without a split column) are taken whole.
        restval: Karpathy/table/HF splits: count 'restval' as 'train'.
        image_column: Preferred image column of tables and HF datasets (auto-detected otherwise).
        caption_column: Preferred caption column(s) (auto-detected otherwise).
        streaming: HF sources are read lazily as a stream (an iterable, not a sequence).
        cache_dir: The ``datasets`` cache directory.
        rank: With ``world_size > 1``, keep only this rank's part (HF ``split_dataset_by_node``;
            map-style data is usually split by a DistributedSampler instead).
        world_size: Number of ranks.
        format: Skip detection (one of :data:`FORMATS`).
        keep_uncaptioned: COCO files: also return the images that have no caption (other formats always
            return them; training leaves them out).
        strict_paths: Caption files: refuse image paths that lead outside the images folder (absolute, or through
            ``..``); by default COCO and Karpathy files read them from there with a warning.

    Returns:
        A sequence of :class:`Record` (a list for file formats), or an iterable when streaming.

    Raises:
        DataFormatError: malformed input, naming the file and the line or key; a source that has splits
            but none of the requested one (naming the splits it has).
        FileNotFoundError: a missing file.
    """
    sources = [source] if isinstance(source, (str, Path)) else list(source)
    if not sources:
        raise ValueError("load_records needs at least one source")
    dirs = list(images) if isinstance(images, (list, tuple)) else [images] * len(sources)
    if len(dirs) != len(sources):
        raise ValueError(f"got {len(dirs)} image directories for {len(sources)} sources")
    sources, dirs = _expand_globs(sources, dirs)
    kw = {
        "image_column": image_column,
        "caption_column": caption_column,
        "streaming": streaming,
        "cache_dir": cache_dir,
        "rank": rank,
        "world_size": world_size,
        "format": format,
        "keep_uncaptioned": keep_uncaptioned,
        "strict_paths": strict_paths,
    }
    parts = [_load_one(s, d, split, restval, kw) for s, d in zip(sources, dirs)]
    if all(isinstance(p, list) for p in parts):
        merged = _merge_duplicates([r for p in parts for r in p], ", ".join(map(str, sources)))
        return merged[rank::world_size] if world_size > 1 else merged
    from mmgen.data.datasets import ChainedRecords, ConcatRecords  # torch only when needed

    parts = [p[rank::world_size] if isinstance(p, list) and world_size > 1 else p for p in parts]
    if streaming:
        return parts[0] if len(parts) == 1 else ChainedRecords(parts)
    return parts[0] if len(parts) == 1 else ConcatRecords(parts)


def load_split(
    cfg: Any, which: str = "train", rank: int = 0, world_size: int = 1, cache_dir: str | None = None
) -> Sequence[Record] | Iterable[Record]:
    """Records of the training or validation data named by a :class:`mmgen.config.DataConfig`.

    Args:
        cfg: The data config (``train``/``val`` sources, image directories, splits, columns, streaming).
        which: 'train' or 'val'.
        rank: This rank (see :func:`load_records`; only applied when ``world_size > 1``).
        world_size: Number of ranks.
        cache_dir: The ``datasets`` cache directory.
    """
    if which not in ("train", "val"):
        raise ValueError(f"which must be 'train' or 'val', got {which!r}")
    source = cfg.train if which == "train" else cfg.val
    if source is None:
        raise ValueError(f"data.{which} is not set")
    return load_records(
        source,
        images=cfg.train_images if which == "train" else cfg.val_images,
        split=cfg.train_split if which == "train" else cfg.val_split,
        restval=cfg.restval,
        image_column=cfg.image_column,
        caption_column=cfg.caption_column,
        streaming=cfg.streaming,
        cache_dir=cache_dir,
        rank=rank,
        world_size=world_size,
        strict_paths=cfg.strict_paths,
    )


def is_stream(source: str | Path | Sequence[str | Path]) -> bool:
    """Whether ``load_records(source, streaming=True)`` streams: some source is a Hugging Face one (file
    formats are read whole)."""
    sources = [source] if isinstance(source, (str, Path)) else list(source)
    sources, _ = _expand_globs(sources, [None] * len(sources))
    return any(detect_hf_kind(s) is not None for s in sources)


def identity_keys(records: Sequence[Record]) -> list[tuple[str | None, str | None]]:
    """``(image path, image_id)`` of every record, each None where there is none to compare by.

    Paths are absolute and normalised; ids are compared as text, and ids made up from a file name or a
    row position (:class:`~mmgen.data.records.DerivedId`) are left out. HF-backed sequences give their id
    column without reading any image.
    """
    if hasattr(records, "identity_keys"):  # HFRecords
        return [(None, None if k is None else str(k)) for k in records.identity_keys()]
    if hasattr(records, "parts") and hasattr(records, "ends"):  # ConcatRecords
        return [k for p in records.parts for k in identity_keys(p)]
    out = []
    for r in records:
        path = os.path.normpath(os.path.abspath(str(r.image))) if isinstance(r.image, (str, Path)) else None
        image_id = None if r.image_id is None or isinstance(r.image_id, DerivedId) else str(r.image_id)
        out.append((path, image_id))
    return out


def _same_image(a: Record, b: Record) -> bool:
    """Whether two records hold the same picture (files compared by size, then content)."""

    def content(x: Any) -> bytes | None:
        if isinstance(x, (bytes, bytearray)):
            return bytes(x)
        if isinstance(x, (str, Path)) and os.path.isfile(x):
            return Path(x).read_bytes()
        return None  # a PIL image or a missing file: cannot tell

    if isinstance(a.image, (str, Path)) and isinstance(b.image, (str, Path)):
        return os.path.isfile(a.image) and os.path.isfile(b.image) and filecmp.cmp(a.image, b.image, shallow=False)
    ca, cb = content(a.image), content(b.image)
    return ca is not None and ca == cb


def overlapping_images(train: Sequence[Record], val: Sequence[Record], same_source: bool = False) -> list[str]:
    """The validation images that are also training images, described for a message.

    An image is in both when its path is, or its image_id is. Within one source an id names one image;
    across different sources (where ids may merely restart from 1) an id match counts only when the two
    images have the same content.

    Args:
        train: The training records.
        val: The validation records.
        same_source: Both come from the same files (with different splits).
    """
    tk, vk = identity_keys(train), identity_keys(val)
    paths = {p for p, _ in tk if p is not None}
    ids = {k: i for i, (_, k) in enumerate(tk) if k is not None}
    found = []
    for j, (path, image_id) in enumerate(vk):
        if path is not None and path in paths:
            found.append(path)
        elif image_id is not None and image_id in ids:
            if same_source or _same_image(train[ids[image_id]], val[j]):
                found.append(f"image_id {image_id}" + (f" ({path})" if path else ""))
    return found
