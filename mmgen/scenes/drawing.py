"""What the scene generators share: colours, backgrounds, relations and the drawing primitives
(:mod:`mmgen.scenes.simple`, :mod:`mmgen.scenes.hard`)."""

from __future__ import annotations

import numpy as np
from PIL import Image

COLORS = {
    "red": (215, 35, 35),
    "green": (35, 160, 55),
    "blue": (35, 70, 215),
    "yellow": (235, 205, 30),
    "purple": (135, 45, 175),
    "orange": (245, 130, 25),
}
BACKGROUNDS = ("striped", "dotted", "checkered", "gradient")
RELATIONS = {
    "to the left of": "to the right of",
    "to the right of": "to the left of",
    "above": "below",
    "below": "above",
}


def article(word: str) -> str:
    """The indefinite article of a word ('an' before a vowel)."""
    return "an" if word[0] in "aeiou" else "a"


def tone(rng: np.random.Generator, lo: float, hi: float) -> tuple[int, int, int]:
    """A random grey between ``lo`` and ``hi`` with a slight random tint, as an RGB triple."""
    base = rng.uniform(lo, hi)
    return tuple(int(np.clip(base + d, 0, 255)) for d in rng.uniform(-8, 8, size=3))


def background(rng: np.random.Generator, kind: str, size: int) -> Image.Image:
    """A (size x size) neutral-toned texture; neutral so that it never looks like an object colour.

    Patterns are built from 1-D coordinate arrays broadcast to 2-D and composited by PIL, which is
    several times faster than full-size numpy arithmetic.
    """
    light, dark = tone(rng, 195, 245), tone(rng, 110, 165)
    c = np.arange(size, dtype=np.float32) + 0.5  # pixel centres, (S,)
    period = rng.uniform(0.12, 0.22) * size
    im = Image.new("RGB", (size, size), light)
    if kind == "gradient":  # light-to-dark ramp in a random direction, plus noise
        angle = rng.uniform(0, 2 * np.pi)
        t = np.cos(angle) * c[None, :] + np.sin(angle) * c[:, None]  # (S, S)
        t -= t.min()
        t *= 255.0 / max(float(t.max()), 1e-6)
        noise = np.frombuffer(rng.bytes(size * size), dtype=np.uint8).reshape(size, size)
        alpha = np.clip(t + (noise.astype(np.float32) * (40 / 255) - 20), 0, 255).astype(np.uint8)
        im.paste(dark, mask=Image.fromarray(alpha, mode="L"))
        return im
    band = (c * (2.0 / period)).astype(np.int32)  # (S,) index of the half-period band
    if kind == "striped":
        orient = int(rng.integers(3))  # vertical, horizontal or diagonal
        if orient == 2:
            mask = ((c[None, :] + c[:, None]) * (2.0 / period)).astype(np.int32) & 1
        else:
            mask = np.broadcast_to((band & 1)[None, :] if orient == 0 else (band & 1)[:, None], (size, size))
    elif kind == "checkered":
        mask = (band[None, :] ^ band[:, None]) & 1
    elif kind == "dotted":
        d = (c % period) - period / 2  # (S,) offset from the nearest dot centre
        mask = (d[None, :] ** 2 + d[:, None] ** 2) < (0.22 * period) ** 2
    else:
        raise ValueError(f"unknown background {kind!r}")
    bits = np.packbits(np.asarray(mask, dtype=bool), axis=1)  # 1-bit mask rows for PIL
    im.paste(dark, mask=Image.frombytes("1", (size, size), bits.tobytes()))
    return im


def polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    """The corners of an upright square, triangle, diamond or star of 'radius' ``r`` centred on ``(cx, cy)``."""
    if shape == "square":
        h = 0.9 * r
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":
        angles = np.deg2rad([-90, 30, 150])
        return [(cx + 1.15 * r * np.cos(a), cy + 1.15 * r * np.sin(a)) for a in angles]
    if shape == "diamond":
        return [(cx, cy - 1.15 * r), (cx + 0.8 * r, cy), (cx, cy + 1.15 * r), (cx - 0.8 * r, cy)]
    if shape == "star":
        angles = np.deg2rad(-90 + 36 * np.arange(10))
        radii = np.where(np.arange(10) % 2 == 0, 1.2 * r, 0.5 * r)
        return [(cx + q * np.cos(a), cy + q * np.sin(a)) for q, a in zip(radii, angles)]
    raise ValueError(f"unknown shape {shape!r}")


def outline(shape: str, r: float) -> list[tuple[float, float]]:
    """The corners of an upright shape of 'radius' ``r`` around the origin: the four of :func:`polygon` and a
    hexagon, pentagon and cross (every one within 1.2 radii of its centre)."""

    def regular(n: int, q: float, phase: float) -> list[tuple[float, float]]:
        angles = phase + 2 * np.pi * np.arange(n) / n
        return [(q * np.cos(a), q * np.sin(a)) for a in angles]

    if shape == "square":
        h = 0.8 * r
        return [(-h, -h), (h, -h), (h, h), (-h, h)]
    if shape == "hexagon":
        return regular(6, 1.05 * r, 0.0)
    if shape == "pentagon":
        return regular(5, 1.1 * r, -np.pi / 2)
    if shape == "cross":
        w, h = 0.36 * r, 1.05 * r
        arm = [(-w, -h), (w, -h), (w, -w)]  # one arm; the cross is four of them, a quarter turn apart
        return [p for k in range(4) for p in [_quarter_turns(x, y, k) for x, y in arm]]
    return polygon(shape, 0.0, 0.0, r)  # triangle, diamond, star


def _quarter_turns(x: float, y: float, k: int) -> tuple[float, float]:
    for _ in range(k):
        x, y = -y, x
    return x, y
