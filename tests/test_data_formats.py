"""Readers of COCO, Karpathy, JSONL and CSV caption files, format detection, errors, and coco-mini."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
from PIL import Image

from mmgen.data.records import DataFormatError, Record
from mmgen.data.sources import detect_format, load_records


def _img(path: Path, color=(200, 10, 10), size=(12, 8)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def _coco(path: Path, items: dict[int, list[str]], prefix: str = "") -> Path:
    images = [{"id": i, "file_name": f"{prefix}{i:04d}.png", "width": 12, "height": 8} for i in items]
    anns = [{"id": 100 * i + j, "image_id": i, "caption": c} for i, caps in items.items() for j, c in enumerate(caps)]
    path.write_text(json.dumps({"info": {}, "images": images, "annotations": anns}))
    return path


def test_coco_json_with_images_dir(tmp_path):
    for i in (1, 2):
        _img(tmp_path / "imgs" / f"{i:04d}.png")
    ann = _coco(tmp_path / "a.json", {1: ["a red box", "a red thing"], 2: ["one more"]})
    recs = load_records(ann, images=tmp_path / "imgs")
    assert detect_format(ann) == "coco"
    assert [r.image_id for r in recs] == [1, 2]
    assert recs[0].captions == ["a red box", "a red thing"]
    assert Path(recs[1].image) == tmp_path / "imgs" / "0002.png"
    assert recs[0].split is None


def test_coco_default_images_dir_and_combined_files(tmp_path):
    _coco(tmp_path / "train.json", {1: ["a", "b"], 2: ["c"]})
    _coco(tmp_path / "val.json", {3: ["d"], 1: ["e"]})
    _img(tmp_path / "images" / "0001.png")
    recs = load_records([tmp_path / "train.json", tmp_path / "val.json"])
    by_id = {r.image_id: r for r in recs}
    assert sorted(by_id) == [1, 2, 3]
    assert by_id[1].captions == ["a", "b", "e"]  # the same image in two files: captions merged
    assert Path(by_id[3].image).parent == tmp_path / "images"


def test_format_is_detected_from_content_not_name(tmp_path):
    path = _coco(tmp_path / "captions.txt", {1: ["x"]})
    assert detect_format(path) == "coco"
    (tmp_path / "table.json").write_text('{"image": "a.png", "caption": "x"}\n{"image": "b.png", "caption": "y"}\n')
    assert detect_format(tmp_path / "table.json") == "jsonl"
    (tmp_path / "rows.dat").write_text("image,caption\na.png,x\n")
    assert detect_format(tmp_path / "rows.dat") == "csv"


def _karpathy(path: Path) -> Path:
    splits = ["train", "val", "test", "restval"]
    images = [
        {
            "filepath": "val2014",
            "filename": f"im{i}.jpg",
            "imgid": i,
            "cocoid": 1000 + i,
            "split": s,
            "sentences": [{"raw": f"caption {i} one", "tokens": ["caption"]}, {"raw": f"caption {i} two"}],
        }
        for i, s in enumerate(splits)
    ]
    path.write_text(json.dumps({"images": images, "dataset": "coco"}))
    return path


def test_karpathy_splits_and_restval(tmp_path):
    path = _karpathy(tmp_path / "dataset_coco.json")
    assert detect_format(path) == "karpathy"
    train = load_records(path, images="/data/coco", split="train")
    assert [r.image_id for r in train] == [1000, 1003]  # restval counts as train
    assert train[0].image == str(Path("/data/coco/val2014/im0.jpg"))
    assert train[0].captions == ["caption 0 one", "caption 0 two"]
    assert [r.image_id for r in load_records(path, split="train", restval=False)] == [1000]
    assert [r.image_id for r in load_records(path, split="test")] == [1002]
    assert {r.split for r in load_records(path, restval=False)} == {"train", "val", "test", "restval"}


def test_karpathy_flickr_without_filepath_uses_imgid(tmp_path):
    images = [{"filename": "1000_a.jpg", "imgid": 7, "split": "val", "sentences": [{"raw": "a dog runs"}]}]
    (tmp_path / "dataset_flickr8k.json").write_text(json.dumps({"images": images, "dataset": "flickr8k"}))
    (rec,) = load_records(tmp_path / "dataset_flickr8k.json", images=tmp_path / "Flickr8k_Dataset", split="val")
    assert rec.image_id == 7 and rec.image == str(tmp_path / "Flickr8k_Dataset" / "1000_a.jpg")


def test_jsonl_list_column_and_numbered_columns(tmp_path):
    sub = tmp_path / "d"
    sub.mkdir()
    rows = [
        {"image": "img/a.png", "captions": ["first", "second"], "split": "train"},
        {"image": "img/b.png", "captions": ["third"], "split": "val"},
    ]
    (sub / "data.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    recs = load_records(sub / "data.jsonl")
    assert [r.captions for r in recs] == [["first", "second"], ["third"]]
    assert recs[0].image == str(sub / "img" / "a.png")  # relative to the file
    assert [r.image_id for r in load_records(sub / "data.jsonl", split="val")] == ["img/b.png"]
    (sub / "wide.jsonl").write_text(json.dumps({"file_name": "x.png", "caption_1": "one", "caption_2": "two"}) + "\n")
    assert load_records(sub / "wide.jsonl")[0].captions == ["one", "two"]


def test_csv_one_row_per_caption_is_grouped(tmp_path):
    (tmp_path / "captions.csv").write_text(
        'image,caption,image_id\na.jpg,"a dog, running",1\na.jpg,a dog on grass,1\nb.jpg,a cat,2\n'
    )
    recs = load_records(tmp_path / "captions.csv")
    assert [(r.image_id, r.captions) for r in recs] == [("1", ["a dog, running", "a dog on grass"]), ("2", ["a cat"])]
    (tmp_path / "t.tsv").write_text('path\tcaptions\nq.png\t["x", "y"]\n')
    rec = load_records(tmp_path / "t.tsv", images=tmp_path / "elsewhere")[0]
    assert rec.captions == ["x", "y"] and rec.image == str(tmp_path / "elsewhere" / "q.png")
    assert load_records(tmp_path / "t.tsv", caption_column="captions")[0].captions == ["x", "y"]


@pytest.mark.parametrize(
    "name, text, expected",
    [
        (
            "bad.jsonl",
            '{"image": "a.png", "caption": "x"}\n{"image": "b.png", "caption": \n',
            r"bad\.jsonl:2: invalid JSON",
        ),
        (
            "rows.jsonl",
            '{"image": "a.png", "caption": "x"}\n[1, 2]\n',
            r"rows\.jsonl:2: each line must be a JSON object",
        ),
        ("nopath.jsonl", '{"image": 3, "caption": "x"}\n', r"nopath\.jsonl:1: column 'image' must hold an image path"),
        ("cols.jsonl", '{"picture": "a.png", "caption": "x"}\n', r"cols\.jsonl: cannot find the image column"),
        (
            "c.json",
            '{"images": [{"id": 1, "file_name": "a"}], "annotations": [{"image_id": 2, "caption": "x"}]}',
            r"c\.json: annotations\[0\]\.image_id 2 is not in 'images'",
        ),
        ("d.json", '{"images": [{"id": 1}], "annotations": []}', r"d\.json: images\[0\] needs 'id' and 'file_name'"),
        (
            "k.json",
            '{"images": [{"filename": "a.jpg", "sentences": [{"tokens": 3}]}]}',
            r"k\.json: images\[0\]\.sentences\[0\] needs 'raw'",
        ),
        ("e.json", '{"images": [{"id": 1,\n "file_name": ', r"e\.json:2: invalid JSON"),
        ("f.csv", "image,caption\na.png,x,extra\n", r"f\.csv:2: more fields than the header"),
        # values of the wrong type name their key instead of a TypeError deep inside
        ("g.json", '{"images": [{"id": [1], "file_name": "a"}], "annotations": []}', r"g\.json: images\[0\]\.id: an"),
        ("h.json", '{"images": [{"id": 1, "file_name": null}], "annotations": []}', r"images\[0\]\.file_name must be"),
        (
            "i.json",
            '{"images": [{"id": 1, "file_name": "a"}], "annotations": [{"image_id": {"x": 1}, "caption": "x"}]}',
            r"i\.json: annotations\[0\]\.image_id: an image id must be an integer or a string, got \{'x': 1\}",
        ),
        ("k2.json", '{"images": [{"filename": 7, "sentences": []}]}', r"k2\.json: images\[0\]\.filename must be a"),
        ("k3.json", '{"images": [{"filename": "a", "cocoid": [3], "sentences": []}]}', r"images\[0\]\.cocoid: an"),
        ("j.jsonl", '{"image": "a.png", "caption": "x", "image_id": [51]}\n', r"j\.jsonl:1: column 'image_id': an"),
        ("s.jsonl", '{"image": "a.png", "caption": "x", "split": 1}\n', r"s\.jsonl:1: column 'split' must hold a"),
        ("deep.json", "[" * 100_000 + "]" * 100_000, r"deep\.json: invalid JSON \(nested too deeply\)"),
    ],
)
def test_malformed_input_names_file_and_line_or_key(tmp_path, name, text, expected):
    (tmp_path / name).write_text(text)
    with pytest.raises(DataFormatError, match=expected):
        load_records(tmp_path / name)


def test_missing_sources(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.json"):
        load_records(tmp_path / "nothing.json")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(DataFormatError, match="empty_dir"):
        load_records(tmp_path / "empty_dir")


def test_record_repr_abbreviates_bytes():
    assert "<3 bytes>" in repr(Record(image=b"abc", captions=["x"], image_id=1))


def test_coco_mini_both_files_decode_to_encoder_input(shared_data):
    import timm
    import torch

    from mmgen.data.collate import EvalCollator
    from mmgen.data.datasets import CaptionEvalDataset
    from mmgen.data.transforms import build_transform, image_size, resolve_data_config

    root = shared_data / "coco-mini"
    recs = load_records([root / "captions_train2017.json", root / "captions_val2017.json"], images=root / "images")
    assert len(recs) == 239 and len({r.image_id for r in recs}) == 239
    assert all(len(r.captions) == 5 for r in recs)
    model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=0, depth=1, embed_dim=64, num_heads=2
    )
    cfg = resolve_data_config(model)
    ds = CaptionEvalDataset(recs, build_transform(cfg), max_pixels=40_000_000)
    loader = torch.utils.data.DataLoader(ds, batch_size=64, collate_fn=EvalCollator(image_size(cfg)))
    n, threads = 0, torch.get_num_threads()
    torch.set_num_threads(1)  # small per-image tensor ops: extra threads only contend on a shared CPU
    try:
        for batch in loader:
            assert batch["failed"] == []
            assert batch["pixel_values"].shape[1:] == (3, *image_size(cfg)) == (3, 224, 224)
            assert batch["pixel_values"].dtype == torch.float32
            n += len(batch["image_ids"])
    finally:
        torch.set_num_threads(threads)
    assert n == 239


def test_coco_image_id_listed_twice_with_two_files_is_refused_with_the_ids(tmp_path):
    images = [
        {"id": 7, "file_name": "a.png"},
        {"id": 8, "file_name": "b.png"},
        {"id": 7, "file_name": "c.png"},  # would have silently replaced a.png: captions on the wrong photo
    ]
    anns = [{"id": 1, "image_id": 7, "caption": "a dog"}, {"id": 2, "image_id": 8, "caption": "a cat"}]
    (tmp_path / "dup.json").write_text(json.dumps({"images": images, "annotations": anns}))
    with pytest.raises(
        DataFormatError, match=r"dup\.json: 1 image id\(s\) name two different files.*id 7: a\.png and c\.png"
    ):
        load_records(tmp_path / "dup.json")
    images[2]["file_name"] = "a.png"  # the same id and file listed twice: one image, as for JSONL rows
    (tmp_path / "same.json").write_text(json.dumps({"images": images, "annotations": anns}))
    recs = load_records(tmp_path / "same.json")
    assert [(r.image_id, Path(r.image).name, r.captions) for r in recs] == [
        (7, "a.png", ["a dog"]),
        (8, "b.png", ["a cat"]),
    ]


def test_empty_captions_are_dropped_and_counted_in_every_format(tmp_path):
    anns = [
        {"id": 1, "image_id": 1, "caption": "a red box"},
        {"id": 2, "image_id": 1, "caption": ""},
        {"id": 3, "image_id": 2, "caption": "  \n"},
    ]
    coco = {"images": [{"id": 1, "file_name": "1.png"}, {"id": 2, "file_name": "2.png"}], "annotations": anns}
    (tmp_path / "c.json").write_text(json.dumps(coco))
    with pytest.warns(
        UserWarning, match=r"c\.json: dropped 2 empty caption\(s\) \(annotations\[1\], annotations\[2\]\)"
    ):
        with pytest.warns(UserWarning, match=r"c\.json: dropped 1 image\(s\) without a caption \(id 2\)"):
            recs = load_records(tmp_path / "c.json")
    assert [(r.image_id, r.captions) for r in recs] == [(1, ["a red box"])]  # image 2 has no caption left
    images = [{"filename": "a.jpg", "imgid": 0, "split": "train", "sentences": [{"raw": " "}, {"raw": "a dog"}]}]
    (tmp_path / "k.json").write_text(json.dumps({"images": images}))
    with pytest.warns(UserWarning, match=r"k\.json: dropped 1 empty caption\(s\) \(images\[0\]\.sentences\[0\]\)"):
        assert load_records(tmp_path / "k.json")[0].captions == ["a dog"]
    rows = [{"image": "a.png", "caption": "one"}, {"image": "a.png", "caption": " "}, {"image": "b.png", "caption": ""}]
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.warns(UserWarning, match=r"t\.jsonl: dropped 2 empty caption\(s\) \(line 2: column 'caption', line 3"):
        recs = load_records(tmp_path / "t.jsonl")
    assert [r.captions for r in recs] == [["one"], []]
    (tmp_path / "t.csv").write_text("image,caption\na.png,one\nb.png,\n")
    with pytest.warns(UserWarning, match=r"t\.csv: dropped 1 empty caption\(s\) \(line 3: column 'caption'\)"):
        load_records(tmp_path / "t.csv")


def test_csv_row_with_a_missing_field_is_named_by_file_and_line(tmp_path):
    (tmp_path / "short.csv").write_text("image,image_id,caption\na.png,1,a dog\nb.png,2\n")
    with pytest.raises(
        DataFormatError, match=r"short\.csv:3: 2 field\(s\), the header has 3 \(missing \['caption'\]\)"
    ):
        load_records(tmp_path / "short.csv")


def test_split_column_of_tables_selects_rows_and_names_the_splits_there_are(tmp_path):
    rows = [
        ("a.png", "train"),
        ("b.png", "validation"),
        ("c.png", "test"),
        ("d.png", "restval"),
    ]
    (tmp_path / "t.csv").write_text("image,caption,split\n" + "".join(f"{i},cap {i},{s}\n" for i, s in rows))
    path = tmp_path / "t.csv"
    assert [Path(r.image).name for r in load_records(path, split="train")] == ["a.png", "d.png"]
    assert [Path(r.image).name for r in load_records(path, split="train", restval=False)] == ["a.png"]
    assert [Path(r.image).name for r in load_records(path, split="val")] == ["b.png"]  # 'val' finds 'validation'
    assert len(load_records(path)) == 4  # no split asked for: every row
    with pytest.raises(
        DataFormatError, match=r"t\.csv: no record is in split 'dev2'; the splits it has are 'restval' \(1"
    ):
        load_records(path, split="dev2")
    (tmp_path / "mixed.jsonl").write_text('{"image": "a.png", "caption": "x", "split": "train"}\n'
                                          '{"image": "b.png", "caption": "y"}\n')  # fmt: skip
    with pytest.raises(DataFormatError, match=r"mixed\.jsonl: 1 record\(s\) have no split.*b\.png"):
        load_records(tmp_path / "mixed.jsonl", split="train")
    (tmp_path / "none.jsonl").write_text('{"image": "a.png", "caption": "x"}\n')
    assert len(load_records(tmp_path / "none.jsonl", split="val")) == 1  # no split information: taken whole


def test_karpathy_file_without_the_requested_split_names_the_ones_it_has(tmp_path):
    path = _karpathy(tmp_path / "dataset_coco.json")
    with pytest.raises(DataFormatError, match=r"dataset_coco\.json: no record is in split 'dev'.*'test' \(1 records\)"):
        load_records(path, split="dev")


def test_one_image_in_two_splits_of_a_table_is_refused_naming_both_rows(tmp_path):
    (tmp_path / "t.csv").write_text("image,caption,split\na.png,one,train\nb.png,two,val\na.png,three,val\n")
    with pytest.raises(
        DataFormatError, match=r"t\.csv:4: image 'a\.png' is in split 'val' here but in 'train' at .*t\.csv:2"
    ):
        load_records(tmp_path / "t.csv")


def test_utf8_with_a_byte_order_mark_reads_as_without_and_other_encodings_are_named(tmp_path):
    """Excel's "CSV UTF-8" starts with a byte-order mark: the same records as the plain file."""
    table = "image,caption\nimages/a.png,a red café\n"
    coco = json.dumps({"images": [{"id": 1, "file_name": "a.png"}], "annotations": [{"image_id": 1, "caption": "x"}]})
    for name, text in (("t.csv", table), ("c.json", coco), ("l.jsonl", '{"image": "a.png", "caption": "x"}\n')):
        (tmp_path / name).write_text(text, encoding="utf-8")
        (tmp_path / f"bom-{name}").write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
        plain, marked = load_records(tmp_path / name), load_records(tmp_path / f"bom-{name}")
        assert detect_format(tmp_path / f"bom-{name}") == detect_format(tmp_path / name)
        assert [(r.captions, r.image, r.image_id) for r in marked] == [(r.captions, r.image, r.image_id) for r in plain]
    (tmp_path / "latin1.csv").write_bytes(table.encode("latin-1"))
    at = table.encode("latin-1").index(b"\xe9")  # the é, one byte in Latin-1
    with pytest.raises(
        DataFormatError, match=rf"latin1\.csv: not UTF-8 text \(invalid continuation byte at byte {at}\b"
    ):
        load_records(tmp_path / "latin1.csv")
    (tmp_path / "utf16.json").write_bytes(coco.encode("utf-16"))
    with pytest.raises(DataFormatError, match=r"utf16\.json: not UTF-8 text"):
        load_records(tmp_path / "utf16.json")


