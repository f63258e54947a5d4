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

import numpy as np
from PIL import Image, ImageDraw

from mmgen.scenes import drawing, grid

COLORS = {
    **drawing.COLORS,
    "pink": (240, 110, 185),
    "cyan": (30, 195, 205),
}
SHAPES = ("circle", "square", "triangle", "star", "diamond", "hexagon", "pentagon", "cross")
PLURALS = {s: grid.plural(s) for s in SHAPES}
SIZES = {"small": (0.060, 0.070), "medium": (0.085, 0.095), "large": (0.115, 0.125)}
"""Object 'radius' as a fraction of the image side; every shape stays within 1.2 radii of its centre."""
BACKGROUNDS = (*drawing.BACKGROUNDS, "noisy")
NUMBERS = grid.NUMBERS
GRID = grid.GRID
POSITIONS = grid.POSITIONS
"""Grid cell (row, column) -> the phrase a caption uses for it."""
RELATIONS = drawing.RELATIONS
MAX_TILT = 30.0
"""Objects are rotated by up to this many degrees either way (a square never turns into a diamond)."""
KINDS = {"single": 0.2, "pair": 0.3, "group": 0.2, "group_and_one": 0.3}
"""Scene layouts and their probabilities."""
JITTER = 0.04
"""Largest offset of an object from its cell's centre (side fractions): two objects in one row are always
clearly beside each other (centres >= 0.25 apart along the row, <= 0.08 across it)."""
SCENES = grid.GridScenes(
    colours=tuple(COLORS), shapes=SHAPES, sizes=SIZES, patterns=BACKGROUNDS, layouts=KINDS, max_tilt=MAX_TILT,
    jitter=JITTER,
)  # fmt: skip
"""What hard scenes hold and how their captions say it."""


def sample_scene(rng: np.random.Generator) -> dict:
    """A random hard scene: background, groups of identical objects, their drawn instances, and (for one
    object) its position or (for two single objects in a row or column) their relation."""
    return SCENES.sample_scene(rng)


def noun_phrase(group: dict) -> str:
    """'a small red circle', 'an orange star', 'three large pink crosses'."""
    return SCENES.noun_phrase(group)


def scene_captions(scene: dict) -> list[str]:
    """Five paraphrases that all describe the scene truly (counts, positions, relations included)."""
    return SCENES.scene_captions(scene)


# --------------------------------------------------------------------------------------------
# drawing
# --------------------------------------------------------------------------------------------


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
        points = [(cx + x * cos - y * sin, cy + x * sin + y * cos) for x, y in drawing.outline(o["shape"], r)]
        draw.polygon(points, fill=fill, outline=edge, width=width)
    return im.resize((image_size, image_size), Image.Resampling.BOX) if supersample > 1 else im
