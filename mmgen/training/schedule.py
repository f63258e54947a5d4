"""Optimizer and learning-rate schedule."""

from __future__ import annotations

import math

import torch

from mmgen.config import ConfigError, TrainConfig


def build_optimizer(model, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW over the model's parameter groups (per-part learning rates; no decay on 1-D parameters)."""
    groups = param_groups(
        model, cfg.lr, cfg.weight_decay, cfg.encoder_lr, projector_lr=cfg.projector_lr, decoder_lr=cfg.decoder_lr
    )
    if not groups:
        raise ConfigError(
            "model.decoder.mode: nothing to train, every parameter is frozen (check model.encoder.freeze and "
            "model.decoder.mode)"
        )
    fused = cfg.fused_adam if cfg.fused_adam is not None else device.type == "cuda"
    for g in groups:
        g["initial_lr"] = g["lr"]
    return torch.optim.AdamW(groups, betas=cfg.betas, fused=fused)


def param_groups(
    model,
    lr: float,
    weight_decay: float,
    encoder_lr: float | None = None,
    projector_lr: float | None = None,
    decoder_lr: float | None = None,
) -> list[dict]:
    """AdamW groups of a :class:`~mmgen.models.CaptionModel` per part (encoder, projector, decoder: each its own
    learning rate, default ``lr``) and decay class; frozen parameters are left out (no optimizer state).

    Matrices decay; biases, norms, embeddings of positions and other 1-D parameters do not.
    """
    lrs = {"encoder": encoder_lr or lr, "projector": projector_lr or lr, "decoder": decoder_lr or lr}
    groups = []
    seen: set[int] = set()
    for part in ("encoder", "projector", "decoder"):
        decay, no_decay = [], []
        for _, p in getattr(model, part).named_parameters():
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            (decay if p.ndim >= 2 else no_decay).append(p)
        for params, wd, suffix in ((decay, weight_decay, "decay"), (no_decay, 0.0, "no_decay")):
            if params:
                groups.append({"params": params, "lr": lrs[part], "weight_decay": wd, "name": f"{part}.{suffix}"})
    return groups


def time_lr_factor(step: int, warmup: int, fraction: float, min_ratio: float) -> float:
    """Linear warmup over ``warmup`` steps, then cosine decay to ``min_ratio`` over ``fraction`` (0..1) of
    what is left after warmup (of the steps, or of the time budget with ``train.schedule: time``)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, max(0.0, fraction))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warmup to 1, then cosine decay to ``min_ratio`` at ``total`` steps."""
    return time_lr_factor(step, warmup, (step - warmup) / max(1, total - warmup), min_ratio)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, cfg.warmup_steps, cfg.max_steps, cfg.min_lr_ratio)
    )
