"""Hugging Face ``datasets`` sources as records: save_to_disk folders, image folders with metadata,
parquet and webdataset shards, hub names, streaming, and one part per rank (``split_dataset_by_node``).

``datasets`` is imported only here and only when such a source is used, so that training from
COCO/JSONL files works on a machine without it. Images are read with decoding turned off (raw bytes
or a path) and decoded by :func:`mmgen.data.images.decode_image`, so that the pixel limit and the
bad-image accounting apply to them as to files.
"""

from __future__ import annotations

import copy
import glob
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from mmgen.data.formats import CAPTION_COLUMNS, ID_COLUMNS, IMAGE_COLUMNS, caption_list
from mmgen.data.records import DataFormatError, DerivedId, Record, warn_dropped
from mmgen.data.splits import SPLIT_COLUMN, in_split, keep_split_rows, named_split, split_names


def require_datasets(feature: str) -> Any:
    """Import ``datasets`` or fail with a message naming the package and the feature that needs it."""
    try:
        import datasets
    except ImportError as e:
        raise ImportError(
            f"{feature} needs the 'datasets' package, which is not installed (pip install datasets)"
        ) from e
    return datasets


# --------------------------------------------------------------------------------------------
# detection and loading
# --------------------------------------------------------------------------------------------


def _files(source: str) -> list[str]:
    if glob.has_magic(source):
        return sorted(glob.glob(source))
    return [source] if os.path.isfile(source) else []


HF_FORMATS = ("hf_disk", "imagefolder", "parquet", "webdataset", "hub")
"""The kinds of Hugging Face source (:func:`detect_hf_kind`), all read by :func:`hf_records`."""


def detect_hf_kind(source: str | Path) -> str | None:
    """One of :data:`HF_FORMATS`, or None when not a HF source."""
    s = str(source)
    p = Path(s)
    if p.is_dir():
        names = {c.name for c in p.iterdir()}
        if {"dataset_info.json", "state.json"} <= names or "dataset_dict.json" in names:
            return "hf_disk"
        if names & {"metadata.jsonl", "metadata.csv", "metadata.parquet"} or any(
            (p / n).is_dir() and any(m.startswith("metadata.") for m in os.listdir(p / n)) for n in names
        ):
            return "imagefolder"
        exts = {Path(f).suffix for f in glob.glob(os.path.join(s, "**", "*"), recursive=True)}
        if ".parquet" in exts:
            return "parquet"
        if ".tar" in exts:
            return "webdataset"
        return None
    files = _files(s)
    if files:
        with open(files[0], "rb") as f:
            head = f.read(512)
        if head[:4] == b"PAR1":
            return "parquet"
        if len(head) >= 262 and head[257:262] == b"ustar":
            return "webdataset"
        return None
    if glob.has_magic(s) or p.suffix or s.startswith((".", "/", "~")) or s.count("/") > 1:
        raise FileNotFoundError(f"no data found at {s}")  # hub names are 'name' or 'owner/name'

    return "hub"


def load_hf_datasets(
    source: str | Path,
    kind: str | None = None,
    split: str | None = None,
    streaming: bool = False,
    cache_dir: str | None = None,
    restval: bool = True,
) -> list[tuple[str | None, Any]]:
    """Load a HF source as ``[(split_name, Dataset | IterableDataset)]``.

    Explicit shard files or globs are the requested split themselves (named ``split``, or 'train');
    folders and hub datasets carry their own split names, of which ``split`` picks one (None: all).
    A ``split`` column further selects the rows of ``split`` in map-style datasets (streams are filtered
    as they are read, by :class:`StreamingRecords`); :mod:`mmgen.data.splits` decides both.

    Args:
        source: A save_to_disk folder, an image folder with metadata, shard files / a glob / a folder
            of shards, or a hub name.
        kind: Skip detection ('hf_disk', 'imagefolder', 'parquet', 'webdataset', 'hub').
        split: Split to keep ('val' also finds 'validation').
        streaming: Return ``IterableDataset`` objects that read the data lazily.
        cache_dir: The ``datasets`` cache (default: its own, ``~/.cache/huggingface/datasets``).
        restval: A ``split`` column's 'restval' rows count as 'train'.
    """
    parts = _load_parts(source, kind, split, streaming, cache_dir, restval)
    return [(n, d if streaming else keep_split_rows(d, split, restval, source)) for n, d in parts]


