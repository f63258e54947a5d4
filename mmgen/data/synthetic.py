"""A procedurally drawn captioning dataset: one or two shapes on a textured background.

Every image comes with five paraphrased captions that truly describe it ("a large red circle to the
left of a small blue square on a striped background"). The vocabulary is small (6 colours, 5
shapes, 2 sizes, 4 backgrounds, 4 relations) so a tiny captioner learns it in minutes on a CPU at
64x64, while a constant caption scores badly. The output is an ordinary COCO caption dataset
(``captions_train.json`` / ``captions_val.json`` + PNG or JPEG files); each ``images`` entry also
carries the ``scene`` it was drawn from. Image ``k`` depends only on ``(seed, k)``: the same seed gives
the same bytes.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from mmgen.data.scene_drawing import BACKGROUNDS, COLORS, RELATIONS, article, background, polygon

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


# --------------------------------------------------------------------------------------------
# dataset writer
# --------------------------------------------------------------------------------------------


def _encode(im: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "jpg":
        im.save(buf, format="JPEG", quality=90)
    else:
        im.save(buf, format="PNG")
    return buf.getvalue()


def make_scenes(
    out_dir: str | Path,
    n: int,
    seed: int = 0,
    image_size: int = 64,
    val: int = 0,
    image_format: str = "png",
    difficulty: str = "simple",
    progress: bool = False,
) -> dict:
    """Write a synthetic COCO-format captioning dataset.

    Args:
        out_dir: Output directory: ``captions_train.json``, ``captions_val.json`` (when ``val`` > 0)
            and ``images/train/*.png``, ``images/val/*.png``.
        n: Total number of images.
        seed: Seed; image ``k`` depends only on ``(seed, k)``.
        image_size: Side length in pixels.
        val: How many of the ``n`` images (the last ones) form the validation split.
        image_format: 'png' (lossless) or 'jpg'.
        difficulty: 'simple' (one or two upright shapes, this module) or 'hard' (up to four rotated
            shapes on a 3x3 grid with counts, positions and relations: :mod:`mmgen.data.synthetic_hard`).
        progress: Show a progress bar (on stderr).

    Returns:
        A summary: ``{"n", "splits": {split: json path}, "seconds", "images_per_second"}``.
    """
    sample, captions, draw = scene_kind(difficulty)
    if n < 1 or not 0 <= val <= n:
        raise ValueError(f"need n >= 1 and 0 <= val <= n, got n={n}, val={val}")
    if image_format not in ("png", "jpg"):
        raise ValueError(f"image_format must be 'png' or 'jpg', got {image_format!r}")
    out = Path(out_dir)
    t0 = time.perf_counter()
    splits = {"train": range(0, n - val), "val": range(n - val, n)}
    written = {}
    bar = tqdm(total=n, desc="scenes", unit="img", disable=not progress, dynamic_ncols=True)
    for split, indices in splits.items():
        if not indices:
            continue
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for k in indices:
            rng = np.random.default_rng([seed, k])
            scene = sample(rng)
            name = f"images/{split}/{k + 1:06d}.{image_format}"  # relative to out_dir, the json's directory
            (out / name).write_bytes(_encode(draw(scene, image_size, rng), image_format))
            images.append({"id": k + 1, "file_name": name, "width": image_size, "height": image_size, "scene": scene})
            for cap in captions(scene):
                annotations.append({"id": len(annotations) + 5 * indices[0] + 1, "image_id": k + 1, "caption": cap})
            bar.update(1)
        info = {
            "description": "mmgen synthetic scenes",
            "seed": seed,
            "image_size": image_size,
            "split": split,
            "difficulty": difficulty,
        }
        path = out / f"captions_{split}.json"
        path.write_text(json.dumps({"info": info, "images": images, "annotations": annotations}) + "\n")
        written[split] = str(path)
    bar.close()
    seconds = time.perf_counter() - t0
    return {"n": n, "splits": written, "seconds": seconds, "images_per_second": n / max(seconds, 1e-9)}


def make_scenes_splits(
    out_dir: str | Path,
    n_train: int,
    n_val: int = 0,
    seed: int = 0,
    image_size: int = 64,
    image_format: str = "png",
    difficulty: str = "simple",
    progress: bool = False,
) -> dict:
    """:func:`make_scenes` with split sizes (``DataConfig.synth``); an identical existing dataset is reused.

    Returns:
        The summary of :func:`make_scenes`, with ``"reused": True`` when nothing had to be written.
    """
    out = Path(out_dir)
    wanted = {"train": n_train, "val": n_val}
    paths = {s: out / f"captions_{s}.json" for s, k in wanted.items() if k > 0}
    try:
        infos = {s: json.loads(p.read_text()) for s, p in paths.items()}
        same = all(
            d["info"].get("seed") == seed
            and d["info"].get("image_size") == image_size
            and d["info"].get("difficulty", "simple") == difficulty
            and len(d["images"]) == wanted[s]
            and all((out / im["file_name"]).is_file() for im in d["images"][:: max(1, len(d["images"]) // 16)])
            for s, d in infos.items()
        )
    except (OSError, ValueError, KeyError):
        same = False
    if same:
        return {
            "n": n_train + n_val,
            "splits": {s: str(p) for s, p in paths.items()},
            "seconds": 0.0,
            "images_per_second": 0.0,
            "reused": True,
        }
    return make_scenes(
        out,
        n_train + n_val,
        seed=seed,
        image_size=image_size,
        val=n_val,
        image_format=image_format,
        difficulty=difficulty,
        progress=progress,
    )


DIFFICULTIES = ("simple", "hard")


def scene_kind(difficulty: str):
    """``(sample, captions, draw)`` functions of a scene difficulty ('simple' or 'hard')."""
    if difficulty == "simple":
        return sample_scene, scene_captions, draw_scene
    if difficulty == "hard":
        from mmgen.data import synthetic_hard as hard

        return hard.sample_hard_scene, hard.hard_scene_captions, hard.draw_hard_scene
    raise ValueError(f"difficulty must be one of {DIFFICULTIES}, got {difficulty!r}")
