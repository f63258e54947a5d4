"""The caption file formats: COCO annotation files, Karpathy splits, JSONL and CSV tables. Each is a reader,
an entry of :data:`FILE_FORMATS` (the one table of them) and a rule of :func:`sniff_json` (which tells them
apart by content).

:func:`mmgen.data.sources.load_records` is the entry point that detects the format and calls these
readers (or :mod:`mmgen.data.hf`). Malformed input raises :class:`~mmgen.data.records.DataFormatError`
naming the file and the line or key.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmgen.data.records import DataFormatError, DerivedId, ImagePaths, Record, checked_id, short, warn_dropped
from mmgen.data.splits import counted_as, filter_records

IMAGE_COLUMNS = ("image", "file_name", "filename", "image_path", "path", "file", "img", "jpg", "png")
CAPTION_COLUMNS = ("captions", "caption", "sentences", "text", "txt", "raw")
ID_COLUMNS = ("image_id", "cocoid", "imgid", "id")


# --------------------------------------------------------------------------------------------
# COCO and Karpathy json
# --------------------------------------------------------------------------------------------


def _default_images_dir(json_path: Path, first_file: str | None) -> Path:
    """The json's directory when it holds the first listed image, else ``<dir>/images`` when that exists."""
    base = json_path.parent
    if first_file is not None and (base / first_file).exists():
        return base
    return base / "images" if (base / "images").is_dir() else base


def read_coco(
    path: str | Path,
    images: str | Path | None = None,
    data: dict | None = None,
    keep_uncaptioned: bool = False,
    strict_paths: bool = False,
) -> list[Record]:
    """Read an official COCO caption annotation file (``images`` + ``annotations``).

    Args:
        path: The annotation json.
        images: Directory holding the ``file_name`` of every image (default: the json's directory
            when it holds the first image, else ``images/`` beside the json when that exists).
        data: The already parsed json (saves parsing twice after format detection).
        keep_uncaptioned: Also return the images without any caption (with no captions), e.g. to count them.
        strict_paths: Refuse a ``file_name`` that leads outside ``images`` (absolute, or through ``..``); by
            default such images are read from where it leads, with a warning.

    Returns:
        One record per image that has at least one caption (``keep_uncaptioned``: per image), in the file's
        image order; ``split`` is None. Empty captions are dropped, and images left without a caption are
        left out, each with a warning that counts them.

    Raises:
        DataFormatError: malformed entries, or one image id listed with two different file names (the
            same id listed twice with the same file is one image).
    """
    path = Path(path)
    data = _load_json(path) if data is None else data
    imgs = _expect_list(data, "images", path)
    anns = _expect_list(data, "annotations", path)
    by_id: dict[Any, dict] = {}
    place: dict[Any, str] = {}  # id -> where its file name is
    conflicts: list[str] = []
    for i, im in enumerate(imgs):
        if not isinstance(im, dict) or "id" not in im or "file_name" not in im:
            raise DataFormatError(f"{path}: images[{i}] needs 'id' and 'file_name', got {short(im)}")
        checked_id(im["id"], f"{path}: images[{i}].id")
        if not isinstance(im["file_name"], str) or not im["file_name"]:
            raise DataFormatError(f"{path}: images[{i}].file_name must be a file name, got {short(im['file_name'])}")
        place.setdefault(im["id"], f"{path}: images[{i}].file_name")
        prev = by_id.setdefault(im["id"], im)  # listed twice with the same file: one image
        if prev["file_name"] != im["file_name"]:
            conflicts.append(f"id {im['id']!r}: {prev['file_name']} and {im['file_name']}")
    if conflicts:
        raise DataFormatError(
            f"{path}: {len(conflicts)} image id(s) name two different files, so their captions cannot be paired "
            f"with a photo: {'; '.join(conflicts[:5])}{'; ...' if len(conflicts) > 5 else ''}"
        )
    captions: dict[Any, list[str]] = {k: [] for k in by_id}
    blank: list[str] = []
    for i, ann in enumerate(anns):
        if not isinstance(ann, dict) or "image_id" not in ann or "caption" not in ann:
            raise DataFormatError(f"{path}: annotations[{i}] needs 'image_id' and 'caption', got {short(ann)}")
        checked_id(ann["image_id"], f"{path}: annotations[{i}].image_id")
        if ann["image_id"] not in captions:
            raise DataFormatError(f"{path}: annotations[{i}].image_id {ann['image_id']!r} is not in 'images'")
        if not isinstance(ann["caption"], str):
            raise DataFormatError(f"{path}: annotations[{i}].caption must be a string, got {short(ann['caption'])}")
        if ann["caption"].strip():
            captions[ann["image_id"]].append(ann["caption"])
        else:
            blank.append(f"annotations[{i}]")
    warn_dropped(path, blank)
    if not keep_uncaptioned:
        warn_dropped(path, [f"id {k!r}" for k, c in captions.items() if not c], "image(s) without a caption")
    root = Path(images) if images is not None else _default_images_dir(path, imgs[0]["file_name"] if imgs else None)
    paths = ImagePaths(root, path, strict_paths)
    records = [
        Record(image=paths.join(im["file_name"], place[k]), captions=captions[k], image_id=k, split=None)
        for k, im in by_id.items()
        if captions[k] or keep_uncaptioned
    ]
    paths.done()
    return records


