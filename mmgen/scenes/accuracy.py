"""What a captioner gets wrong on synthetic scenes: attribute accuracies read back from its captions.

BLEU and CIDEr say how far captions are from the references, not why. On ``mmgen data synth`` scenes
the truth is known (each image's ``scene`` in the annotation file), so a caption can be parsed back into
background, objects (size, colour, shape) and relation, and every attribute checked on its own:
``shape_small`` low while ``colour`` is near 1, say, points at the encoder's resolution rather than at
the decoder.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Hashable, Mapping
from itertools import permutations
from pathlib import Path

from mmgen.scenes import hard
from mmgen.scenes.drawing import RELATIONS

# the vocabulary of both difficulties (the simple scenes' words are a subset of the hard ones')
BACKGROUNDS, COLORS, SHAPES, SIZES = hard.BACKGROUNDS, hard.COLORS, hard.SHAPES, hard.SIZES
SINGULAR = {**{s: s for s in SHAPES}, **{p: s for s, p in hard.PLURALS.items()}}
NUMBERS = {"a": 1, "an": 1, "one": 1, **{w: k for k, w in hard.NUMBERS.items() if k > 1}}
ATTRIBUTES = ("size", "color", "shape")


def _alternatives(phrases) -> re.Pattern:
    return re.compile("|".join(sorted(map(re.escape, phrases), key=len, reverse=True)))


_RELATION = _alternatives(RELATIONS)
_POSITION = _alternatives(hard.POSITIONS.values())


def parse_caption(caption: str) -> dict:
    """Background, objects and relation named by a caption in the scenes' vocabulary.

    Objects are read as '[NUMBER] SIZE COLOUR SHAPE(S)' or 'COLOUR SHAPE that is SIZE'; a phrase that
    lacks a part keeps None there. ``counts[i]`` is the number before object ``i`` ('a'/'an' 1, 'two' 2,
    ...; None when there is none). The relation is the first relation phrase between the first two
    objects, read as 'first object RELATION second object' (as every scene caption states it); None when
    not stated. ``position`` is the first grid position phrase ('in the top left', ...), or None.

    Returns:
        ``{"background": str | None, "objects": [{"size", "color", "shape"}, ...], "counts": [int | None],
        "relation": str | None, "position": str | None}``
    """
    text = caption.lower()
    words = re.findall(r"[a-z]+", text)
    objects, counts, spans, i = [], [], [], 0
    while i < len(words):
        size = words[i] if words[i] in SIZES else None
        j = i + (size is not None)
        color = words[j] if j < len(words) and words[j] in COLORS else None
        k = j + (color is not None)
        shape = SINGULAR.get(words[k]) if k < len(words) else None
        end = k + (shape is not None)
        if color is None and shape is None:
            i += 1
            continue
        if size is None and words[end : end + 2] == ["that", "is"] and end + 2 < len(words):
            size = words[end + 2] if words[end + 2] in SIZES else None
            end += 3 if size is not None else 0
        objects.append({"size": size, "color": color, "shape": shape})
        counts.append(NUMBERS.get(words[i - 1]) if i > 0 else None)
        spans.append((i, end))
        i = end
    background = next((w for w, n in zip(words, words[1:]) if n == "background" and w in BACKGROUNDS), None)
    relation = None
    if len(spans) >= 2:
        between = " ".join(words[spans[0][1] : spans[1][0]])
        found = _RELATION.search(between)
        relation = found.group(0) if found else None
    position = _POSITION.search(" ".join(words))
    return {
        "background": background,
        "objects": objects,
        "counts": counts,
        "relation": relation,
        "position": position.group(0) if position else None,
    }


def _match(truth: list[dict], pred: list[dict]) -> tuple[int, ...]:
    """The assignment of predicted objects to true ones (``order[t]``: a predicted index, or -1) that
    agrees on the most attributes; among equals, the one that assigns the most objects, then the first."""
    slots = list(range(len(pred))) + [-1] * len(truth)
    best, best_key = tuple([-1] * len(truth)), (-1, -1)
    for order in sorted(set(permutations(slots, len(truth)))):
        if any(o != -1 and order.count(o) > 1 for o in order):
            continue
        hits = sum(o != -1 and pred[o][a] == t[a] for t, o in zip(truth, order) for a in ATTRIBUTES)
        key = (hits, sum(o != -1 for o in order))
        if key > best_key:
            best, best_key = order, key
    return best


def scene_accuracy(candidates: Mapping[Hashable, str], scenes: Mapping[Hashable, dict], top: int = 10) -> dict:
    """Attribute accuracies of ``candidates`` (image id -> caption) against ``scenes`` (image id -> scene).

    Returns fractions: ``exact`` (everything right; an unstated relation is not an error, one reference
    template states none), ``background``, ``count`` (number of objects), ``size`` / ``color`` /
    ``shape`` over true objects (a missing object counts wrong), ``shape_small`` / ``shape_large``,
    ``relation`` over two-object scenes whose caption states one and ``relation_stated``; ``images``;
    ``confusions``: the ``top`` most frequent (attribute, truth, prediction) errors with counts; and ``matrix``:
    every (attribute, truth, prediction) with its count, right ones included (the confusion matrices of size,
    colour, shape, background and relation).
    """
    ids = [i for i in candidates if i in scenes]
    n = Counter()
    right = Counter()
    confusions = Counter()
    pairs = Counter()  # (attribute, truth, prediction), right or wrong
    for image_id in ids:
        scene, parsed = scenes[image_id], parse_caption(candidates[image_id])
        truth, pred = scene.get("groups", scene["objects"]), parsed["objects"]  # hard scenes: groups
        ok = {"background": parsed["background"] == scene["background"], "count": len(pred) == len(truth)}
        order = _match(truth, pred)
        if "groups" in scene:  # how many of each object, and where a lone object is
            for t, o in zip(truth, order):
                said = parsed["counts"][o] if o != -1 else None
                hit = said == t["count"]
                ok["number"] = ok.get("number", True) and hit
                n["number"] += 1
                right["number"] += hit
                if not hit:
                    confusions[("number", t["count"], said)] += 1
            if scene.get("position"):
                ok["position"] = parsed["position"] == scene["position"]
                n["position"] += 1
                right["position"] += ok["position"]
                if not ok["position"]:
                    confusions[("position", scene["position"], parsed["position"])] += 1
        for t, o in zip(truth, order):
            for a in ATTRIBUTES:
                value = pred[o][a] if o != -1 else None
                hit = value == t[a]
                ok[a] = ok.get(a, True) and hit
                n[a] += 1
                right[a] += hit
                pairs[(a, t[a], value)] += 1
                if a == "shape":
                    n[f"shape_{t['size']}"] += 1
                    right[f"shape_{t['size']}"] += hit
                if not hit:
                    confusions[(a, t[a], value)] += 1
        pairs[("background", scene["background"], parsed["background"])] += 1
        if not ok["background"]:
            confusions[("background", scene["background"], parsed["background"])] += 1
        rel_ok = _relation(scene, parsed, truth, pred, order, n, right, confusions, pairs)
        for k in ("background", "count"):
            n[k] += 1
            right[k] += ok[k]
        n["exact"] += 1
        right["exact"] += all(ok.values()) and rel_ok
    return _accuracies(n, right, len(ids), confusions.most_common(top), sorted(pairs.items(), key=str))


def _relation(scene, parsed, truth, pred, order, n, right, confusions, pairs) -> bool:
    """Count the relation of a two-object scene whose caption states one; whether it is right (or not stated)."""
    if not (len(truth) == 2 and scene.get("relation")):
        return True
    n["relation_stated"] += 1
    stated = parsed["relation"] is not None and len(pred) >= 2 and -1 not in order
    if not stated:
        return True
    right["relation_stated"] += 1
    # the caption says pred[0] REL pred[1]; in true order that is truth's relation or its inverse
    want = scene["relation"] if order == (0, 1) else RELATIONS[scene["relation"]]
    rel_ok = parsed["relation"] == want
    pairs[("relation", want, parsed["relation"])] += 1
    n["relation"] += 1
    right["relation"] += rel_ok
    if not rel_ok:
        confusions[("relation", want, parsed["relation"])] += 1
    return rel_ok


def _accuracies(n: Counter, right: Counter, images: int, confusions: list, pairs: list) -> dict:
    out = {k: right[k] / n[k] for k in ("exact", "background", "count", *ATTRIBUTES) if n[k]}
    extra = ("shape_small", "shape_medium", "shape_large", "number", "position", "relation", "relation_stated")
    out.update({k: right[k] / n[k] for k in extra if n[k]})
    out["images"] = images
    out["confusions"] = [{"attribute": a, "truth": t, "caption": p, "count": c} for (a, t, p), c in confusions]
    out["matrix"] = [{"attribute": a, "truth": t, "caption": p, "count": c} for (a, t, p), c in pairs]
    return out


def load_scenes(annotation_file: str | Path) -> dict[int, dict] | None:
    """``{image_id: scene}`` from a COCO annotation file written by ``mmgen data synth``; None when the
    file is not JSON or its images carry no scenes."""
    path = Path(annotation_file)
    if path.suffix != ".json" or not path.is_file():
        return None
    images = json.loads(path.read_text()).get("images")
    if not isinstance(images, list):
        return None
    scenes = {im["id"]: im["scene"] for im in images if isinstance(im, dict) and "scene" in im}
    return scenes or None


def format_scene_accuracy(acc: Mapping) -> str:
    """A few lines for a terminal."""
    keys = (
        "exact", "background", "count", "number", "size", "color", "shape", "shape_small", "shape_medium",
        "shape_large", "position", "relation",
    )  # fmt: skip
    lines = ["scene attributes: " + "  ".join(f"{k} {acc[k]:.3f}" for k in keys if k in acc)]
    if "relation_stated" in acc:
        lines.append(f"  two-object captions stating a relation: {acc['relation_stated']:.3f}")
    for c in acc.get("confusions", [])[:5]:
        lines.append(f"  {c['count']:5d}x {c['attribute']}: {c['truth']} -> {c['caption']}")
    return "\n".join(lines)
