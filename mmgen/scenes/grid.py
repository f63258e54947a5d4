"""Scenes on a 3x3 grid, sampled and captioned by a specification: what may appear and how it is said.

A :class:`GridScenes` fixes the colour words, shapes, size words with their radii, the layouts and their
probabilities (one object with its grid position, two in a row or column with their relation, a group of 2-4
identical objects with their number, such a group and one more object), the background patterns and colour
schemes, the tilt, and the caption style (word order, with or without sizes, backgrounds, positions). The hard
scenes (:mod:`mmgen.scenes.hard`) are one such specification; the suite (:mod:`mmgen.scenes.suite`) many.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mmgen.scenes.drawing import RELATIONS, article

GRID = 3
POSITIONS = {
    (0, 0): "in the top left",
    (0, 1): "at the top",
    (0, 2): "in the top right",
    (1, 0): "on the left",
    (1, 1): "in the middle",
    (1, 2): "on the right",
    (2, 0): "in the bottom left",
    (2, 1): "at the bottom",
    (2, 2): "in the bottom right",
}
"""Grid cell (row, column) -> the phrase a caption uses for it."""
NUMBERS = {1: "a", 2: "two", 3: "three", 4: "four"}
LAYOUTS = ("single", "pair", "group", "group_and_one")
STYLES = ("plain", "postfix", "terse")
"""Caption styles: 'a small red circle ...'; 'a circle that is small and red ...'; 'red circle left of ...'."""
SHORT_RELATIONS = {"to the left of": "left of", "to the right of": "right of", "above": "above", "below": "below"}
"""The relations as the terse style says them."""
EXTENT = 1.2
"""The farthest any shape reaches from its centre, in radii."""


def plural(shape: str) -> str:
    """'circle' -> 'circles', 'cross' -> 'crosses'."""
    return shape + ("es" if shape.endswith("ss") else "s")


def pick(rng: np.random.Generator, options) -> Any:
    """One of ``options``, uniformly."""
    options = tuple(options)
    return options[int(rng.integers(len(options)))]


@dataclass(frozen=True)
class GridScenes:
    """What grid scenes hold and how their captions say it (sampling and captions; drawing is the caller's)."""

    colours: tuple[str, ...]
    shapes: tuple[str, ...]
    sizes: dict[str, tuple[float, float]]
    """Size word -> range of the object's 'radius' as a fraction of the image side."""
    patterns: tuple[str, ...]
    """Background pattern words."""
    layouts: dict[str, float] = field(
        default_factory=lambda: {"single": 0.2, "pair": 0.3, "group": 0.2, "group_and_one": 0.3}
    )
    schemes: tuple[str, ...] = ("neutral",)
    """Background colour schemes; a scene records its own when there is more than one."""
    max_tilt: float = 30.0
    """Objects are rotated by up to this many degrees either way."""
    jitter: float = 0.04
    """Largest offset of an object from its cell's centre (side fractions): two objects in one row are always
    clearly beside each other (centres >= 0.25 apart along the row, <= 0.08 across it)."""
    style: str = "plain"
    size_words: bool = True
    background_words: bool = True
    position_words: bool = True

    def __post_init__(self) -> None:
        if self.style not in STYLES or not self.layouts or not set(self.layouts) <= set(LAYOUTS):
            raise ValueError(f"style must be one of {STYLES} and layouts of {LAYOUTS}, got {self.style!r}, "
                             f"{sorted(self.layouts)}")  # fmt: skip

    # ---------------------------------------------------------------------------------------- sampling

    def _look(self, rng: np.random.Generator, taken: set) -> dict:
        """Size, colour and shape of a new group, told apart from the scene's other groups by what the captions
        say (without size words two groups differ in colour or shape)."""
        while True:
            look = {"size": pick(rng, self.sizes), "color": pick(rng, self.colours), "shape": pick(rng, self.shapes)}
            key = (look["size"] if self.size_words else "", look["color"], look["shape"])
            if key not in taken:
                taken.add(key)
                return look

    def _instance(self, rng: np.random.Generator, look: dict, cell: tuple[int, int]) -> dict:
        """One drawn object of a group: its radius, centre (0..1 units, jittered inside the cell) and tilt."""
        lo, hi = self.sizes[look["size"]]
        r = float(rng.uniform(lo, hi))
        half = 0.5 / GRID
        slack = min(max(half - EXTENT * r - 0.004, 0.0), self.jitter)
        row, col = cell
        return {
            **look,
            "r": round(r, 4),
            "x": round((col + 0.5) / GRID + float(rng.uniform(-slack, slack)), 4),
            "y": round((row + 0.5) / GRID + float(rng.uniform(-slack, slack)), 4),
            "angle": round(float(rng.uniform(-self.max_tilt, self.max_tilt)), 2) if self.max_tilt else 0.0,
            "cell": [row, col],
        }

    def sample_scene(self, rng: np.random.Generator) -> dict:
        """A random scene: background, groups of identical objects with their drawn instances, and the position
        (one object) or relation (two objects) the captions state."""
        kinds, p = zip(*self.layouts.items())
        kind = kinds[int(rng.choice(len(kinds), p=np.asarray(p) / sum(p)))]
        cells = [(r, c) for r in range(GRID) for c in range(GRID)]
        order = rng.permutation(len(cells))
        taken: set = set()
        scene: dict[str, Any] = {"background": pick(rng, self.patterns), "relation": None, "position": None,
                                 "layout": kind}  # fmt: skip
        if len(self.schemes) > 1:
            scene["scheme"] = pick(rng, self.schemes)
        if kind == "single":
            look, cell = self._look(rng, taken), cells[order[0]]
            groups, objects = [{"count": 1, **look}], [self._instance(rng, look, cell)]
            scene["position"] = POSITIONS[cell] if self.position_words else None
        elif kind == "pair":
            line, a, b = int(rng.integers(GRID)), *rng.choice(GRID, size=2, replace=False).tolist()
            if rng.integers(2):  # one row: left / right
                first, second, scene["relation"] = (
                    (line, a),
                    (line, b),
                    "to the left of" if a < b else "to the right of",
                )
            else:
                first, second, scene["relation"] = (a, line), (b, line), "above" if a < b else "below"
            looks = self._look(rng, taken), self._look(rng, taken)
            groups = [{"count": 1, **looks[0]}, {"count": 1, **looks[1]}]
            objects = [self._instance(rng, looks[0], first), self._instance(rng, looks[1], second)]
        else:
            k = int(rng.integers(2, 5)) if kind == "group" else int(rng.integers(2, 4))
            look = self._look(rng, taken)
            groups = [{"count": k, **look}]
            objects = [self._instance(rng, look, cells[i]) for i in order[:k]]
            if kind == "group_and_one":
                other = self._look(rng, taken)
                groups.append({"count": 1, **other})
                objects.append(self._instance(rng, other, cells[order[k]]))
        scene["groups"], scene["objects"] = groups, objects
        return scene

    # ---------------------------------------------------------------------------------------- captions

    def noun_phrase(self, group: dict) -> str:
        """A group in the style: 'a small red circle', 'three crosses that are large and pink', 'red circle'."""
        k, size, color, shape = group["count"], group["size"], group["color"], group["shape"]
        noun = shape if k == 1 else plural(shape)
        adjectives = [size, color] if self.size_words else [color]
        if self.style == "postfix":
            return f"{article(noun) if k == 1 else NUMBERS[k]} {noun} that {'is' if k == 1 else 'are'} " + " and ".join(
                adjectives
            )
        words = " ".join(adjectives)
        if k > 1:
            return f"{NUMBERS[k]} {words} {noun}"
        return f"{words} {noun}" if self.style == "terse" else f"{article(words)} {words} {noun}"

    def scene_captions(self, scene: dict) -> list[str]:
        """Five captions that all describe the scene truly, in the specification's style."""
        nps = [self.noun_phrase(g) for g in scene["groups"]]
        if self.style == "terse":
            return self._terse(scene, nps)
        bg, rel = scene["background"], scene["relation"]
        on = f" on a {bg} background" if self.background_words else ""
        where = f" {scene['position']}" if scene["position"] else ""
        joined = " and ".join(nps)
        lead = f"a {bg} background with {joined}" if self.background_words else f"a picture with {joined}"
        if scene["layout"] == "single":
            fourth = f"{where.strip()} {nps[0]}{on}" if where else f"{nps[0]} in the picture{on}"
            return [f"{nps[0]}{where}{on}", f"there is {nps[0]}{where}{on}", f"{lead}{where}", fourth,
                    f"an image of {nps[0]}{where}{on}"]  # fmt: skip
        if scene["layout"] == "pair":
            a, b = nps
            last = f"{on.strip()} {a} is {rel} {b}" if on else f"in the picture {a} is {rel} {b}"
            return [f"{a} {rel} {b}{on}", f"{b} {RELATIONS[rel]} {a}{on}", f"there is {a} {rel} {b}{on}", lead, last]
        if scene["layout"] == "group":
            second = f"there are {joined}{on}"
            fourth = f"{on.strip()} there are {joined}" if on else f"in the picture there are {joined}"
            return [f"{joined}{on}", second, lead, fourth, f"a picture of {joined}{on}"]
        flipped = " and ".join(reversed(nps))
        last = f"{on.strip()} {joined}" if on else f"in the picture {joined}"
        return [f"{joined}{on}", f"{flipped}{on}", f"there are {joined}{on}", lead, last]

    def _terse(self, scene: dict, nps: list[str]) -> list[str]:
        """No articles, short relations, no background."""
        where = f" {scene['position']}" if scene["position"] else ""
        if scene["layout"] == "single":
            last = f"{where.strip()} : {nps[0]}" if where else f"{nps[0]} here"
            return [f"{nps[0]}{where}", f"one {nps[0]}{where}", nps[0], f"a picture of {nps[0]}{where}", last]
        joined = " and ".join(nps)
        if scene["layout"] == "pair":
            a, b = nps
            rel = scene["relation"]
            said = f"{a} {SHORT_RELATIONS[rel]} {b}"
            return [said, f"{b} {SHORT_RELATIONS[RELATIONS[rel]]} {a}", joined, f"{b} and {a}", f"a picture of {said}"]
        flipped = " and ".join(reversed(nps)) if len(nps) > 1 else f"{joined} here"
        return [joined, flipped, f"there are {joined}", f"shapes : {joined}", f"a picture of {joined}"]