def _load_parts(
    source: str | Path, kind: str | None, split: str | None, streaming: bool, cache_dir: str | None, restval: bool
) -> list[tuple[str | None, Any]]:
    datasets = require_datasets(f"reading {source}")
    s = str(source)
    kind = kind or detect_hf_kind(s)
    if kind == "hf_disk":
        loaded = datasets.load_from_disk(s)
        parts = named_split(loaded, split, s) if isinstance(loaded, datasets.DatasetDict) else [(split, loaded)]
        if streaming:  # several shards so that ranks and workers can split them; the split column read first
            parts = [(n, keep_split_rows(d, split, restval, s)) for n, d in parts]
            parts = [(n, d.to_iterable_dataset(num_shards=max(1, min(len(d), 16)))) for n, d in parts]
        return parts
    kw: dict[str, Any] = {"cache_dir": cache_dir, "streaming": streaming}
    if kind == "imagefolder":
        return named_split(datasets.load_dataset("imagefolder", data_dir=s, **kw), split, s, folder=True)
    if kind in ("parquet", "webdataset"):
        if os.path.isdir(s):
            return named_split(datasets.load_dataset(kind, data_dir=s, **kw), split, s, folder=True)
        name = split or "train"
        return [(split, datasets.load_dataset(kind, data_files={name: _files(s)}, split=name, **kw))]
    if kind == "hub":
        return named_split(datasets.load_dataset(s, **kw), split, s)
    raise DataFormatError(f"{s}: not a Hugging Face dataset source (kind {kind!r})")


# --------------------------------------------------------------------------------------------
# rows -> records
# --------------------------------------------------------------------------------------------


def _columns(ds: Any, image_column: str | None, caption_column: str | None, source: str) -> tuple[str, str]:
    datasets = require_datasets("reading a Hugging Face dataset")
    feats = ds.features or {}
    cols = list(feats) if feats else list(getattr(ds, "column_names", None) or [])
    img = image_column if image_column in cols else None
    img = img or next((c for c, f in feats.items() if isinstance(f, datasets.Image)), None)
    img = img or next((c for c in IMAGE_COLUMNS if c in cols), None)
    cap = caption_column if caption_column in cols else None
    cap = cap or next((c for c in (*CAPTION_COLUMNS, "json") if c in cols), None)
    if img is None or cap is None:
        what = "image" if img is None else "caption"
        raise DataFormatError(f"{source}: cannot find the {what} column; columns are {cols}")
    return img, cap


def _without_decoding(ds: Any, column: str) -> Any:
    datasets = require_datasets("reading a Hugging Face dataset")
    feat = (ds.features or {}).get(column)
    if isinstance(feat, datasets.Image) and feat.decode:
        return ds.cast_column(column, datasets.Image(decode=False))
    return ds


def row_to_record(row: dict, image_column: str, caption_column: str, split: str | None, fallback_id: Any) -> Record:
    """One dataset row as a record: undecoded image as bytes (or its path), captions as a list; the split is
    the row's ``split`` column when it has one, else ``split``."""
    value, path = row.get(image_column), None
    if isinstance(value, dict):  # Image(decode=False): {"bytes": ..., "path": ...}
        path = value.get("path")
        value = value.get("bytes") or path
    image_id = next((row[k] for k in (*ID_COLUMNS, "__key__") if row.get(k) not in (None, "")), None)
    if image_id is None:  # the file name is stable across workers and ranks, a row number is not
        image_id = DerivedId(path or fallback_id)
    caps = caption_list(row.get(caption_column), f"record {image_id!r}: column {caption_column!r}")
    return Record(image=value, captions=caps, image_id=image_id, split=row.get(SPLIT_COLUMN) or split)


class HFRecords(Sequence):
    """Random-access records over a map-style ``datasets.Dataset`` (rows are converted on access).

    Args:
        ds: The dataset.
        image_column: Preferred image column (auto-detected when absent: the first Image feature).
        caption_column: Preferred caption column (auto-detected: captions, caption, sentences, text, txt, json).
        split: Split name stored on the records.
        source: Name used in errors.
    """

    def __init__(
        self,
        ds: Any,
        image_column: str | None = None,
        caption_column: str | None = None,
        split: str | None = None,
        source: str = "dataset",
    ) -> None:
        self.image_column, self.caption_column = _columns(ds, image_column, caption_column, source)
        self.ds = _without_decoding(ds, self.image_column)
        self.split, self.source = split, source

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> Record:  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = int(i)
        if i < 0:
            i += len(self)
        row = self.ds[i]
        return row_to_record(row, self.image_column, self.caption_column, self.split, f"{self.split or 'row'}/{i}")

    def caption_counts(self) -> list[int]:
        """Number of captions of every record, reading only the caption column (warns about empty captions,
        which are left out)."""
        col, blank = self.ds.select_columns([self.caption_column]), []
        counts = [len(caption_list(r[self.caption_column], f"row {i}", blank)) for i, r in enumerate(col)]
        warn_dropped(self.source, blank)
        return counts

    def identity_keys(self) -> list[Any]:
        """Every record's image_id from the id column (None where the rows have none), without reading images."""
        col = next((c for c in ID_COLUMNS if c in (self.ds.column_names or [])), None)
        if col is None:
            return [None] * len(self)
        return [v if v not in (None, "") else None for v in self.ds[col]]