def read_karpathy(
    path: str | Path,
    images: str | Path | None = None,
    split: str | None = None,
    restval: bool = True,
    data: dict | None = None,
    strict_paths: bool = False,
) -> list[Record]:
    """Read a Karpathy split file (``dataset_coco.json``, ``dataset_flickr8k.json``, ``dataset_flickr30k.json``).

    Args:
        path: The json file.
        images: Root directory; an image lives at ``images/filepath/filename`` (``filepath`` only in the
            COCO file). Default: the json's directory.
        split: Keep only this split ('train', 'val', 'test'; see :func:`mmgen.data.splits.filter_records`);
            None keeps all.
        restval: Count 'restval' images as 'train' (the usual 113k-image COCO training set).
        data: The already parsed json.
        strict_paths: Refuse image paths that lead outside ``images`` (see :func:`read_coco`).

    Returns:
        Records whose ``image_id`` is the COCO id when present, else ``imgid``, else the file name. Empty
        sentences are dropped (with a warning that counts them).
    """
    path = Path(path)
    data = _load_json(path) if data is None else data
    paths = ImagePaths(Path(images) if images is not None else path.parent, path, strict_paths)
    out, blank = [], []
    for i, im in enumerate(_expect_list(data, "images", path)):
        if not isinstance(im, dict) or "filename" not in im or not isinstance(im.get("sentences"), list):
            raise DataFormatError(f"{path}: images[{i}] needs 'filename' and a 'sentences' list, got {short(im)}")
        where = f"{path}: images[{i}]"
        for key in ("filename", "filepath"):
            if key in im and (not isinstance(im[key], str) or (key == "filename" and not im[key])):
                raise DataFormatError(f"{where}.{key} must be a file name, got {short(im[key])}")
        if not isinstance(im.get("split", ""), str):
            raise DataFormatError(f"{where}.split must be a split name, got {short(im['split'])}")
        caps = []
        for j, sent in enumerate(im["sentences"]):
            raw = sent.get("raw") if isinstance(sent, dict) else None
            tokens = sent.get("tokens") if isinstance(sent, dict) else None
            if raw is None and isinstance(tokens, list) and all(isinstance(t, str) for t in tokens):
                raw = " ".join(tokens)
            if not isinstance(raw, str):
                raise DataFormatError(f"{path}: images[{i}].sentences[{j}] needs 'raw' text, got {short(sent)}")
            if raw.strip():
                caps.append(raw)
            else:
                blank.append(f"images[{i}].sentences[{j}]")
        key = next((k for k in ("cocoid", "imgid") if k in im), "filename")
        image_id = checked_id(im[key], f"{where}.{key}")
        image = paths.join(str(Path(im.get("filepath", "")) / im["filename"]), f"{where}.filename")
        out.append(Record(image=image, captions=caps, image_id=image_id, split=counted_as(im.get("split"), restval)))
    paths.done()
    warn_dropped(path, blank)
    return out if split is None else filter_records(out, split, restval, path)


