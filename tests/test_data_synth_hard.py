"""Hard synthetic scenes: deterministic, drawn where the scene says, and captions that read back to the truth."""

from __future__ import annotations

import hashlib
import json
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from mmgen.commands.cli import main
from mmgen.scenes.accuracy import parse_caption, scene_accuracy
from mmgen.scenes.hard import COLORS, GRID, NUMBERS, PLURALS, POSITIONS, SHAPES
from mmgen.scenes.hard import sample_scene as sample_hard_scene
from mmgen.scenes.hard import scene_captions as hard_scene_captions
from mmgen.scenes.writer import make_scenes, make_scenes_splits


@pytest.fixture(scope="module")
def scenes():
    rng = np.random.default_rng(11)
    return {i: sample_hard_scene(rng) for i in range(400)}


def _digest(root) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*.png")}


def test_same_seed_same_bytes_and_image_k_depends_on_seed_and_k_only(tmp_path):
    make_scenes(tmp_path / "a", 20, seed=5, val=5, difficulty="hard")
    make_scenes(tmp_path / "b", 20, seed=5, val=5, difficulty="hard")
    make_scenes(tmp_path / "c", 12, seed=5, difficulty="hard")
    make_scenes(tmp_path / "d", 20, seed=5, val=5)  # the simple scenes differ
    a, b, c, d = (_digest(tmp_path / x) for x in "abcd")
    assert a == b and len(a) == 20
    assert all(a[k] == c[k] for k in c)
    assert all(a[k] != d[k] for k in a)
    info = json.loads((tmp_path / "a" / "captions_train.json").read_text())["info"]
    assert info["difficulty"] == "hard"


def test_layouts_cover_the_task(scenes):
    layouts = Counter(s["layout"] for s in scenes.values())
    assert set(layouts) == {"single", "pair", "group", "group_and_one"}
    counts = Counter(g["count"] for s in scenes.values() for g in s["groups"])
    assert set(counts) == {1, 2, 3, 4}
    assert {g["shape"] for s in scenes.values() for g in s["groups"]} == set(SHAPES)
    assert {o["size"] for s in scenes.values() for o in s["objects"]} == {"small", "medium", "large"}
    assert len({s["position"] for s in scenes.values() if s["position"]}) == len(POSITIONS)
    assert {s["relation"] for s in scenes.values() if s["relation"]} == {
        "to the left of", "to the right of", "above", "below"
    }  # fmt: skip
    first = [hard_scene_captions(s)[0] for s in scenes.values()]
    assert max(Counter(first).values()) < 5  # a constant caption would be mostly wrong


def test_truth_is_consistent_with_the_drawing_geometry(scenes):
    for scene in scenes.values():
        objects, groups = scene["objects"], scene["groups"]
        assert len(objects) == sum(g["count"] for g in groups) <= 4
        cells = [tuple(o["cell"]) for o in objects]
        assert len(set(cells)) == len(cells)  # one object per cell
        for o in objects:
            row, col = o["cell"]
            reach = 1.2 * o["r"]  # every shape stays within 1.2 radii: inside its own cell
            assert col / GRID <= o["x"] - reach and o["x"] + reach <= (col + 1) / GRID
            assert row / GRID <= o["y"] - reach and o["y"] + reach <= (row + 1) / GRID
            assert abs(o["angle"]) <= 30
        looks = Counter((o["size"], o["color"], o["shape"]) for o in objects)
        assert looks == Counter({(g["size"], g["color"], g["shape"]): g["count"] for g in groups})
        if scene["position"]:
            assert len(objects) == 1 and POSITIONS[tuple(objects[0]["cell"])] == scene["position"]
        if scene["relation"]:
            a, b = objects
            dx, dy = b["x"] - a["x"], b["y"] - a["y"]
            want = {
                "to the left of": dx >= 0.25,
                "to the right of": dx <= -0.25,
                "above": dy >= 0.25,
                "below": dy <= -0.25,
            }
            assert want[scene["relation"]] and (abs(dy) if "of" in scene["relation"] else abs(dx)) <= 0.08


def test_each_object_is_drawn_in_its_colour(tmp_path):
    make_scenes(tmp_path, 40, seed=2, image_size=96, difficulty="hard")
    data = json.loads((tmp_path / "captions_train.json").read_text())
    for entry in data["images"]:
        pixels = np.asarray(Image.open(tmp_path / entry["file_name"]).convert("RGB"), dtype=np.float64)
        for o in entry["scene"]["objects"]:
            cx, cy = round(o["x"] * 96), round(o["y"] * 96)
            centre = pixels[cy - 1 : cy + 2, cx - 1 : cx + 2].reshape(-1, 3).mean(axis=0)
            assert np.abs(centre - COLORS[o["color"]]).max() < 40, (entry["file_name"], o)


def test_every_reference_caption_reads_back_to_its_scene(scenes):
    for k in range(5):
        acc = scene_accuracy({i: hard_scene_captions(s)[k] for i, s in scenes.items()}, scenes)
        assert acc["exact"] == 1.0 and acc["confusions"] == []
        for key in ("background", "count", "number", "size", "color", "shape", "position"):
            assert acc[key] == 1.0
    for scene in scenes.values():
        for caption in hard_scene_captions(scene):
            words = caption.split()
            for g in scene["groups"]:  # every group is named with its number, size, colour and shape
                noun = g["shape"] if g["count"] == 1 else PLURALS[g["shape"]]
                assert f"{g['size']} {g['color']} {noun}" in caption
                if g["count"] > 1:
                    assert f"{NUMBERS[g['count']]} {g['size']}" in caption
            assert scene["background"] in words


def test_planted_errors_are_found(scenes):
    ids = [i for i, s in scenes.items() if s["layout"] == "group"][:20]
    wrong = {}
    for i in ids:
        g = scenes[i]["groups"][0]
        other = NUMBERS[g["count"] % 4 + 1] if g["count"] % 4 + 1 > 1 else "two"
        wrong[i] = hard_scene_captions(scenes[i])[0].replace(NUMBERS[g["count"]], other, 1)
    acc = scene_accuracy(wrong, {i: scenes[i] for i in ids})
    assert acc["number"] == 0.0 and acc["color"] == 1.0 and acc["exact"] == 0.0
    single = [i for i, s in scenes.items() if s["layout"] == "single"][:20]
    moved = {
        i: hard_scene_captions(scenes[i])[0].replace(
            scenes[i]["position"], "in the middle" if scenes[i]["position"] != "in the middle" else "at the top"
        )
        for i in single
    }
    acc = scene_accuracy(moved, {i: scenes[i] for i in single})
    assert acc["position"] == 0.0 and acc["shape"] == 1.0
    assert parse_caption("three small pink crosses and a large cyan hexagon")["counts"] == [3, 1]


def test_cli_writes_hard_scenes_and_training_data_synth_passes_the_difficulty(tmp_path, capsys):
    assert main(["data", "synth", str(tmp_path / "s"), "--n", "6", "--split-val", "2", "--difficulty", "hard"]) == 0
    data = json.loads((tmp_path / "s" / "captions_val.json").read_text())
    assert data["info"]["difficulty"] == "hard" and all("groups" in im["scene"] for im in data["images"])
    first = make_scenes_splits(tmp_path / "t", n_train=4, n_val=2, difficulty="hard")
    assert make_scenes_splits(tmp_path / "t", n_train=4, n_val=2, difficulty="hard")["reused"]
    assert "reused" not in make_scenes_splits(tmp_path / "t", n_train=4, n_val=2)  # simple scenes: rewritten
    assert first["splits"]["train"].endswith("captions_train.json")
