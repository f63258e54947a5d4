"""Scene attribute accuracies: the generator's own captions read back as the truth, and planted errors found."""

import json

import numpy as np
import pytest

from mmgen.scenes.accuracy import format_scene_accuracy, load_scenes, parse_caption, scene_accuracy
from mmgen.scenes.simple import RELATIONS, sample_scene, scene_captions
from mmgen.scenes.writer import make_scenes_splits


@pytest.fixture(scope="module")
def scenes():
    rng = np.random.default_rng(3)
    return {i: sample_scene(rng) for i in range(300)}


def _objects(scene):
    return [{k: o[k] for k in ("size", "color", "shape")} for o in scene["objects"]]


def test_every_reference_caption_parses_back_to_its_scene(scenes):
    for scene in scenes.values():
        for k, caption in enumerate(scene_captions(scene)):
            p = parse_caption(caption)
            assert p["background"] == scene["background"], caption
            assert len(p["objects"]) == len(scene["objects"]), caption
            if len(scene["objects"]) == 1:
                assert p["objects"] == _objects(scene) and p["relation"] is None
            elif p["relation"] is None:  # 'a B background with a A and a B' states no relation
                assert k == 3 and sorted(map(str, p["objects"])) == sorted(map(str, _objects(scene)))
            else:  # first-named object RELATION second-named object, whichever is named first
                first, second = p["objects"]
                a, b = _objects(scene)
                rel = scene["relation"]
                assert (first, second, p["relation"]) in ((a, b, rel), (b, a, RELATIONS[rel]))
    for k in range(5):
        acc = scene_accuracy({i: scene_captions(s)[k] for i, s in scenes.items()}, scenes)
        assert acc["exact"] == 1.0 and acc["images"] == len(scenes) and acc["confusions"] == []
        assert all(acc[a] == 1.0 for a in ("background", "count", "size", "color", "shape", "shape_small"))
        assert acc["relation_stated"] == (0.0 if k == 3 else 1.0)


def test_planted_errors_are_counted_per_attribute(scenes):
    ids = sorted(scenes)
    captions = {i: scene_captions(scenes[i])[0] for i in ids}
    single = [i for i in ids if len(scenes[i]["objects"]) == 1]
    pair = [i for i in ids if len(scenes[i]["objects"]) == 2]
    # 1) a wrong colour on ten single-object scenes
    recolour = single[:10]
    for i in recolour:
        c = scenes[i]["objects"][0]["color"]
        captions[i] = captions[i].replace(f" {c} ", " purple " if c != "purple" else " red ", 1)
    # 2) the inverse relation on five pairs
    flipped = pair[:5]
    for i in flipped:
        rel = scenes[i]["relation"]
        captions[i] = captions[i].replace(f" {rel} ", f" {RELATIONS[rel]} ", 1)
    # 3) a second object dropped on five other pairs
    dropped = pair[5:10]
    for i in dropped:
        s = scenes[i]
        o = s["objects"][0]
        captions[i] = f"a {o['size']} {o['color']} {o['shape']} on a {s['background']} background"
    acc = scene_accuracy(captions, scenes, top=100)
    n_objects = sum(len(s["objects"]) for s in scenes.values())
    assert acc["exact"] == pytest.approx(1 - 20 / len(ids))
    assert acc["color"] == pytest.approx(1 - (10 + 5) / n_objects)  # a missing object has no colour
    assert acc["count"] == pytest.approx(1 - 5 / len(ids))
    assert acc["relation"] == pytest.approx(1 - 5 / (len(pair) - 5))
    assert acc["relation_stated"] == pytest.approx(1 - 5 / len(pair))
    by_attr = {}
    for c in acc["confusions"]:
        by_attr[c["attribute"]] = by_attr.get(c["attribute"], 0) + c["count"]
    assert by_attr.get("relation") == 5 and by_attr.get("color", 0) == 15
    # the confusion matrices hold every object (right or wrong): each attribute's counts add up to the objects, the
    # wrong cells to the errors planted, and the planted colours sit where they were put
    cells = {(c["attribute"], c["truth"], c["caption"]): c["count"] for c in acc["matrix"]}
    for attribute in ("size", "color", "shape"):
        assert sum(v for (a, _, _), v in cells.items() if a == attribute) == n_objects
    assert sum(v for (a, t, said), v in cells.items() if a == "color" and t != said) == 15
    assert sum(v for (a, _, _), v in cells.items() if a == "background") == len(ids)
    assert sum(v for (a, t, said), v in cells.items() if a == "relation" and t != said) == 5
    wrong = {(scenes[i]["objects"][0]["color"], "purple" if scenes[i]["objects"][0]["color"] != "purple" else "red")
             for i in recolour}  # fmt: skip
    assert all(cells[("color", t, said)] >= 1 for t, said in wrong)
    assert "scene attributes: exact" in format_scene_accuracy(acc)


def test_garbage_and_partial_captions_do_not_crash(scenes):
    i = next(iter(scenes))
    acc = scene_accuracy({i: ""}, scenes)
    assert acc["exact"] == 0.0 and acc["images"] == 1
    p = parse_caption("a red that is large on a dotted background")
    assert p["objects"] == [{"size": "large", "color": "red", "shape": None}] and p["background"] == "dotted"


def test_load_scenes_from_a_synth_annotation_file(tmp_path):
    make_scenes_splits(tmp_path, n_train=4, n_val=3, seed=1, image_size=32)
    scenes = load_scenes(tmp_path / "captions_val.json")
    images = json.loads((tmp_path / "captions_val.json").read_text())["images"]
    assert scenes == {im["id"]: im["scene"] for im in images} and len(scenes) == 3
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({"images": [{"id": 1, "file_name": "x.png"}], "annotations": []}))
    assert load_scenes(plain) is None and load_scenes(tmp_path / "missing.json") is None
