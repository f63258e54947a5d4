"""Property tests of the caption-file readers (hypothesis): COCO, Karpathy, JSONL and CSV documents with values of
the wrong type, odd ids, other encodings and cut-short files. Each is read into records as an independent reader
says it should be, or refused with one line naming the file; never a traceback of another kind, never a hang."""

from __future__ import annotations

import csv
import io
import json
import os
import warnings
from pathlib import Path

from conftest import fuzz_settings
from hypothesis import given, note
from hypothesis import strategies as st

from mmgen.data.records import DataFormatError, DerivedId
from mmgen.data.sources import load_records

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)
"""Any JSON value: what a wrong type looks like."""
IDS = st.integers(-3, 5) | st.sampled_from(["a", "b", "7"])
NAMES = st.sampled_from(["a.png", "b.jpg", "sub/c.png", "../up.png", "/abs/d.png", "e f.png", "g.png"])
CAPTIONS = st.sampled_from(["a red circle", "two dogs", "  ", ""]) | st.text(max_size=12)
ENCODINGS = st.sampled_from(["utf-8", "utf-8", "utf-8-sig", "latin-1", "utf-16"])


def _sometimes_junk(valid: st.SearchStrategy, junk_weight: int = 1) -> st.SearchStrategy:
    return st.one_of(*[valid] * 4, *[JSON] * junk_weight)


COCO = st.fixed_dictionaries(
    {
        "images": st.lists(
            _sometimes_junk(st.fixed_dictionaries({"id": _sometimes_junk(IDS), "file_name": _sometimes_junk(NAMES)})),
            max_size=4,
        ),
        "annotations": st.lists(
            _sometimes_junk(
                st.fixed_dictionaries({"image_id": _sometimes_junk(IDS), "caption": _sometimes_junk(CAPTIONS)})
            ),
            max_size=6,
        ),
    }
)
KARPATHY = st.fixed_dictionaries(
    {
        "images": st.lists(
            _sometimes_junk(
                st.fixed_dictionaries(
                    {
                        "filename": _sometimes_junk(NAMES),
                        "sentences": _sometimes_junk(st.lists(st.fixed_dictionaries({"raw": CAPTIONS}), max_size=3)),
                    },
                    optional={"cocoid": _sometimes_junk(IDS), "split": st.sampled_from(["train", "val", "restval"])},
                )
            ),
            min_size=1,
            max_size=4,
        )
    }
)
ROW = st.fixed_dictionaries(
    {"image": _sometimes_junk(NAMES), "caption": _sometimes_junk(CAPTIONS)},
    optional={"image_id": _sometimes_junk(IDS), "split": _sometimes_junk(st.sampled_from(["train", "val"]))},
)


def _write(folder: Path, name: str, text: str, encoding: str, cut: int | None) -> Path:
    data = text.encode(encoding, errors="backslashreplace")
    path = folder / name
    path.write_bytes(data if cut is None else data[:cut])
    return path


