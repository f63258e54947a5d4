"""A suite of scene distributions that vary what photographs vary, each drawn with its truth.

A design chosen on one generator may win there and lose on scenes drawn otherwise. Every distribution here is
a :class:`~mmgen.scenes.grid.GridScenes` specification (palette, some with neighbouring hues; shapes; object
scales down to a few pixels at the model's input; tilt; layouts; caption style: word order, with or without
sizes, backgrounds and positions) plus how it is drawn: background patterns in colour schemes (neutral, any
hue, pastel, close to an object's hue; always kept clear of the objects' colours), clutter (marks no caption
mentions), lighting (shading, a light gradient, blur and sensor noise) and the drawing resolution (drawn large,
box-filtered down to the stored size). Each is a scene generator like the modules of :data:`mmgen.scenes.GENERATORS`
(``sample_scene``, ``scene_captions``, ``draw_scene``), so ``mmgen data synth --difficulty NAME`` writes it,
scene truth included; image ``k`` depends only on ``(seed, k)``.

The suite is split in two: :data:`DESIGN`, the distributions designs are chosen on, and :data:`HELD_OUT`,
only reported on.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from mmgen.scenes import hard
from mmgen.scenes.drawing import outline
from mmgen.scenes.grid import GridScenes

COLOURS = {
    **hard.COLORS,
    "grey": (128, 128, 128),
    "brown": (125, 75, 35),
    "white": (245, 245, 245),
    "black": (25, 25, 25),
    "lime": (160, 225, 40),
    "teal": (20, 130, 125),
    "navy": (25, 35, 115),
    "magenta": (205, 30, 170),
}
"""Object colours by the word captions use for them."""
PATTERNS = ("plain", "split", "striped", "checkered", "dotted", "gradient", "noisy")
"""Background patterns (the word a caption uses for the background)."""
SCHEMES = ("neutral", "hue", "pastel", "near")
"""Background colour schemes: grey tones; any hue; pale hues; the hue of one of the scene's objects."""
MIN_CONTRAST = 70.0
"""An object's colour stays this far (RGB distance) from both colours of the background."""


@dataclass(frozen=True)
class SceneDistribution(GridScenes):
    """One distribution of the suite: a grid-scene specification and how its scenes are drawn."""

    name: str = ""
    description: str = ""
    clutter: int = 0
    """Up to this many marks (lines, arcs, specks) that no caption mentions."""
    lighting: float = 0.0
    """0: flat fills; up to 1: shaded objects, a light gradient over the image, blur and sensor noise."""
    draw_size: int = 224
    """Side of the drawing (supersampled twice), box-filtered down to the stored size."""

    def __post_init__(self) -> None:
        super().__post_init__()
        bad = [c for c in self.colours if c not in COLOURS] + [p for p in self.patterns if p not in PATTERNS]
        bad += [s for s in self.schemes if s not in SCHEMES]
        if bad:
            raise ValueError(f"scene distribution {self.name!r}: unknown colour, pattern or scheme {bad}")

    def draw_scene(self, scene: dict, image_size: int = 64, rng: np.random.Generator | None = None) -> Image.Image:
        """Render a scene of this distribution, drawn at ``draw_size`` and stored at ``image_size``."""
        rng = rng if rng is not None else np.random.default_rng(0)
        s = 2 * self.draw_size
        fills = [np.clip(np.array(COLOURS[o["color"]], float) + rng.integers(-15, 16, size=3), 0, 255)
                 for o in scene["objects"]]  # fmt: skip
        scheme = scene.get("scheme", self.schemes[0])
        a, b = _scheme_colours(rng, scheme, [np.array(COLOURS[g["color"]], float) for g in scene["groups"]])
        im = _background(rng, scene["background"], a, b, s)
        draw = ImageDraw.Draw(im)
        if self.clutter:
            _clutter(rng, draw, self.clutter, s)
        width = max(1, s // 128)
        for o, fill in zip(scene["objects"], fills):
            cx, cy, r = o["x"] * s, o["y"] * s, o["r"] * s
            if self.lighting:  # each object lit a little more or less
                fill = fill * rng.uniform(1 - 0.15 * self.lighting, 1 + 0.1 * self.lighting)
            colour = tuple(int(v) for v in np.clip(fill, 0, 255))
            edge = tuple(int(v * 0.55) for v in colour)
            if o["shape"] == "circle":
                draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour, outline=edge, width=width)
                continue
            t = np.deg2rad(o["angle"])
            cos, sin = np.cos(t), np.sin(t)
            points = [(cx + x * cos - y * sin, cy + x * sin + y * cos) for x, y in outline(o["shape"], r)]
            draw.polygon(points, fill=colour, outline=edge, width=width)
        if self.lighting:
            im = _light(rng, im, self.lighting)
        return im.resize((image_size, image_size), Image.Resampling.BOX)