def test_image_paths_outside_the_images_folder_are_warned_about_or_refused_when_strict(tmp_path):
    inside, outside = _img(tmp_path / "imgs" / "a.png"), _img(tmp_path / "secret.png")
    images = [
        {"id": 1, "file_name": "a.png"},
        {"id": 2, "file_name": "../secret.png"},
        {"id": 3, "file_name": str(outside)},
    ]
    anns = [{"image_id": i, "caption": "x"} for i in (1, 2, 3)]
    (tmp_path / "c.json").write_text(json.dumps({"images": images, "annotations": anns}))
    with pytest.warns(UserWarning, match=r"c\.json: 2 image path\(s\) lead outside the images folder .*imgs"):
        records = load_records(tmp_path / "c.json", images=tmp_path / "imgs")
    assert [Path(r.image).resolve() for r in records] == [inside, outside, outside]  # read from where they lead
    with pytest.raises(DataFormatError, match=r"images\[1\]\.file_name: '\.\./secret\.png' leads outside the images"):
        load_records(tmp_path / "c.json", images=tmp_path / "imgs", strict_paths=True)
    (tmp_path / "t.csv").write_text(f"image,caption\nimgs/a.png,x\n{outside},y\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a table's absolute paths are ordinary: no warning
        assert len(load_records(tmp_path / "t.csv")) == 2
    with pytest.raises(DataFormatError, match=r"t\.csv:3: column 'image': .* leads outside the images folder"):
        load_records(tmp_path / "t.csv", strict_paths=True)