# --------------------------------------------------------------------------------------------
# JSONL / CSV tables
# --------------------------------------------------------------------------------------------


def _pick(columns: Iterable[str], wanted: str | None, candidates: Sequence[str], path: Path, what: str) -> str:
    """The ``wanted`` column when present, else the first present candidate."""
    cols = list(columns)
    tried = ([wanted] if wanted else []) + list(candidates)
    for c in tried:
        if c in cols:
            return c
    raise DataFormatError(f"{path}: cannot find the {what} column (tried {tried}); columns are {cols}")


def caption_list(value: Any, where: str, blank: list[str] | None = None) -> list[str]:
    """Captions from a cell: a string, a list of strings, a JSON list string, or Karpathy-style sentence dicts.

    Empty (or whitespace-only) captions are left out; ``blank``, when given, gets ``where`` appended
    for each of them, so that the reader can count them.
    """
    if value is None:
        return []
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("[") and text.endswith("]"):
            try:
                return caption_list(json.loads(text), where, blank)
            except json.JSONDecodeError:
                pass
        if not text and blank is not None:
            blank.append(where)
        return [value] if text else []
    if isinstance(value, dict):
        for k in ("raw", "caption", "captions", "text", "sentences"):
            if k in value:
                return caption_list(value[k], where, blank)
        raise DataFormatError(f"{where}: a caption dict needs one of raw/caption/captions/text, got {short(value)}")
    if isinstance(value, (list, tuple)):
        return [c for v in value for c in caption_list(v, where, blank)]
    raise DataFormatError(f"{where}: captions must be text or a list of texts, got {short(value)}")


def _caption_columns(cols: list[str], wanted: str | Sequence[str] | None, path: Path) -> list[str]:
    if isinstance(wanted, str):
        wanted = [wanted]
    if wanted and all(c in cols for c in wanted):
        return list(wanted)
    numbered = [c for c in cols if c.startswith("caption") and c not in ("caption", "captions")]
    if numbered:  # caption_1, caption_2, ... (plus 'caption' when present)
        return [c for c in cols if c.startswith("caption")]
    return [_pick(cols, None, CAPTION_COLUMNS, path, "caption")]


def records_from_rows(
    rows: Iterable[tuple[str, dict]],
    path: Path,
    images: str | Path | None = None,
    image_column: str | None = None,
    caption_column: str | Sequence[str] | None = None,
    strict_paths: bool = False,
) -> list[Record]:
    """Group table rows (``(location, row)`` pairs) into records, one per image path.

    Rows naming the same image are merged, so both one-row-per-image (several caption columns or a
    list column) and one-row-per-caption tables work. Relative paths are resolved against ``images``
    or the table file's directory (``strict_paths``: paths that lead outside it are refused). Empty captions
    are dropped, with a warning that counts them. Without an id column the image_id is the path as the table
    writes it (a :class:`DerivedId`).
    """
    paths = ImagePaths(Path(images) if images is not None else path.parent, path, strict_paths, warn=False)
    by_image: dict[str, Record] = {}
    first: dict[str, str] = {}  # image -> where its first row is
    blank: list[str] = []
    img_col = cap_cols = None
    for where, row in rows:
        if img_col is None:
            img_col = _pick(row.keys(), image_column, IMAGE_COLUMNS, path, "image")
            cap_cols = _caption_columns(list(row.keys()), caption_column, path)
        rel = row.get(img_col)
        full = paths.join(rel, f"{where}: column {img_col!r}")
        caps = [c for col in cap_cols for c in caption_list(row.get(col), f"{where}: column {col!r}", blank)]
        rec, split = by_image.get(full), row.get("split") or None
        if split is not None and not isinstance(split, str):
            raise DataFormatError(f"{where}: column 'split' must hold a split name, got {short(split)}")
        if rec is None:
            key = next((k for k in ID_COLUMNS if row.get(k) not in (None, "")), None)
            image_id = DerivedId(rel) if key is None else checked_id(row[key], f"{where}: column {key!r}")
            by_image[full], first[full] = Record(image=full, captions=caps, image_id=image_id, split=split), where
        elif split is not None and rec.split is not None and split != rec.split:
            raise DataFormatError(
                f"{where}: image {rel!r} is in split {split!r} here but in {rec.split!r} at {first[full]}; "
                "an image belongs to one split"
            )
        else:
            rec.captions.extend(caps)
            rec.split = rec.split or split
    places = [w[len(str(path)) :].lstrip(": ") for w in blank]  # '3: column ...' (JSONL/CSV) or '[2]: column ...'
    warn_dropped(path, [f"line {p}" if p[:1].isdigit() else p for p in places])
    return list(by_image.values())


