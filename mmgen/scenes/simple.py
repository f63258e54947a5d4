"""Simple synthetic scenes: one or two shapes on a textured background.

Every image comes with five paraphrased captions that truly describe it ("a large red circle to the
left of a small blue square on a striped background"). The vocabulary is small (6 colours, 5
shapes, 2 sizes, 4 backgrounds, 4 relations) so a tiny captioner learns it in minutes on a CPU at
64x64, while a constant caption scores badly. A scene generator (see :mod:`mmgen.scenes`):
:func:`sample_scene`, :func:`scene_captions`, :func:`draw_scene`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from mmgen.scenes.drawing import BACKGROUNDS, COLORS, RELATIONS, article, background, polygon

SHAPES = ("circle", "square", "triangle", "star", "diamond")
SIZES = {"small": (0.08, 0.10), "large": (0.15, 0.18)}
"""Object 'radius' as a fraction of the image side."""
MARGIN = 0.08
"""Objects keep this fraction of the side free at the borders (a centre crop of 0.9 keeps them whole)."""


# --------------------------------------------------------------------------------------------
# scenes
# --------------------------------------------------------------------------------------------


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def _obj(rng: np.random.Generator, taken: tuple[str, str] | None = None) -> dict:
    while True:
        color, shape = _pick(rng, tuple(COLORS)), _pick(rng, SHAPES)
        if (color, shape) != taken:  # two objects of the same colour and shape would be ambiguous
            break
    size = _pick(rng, tuple(SIZES))
    lo, hi = SIZES[size]
    return {"shape": shape, "color": color, "size": size, "r": float(rng.uniform(lo, hi))}


def _place_pair(rng: np.random.Generator, a: dict, b: dict) -> str:
    """Place ``a`` before ``b`` along a random axis, clearly separated; returns a's relation to b."""
    lo, hi, gap = MARGIN, 1.0 - MARGIN, 0.06
    horizontal = bool(rng.integers(2))
    slack = (hi - lo) - 2 * a["r"] - 2 * b["r"] - gap
    cuts = np.sort(rng.uniform(0.0, max(slack, 0.0), size=2))
    pa = lo + cuts[0] + a["r"]
    pb = pa + a["r"] + gap + (cuts[1] - cuts[0]) + b["r"]
    d = 0.5 * (pb - pa)  # cross-axis offset stays under half the main-axis distance: unambiguous relation
    qa = rng.uniform(lo + a["r"], hi - a["r"])
    qb = rng.uniform(max(lo + b["r"], qa - d), min(hi - b["r"], qa + d))
    if horizontal:
        a["x"], a["y"], b["x"], b["y"] = pa, qa, pb, qb
        return "to the left of"
    a["x"], a["y"], b["x"], b["y"] = qa, pa, qb, pb
    return "above"


def sample_scene(rng: np.random.Generator) -> dict:
    """A random scene: background, one or two objects (positions in 0..1 units) and their relation."""
    scene: dict[str, Any] = {"background": _pick(rng, BACKGROUNDS), "relation": None}
    a = _obj(rng)
    if rng.random() < 0.5:
        a["x"], a["y"] = (float(rng.uniform(MARGIN + a["r"], 1 - MARGIN - a["r"])) for _ in range(2))
        scene["objects"] = [a]
    else:
        b = _obj(rng, taken=(a["color"], a["shape"]))
        rel = _place_pair(rng, a, b)
        if rng.random() < 0.5:  # name either object first
            a, b, rel = b, a, RELATIONS[rel]
        scene["objects"], scene["relation"] = [a, b], rel
    for o in scene["objects"]:
        for k in ("x", "y", "r"):
            o[k] = round(float(o[k]), 4)
    return scene


def scene_captions(scene: dict) -> list[str]:
    """Five paraphrases that all describe the scene truly."""
    bg = scene["background"]
    objs = scene["objects"]
    if len(objs) == 1:
        o = objs[0]
        s, c, sh = o["size"], o["color"], o["shape"]
        return [
            f"a {s} {c} {sh} on a {bg} background",
            f"{article(c)} {c} {sh} that is {s} on a {bg} background",
            f"there is a {s} {c} {sh} on a {bg} background",
            f"a {bg} background with a {s} {c} {sh}",
            f"a picture of a {s} {c} {sh} in front of a {bg} background",
        ]
    a, b = (f"{o['size']} {o['color']} {o['shape']}" for o in objs)
    rel = scene["relation"]
    return [
        f"a {a} {rel} a {b} on a {bg} background",
        f"a {b} {RELATIONS[rel]} a {a} on a {bg} background",
        f"there is a {a} {rel} a {b} on a {bg} background",
        f"a {bg} background with a {a} and a {b}",
        f"on a {bg} background a {a} is {rel} a {b}",
    ]


# --------------------------------------------------------------------------------------------
# drawing
# --------------------------------------------------------------------------------------------


def draw_scene(
    scene: dict, image_size: int = 64, rng: np.random.Generator | None = None, supersample: int = 2
) -> Image.Image:
    """Render a scene (from :func:`sample_scene`) as an RGB image of ``image_size`` pixels a side."""
    rng = rng if rng is not None else np.random.default_rng(0)
    s = image_size * supersample  # drawn larger, then box-filtered down: smooth edges
    im = background(rng, scene["background"], s)
    draw = ImageDraw.Draw(im)
    for o in scene["objects"]:
        fill = np.clip(np.array(COLORS[o["color"]]) + rng.integers(-15, 16, size=3), 0, 255)
        fill_t = tuple(int(v) for v in fill)
        edge = tuple(int(v * 0.55) for v in fill)
        cx, cy, r = o["x"] * s, o["y"] * s, o["r"] * s
        width = max(1, supersample)
        if o["shape"] == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill_t, outline=edge, width=width)
        else:
            draw.polygon(polygon(o["shape"], cx, cy, r), fill=fill_t, outline=edge, width=width)
    return im.resize((image_size, image_size), Image.Resampling.BOX) if supersample > 1 else im
