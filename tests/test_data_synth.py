"""Synthetic scenes: deterministic bytes, captions that describe the drawn scene, the CLI, and the rate."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

from mmgen.commands.cli import main
from mmgen.data.sources import load_records
from mmgen.scenes.simple import COLORS, RELATIONS, SHAPES, draw_scene, sample_scene, scene_captions
from mmgen.scenes.writer import make_scenes, make_scenes_splits


def _digest(root) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seed_same_bytes(tmp_path):
    a = make_scenes(tmp_path / "a", 30, seed=7, val=10)
    make_scenes(tmp_path / "b", 30, seed=7, val=10)
    make_scenes(tmp_path / "c", 30, seed=8, val=10)
    da, db, dc = _digest(tmp_path / "a"), _digest(tmp_path / "b"), _digest(tmp_path / "c")
    assert da == db and len(da) == 32  # 30 images + 2 caption files
    assert da != dc
    assert set(a["splits"]) == {"train", "val"}
    # image k depends on (seed, k) only: a larger dataset starts with the same images
    make_scenes(tmp_path / "d", 25, seed=7)
    dd = _digest(tmp_path / "d")
    assert all(dd[k] == da[k] for k in da if k.startswith("images/train/"))


def _mean_colour_at(im: np.ndarray, obj: dict) -> np.ndarray:
    s = im.shape[0]
    cx, cy = round(obj["x"] * s), round(obj["y"] * s)
    return im[cy - 1 : cy + 2, cx - 1 : cx + 2].reshape(-1, 3).mean(axis=0)


def test_captions_describe_the_drawn_scene(tmp_path):
    make_scenes(tmp_path, 60, seed=1, image_size=64, val=20)
    data = json.loads((tmp_path / "captions_train.json").read_text())
    caps = {}
    for ann in data["annotations"]:
        caps.setdefault(ann["image_id"], []).append(ann["caption"])
    relations = set()
    for entry in data["images"]:
        scene = entry["scene"]
        texts = caps[entry["id"]]
        assert len(texts) == 5 and len(set(texts)) == 5
        names = [f"{o['size']} {o['color']} {o['shape']}" for o in scene["objects"]]
        for text in texts:
            assert scene["background"] in text
            words = text.split()
            assert {w for w in words if w in COLORS} == {o["color"] for o in scene["objects"]}
            assert {w for w in words if w in SHAPES} == {o["shape"] for o in scene["objects"]}
        assert names[0] in texts[0] and texts[0].startswith(("a ", "an "))
        pixels = np.asarray(Image.open(tmp_path / entry["file_name"]).convert("RGB"), dtype=np.float64)
        for o in scene["objects"]:  # the object's colour really is at its centre (pale backgrounds differ)
            if o["shape"] != "star":
                assert np.abs(_mean_colour_at(pixels, o) - COLORS[o["color"]]).max() < 40
        if len(scene["objects"]) == 2:
            a, b = scene["objects"]
            rel = scene["relation"]
            relations.add(rel)
            assert f"{names[0]} {rel} a {names[1]}" in texts[0]
            assert f"{names[1]} {RELATIONS[rel]} a {names[0]}" in texts[1]
            dx, dy = b["x"] - a["x"], b["y"] - a["y"]
            expected = {"to the left of": dx > 0, "to the right of": dx < 0, "above": dy > 0, "below": dy < 0}[rel]
            assert expected and (abs(dx) > abs(dy) if "of" in rel else abs(dy) > abs(dx))
    assert len(relations) >= 3
    recs = load_records(tmp_path / "captions_val.json")
    assert len(recs) == 20 and all(len(r.captions) == 5 for r in recs)


def test_split_sizes_and_reuse(tmp_path):
    first = make_scenes_splits(tmp_path, n_train=8, n_val=3, seed=2, image_size=32)
    assert "reused" not in first
    again = make_scenes_splits(tmp_path, n_train=8, n_val=3, seed=2, image_size=32)
    assert again["reused"] and again["splits"] == first["splits"]
    assert "reused" not in make_scenes_splits(tmp_path, n_train=8, n_val=3, seed=3, image_size=32)
    train = load_records(tmp_path / "captions_train.json", images=tmp_path)  # images dir = the output dir
    val = load_records(tmp_path / "captions_val.json")  # the default finds them too
    assert len(train) == 8 and len(val) == 3
    assert all(Path(r.image).is_file() for r in train + val)


def test_a_constant_caption_would_be_mostly_wrong():
    rng = np.random.default_rng(0)
    first = [scene_captions(sample_scene(rng))[0] for _ in range(300)]
    most = max(first.count(c) for c in set(first))
    assert len(set(first)) > 100 and most < 10


def test_cli_synth_and_stats(tmp_path, capsys):
    assert (
        main(
            ["data", "synth", str(tmp_path / "s"), "--n", "12", "--seed", "3", "--split-val", "4", "--image-size", "32"]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "images/s" in out and "captions_val.json" in out
    assert Image.open(tmp_path / "s" / "images" / "val" / "000012.png").size == (32, 32)
    (tmp_path / "s" / "images" / "train" / "000001.png").write_bytes(b"")  # one broken image
    code = main(
        [
            "data",
            "stats",
            "--data",
            str(tmp_path / "s" / "captions_train.json"),
            str(tmp_path / "s" / "captions_val.json"),
        ]
    )
    out = capsys.readouterr().out
    assert code == 1  # an image failed to decode
    assert "images: 12" in out and "captions: 60" in out and "vocabulary size:" in out
    assert "images that fail to decode: 1 of 12" in out and "000001.png: empty file" in out
    assert main(["data"]) == 2  # no action: help


def test_rate_is_measured(tmp_path):
    summary = make_scenes(tmp_path, 200, seed=0, image_size=64)
    t0 = time.perf_counter()
    for k in range(100):
        draw_scene(sample_scene(np.random.default_rng([0, k])), 64)
    draw_rate = 100 / (time.perf_counter() - t0)
    print(
        f"\nsynthetic scenes: {summary['images_per_second']:.0f} images/s written (PNG, 64x64), "
        f"{draw_rate:.0f} images/s drawn"
    )
    assert summary["images_per_second"] > 0
