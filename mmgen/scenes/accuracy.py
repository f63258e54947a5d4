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
from dataclasses import dataclass
from itertools import permutations
from pathlib import Path

from mmgen.scenes import hard
from mmgen.scenes.drawing import RELATIONS
from mmgen.scenes.grid import NUMBERS, POSITIONS, SHORT_RELATIONS, GridScenes, plural

ATTRIBUTES = ("size", "color", "shape")
_NUMBER_WORDS = {"a": 1, "an": 1, "one": 1, **{w: k for k, w in NUMBERS.items() if k > 1}}
_LONG_RELATIONS = {short: full for full, short in SHORT_RELATIONS.items()}


@dataclass(frozen=True)
class Vocabulary:
    """The words captions of a scene generator use for each attribute."""

    colours: frozenset[str]
    shapes: dict[str, str]
    """Singular or plural -> singular."""
    sizes: frozenset[str]
    backgrounds: frozenset[str]

    @classmethod
    def of(cls, spec: GridScenes) -> Vocabulary:
        """The words of a grid-scene specification (no size or background words where its captions say none)."""
        return cls(
            colours=frozenset(spec.colours),
            shapes={**{s: s for s in spec.shapes}, **{plural(s): s for s in spec.shapes}},
            sizes=frozenset(spec.sizes if spec.size_words else ()),
            backgrounds=frozenset(spec.patterns if spec.background_words else ()),
        )


HARD = Vocabulary.of(hard.SCENES)
"""The words of the hard scenes, which hold every word of the simple ones."""


class SceneTruth(dict):
    """``{image_id: scene}`` that also knows the words its captions use (``vocabulary``)."""

    def __init__(self, scenes: Mapping, vocabulary: Vocabulary = HARD):
        super().__init__(scenes)
        self.vocabulary = vocabulary


def _alternatives(phrases) -> re.Pattern:
    return re.compile(r"\b(" + "|".join(sorted(map(re.escape, phrases), key=len, reverse=True)) + r")\b")


_RELATION = _alternatives([*RELATIONS, *_LONG_RELATIONS])
_POSITION = _alternatives(POSITIONS.values())


def parse_caption(caption: str, vocabulary: Vocabulary = HARD) -> dict:
    """Background, objects, numbers, relation and position named by a caption in a generator's words.

    Objects are read as '[NUMBER] ADJECTIVE [ADJECTIVE] SHAPE(S)' (adjectives: size and colour words, in either
    order) or 'NUMBER SHAPE(S) that is|are ADJECTIVE [and ADJECTIVE]'; a part not said is None. ``counts[i]``
    is the number before object ``i`` ('a'/'an'/'one' 1, 'two' 2, ...), 1 for a singular shape said without one
    ('red circle'), else None. The relation is the first relation phrase between the first two objects
    ('left of' read as 'to the left of'), read as 'first object RELATION second object' (as every scene caption
    states it); None when not stated. ``position`` is the first grid position phrase ('in the top left', ...).

    Returns:
        ``{"background": str | None, "objects": [{"size", "color", "shape"}, ...], "counts": [int | None],
        "relation": str | None, "position": str | None}``
    """
    words = re.findall(r"[a-z]+", caption.lower())
    adjective = vocabulary.sizes | vocabulary.colours
    objects, counts, spans, i = [], [], [], 0
    while i < len(words):
        j = i
        while j < len(words) and words[j] in adjective and j - i < 2:
            j += 1
        shape = vocabulary.shapes.get(words[j]) if j < len(words) else None
        if shape is None and j == i:
            i += 1
            continue
        said, end = list(words[i:j]), j + (shape is not None)
        if words[end : end + 1] == ["that"] and words[end + 1 : end + 2] in (["is"], ["are"]):
            k = end + 2
            while k < len(words) and words[k] in adjective:
                said.append(words[k])
                k += 2 if words[k + 1 : k + 2] == ["and"] and words[k + 2 : k + 3] != ["a"] else 1
            end = k if len(said) > j - i else end
        objects.append({
            "size": next((w for w in said if w in vocabulary.sizes), None),
            "color": next((w for w in said if w in vocabulary.colours), None),
            "shape": shape,
        })  # fmt: skip
        number = _NUMBER_WORDS.get(words[i - 1]) if i > 0 else None
        counts.append(1 if number is None and shape is not None and words[j] == shape else number)
        spans.append((i, end))
        i = max(end, i + 1)
    background = next((w for w, n in zip(words, words[1:]) if n == "background" and w in vocabulary.backgrounds), None)
    relation = None
    if len(spans) >= 2:
        found = _RELATION.search(" ".join(words[spans[0][1] : spans[1][0]]))
        relation = _LONG_RELATIONS.get(found.group(1), found.group(1)) if found else None
    position = _POSITION.search(" ".join(words))
    return {
        "background": background,
        "objects": objects,
        "counts": counts,
        "relation": relation,
        "position": position.group(1) if position else None,
    }


def _match(truth: list[dict], pred: list[dict], attributes: tuple[str, ...]) -> tuple[int, ...]:
    """The assignment of predicted objects to true ones (``order[t]``: a predicted index, or -1) that
    agrees on the most attributes; among equals, the one that assigns the most objects, then the first."""
    slots = list(range(len(pred))) + [-1] * len(truth)
    best, best_key = tuple([-1] * len(truth)), (-1, -1)
    for order in sorted(set(permutations(slots, len(truth)))):
        if any(o != -1 and order.count(o) > 1 for o in order):
            continue
        hits = sum(o != -1 and pred[o][a] == t[a] for t, o in zip(truth, order) for a in attributes)
        key = (hits, sum(o != -1 for o in order))
        if key > best_key:
            best, best_key = order, key
    return best


