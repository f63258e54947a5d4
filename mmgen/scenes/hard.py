"""Hard synthetic scenes: up to four rotated objects anywhere on a 3x3 grid, counts, positions, relations.

The simple scenes of :mod:`mmgen.scenes.simple` hold one or two upright objects; a captioner learns
them from colour blobs and a rough left/right. These scenes need what real captioning needs: where an
object is (one of nine grid cells: "in the top left"), how many identical objects there are ("three
small pink crosses"), which of 8 shapes a small rotated object is, and how two objects relate
(left / right / above / below). Vocabulary: 8 colours, 8 shapes, 3 sizes, 5 backgrounds, 9 positions,
counts 1-4. Every image has five captions that truly describe it and carries its ``scene`` (with a
``groups`` list: the truth that :mod:`mmgen.scenes.accuracy` checks captions against). A scene generator
(see :mod:`mmgen.scenes`): :func:`sample_scene`, :func:`scene_captions`, :func:`draw_scene`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from mmgen.scenes import drawing

COLORS = {
    **drawing.COLORS,
    "pink": (240, 110, 185),
    "cyan": (30, 195, 205),
}
SHAPES = ("circle", "square", "triangle", "star", "diamond", "hexagon", "pentagon", "cross")
PLURALS = {s: s + ("es" if s.endswith("ss") else "s") for s in SHAPES}
SIZES = {"small": (0.060, 0.070), "medium": (0.085, 0.095), "large": (0.115, 0.125)}
"""Object 'radius' as a fraction of the image side; every shape stays within 1.2 radii of its centre."""
BACKGROUNDS = (*drawing.BACKGROUNDS, "noisy")
NUMBERS = {1: "a", 2: "two", 3: "three", 4: "four"}
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
RELATIONS = drawing.RELATIONS
MAX_TILT = 30.0
"""Objects are rotated by up to this many degrees either way (a square never turns into a diamond)."""
KINDS = {"single": 0.2, "pair": 0.3, "group": 0.2, "group_and_one": 0.3}
"""Scene layouts and their probabilities."""
JITTER = 0.04
"""Largest offset of an object from its cell's centre (side fractions): two objects in one row are always
clearly beside each other (centres >= 0.25 apart along the row, <= 0.08 across it)."""
_EXTENT = 1.2  # the farthest any shape reaches from its centre, in radii


def _pick(rng: np.random.Generator, options) -> Any:
    options = tuple(options)
    return options[int(rng.integers(len(options)))]


def _look(rng: np.random.Generator, taken: set[tuple[str, str, str]]) -> dict:
    """Size, colour and shape of a new group, different from the groups already in the scene."""
    while True:
        look = {"size": _pick(rng, SIZES), "color": _pick(rng, COLORS), "shape": _pick(rng, SHAPES)}
        if (look["size"], look["color"], look["shape"]) not in taken:
            taken.add((look["size"], look["color"], look["shape"]))
            return look


def _instance(rng: np.random.Generator, look: dict, cell: tuple[int, int]) -> dict:
    """One drawn object of a group: its radius, centre (0..1 units, jittered inside the cell) and tilt."""
    lo, hi = SIZES[look["size"]]
    r = float(rng.uniform(lo, hi))
    half = 0.5 / GRID
    slack = min(max(half - _EXTENT * r - 0.004, 0.0), JITTER)
    row, col = cell
    return {
        **look,
        "r": round(r, 4),
        "x": round((col + 0.5) / GRID + float(rng.uniform(-slack, slack)), 4),
        "y": round((row + 0.5) / GRID + float(rng.uniform(-slack, slack)), 4),
        "angle": round(float(rng.uniform(-MAX_TILT, MAX_TILT)), 2),
        "cell": [row, col],
    }


def _pair_cells(rng: np.random.Generator) -> tuple[tuple[int, int], tuple[int, int], str]:
    """Two cells in one row or one column; returns (first, second, first's relation to second)."""
    line, a, b = int(rng.integers(GRID)), *rng.choice(GRID, size=2, replace=False).tolist()
    if rng.integers(2):  # same row: left / right
        return (line, a), (line, b), "to the left of" if a < b else "to the right of"
    return (a, line), (b, line), "above" if a < b else "below"


def sample_scene(rng: np.random.Generator) -> dict:
    """A random hard scene: background, groups of identical objects, their drawn instances, and (for one
    object) its position or (for two single objects in a row or column) their relation."""
    kind = _pick_kind(rng)
    cells = [(r, c) for r in range(GRID) for c in range(GRID)]
    order = rng.permutation(len(cells))
    taken: set[tuple[str, str, str]] = set()
    scene: dict[str, Any] = {"background": _pick(rng, BACKGROUNDS), "relation": None, "position": None, "layout": kind}
    if kind == "single":
        look, cell = _look(rng, taken), cells[order[0]]
        groups, instances = [{"count": 1, **look}], [_instance(rng, look, cell)]
        scene["position"] = POSITIONS[cell]
    elif kind == "pair":
        first, second, rel = _pair_cells(rng)
        a, b = _look(rng, taken), _look(rng, taken)
        groups = [{"count": 1, **a}, {"count": 1, **b}]
        instances = [_instance(rng, a, first), _instance(rng, b, second)]
        scene["relation"] = rel
    else:
        k = int(rng.integers(2, 5)) if kind == "group" else int(rng.integers(2, 4))
        look = _look(rng, taken)
        groups = [{"count": k, **look}]
        instances = [_instance(rng, look, cells[i]) for i in order[:k]]
        if kind == "group_and_one":
            other = _look(rng, taken)
            groups.append({"count": 1, **other})
            instances.append(_instance(rng, other, cells[order[k]]))
    scene["groups"], scene["objects"] = groups, instances
    return scene


def _pick_kind(rng: np.random.Generator) -> str:
    kinds, p = zip(*KINDS.items())
    return kinds[int(rng.choice(len(kinds), p=np.asarray(p) / sum(p)))]


def noun_phrase(group: dict) -> str:
    """'a small red circle', 'an orange star', 'three large pink crosses'."""
    words = f"{group['size']} {group['color']} "
    if group["count"] == 1:
        return f"{drawing.article(group['size'])} {words}{group['shape']}"
    return f"{NUMBERS[group['count']]} {words}{PLURALS[group['shape']]}"


def scene_captions(scene: dict) -> list[str]:
    """Five paraphrases that all describe the scene truly (counts, positions, relations included)."""
    bg, groups = scene["background"], scene["groups"]
    on = f"on a {bg} background"
    if scene["layout"] == "single":
        np_, where = noun_phrase(groups[0]), scene["position"]
        return [
            f"{np_} {where} {on}",
            f"there is {np_} {where} {on}",
            f"a {bg} background with {np_} {where}",
            f"{where} {np_} {on}",
            f"an image of {np_} {where} {on}",
        ]
    if scene["layout"] == "pair":
        a, b = (noun_phrase(g) for g in groups)
        rel = scene["relation"]
        return [
            f"{a} {rel} {b} {on}",
            f"{b} {RELATIONS[rel]} {a} {on}",
            f"there is {a} {rel} {b} {on}",
            f"a {bg} background with {a} and {b}",
            f"{on} {a} is {rel} {b}",
        ]
    if scene["layout"] == "group":
        np_ = noun_phrase(groups[0])
        return [
            f"{np_} {on}",
            f"there are {np_} {on}",
            f"a {bg} background with {np_}",
            f"{on} there are {np_}",
            f"a picture of {np_} {on}",
        ]
    many, one = (noun_phrase(g) for g in groups)
    return [
        f"{many} and {one} {on}",
        f"{one} and {many} {on}",
        f"there are {many} and {one} {on}",
        f"a {bg} background with {many} and {one}",
        f"{on} {many} and {one}",
    ]


# --------------------------------------------------------------------------------------------
# drawing
# --------------------------------------------------------------------------------------------


def _regular(n: int, cx: float, cy: float, r: float, phase: float) -> list[tuple[float, float]]:
    angles = phase + 2 * np.pi * np.arange(n) / n
    return [(cx + r * np.cos(a), cy + r * np.sin(a)) for a in angles]


def _outline(shape: str, r: float) -> list[tuple[float, float]]:
    """Vertices of an upright shape around the origin (within ``_EXTENT * r``)."""
    if shape == "square":
        h = 0.8 * r
        return [(-h, -h), (h, -h), (h, h), (-h, h)]
    if shape == "hexagon":
        return _regular(6, 0.0, 0.0, 1.05 * r, 0.0)
    if shape == "pentagon":
        return _regular(5, 0.0, 0.0, 1.1 * r, -np.pi / 2)
    if shape == "cross":
        w, h = 0.36 * r, 1.05 * r
        arm = [(-w, -h), (w, -h), (w, -w)]  # one arm; the cross is four of them, a quarter turn apart
        return [p for k in range(4) for p in [_quarter_turns(x, y, k) for x, y in arm]]
    return drawing.polygon(shape, 0.0, 0.0, r)  # triangle, diamond, star


def _quarter_turns(x: float, y: float, k: int) -> tuple[float, float]:
    for _ in range(k):
        x, y = -y, x
    return x, y


def _noisy(rng: np.random.Generator, size: int) -> Image.Image:
    """A speckled neutral texture: block noise between two grey tones."""
    light, dark = np.array(drawing.tone(rng, 190, 240)), np.array(drawing.tone(rng, 115, 165))
    block = max(1, size // 32)
    t = rng.random((-(-size // block), -(-size // block)))  # (S/b, S/b) in [0, 1)
    t = np.kron(t, np.ones((block, block)))[:size, :size, None]  # (S, S, 1)
    return Image.fromarray((light * (1 - t) + dark * t).astype(np.uint8), mode="RGB")


def draw_scene(
    scene: dict, image_size: int = 64, rng: np.random.Generator | None = None, supersample: int = 2
) -> Image.Image:
    """Render a scene from :func:`sample_scene` as an RGB image of ``image_size`` pixels a side."""
    rng = rng if rng is not None else np.random.default_rng(0)
    s = image_size * supersample
    bg = scene["background"]
    im = _noisy(rng, s) if bg == "noisy" else drawing.background(rng, bg, s)
    draw = ImageDraw.Draw(im)
    width = max(1, supersample)
    for o in scene["objects"]:
        fill = tuple(int(v) for v in np.clip(np.array(COLORS[o["color"]]) + rng.integers(-15, 16, size=3), 0, 255))
        edge = tuple(int(v * 0.55) for v in fill)
        cx, cy, r = o["x"] * s, o["y"] * s, o["r"] * s
        if o["shape"] == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill, outline=edge, width=width)
            continue
        a = np.deg2rad(o["angle"])
        cos, sin = np.cos(a), np.sin(a)
        points = [(cx + x * cos - y * sin, cy + x * sin + y * cos) for x, y in _outline(o["shape"], r)]
        draw.polygon(points, fill=fill, outline=edge, width=width)
    return im.resize((image_size, image_size), Image.Resampling.BOX) if supersample > 1 else im
