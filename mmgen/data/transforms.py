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


def encoder_pixels(image: torch.Tensor, data_config: dict, source: str) -> torch.Tensor:
    """A ``(3, H, W)`` tensor as the encoder takes it (see :meth:`~mmgen.models.CaptionModel.normalize_pixels`):
    uint8 pixels in 0..255, or float pixels normalised with the data config's mean and std.

    Other integer dtypes holding values in 0..255 are pixels too (returned as uint8). What cannot be an image
    of either kind is refused rather than captioned wrongly: another shape or size, bool or complex values,
    integers outside 0..255, NaN or infinite floats, and floats far outside the normalised range (pixels in
    0..255 given as float).

    Raises:
        mmgen.data.BadImageError: Naming ``source`` and what is wrong with the tensor.
    """
    from mmgen.data.images import BadImageError

    size = image_size(data_config)
    if image.ndim != 3 or image.shape[0] != 3 or tuple(image.shape[1:]) != size:
        raise BadImageError(source, f"tensor of shape {tuple(image.shape)}; expected (3, {size[0]}, {size[1]})")
    kinds = "give uint8 pixels in 0..255, or float pixels normalised with the model's mean and std"
    if image.dtype == torch.bool or image.is_complex():
        raise BadImageError(source, f"a {image.dtype} tensor is not an image: {kinds}")
    if image.dtype == torch.uint8:
        return image
    if not image.is_floating_point():
        lo, hi = int(image.min()), int(image.max())
        if lo < 0 or hi > 255:
            raise BadImageError(source, f"{image.dtype} tensor with values {lo}..{hi}, outside 0..255: {kinds}")
        return image.to(torch.uint8)
    image = image.float()
    if not bool(torch.isfinite(image).all()):
        raise BadImageError(source, f"tensor holds NaN or infinite values: {kinds}")
    mean = torch.tensor(data_config["mean"], dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(data_config["std"], dtype=torch.float32).view(3, 1, 1)
    lo, hi = (0 - mean) / std, (1 - mean) / std  # (3, 1, 1): where normalised pixels of 0..1 lie
    margin = hi - lo  # resampling and augmentation overshoot a little; pixels in 0..255 lie far beyond
    far = (image.cpu() < lo - margin) | (image.cpu() > hi + margin)
    if bool(far.any()):
        raise BadImageError(
            source,
            f"float tensor with values {float(image.min()):.4g}..{float(image.max()):.4g}, far outside the "
            f"normalised range of this model's pixels: {kinds} (pixels in 0..255: tensor.to(torch.uint8))",
        )
    return image