def _jsonl_rows(path: Path, text: str) -> Iterable[tuple[str, dict]]:
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataFormatError(f"{path}:{n}: invalid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise DataFormatError(f"{path}:{n}: each line must be a JSON object, got {short(row)}")
        yield f"{path}:{n}", row


def read_jsonl(
    path: str | Path,
    images: str | Path | None = None,
    image_column: str | None = None,
    caption_column: str | Sequence[str] | None = None,
    strict_paths: bool = False,
) -> list[Record]:
    """Read JSON Lines (one object per line; a top-level JSON list of objects works too)."""
    path = Path(path)
    text = read_text(path)
    stripped = text.lstrip()
    if stripped.startswith("["):
        rows = _load_json(path, text)
        bad = next((i for i, r in enumerate(rows) if not isinstance(r, dict)), None)
        if bad is not None:
            raise DataFormatError(f"{path}: [{bad}] must be an object, got {short(rows[bad])}")
        it: Iterable[tuple[str, dict]] = ((f"{path}: [{i}]", r) for i, r in enumerate(rows))
    else:
        it = _jsonl_rows(path, text)
    return records_from_rows(it, path, images, image_column, caption_column, strict_paths)


def read_csv(
    path: str | Path,
    images: str | Path | None = None,
    image_column: str | None = None,
    caption_column: str | Sequence[str] | None = None,
    strict_paths: bool = False,
) -> list[Record]:
    """Read a CSV/TSV file with a header row (the delimiter is sniffed from the header). UTF-8, with or without
    the byte-order mark Excel writes ("CSV UTF-8")."""
    path = Path(path)
    f = io.StringIO(read_text(path), newline="")
    head = f.readline()
    f.seek(0)
    delim = "\t" if head.count("\t") > head.count(",") else ("|" if head.count("|") > head.count(",") else ",")
    reader = csv.DictReader(f, delimiter=delim)
    if not reader.fieldnames:
        raise DataFormatError(f"{path}: empty CSV (no header row)")

    def rows() -> Iterable[tuple[str, dict]]:
        for row in reader:
            if None in row:
                raise DataFormatError(f"{path}:{reader.line_num}: more fields than the header has")
            missing = [k for k, v in row.items() if v is None]  # a short row: DictReader fills in None
            if missing:
                raise DataFormatError(
                    f"{path}:{reader.line_num}: {len(row) - len(missing)} field(s), the header has {len(row)} "
                    f"(missing {missing})"
                )
            yield f"{path}:{reader.line_num}", row

    return records_from_rows(rows(), path, images, image_column, caption_column, strict_paths)


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def read_text(path: Path) -> str:
    """A caption file's text: UTF-8, a leading byte-order mark dropped (Excel's "CSV UTF-8", Notepad).

    Raises:
        DataFormatError: The file is not UTF-8 (a Latin-1 or UTF-16 export), naming the byte.
    """
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataFormatError(
            f"{path}: not UTF-8 text ({e.reason} at byte {e.start}: {data[e.start : e.start + 1]!r}); save it as "
            "UTF-8 (in Excel: CSV UTF-8)"
        ) from None


def _load_json(path: Path, text: str | None = None) -> Any:
    try:
        return json.loads(read_text(path) if text is None else text)
    except json.JSONDecodeError as e:
        raise DataFormatError(f"{path}:{e.lineno}: invalid JSON ({e.msg}, column {e.colno})") from None
    except RecursionError:
        raise DataFormatError(f"{path}: invalid JSON (nested too deeply)") from None


def _expect_list(data: dict, key: str, path: Path) -> list:
    if not isinstance(data.get(key), list):
        raise DataFormatError(f"{path}: key {key!r} must be a list")
    return data[key]


def sniff_json(path: Path) -> tuple[str, Any]:
    """Classify a text file by its content: ('coco'|'karpathy'|'jsonl'|'csv', parsed json or None)."""
    with open(path, "rb") as f:
        head = f.read(4096).removeprefix(codecs.BOM_UTF8)
    start = head.lstrip()[:1]
    if start not in (b"{", b"["):
        return "csv", None
    try:
        data = json.loads(read_text(path))
    except RecursionError:
        raise DataFormatError(f"{path}: invalid JSON (nested too deeply)") from None
    except json.JSONDecodeError as e:
        if start == b"{" and e.msg == "Extra data":  # several objects: JSON Lines
            return "jsonl", None
        raise DataFormatError(f"{path}:{e.lineno}: invalid JSON ({e.msg}, column {e.colno})") from None
    if isinstance(data, dict) and "annotations" in data and "images" in data:
        return "coco", data
    if isinstance(data, dict) and isinstance(data.get("images"), list):
        first = data["images"][0] if data["images"] else {}
        if isinstance(first, dict) and "sentences" in first:
            return "karpathy", data
        raise DataFormatError(
            f"{path}: has 'images' but neither COCO 'annotations' nor Karpathy 'sentences' (images[0] = {short(first)})"
        )
    return "jsonl", None  # a single-line JSONL file or a list of row objects


# --------------------------------------------------------------------------------------------
# the table
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReadOptions:
    """What a reader may take beyond the file and its images folder (each reads what applies to it)."""

    restval: bool = True
    """Karpathy: 'restval' images count as 'train'."""
    image_column: str | None = None
    """Tables: the preferred image column (auto-detected otherwise)."""
    caption_column: str | Sequence[str] | None = None
    """Tables: the preferred caption column(s) (auto-detected otherwise)."""
    keep_uncaptioned: bool = False
    """COCO: also the images without a caption."""
    strict_paths: bool = False
    """Refuse image paths that lead outside the images folder (absolute, or through ``..``)."""


Reader = Callable[[Path, "str | Path | None", ReadOptions, Any], list[Record]]
"""``reader(path, images, options, parsed)``: the records of a file (``parsed``: its json when detection read
it already, else None). Split selection is the caller's (:mod:`mmgen.data.splits`)."""


def _coco(path: Path, images: Any, options: ReadOptions, parsed: Any) -> list[Record]:
    return read_coco(path, images, parsed, options.keep_uncaptioned, options.strict_paths)


def _karpathy(path: Path, images: Any, options: ReadOptions, parsed: Any) -> list[Record]:
    return read_karpathy(path, images, None, options.restval, data=parsed, strict_paths=options.strict_paths)


def _jsonl(path: Path, images: Any, options: ReadOptions, parsed: Any) -> list[Record]:
    return read_jsonl(path, images, options.image_column, options.caption_column, options.strict_paths)


def _csv(path: Path, images: Any, options: ReadOptions, parsed: Any) -> list[Record]:
    return read_csv(path, images, options.image_column, options.caption_column, options.strict_paths)


FILE_FORMATS: dict[str, Reader] = {"coco": _coco, "karpathy": _karpathy, "jsonl": _jsonl, "csv": _csv}
"""The caption file formats by name (what :func:`sniff_json` tells apart), each with its reader."""
