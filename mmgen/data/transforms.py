"""Image transforms built from the encoder's timm data config.

``timm.data.resolve_model_data_config(model)`` gives ``input_size``, ``interpolation``, ``mean``,
``std``, ``crop_pct`` and ``crop_mode``; :func:`build_transform` turns them into a PIL -> tensor
transform with ``timm.data.create_transform``. With ``uint8=True`` the transform stops before
normalisation and returns uint8 tensors (4x less to copy to the GPU); the model finishes the job on the
device (:func:`mmgen.models.encoder.normalize_on_device`, the one place images are normalised).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

DATA_CONFIG_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")


def resolve_data_config(model_or_config: Any) -> dict:
    """The timm data config of an encoder: from a timm model, or a dict that already is one."""
    if isinstance(model_or_config, dict):
        cfg = dict(model_or_config)
    else:
        import timm.data

        cfg = timm.data.resolve_model_data_config(model_or_config)
    missing = [k for k in ("input_size", "mean", "std") if k not in cfg]
    if missing:
        raise ValueError(f"data config lacks {missing}; got keys {sorted(cfg)}")
    return {k: cfg[k] for k in DATA_CONFIG_KEYS if k in cfg}


def image_size(data_config: dict) -> tuple[int, int]:
    """(H, W) of the encoder's input."""
    size = data_config["input_size"]
    return (int(size[-2]), int(size[-1])) if isinstance(size, (tuple, list)) else (int(size), int(size))


def build_transform(
    data_config: dict,
    train: bool = False,
    augment: bool = False,
    uint8: bool = False,
    scale: tuple[float, float] = (0.8, 1.0),
    color_jitter: float = 0.1,
) -> Callable[[Any], torch.Tensor]:
    """A PIL RGB image -> (3, H, W) tensor transform for the encoder.

    Without augmentation (the default, also in training) the image is resized so that the centre
    crop of ``crop_pct`` fills the input, then centre-cropped: the encoder's evaluation transform.

    Args:
        data_config: The encoder's timm data config (see :func:`resolve_data_config`).
        train: Build the training transform (only differs from evaluation when ``augment``).
        augment: Light augmentation: random resized crop over ``scale`` of the area and brightness /
            contrast / saturation jitter. No horizontal flip and no hue change, since captions say
            "left of" and name colours.
        uint8: Return uint8 tensors in 0..255 without normalisation (the model normalises them on the device).
        scale: Area range of the random resized crop.
        color_jitter: Strength of the brightness / contrast / saturation jitter.

    Returns:
        A callable mapping a PIL image to a float32 normalised (or uint8) tensor of shape (3, H, W).
    """
    from timm.data import create_transform

    cfg = resolve_data_config(data_config)
    kw: dict[str, Any] = {
        "input_size": cfg["input_size"],
        "interpolation": cfg.get("interpolation", "bicubic"),
        "mean": tuple(cfg["mean"]),
        "std": tuple(cfg["std"]),
        "crop_pct": cfg.get("crop_pct"),
        "crop_mode": cfg.get("crop_mode"),
        "use_prefetcher": uint8,  # timm: stop at a uint8 tensor, the consumer normalises
    }
    if train and augment:
        return create_transform(
            is_training=True,
            scale=scale,
            ratio=(3 / 4, 4 / 3),
            hflip=0.0,
            vflip=0.0,
            color_jitter=color_jitter,
            auto_augment=None,
            re_prob=0.0,
            **kw,
        )
    return create_transform(is_training=False, **kw)