class StreamingRecords:
    """Records from a streamed ``datasets.IterableDataset`` (or several, read one after another).

    Inside DataLoader workers, ``datasets`` gives every worker its own shards; a stream with fewer
    shards than workers leaves the extra workers idle (never reads a record twice).
    """

    splits_by_worker = True
    """Read by :class:`mmgen.data.datasets.StreamingCaptionDataset`: no further splitting per worker."""

    def __init__(
        self,
        parts: list[tuple[str | None, Any]],
        image_column: str | None = None,
        caption_column: str | None = None,
        source: str = "dataset",
        split: str | None = None,
        restval: bool = True,
    ) -> None:
        self.parts = []
        for name, ds in parts:
            img, cap = _columns(ds, image_column, caption_column, source)
            self.parts.append((name, _without_decoding(ds, img), img, cap))
        self.epoch = 0
        self.source = source
        self.wanted = split_names(split, restval) if split is not None else None
        """Rows with a ``split`` column are kept when it holds one of these (None: every row)."""

    def shuffled(self, seed: int, buffer_size: int = 1000) -> StreamingRecords:
        """The same streams read in a random order (shards shuffled, then a buffer of ``buffer_size`` rows),
        drawn again every epoch (:meth:`set_epoch`) from ``seed``."""
        out = copy.copy(self)
        out.parts = [(n, ds.shuffle(seed=seed, buffer_size=buffer_size), img, cap) for n, ds, img, cap in self.parts]
        return out

    def set_epoch(self, epoch: int) -> None:
        """Forwarded to the streams (reshuffles shuffled streams reproducibly)."""
        self.epoch = epoch
        for _, ds, _, _ in self.parts:
            ds.set_epoch(epoch)

    def __iter__(self) -> Iterator[Record]:
        # a HF IterableDataset iterated inside a DataLoader worker already yields only that
        # worker's shards, so no splitting here
        for split, ds, img, cap in self.parts:
            for i, row in enumerate(ds):
                if not in_split(row, self.wanted, self.source, i):
                    continue
                yield row_to_record(row, img, cap, split, f"{split or 'row'}/{i}")


def split_by_node(ds: Any, rank: int, world_size: int) -> Any:
    """This rank's part of a dataset (HF ``split_dataset_by_node``; whole shards when they divide evenly)."""
    if world_size <= 1:
        return ds
    require_datasets("splitting a dataset across ranks")
    from datasets.distributed import split_dataset_by_node

    return split_dataset_by_node(ds, rank=rank, world_size=world_size)


def hf_records(
    source: str | Path,
    kind: str | None = None,
    split: str | None = None,
    streaming: bool = False,
    image_column: str | None = None,
    caption_column: str | None = None,
    cache_dir: str | None = None,
    rank: int = 0,
    world_size: int = 1,
    restval: bool = True,
) -> Sequence[Record] | StreamingRecords:
    """Records of a HF source: a random-access sequence, or a :class:`StreamingRecords` when streaming.

    With ``world_size > 1`` every rank gets its own part (for map-style data a contiguous block; a
    DistributedSampler over the full data is the alternative). ``split`` picks a named split and, in
    datasets with a ``split`` column, the rows of that split (``restval``: 'restval' rows count as 'train').
    """
    from mmgen.data.datasets import ConcatRecords

    loaded = load_hf_datasets(source, kind, split, streaming, cache_dir, restval)
    parts = [(n, split_by_node(d, rank, world_size)) for n, d in loaded]
    if streaming:
        return StreamingRecords(parts, image_column, caption_column, str(source), split, restval)
    seqs = [HFRecords(d, image_column, caption_column, n, str(source)) for n, d in parts]
    return seqs[0] if len(seqs) == 1 else ConcatRecords(seqs)
