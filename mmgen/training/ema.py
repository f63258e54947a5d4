"""An exponential moving average of a model's trained weights (``train.ema_decay``).

After each optimizer step every trained parameter's average moves towards it:
``avg = d * avg + (1 - d) * p``, with ``d = min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so the
first updates, when the weights still move fast, do not drag a random init along (the same warm-up as
timm's ``ModelEmaV3``). Frozen parameters and buffers are left alone: they do not change in training (the
ViT and GPT-2 families hold no running statistics). The average is kept in fp32 on the parameters' device.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch
from torch import nn

from mmgen.config import ConfigError

AVERAGE_KEY = "weight_average"  # the entry of a checkpoint's trainer state that holds the average


class WeightAverage:
    """The moving average of ``model``'s trained parameters (by name, so that wrappers do not matter)."""

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"train.ema_decay must be in (0, 1), got {decay!r}")
        self.decay = float(decay)
        self.updates = 0
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        self.averages = [p.detach().float().clone() for p in self._params(model)]

    def _params(self, model: nn.Module) -> list[torch.Tensor]:
        params = dict(model.named_parameters())
        missing = [n for n in self.names if n not in params]
        if missing:
            raise KeyError(f"weight average: the model has no parameter {missing[0]!r}")
        return [params[n] for n in self.names]

    def rate(self) -> float:
        """The decay of the next update."""
        n = self.updates + 1
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards ``model``'s current weights (after an optimizer step)."""
        weight = 1.0 - self.rate()
        self.updates += 1
        current = [p.detach().float() for p in self._params(model)]
        torch._foreach_lerp_(self.averages, current, weight)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Write the average into ``model``'s parameters (in their own dtype)."""
        for p, a in zip(self._params(model), self.averages):
            p.copy_(a)

    @contextmanager
    def applied(self, model: nn.Module):
        """``model`` holds the averaged weights inside the block and its own weights again after it."""
        params = self._params(model)
        saved = [p.detach().clone() for p in params]
        self.copy_to(model)
        try:
            yield model
        finally:
            with torch.no_grad():
                for p, s in zip(params, saved):
                    p.copy_(s)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "averages": dict(zip(self.names, self.averages))}

    def load_state_dict(self, state: dict) -> None:
        averages = state["averages"]
        if set(averages) != set(self.names):
            extra = sorted(set(averages) ^ set(self.names))
            raise KeyError(f"weight average: saved and trained parameters differ, e.g. {extra[0]!r}")
        for n, a in zip(self.names, self.averages):
            if tuple(averages[n].shape) != tuple(a.shape):
                raise ValueError(
                    f"weight average: {n!r} was saved as {tuple(averages[n].shape)}, the model has {tuple(a.shape)}"
                )
        self.updates = int(state["updates"])
        for i, n in enumerate(self.names):
            self.averages[i].copy_(averages[n])


def build_average(model: nn.Module, decay: float, sharded: bool = False) -> WeightAverage | None:
    """The average ``train.ema_decay`` asks for (None for 0); refused for an FSDP-sharded model."""
    if not decay:
        return None
    if sharded:
        raise ConfigError("train.ema_decay: no weight average under train.distributed=fsdp; use ddp")
    return WeightAverage(model, decay)


def average_state(average: WeightAverage | None) -> dict:
    """What a checkpoint's trainer state holds of the average (nothing without one)."""
    return {} if average is None else {AVERAGE_KEY: average.state_dict()}


def restore_average(average: WeightAverage | None, state: dict, ckpt) -> None:
    """Take the saved average out of a checkpoint's trainer ``state`` and load it into ``average``; a run saved
    with an average and resumed without one (or the other way round) is refused, naming the checkpoint."""
    saved = state.pop(AVERAGE_KEY, None)
    if (saved is None) != (average is None):
        had, asked = ("with", "without") if saved is not None else ("without", "with")
        raise ValueError(
            f"{ckpt}: the run was trained {had} a weight average and is resumed {asked} one: "
            "resume with the run's own train.ema_decay"
        )
    if average is not None:
        average.load_state_dict(saved)


def averaged(average: WeightAverage | None, model: nn.Module) -> AbstractContextManager:
    """``model`` holds the average inside the block (what is evaluated, kept as ``best/`` and written as
    ``final/``); without an average, its own weights."""
    return average.applied(model) if average is not None else nullcontext()
