"""The scene suite: deterministic distributions whose captions read back to their truth, drawn as they say."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest

from mmgen.scenes.accuracy import SceneTruth, Vocabulary, load_scenes, parse_caption, scene_accuracy
from mmgen.scenes.suite import COLOURS, DESIGN, HELD_OUT, SUITE, SceneDistribution
from mmgen.scenes.writer import make_scenes, scene_generator


def _scenes(d: SceneDistribution, n: int = 300) -> SceneTruth:
    return SceneTruth({k: d.sample_scene(np.random.default_rng([3, k])) for k in range(n)}, Vocabulary.of(d))


def test_the_suite_is_split_into_design_and_held_out_distributions():
    assert set(DESIGN) | set(HELD_OUT) == set(SUITE) and not set(DESIGN) & set(HELD_OUT)
    with pytest.raises(ValueError, match=r"difficulty must be one of \('simple', 'hard', 'grey-simple'"):
        scene_generator("nope")
    with pytest.raises(ValueError, match=r"unknown colour, pattern or scheme \['mauve'\]"):
        SceneDistribution(name="bad", colours=("red", "mauve"), shapes=("circle",), sizes={"small": (0.1, 0.1)},
                          patterns=("plain",))  # fmt: skip


@pytest.mark.parametrize("name", list(SUITE))
def test_every_reference_caption_reads_back_to_the_truth(name):
    """Colour, shape, size, number, object count, background and stated relations of all five references
    parse back to the scene (the parser and the captions agree in every style); positions are said by four."""
    d = SUITE[name]
    scenes = _scenes(d)
    for j in range(5):
        refs = {k: d.scene_captions(s)[j] for k, s in scenes.items()}
        acc = scene_accuracy(refs, scenes)
        for key in ("color", "shape", "size", "number", "count", "background", "relation"):
            assert acc.get(key, 1.0) == 1.0, (name, j, key, acc["confusions"][:3])
        assert ("size" in acc) == d.size_words and ("background" in acc) == d.background_words
    distinct = Counter(len(set(d.scene_captions(s))) for s in scenes.values())
    assert distinct[5] > 0.7 * len(scenes) and min(distinct) >= 3  # most scenes have five different captions


def test_a_wrong_caption_is_counted_wrong_attribute_by_attribute():
    d = SUITE["hue-flat"]
    scene = {
        "background": "split",
        "layout": "pair",
        "relation": "to the left of",
        "position": None,
        "groups": [
            {"count": 1, "size": "small", "color": "red", "shape": "circle"},
            {"count": 1, "size": "large", "color": "blue", "shape": "star"},
        ],
    }
    right = "a large blue star to the right of a small red circle on a split background"  # the other order: true
    wrong = "a small grey circle to the right of a large blue star on a plain background"
    acc = scene_accuracy({1: right, 2: wrong}, SceneTruth({1: scene, 2: scene}, Vocabulary.of(d)))
    assert acc["shape"] == acc["size"] == 1.0 and acc["color"] == 0.75  # one of four objects has the wrong colour
    assert acc["relation"] == 0.5 and acc["background"] == 0.5 and acc["exact"] == 0.5
    confusions = {(c["attribute"], c["truth"], c["caption"]) for c in acc["confusions"]}
    assert confusions == {("color", "red", "grey"), ("relation", "to the left of", "to the right of"),
                          ("background", "split", "plain")}  # fmt: skip


def test_every_caption_style_is_parsed():
    vocab = Vocabulary.of(SUITE["close-hues"])
    got = parse_caption("three crosses that are small and teal and a star that is large and navy", vocab)
    assert got["objects"] == [{"size": "small", "color": "teal", "shape": "cross"},
                              {"size": "large", "color": "navy", "shape": "star"}]  # fmt: skip
    assert got["counts"] == [3, 1]
    terse = parse_caption("red circle left of two blue squares", Vocabulary.of(SUITE["photo-like"]))
    assert terse["relation"] == "to the left of" and terse["counts"] == [1, 2]
    assert [o["color"] for o in terse["objects"]] == ["red", "blue"] and terse["objects"][0]["size"] is None


@pytest.mark.parametrize("name", list(SUITE))
def test_objects_are_drawn_in_their_colour_where_the_scene_says(name):
    d = replace(SUITE[name], lighting=0.0, clutter=0)
    hits = total = 0
    for k, scene in _scenes(d, 40).items():
        im = np.asarray(d.draw_scene(scene, d.draw_size, np.random.default_rng([5, k])), dtype=float)
        for o in scene["objects"]:
            y, x = int(o["y"] * d.draw_size), int(o["x"] * d.draw_size)
            hits += np.abs(im[y, x] - COLOURS[o["color"]]).max() <= 16  # the fill's jitter is +-15
            total += 1
    assert hits == total


def test_backgrounds_keep_clear_of_the_object_colours():
    d = SUITE["near-background"]  # the background takes an object's hue
    far = []
    for k, scene in _scenes(d, 60).items():
        im = np.asarray(replace(d, clutter=0).draw_scene(scene, 64, np.random.default_rng([5, k])), dtype=float)
        corner = im[:3, :3].reshape(-1, 3).mean(0)  # no object reaches a corner (the grid keeps a margin)
        far += [np.linalg.norm(corner - COLOURS[g["color"]]) for g in scene["groups"]]
    assert min(far) > 40  # blurred to the stored size, but never the object's colour


def test_distributions_are_deterministic_per_seed_and_written_like_the_other_scenes(tmp_path):
    for name in ("hue-flat", "photo-like"):
        make_scenes(tmp_path / f"a-{name}", 6, seed=4, val=2, difficulty=name)
        make_scenes(tmp_path / f"b-{name}", 6, seed=4, val=2, difficulty=name)

        def digest(root):
            return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*.png")}

        assert (
            digest(tmp_path / f"a-{name}") == digest(tmp_path / f"b-{name}")
            and len(digest(tmp_path / f"a-{name}")) == 6
        )
        doc = json.loads((tmp_path / f"a-{name}" / "captions_val.json").read_text())
        assert doc["info"]["difficulty"] == name and all("groups" in im["scene"] for im in doc["images"])
        assert Counter(a["image_id"] for a in doc["annotations"]) == {5: 5, 6: 5}
        truth = load_scenes(tmp_path / f"a-{name}" / "captions_val.json")  # the distribution's own words
        assert truth.vocabulary == Vocabulary.of(SUITE[name]) and set(truth) == {5, 6}
