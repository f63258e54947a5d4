"""Hugging Face sources written locally by the tests: save_to_disk, parquet, imagefolder, webdataset, streaming."""

from __future__ import annotations

import io
import json
import sys
import tarfile

import pytest
import torch
from PIL import Image

from mmgen.data.collate import EvalCollator
from mmgen.data.datasets import CaptionTrainDataset, StreamingCaptionDataset
from mmgen.data.images import decode_image
from mmgen.data.records import DataFormatError
from mmgen.data.sources import detect_format, load_records
from mmgen.data.transforms import build_transform

datasets = pytest.importorskip("datasets")

CFG = {
    "input_size": (3, 8, 8),
    "interpolation": "bilinear",
    "mean": (0.5,) * 3,
    "std": (0.5,) * 3,
    "crop_pct": 1.0,
    "crop_mode": "center",
}
N = 12


def _png(i: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (10, 8), (i * 20 % 256, 100, 200)).save(buf, format="PNG")
    return buf.getvalue()


def _dataset(n: int = N, offset: int = 0):
    feats = datasets.Features(
        {
            "image": datasets.Image(),
            "captions": datasets.List(datasets.Value("string")),
            "image_id": datasets.Value("int64"),
        }
    )
    rows = [
        {"image": {"bytes": _png(i), "path": None}, "captions": [f"picture {i}", f"photo {i}"], "image_id": i}
        for i in range(offset, offset + n)
    ]
    return datasets.Dataset.from_list(rows, features=feats)


@pytest.fixture(autouse=True)
def _quiet():
    datasets.disable_progress_bars()


def _check(recs, ids=range(N)):
    assert sorted(r.image_id for r in recs) == list(ids)
    for r in recs:
        assert r.captions == [f"picture {r.image_id}", f"photo {r.image_id}"]
        assert decode_image(r.image).getpixel((0, 0)) == (r.image_id * 20 % 256, 100, 200)


def test_save_to_disk_dataset_and_dataset_dict(tmp_path):
    _dataset().save_to_disk(str(tmp_path / "one"))
    assert detect_format(tmp_path / "one") == "hf_disk"
    recs = load_records(tmp_path / "one")
    _check(recs)
    ds = CaptionTrainDataset(recs, build_transform(CFG), caption_sampling="all")
    assert len(ds) == 2 * N and ds[3]["pixel_values"].shape == (3, 8, 8)
    datasets.DatasetDict({"train": _dataset(4), "validation": _dataset(3, offset=4)}).save_to_disk(str(tmp_path / "dd"))
    val = load_records(tmp_path / "dd", split="val")  # 'val' finds 'validation'
    _check(val, range(4, 7))
    assert {r.split for r in val} == {"validation"}
    assert len(load_records(tmp_path / "dd")) == 7  # no split: all of them


def test_parquet_shards_glob_and_folder(tmp_path):
    ds = _dataset()
    (tmp_path / "pq").mkdir()
    for k in range(3):
        ds.shard(3, k, contiguous=True).to_parquet(str(tmp_path / "pq" / f"train-{k:05d}-of-00003.parquet"))
    glob = str(tmp_path / "pq" / "*.parquet")
    assert detect_format(glob) == "parquet"
    _check(load_records(glob, cache_dir=str(tmp_path / "cache")))
    _check(load_records(tmp_path / "pq", split="train", cache_dir=str(tmp_path / "cache")))


def test_imagefolder_with_metadata_jsonl(tmp_path):
    root = tmp_path / "folder"
    root.mkdir()
    with open(root / "metadata.jsonl", "w") as f:
        for i in range(4):
            (root / f"img{i}.png").write_bytes(_png(i))
            f.write(json.dumps({"file_name": f"img{i}.png", "caption": f"picture {i}", "image_id": i}) + "\n")
    assert detect_format(root) == "imagefolder"
    recs = load_records(root, cache_dir=str(tmp_path / "cache"))
    assert sorted(r.image_id for r in recs) == [0, 1, 2, 3]
    assert all(r.captions == [f"picture {r.image_id}"] for r in recs)
    assert all(decode_image(r.image).size == (10, 8) for r in recs)


def _tar(path, items):
    with tarfile.open(path, "w") as tf:
        for name, data in items:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def test_webdataset_tar_shards(tmp_path):
    for shard in range(2):
        items = []
        for i in range(shard * 3, shard * 3 + 3):
            meta = {"captions": [f"picture {i}", f"photo {i}"], "image_id": i}
            items += [(f"sample{i:04d}.png", _png(i)), (f"sample{i:04d}.json", json.dumps(meta).encode())]
        _tar(tmp_path / f"shard-{shard}.tar", items)
    _tar(tmp_path / "txt.tar", [("a.png", _png(1)), ("a.txt", b"one caption")])
    assert detect_format(str(tmp_path / "shard-*.tar")) == "webdataset"
    recs = load_records(str(tmp_path / "shard-*.tar"), cache_dir=str(tmp_path / "cache"))
    assert sorted(r.captions[0] for r in recs) == sorted(f"picture {i}" for i in range(6))
    assert all(decode_image(r.image).size == (10, 8) for r in recs)
    (rec,) = load_records(str(tmp_path / "txt.tar"), cache_dir=str(tmp_path / "cache"))
    assert rec.captions == ["one caption"] and rec.image_id == "a"