def scene_accuracy(candidates: Mapping[Hashable, str], scenes: Mapping[Hashable, dict], top: int = 10) -> dict:
    """Attribute accuracies of ``candidates`` (image id -> caption) against ``scenes`` (image id -> scene; a
    :class:`SceneTruth` brings the words of its generator, else the hard scenes' words are used).

    Returns fractions: ``exact`` (everything right; an unstated relation is not an error, some reference
    templates state none), ``background`` (when the captions name it), ``count`` (as many objects named as
    there are), ``size`` (when the captions name sizes) / ``color`` / ``shape`` over true objects (a missing
    object counts wrong), ``shape_small`` / ``shape_medium`` / ``shape_large``; on grid scenes ``number`` (the
    number said before each group) and ``position`` (of a lone object); ``relation`` over two-object scenes
    whose caption states one and ``relation_stated``; ``images``; and ``confusions``: the ``top`` most frequent
    (attribute, truth, prediction) errors with counts; and ``matrix``: every (attribute, truth,
    prediction) with its count, right ones included (the confusion matrices of the report).
    """
    vocabulary = getattr(scenes, "vocabulary", HARD)
    attributes = tuple(a for a in ATTRIBUTES if a != "size" or vocabulary.sizes)
    n, right, confusions, pairs = Counter(), Counter(), Counter(), Counter()  # pairs: (key, truth, said), any

    def tally(key: str, hit: bool, truth=None, said=None) -> bool:
        n[key] += 1
        right[key] += hit
        if key not in ("exact", "relation_stated"):
            pairs[(key, truth, said)] += 1
            if not hit:
                confusions[(key, truth, said)] += 1
        return hit

    ids = [i for i in candidates if i in scenes]
    for image_id in ids:
        scene, parsed = scenes[image_id], parse_caption(candidates[image_id], vocabulary)
        truth, pred = scene["groups"] if "groups" in scene else scene["objects"], parsed["objects"]  # grid: groups
        order = _match(truth, pred, attributes)
        ok = [tally("count", len(pred) == len(truth), len(truth), len(pred))]
        if vocabulary.backgrounds:
            ok.append(tally("background", parsed["background"] == scene["background"], scene["background"],
                            parsed["background"]))  # fmt: skip
        for t, o in zip(truth, order):
            for a in attributes:
                value = pred[o][a] if o != -1 else None
                ok.append(tally(a, value == t[a], t[a], value))
                if a == "shape" and t.get("size"):
                    n[f"shape_{t['size']}"] += 1
                    right[f"shape_{t['size']}"] += value == t[a]
            if "groups" in scene:  # how many of each object
                said = parsed["counts"][o] if o != -1 else None
                ok.append(tally("number", said == t["count"], t["count"], said))
        if "groups" in scene and scene.get("position"):
            ok.append(tally("position", parsed["position"] == scene["position"], scene["position"], parsed["position"]))
        if len(truth) == 2 and scene.get("relation"):
            stated = parsed["relation"] is not None and len(pred) >= 2 and -1 not in order
            if tally("relation_stated", stated):
                # the caption says pred[0] REL pred[1]; in true order that is truth's relation or its inverse
                want = scene["relation"] if order == (0, 1) else RELATIONS[scene["relation"]]
                ok.append(tally("relation", parsed["relation"] == want, want, parsed["relation"]))
        tally("exact", all(ok))
    keys = ("exact", "background", "count", *attributes, "shape_small", "shape_medium", "shape_large", "number",
            "position", "relation", "relation_stated")  # fmt: skip
    out = {k: right[k] / n[k] for k in keys if n[k]}
    out["images"] = len(ids)
    out["confusions"] = [
        {"attribute": a, "truth": t, "caption": p, "count": c} for (a, t, p), c in confusions.most_common(top)
    ]
    out["matrix"] = [
        {"attribute": a, "truth": t, "caption": p, "count": c} for (a, t, p), c in sorted(pairs.items(), key=str)
    ]
    return out


def vocabulary_of(difficulty: str | None) -> Vocabulary:
    """The words of a scene generator's captions: a distribution of the suite's own, else the hard scenes'."""
    from mmgen.scenes.suite import SUITE

    return Vocabulary.of(SUITE[difficulty]) if difficulty in SUITE else HARD


def load_scenes(annotation_file: str | Path) -> SceneTruth | None:
    """``{image_id: scene}`` from a COCO annotation file written by ``mmgen data synth``, with the words of the
    generator that wrote it; None when the file is not JSON or its images carry no scenes."""
    path = Path(annotation_file)
    if path.suffix != ".json" or not path.is_file():
        return None
    doc = json.loads(path.read_text())
    images = doc.get("images") if isinstance(doc, dict) else None
    if not isinstance(images, list):
        return None
    scenes = {im["id"]: im["scene"] for im in images if isinstance(im, dict) and "scene" in im}
    info = doc.get("info") if isinstance(doc.get("info"), dict) else {}
    return SceneTruth(scenes, vocabulary_of(info.get("difficulty"))) if scenes else None


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
