"""Which records belong to a split: the one place that decides it, for every kind of source.

A split is asked for by name (``data.train_split``, ``data.val_split``, ``--split``). Sources record splits in
two ways: a split value per record or row (a Karpathy json, a ``split`` column of a JSONL/CSV table or of a
Hugging Face dataset: :func:`select_split` and its uses :func:`filter_records`, :func:`keep_split_rows`,
:func:`in_split`), or named splits of a Hugging Face dataset (:func:`named_split`). Asking for 'val' also
finds 'validation' (:data:`SPLIT_ALIASES`), and 'restval' counts as 'train' unless ``restval`` is false
(:func:`counted_as`). A source without split information is taken whole; one that has splits but none of the
requested one is an error naming the splits it has, as are rows without a split next to rows with one.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from mmgen.data.records import DataFormatError, Record

SPLIT_ALIASES = {"val": ("validation", "valid", "dev"), "validation": ("val", "valid", "dev"), "test": ("testing",)}
"""Other names of a split: asking for 'val' also finds 'validation'."""
SPLIT_COLUMN = "split"
"""A column of this name in a HF dataset is its per-row split ('train' / 'val' / 'test' / 'restval')."""


def split_names(split: str, restval: bool = True) -> set[str]:
    """The split values that count as ``split``: itself, its aliases ('val' finds 'validation'), and
    'restval' for 'train' when ``restval``."""
    names = {split, *SPLIT_ALIASES.get(split, ())}
    if split == "train" and restval:
        names.add("restval")
    return names


def counted_as(value: str | None, restval: bool = True) -> str | None:
    """The split an entry's own value puts it in: 'restval' is 'train' when ``restval`` (the usual 113k-image
    COCO training set of the Karpathy split)."""
    return "train" if value == "restval" and restval else value


def select_split(
    splits: Sequence[Any], split: str | None, restval: bool, source: Any, name: Any = None
) -> list[int] | None:
    """Positions of the entries (records, rows) of ``split``, given each entry's split value.

    Args:
        splits: The split value of every entry (None: the entry has none).
        split: The split to keep; None keeps everything.
        restval: Count 'restval' as 'train'.
        source: The file or dataset, for errors.
        name: ``name(i)`` describes entry ``i`` in errors (default: its position).

    Returns:
        The positions to keep, or None to keep the whole source (no split asked for, or no entry has a split).

    Raises:
        DataFormatError: no entry is in ``split`` (naming the splits there are), or some entries have a
            split and others none.
    """
    if split is None:
        return None
    have = Counter(splits)
    unsplit = have.pop(None, 0)
    if not have:  # no split information: the whole source
        return None
    if unsplit:
        i = next(i for i, s in enumerate(splits) if s is None)
        raise DataFormatError(
            f"{source}: {unsplit} record(s) have no split while the others have one (e.g. "
            f"{name(i) if name else f'record {i}'}); give every record a split (or none, to use the source whole)"
        )
    wanted = split_names(split, restval)
    keep = [i for i, s in enumerate(splits) if s in wanted]
    if not keep:
        there = ", ".join(f"{k!r} ({n} records)" for k, n in sorted(have.items(), key=lambda kv: str(kv[0])))
        raise DataFormatError(f"{source}: no record is in split {split!r}; the splits it has are {there}")
    return keep


def filter_records(records: list[Record], split: str | None, restval: bool, source: Any) -> list[Record]:
    """The records of ``split`` (see :func:`select_split`); a source without any split information is taken
    whole."""
    keep = select_split([r.split for r in records], split, restval, source, name=lambda i: records[i].image)
    return records if keep is None else [records[i] for i in keep]


def keep_split_rows(ds: Any, split: str | None, restval: bool = True, source: Any = "dataset") -> Any:
    """The rows of a map-style dataset whose ``split`` column is ``split`` (a dataset without that column,
    or ``split`` None: all of them). Raises :class:`DataFormatError` as
    :func:`select_split` does (no row of the split, or rows without a split)."""
    if split is None or SPLIT_COLUMN not in (ds.column_names or []):
        return ds
    keep = select_split(list(ds[SPLIT_COLUMN]), split, restval, source, name=lambda i: f"row {i}")
    if keep is None or len(keep) == len(ds):
        return ds
    return ds.select(keep, keep_in_memory=True)  # never writes an index file into the user's dataset folder


def in_split(row: dict, wanted: set[str] | None, source: Any, position: int) -> bool:
    """Whether a streamed row belongs to the split whose names are ``wanted`` (:func:`split_names`; None: every
    row does). A row without a ``split`` column belongs; an empty one among rows that have one is an error."""
    if wanted is None or SPLIT_COLUMN not in row or row[SPLIT_COLUMN] in wanted:
        return True
    if row[SPLIT_COLUMN] in (None, ""):
        raise DataFormatError(f"{source}: row {position} has no split while others have one")
    return False


def named_split(dd: Any, split: str | None, source: str, folder: bool = False) -> list[tuple[str | None, Any]]:
    """``[(split_name, dataset)]`` from a DatasetDict: the requested split (or an alias), or all of them.

    ``folder``: the DatasetDict comes from a local folder, where ``datasets`` names everything 'train'
    when the files carry no split names; such a folder has no split information and is taken whole.
    """
    if split is None:
        return list(dd.items())
    for name in (split, *SPLIT_ALIASES.get(split, ())):
        if name in dd:
            return [(name, dd[name])]
    if folder and list(dd.keys()) == ["train"]:
        return [(None, dd["train"])]
    raise DataFormatError(f"{source}: no split {split!r}; available splits are {list(dd.keys())}")