def _shards(tmp_path, n_shards):
    root = tmp_path / f"s{n_shards}"
    root.mkdir()
    ds = _dataset()
    for k in range(n_shards):
        ds.shard(n_shards, k).to_parquet(str(root / f"part-{k}.parquet"))
    return str(root / "*.parquet")


def test_streaming_reads_lazily_and_workers_split_shards(tmp_path):
    glob = _shards(tmp_path, 2)
    stream = load_records(glob, streaming=True, cache_dir=str(tmp_path / "cache"))
    assert not hasattr(stream, "__len__")
    _check(list(stream))
    view = StreamingCaptionDataset(stream, build_transform(CFG), mode="eval")
    loader = torch.utils.data.DataLoader(view, batch_size=5, num_workers=2, collate_fn=EvalCollator())
    ids = [i for b in loader for i in b["image_ids"]]
    assert sorted(ids) == list(range(N))  # two workers, one shard each: every record once


@pytest.mark.parametrize("n_shards", [2, 3])  # 2: whole shards per rank; 3: every other example
def test_streaming_split_across_two_ranks_covers_every_record_once(tmp_path, n_shards):
    glob = _shards(tmp_path, n_shards)
    parts = [
        load_records(glob, streaming=True, rank=r, world_size=2, cache_dir=str(tmp_path / "cache")) for r in range(2)
    ]
    ids = [[r.image_id for r in p] for p in parts]
    assert ids[0] and ids[1] and not set(ids[0]) & set(ids[1])
    assert sorted(ids[0] + ids[1]) == list(range(N))


def test_clear_error_without_the_datasets_package(tmp_path, monkeypatch):
    _dataset(2).save_to_disk(str(tmp_path / "d"))
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(ImportError, match=r"needs the 'datasets' package.*pip install datasets"):
        load_records(tmp_path / "d")


def _with_splits(splits):
    ds = _dataset(len(splits))
    return ds.add_column("split", list(splits))


def test_split_column_of_a_saved_dataset_selects_rows_map_style_and_streaming(tmp_path):
    _with_splits(["train", "val", "train", "test", "restval", "val"]).save_to_disk(str(tmp_path / "d"))
    assert sorted(r.image_id for r in load_records(tmp_path / "d", split="train")) == [0, 2, 4]
    assert sorted(r.image_id for r in load_records(tmp_path / "d", split="train", restval=False)) == [0, 2]
    val = load_records(tmp_path / "d", split="val")
    assert sorted(r.image_id for r in val) == [1, 5] and {r.split for r in val} == {"val"}
    stream = load_records(tmp_path / "d", split="val", streaming=True)
    assert sorted(r.image_id for r in stream) == [1, 5]
    assert len(load_records(tmp_path / "d")) == 6  # no split asked for: every row
    assert not any(p.name.startswith("cache-") for p in (tmp_path / "d").iterdir())  # nothing written there
    with pytest.raises(DataFormatError, match=r"[/\\]d: no record is in split 'dev'; the splits it has are"):
        load_records(tmp_path / "d", split="dev")


def test_split_column_of_streamed_shards_is_applied_as_rows_are_read(tmp_path):
    _with_splits(["train", "val"] * 3).to_parquet(str(tmp_path / "part-0.parquet"))
    stream = load_records(str(tmp_path / "*.parquet"), split="val", streaming=True, cache_dir=str(tmp_path / "c"))
    assert [r.image_id for r in stream] == [1, 3, 5]


def test_rows_without_an_id_get_a_derived_id(tmp_path):
    from mmgen.data.records import DerivedId

    _dataset(3).remove_columns("image_id").save_to_disk(str(tmp_path / "d"))
    recs = load_records(tmp_path / "d")
    assert [r.image_id for r in recs] == ["row/0", "row/1", "row/2"]
    assert all(isinstance(r.image_id, DerivedId) for r in recs)
    assert isinstance(load_records(tmp_path / "d", streaming=True).__iter__().__next__().image_id, DerivedId)


def test_a_folder_without_split_names_is_taken_whole_for_any_split(tmp_path):
    root = tmp_path / "folder"  # no train/ or validation/ subfolders: datasets calls it all 'train'
    root.mkdir()
    with open(root / "metadata.jsonl", "w") as f:
        for i in range(3):
            (root / f"img{i}.png").write_bytes(_png(i))
            f.write(json.dumps({"file_name": f"img{i}.png", "caption": f"picture {i}", "image_id": i}) + "\n")
    val = load_records(root, split="val", cache_dir=str(tmp_path / "cache"))  # e.g. data.val=<its own folder>
    assert sorted(r.image_id for r in val) == [0, 1, 2]
    datasets.DatasetDict({"train": _dataset(2)}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(DataFormatError, match=r"no split 'val'; available splits are \['train'\]"):
        load_records(tmp_path / "dd", split="val")  # a saved DatasetDict names its splits: no fallback