WIDE = ("red", "green", "blue", "yellow", "purple", "orange", "pink", "cyan", "grey", "brown")
CLOSE = ("red", "orange", "brown", "yellow", "lime", "green", "teal", "cyan", "blue", "navy", "purple", "magenta")
_SHAPES = hard.SHAPES
_SIZES = hard.SIZES
_TEXTURES = ("striped", "checkered", "dotted", "gradient", "noisy")

SUITE: dict[str, SceneDistribution] = {
    d.name: d
    for d in (
        # --- design: the distributions designs are chosen on ---
        SceneDistribution(
            name="grey-simple",
            description="one or two upright shapes of 10 colours on light grey, no background or position words",
            colours=WIDE, shapes=_SHAPES[:5], sizes={"small": (0.08, 0.10), "large": (0.15, 0.18)},
            patterns=("plain",), layouts={"single": 0.5, "pair": 0.5}, max_tilt=0.0, background_words=False,
            position_words=False,
        ),
        SceneDistribution(
            name="hue-flat",
            description="1-4 rotated shapes of 10 colours on plain or two-tone backgrounds of any hue",
            colours=WIDE, shapes=_SHAPES, sizes=_SIZES, patterns=("plain", "split"), schemes=("hue",),
        ),
        SceneDistribution(
            name="hue-texture",
            description="1-4 rotated shapes of 10 colours on textures in grey or any hue",
            colours=WIDE, shapes=_SHAPES, sizes=_SIZES, patterns=_TEXTURES, schemes=("hue", "neutral"),
        ),
        SceneDistribution(
            name="tiny-objects",
            description="1-4 rotated shapes 4-11 pixels across at 64 pixels, on textures in grey or any hue",
            colours=WIDE[:8], shapes=_SHAPES,
            sizes={"small": (0.035, 0.045), "medium": (0.05, 0.06), "large": (0.075, 0.085)},
            patterns=_TEXTURES, schemes=("neutral", "hue"), draw_size=128,
        ),
        # --- held out: only reported on, never tuned to ---
        SceneDistribution(
            name="close-hues",
            description="12 colours with neighbouring hues on pastel or coloured backgrounds; 'a star that is "
            "small and teal'",
            colours=CLOSE, shapes=_SHAPES, sizes=_SIZES, patterns=("plain", "gradient", "noisy", "split"),
            schemes=("pastel", "hue"), style="postfix",
        ),
        SceneDistribution(
            name="near-background",
            description="backgrounds in the hue of one of the objects, with stray marks",
            colours=WIDE, shapes=_SHAPES, sizes=_SIZES, patterns=_TEXTURES, schemes=("near",), clutter=2,
        ),
        SceneDistribution(
            name="photo-like",
            description="shaded objects, light gradients, blur, noise and clutter; terse captions without sizes",
            colours=WIDE, shapes=_SHAPES, sizes=_SIZES, patterns=("plain", "gradient", "noisy", "split"),
            schemes=("hue", "pastel", "neutral"), clutter=4, lighting=1.0, style="terse", size_words=False,
            background_words=False,
        ),
    )
}  # fmt: skip
"""The suite by name."""
DESIGN = ("grey-simple", "hue-flat", "hue-texture", "tiny-objects")
HELD_OUT = ("close-hues", "near-background", "photo-like")


# --------------------------------------------------------------------------------------------
# drawing
# --------------------------------------------------------------------------------------------


def _rgb(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v)) * 255.0