def _read(path: Path, strict: bool):
    """The records, or the DataFormatError's message (checked: one line naming the file)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return load_records(path, images=path.parent / "imgs", strict_paths=strict), None
        except DataFormatError as e:
            message = str(e)
    assert str(path) in message and "\n" not in message, message
    return None, message


def _sane(records) -> None:
    for r in records:
        assert isinstance(r.image, str) and r.image
        assert isinstance(r.image_id, (int, str)) and not isinstance(r.image_id, bool)
        assert all(isinstance(c, str) and c.strip() for c in r.captions)


def _outside(name: str) -> bool:
    return os.path.isabs(name) or os.path.normpath(name).split(os.sep)[0] == ".."


def _joined(root: Path, name: str) -> str:
    return name if os.path.isabs(name) else str(root / name)


def expected_coco(doc: dict, root: Path, strict: bool) -> list[tuple] | None:
    """What a COCO file holds, read by the letter of the format (None: it must be refused)."""
    images = doc["images"]
    ok_id = lambda v: isinstance(v, (int, str)) and not isinstance(v, bool)  # noqa: E731
    well_typed = (isinstance(i, dict) and ok_id(i.get("id")) and isinstance(i.get("file_name"), str) for i in images)
    if not all(well_typed):
        return None
    if any(not i["file_name"] for i in images):
        return None
    files: dict = {}
    for i in images:
        if files.setdefault(i["id"], i["file_name"]) != i["file_name"]:
            return None  # one id, two files
    caps: dict = {k: [] for k in files}
    for a in doc["annotations"]:
        if not (isinstance(a, dict) and ok_id(a.get("image_id")) and a["image_id"] in caps):
            return None
        if not isinstance(a.get("caption"), str):
            return None
        if a["caption"].strip():
            caps[a["image_id"]].append(a["caption"])
    if strict and any(_outside(files[k]) for k in files if caps[k]):  # only the images that are read
        return None
    return [(_joined(root, files[k]), caps[k], k) for k in files if caps[k]]


@fuzz_settings(120)
@given(doc=COCO, encoding=ENCODINGS, cut=st.none() | st.integers(0, 300), strict=st.booleans())
def test_coco_documents(tmp_path_factory, doc, encoding, cut, strict):
    folder = tmp_path_factory.mktemp("coco")
    text = json.dumps(doc, ensure_ascii=False)
    note(repr((text, encoding, cut, strict)))
    path = _write(folder, "captions.json", text, encoding, cut)
    records, error = _read(path, strict)
    if records is not None:
        _sane(records)
    whole = cut is None or cut >= len(text.encode(encoding, errors="backslashreplace"))
    readable = encoding in ("utf-8", "utf-8-sig") or text.isascii() and encoding == "latin-1"
    if whole and readable and doc["images"]:  # a whole, readable COCO file: exactly what the format says
        expected = expected_coco(doc, folder / "imgs", strict)
        got = None if records is None else [(r.image, r.captions, r.image_id) for r in records]
        assert got == expected, (error, doc)


@fuzz_settings(80)
@given(doc=KARPATHY, encoding=ENCODINGS, cut=st.none() | st.integers(0, 300), strict=st.booleans())
def test_karpathy_documents(tmp_path_factory, doc, encoding, cut, strict):
    path = _write(tmp_path_factory.mktemp("karpathy"), "dataset.json", json.dumps(doc), encoding, cut)
    records, _ = _read(path, strict)
    if records is not None:
        _sane(records)
        assert len(records) <= len(doc["images"])


@fuzz_settings(100)
@given(
    rows=st.lists(_sometimes_junk(ROW, 1), min_size=1, max_size=5),
    encoding=ENCODINGS,
    cut=st.none() | st.integers(0, 200),
    strict=st.booleans(),
)
def test_jsonl_documents(tmp_path_factory, rows, encoding, cut, strict):
    folder = tmp_path_factory.mktemp("jsonl")
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    path = _write(folder, "rows.jsonl", text, encoding, cut)
    records, error = _read(path, strict)
    if records is not None:
        _sane(records)
    typed = all(
        isinstance(r, dict) and isinstance(r.get("image"), str) and isinstance(r.get("caption"), str) for r in rows
    )
    plain = typed and all(set(r) == {"image", "caption"} and r["image"] and r["caption"] != "[" for r in rows)
    if (
        plain
        and cut is None
        and encoding in ("utf-8", "utf-8-sig")
        and not (strict and any(_outside(r["image"]) for r in rows))
    ):
        expected: dict = {}  # one record per image, its captions in row order, the id its path as written
        for r in rows:
            expected.setdefault(r["image"], []).extend([r["caption"]] if r["caption"].strip() else [])
        got = [(r.image, r.captions, r.image_id) for r in records]
        assert got == [(_joined(folder / "imgs", k), v, DerivedId(k)) for k, v in expected.items()], error


CELLS = st.text(alphabet=st.sampled_from("ab ,;\t|\"'\n\r\\é漢"), max_size=6)


@fuzz_settings(100)
@given(
    header=st.lists(st.sampled_from(["image", "caption", "split", "image_id", "note", ""]), min_size=1, max_size=4),
    rows=st.lists(st.lists(CELLS, max_size=5), max_size=4),
    encoding=ENCODINGS,
    delimiter=st.sampled_from([",", "\t", "|"]),
    cut=st.none() | st.integers(0, 120),
)
def test_csv_documents(tmp_path_factory, header, rows, encoding, delimiter, cut):
    folder = tmp_path_factory.mktemp("csv")
    buf = io.StringIO()
    csv.writer(buf, delimiter=delimiter, lineterminator="\r\n").writerows([header, *rows])  # quotes a \r in a cell
    note(repr((buf.getvalue(), encoding, cut)))
    path = _write(folder, "table.csv", buf.getvalue(), encoding, cut)
    records, _ = _read(path, strict=False)
    if records is not None:
        _sane(records)
        assert len(records) <= len(rows)


@fuzz_settings(60)
@given(doc=JSON, cut=st.none() | st.integers(0, 60))
def test_any_json_document(tmp_path_factory, doc, cut):
    path = _write(tmp_path_factory.mktemp("any"), "data.json", json.dumps(doc), "utf-8", cut)
    records, _ = _read(path, strict=False)
    if records is not None:
        _sane(records)
