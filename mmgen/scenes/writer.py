"""Synthetic scenes written as an ordinary COCO caption dataset: ``captions_train.json`` /
``captions_val.json`` + PNG or JPEG files, each ``images`` entry also carrying the ``scene`` it was drawn
from (what :mod:`mmgen.scenes.accuracy` reads captions back against). Image ``k`` depends only on
``(seed, k)``: the same seed gives the same bytes.
"""

from __future__ import annotations

import importlib
import io
import json
import time
from pathlib import Path
from types import ModuleType

import numpy as np
from PIL import Image
from tqdm import tqdm

from mmgen.scenes import GENERATORS, difficulties
from mmgen.scenes.suite import SUITE, SceneDistribution


def scene_generator(difficulty: str) -> ModuleType | SceneDistribution:
    """A scene generator (``sample_scene``, ``scene_captions``, ``draw_scene``) by its name: a module of
    :data:`~mmgen.scenes.GENERATORS` or a distribution of the suite."""
    if difficulty in GENERATORS:
        return importlib.import_module(GENERATORS[difficulty][0])
    if difficulty in SUITE:
        return SUITE[difficulty]
    raise ValueError(f"difficulty must be one of {tuple(difficulties())}, got {difficulty!r}")


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
        difficulty: The scene generator, a key of :data:`mmgen.scenes.GENERATORS`: 'simple' (one or two
            upright shapes) or 'hard' (up to four rotated shapes on a 3x3 grid with counts, positions and
            relations).
        progress: Show a progress bar (on stderr).

    Returns:
        A summary: ``{"n", "splits": {split: json path}, "seconds", "images_per_second"}``.
    """
    generator = scene_generator(difficulty)
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
            scene = generator.sample_scene(rng)
            name = f"images/{split}/{k + 1:06d}.{image_format}"  # relative to out_dir, the json's directory
            (out / name).write_bytes(_encode(generator.draw_scene(scene, image_size, rng), image_format))
            images.append({"id": k + 1, "file_name": name, "width": image_size, "height": image_size, "scene": scene})
            for cap in generator.scene_captions(scene):
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