def _scheme_colours(rng: np.random.Generator, scheme: str, objects: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The background's two colours in a scheme, both at least ``MIN_CONTRAST`` from every object colour."""
    for _ in range(64):
        if scheme == "neutral":
            a, b = (np.full(3, rng.uniform(lo, hi)) + rng.uniform(-8, 8, size=3) for lo, hi in ((150, 245), (80, 170)))
        elif scheme == "hue":
            h = rng.random()
            a = _rgb(h, rng.uniform(0.35, 1.0), rng.uniform(0.45, 0.95))
            b = _rgb(h + rng.uniform(-0.12, 0.12), rng.uniform(0.3, 1.0), rng.uniform(0.3, 0.8))
        elif scheme == "pastel":
            h = rng.random()
            a = _rgb(h, rng.uniform(0.12, 0.35), rng.uniform(0.8, 1.0))
            b = _rgb(h + rng.uniform(-0.1, 0.1), rng.uniform(0.15, 0.45), rng.uniform(0.65, 0.9))
        else:  # near: the hue of one object, another saturation / value
            h, s, v = colorsys.rgb_to_hsv(*(objects[int(rng.integers(len(objects)))] / 255.0))
            a = _rgb(h + rng.uniform(-0.06, 0.06), np.clip(s * rng.uniform(0.4, 0.8), 0, 1), rng.uniform(0.55, 1.0))
            b = _rgb(h + rng.uniform(-0.06, 0.06), np.clip(s * rng.uniform(0.3, 0.7), 0, 1), rng.uniform(0.4, 0.9))
        a, b = np.clip(a, 0, 255), np.clip(b, 0, 255)
        if all(min(np.linalg.norm(a - o), np.linalg.norm(b - o)) >= MIN_CONTRAST for o in objects):
            return a, b
    return np.full(3, 235.0), np.full(3, 200.0)  # light greys: every palette colour but white stands out


def _background(rng: np.random.Generator, pattern: str, a: np.ndarray, b: np.ndarray, size: int) -> Image.Image:
    """A (size x size) background of ``pattern`` in colours ``a`` and ``b``."""
    c = np.arange(size, dtype=np.float32) + 0.5
    period = rng.uniform(0.12, 0.22) * size
    if pattern == "plain":
        t = np.zeros((size, size), np.float32)
    elif pattern == "split":  # two halves along a random line through the middle third
        angle = rng.uniform(0, np.pi)
        off = rng.uniform(-size / 6, size / 6)
        t = ((np.cos(angle) * (c[None, :] - size / 2) + np.sin(angle) * (c[:, None] - size / 2)) > off).astype(
            np.float32
        )
    elif pattern == "gradient":
        angle = rng.uniform(0, 2 * np.pi)
        t = np.cos(angle) * c[None, :] + np.sin(angle) * c[:, None]
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    elif pattern == "noisy":
        block = max(1, size // 32)
        t = np.kron(rng.random((-(-size // block),) * 2), np.ones((block, block)))[:size, :size]
    else:
        band = (c * (2.0 / period)).astype(np.int32)
        if pattern == "striped":
            orient = int(rng.integers(3))
            if orient == 2:
                t = ((c[None, :] + c[:, None]) * (2.0 / period)).astype(np.int32) & 1
            else:
                t = np.broadcast_to((band & 1)[None, :] if orient == 0 else (band & 1)[:, None], (size, size))
        elif pattern == "checkered":
            t = (band[None, :] ^ band[:, None]) & 1
        else:  # dotted
            dd = (c % period) - period / 2
            t = (dd[None, :] ** 2 + dd[:, None] ** 2) < (0.22 * period) ** 2
        t = np.asarray(t, np.float32)
    px = a[None, None, :] * (1 - t[..., None]) + b[None, None, :] * t[..., None]
    return Image.fromarray(np.clip(px, 0, 255).astype(np.uint8), mode="RGB")


def _clutter(rng: np.random.Generator, draw: ImageDraw.ImageDraw, n: int, s: int) -> None:
    """Up to ``n`` marks no caption mentions: thin lines, arcs and specks in random colours."""
    for _ in range(int(rng.integers(n + 1))):
        colour = tuple(int(v) for v in rng.integers(0, 256, size=3))
        x0, y0, x1, y1 = (float(v) for v in rng.uniform(0, s, size=4))
        kind = int(rng.integers(3))
        width = max(1, int(s * rng.uniform(0.004, 0.01)))
        if kind == 0:
            draw.line((x0, y0, x1, y1), fill=colour, width=width)
        elif kind == 1:
            r = s * rng.uniform(0.05, 0.15)
            start = float(rng.uniform(0, 360))
            draw.arc((x0 - r, y0 - r, x0 + r, y0 + r), start, start + float(rng.uniform(40, 160)), fill=colour,
                     width=width)  # fmt: skip
        else:
            r = s * rng.uniform(0.005, 0.012)
            draw.ellipse((x0 - r, y0 - r, x0 + r, y0 + r), fill=colour)


def _light(rng: np.random.Generator, im: Image.Image, strength: float) -> Image.Image:
    """A soft light gradient across the image, a slight blur and sensor noise."""
    s = im.size[0]
    c = np.arange(s, dtype=np.float32) / s
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(angle) * c[None, :] + np.sin(angle) * c[:, None]
    ramp = 1.0 + strength * 0.25 * (ramp - ramp.mean())  # (S, S) in about 0.8 .. 1.2
    im = im.filter(ImageFilter.GaussianBlur(radius=strength * rng.uniform(0.5, 1.5) * s / 224))
    px = np.asarray(im, np.float32) * ramp[..., None]
    px += rng.normal(0.0, strength * 6.0, size=px.shape).astype(np.float32)
    return Image.fromarray(np.clip(px, 0, 255).astype(np.uint8), mode="RGB")
