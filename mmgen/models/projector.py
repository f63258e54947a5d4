"""Projectors: encoder tokens (B, N, C) -> decoder embeddings (B, N', D).

A small registry (``PROJECTORS``, keyed by the kinds the config accepts:
:data:`mmgen.config.PROJECTOR_KINDS`) of real variants:
- ``linear``: one linear map.
- ``mlp``: Linear -> GELU -> Linear (LLaVA-1.5).
- ``pool``: 2-D average pooling over the patch grid (factor f: N' = N / f^2), then the mlp (or one linear
  map: ``model.projector.head``).
- ``pixel_shuffle``: space-to-depth over the patch grid (C -> C f^2, N' = N / f^2), then the mlp or one
  linear map (nanoVLM / Idefics3).
- ``mapper``: learned queries through a small transformer over the image tokens (ClipCap).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mmgen.config import ProjectorConfig


class LinearProjector(nn.Module):
    def __init__(self, cfg: ProjectorConfig, in_dim: int, out_dim: int, grid: tuple[int, int] | None):
        super().__init__()
        self.proj = nn.Linear(in_dim, out_dim)

    def num_tokens(self, n: int) -> int:
        return n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class MLPProjector(nn.Module):
    def __init__(self, cfg: ProjectorConfig, in_dim: int, out_dim: int, grid: tuple[int, int] | None):
        super().__init__()
        hidden = cfg.hidden_dim or out_dim
        self.fc1 = nn.Linear(in_dim, hidden)
        self.act = nn.GELU()
        self.drop = nn.Dropout(cfg.dropout)
        self.fc2 = nn.Linear(hidden, out_dim)

    def num_tokens(self, n: int) -> int:
        return n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(self.act(self.fc1(x))))


def _as_grid(x: torch.Tensor, grid: tuple[int, int], kind: str) -> torch.Tensor:
    b, n, c = x.shape
    h, w = grid
    if n != h * w:
        raise ValueError(
            f"model.projector.kind={kind} needs exactly the {h}x{w} patch tokens, got {n} tokens "
            "(set model.encoder.keep_prefix_tokens: false)"
        )
    return x.reshape(b, h, w, c)  # (B, h, w, C)


class PoolProjector(nn.Module):
    """Average-pool the patch grid by ``factor`` (196 -> 49 tokens for factor 2), then the mlp."""

    def __init__(self, cfg: ProjectorConfig, in_dim: int, out_dim: int, grid: tuple[int, int] | None):
        super().__init__()
        _check_grid(grid, cfg)
        self.grid, self.factor = grid, cfg.factor
        self.mlp = _head(cfg, in_dim, out_dim, grid)

    def num_tokens(self, n: int) -> int:
        return (self.grid[0] // self.factor) * (self.grid[1] // self.factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = _as_grid(x, self.grid, "pool").permute(0, 3, 1, 2)  # (B, C, h, w)
        g = F.avg_pool2d(g, self.factor)  # (B, C, h/f, w/f)
        return self.mlp(g.flatten(2).transpose(1, 2))  # (B, N/f^2, D)


class PixelShuffleProjector(nn.Module):
    """Space-to-depth: each f x f patch neighbourhood becomes one token of width C f^2."""

    def __init__(self, cfg: ProjectorConfig, in_dim: int, out_dim: int, grid: tuple[int, int] | None):
        super().__init__()
        _check_grid(grid, cfg)
        self.grid, self.factor = grid, cfg.factor
        self.mlp = _head(cfg, in_dim * cfg.factor**2, out_dim, grid)

    def num_tokens(self, n: int) -> int:
        return (self.grid[0] // self.factor) * (self.grid[1] // self.factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.factor
        g = _as_grid(x, self.grid, "pixel_shuffle")
        b, h, w, c = g.shape
        g = g.reshape(b, h // f, f, w // f, f, c).permute(0, 1, 3, 2, 4, 5)  # (B, h/f, w/f, f, f, C)
        return self.mlp(g.reshape(b, (h // f) * (w // f), f * f * c))  # (B, N/f^2, D)


class MapperProjector(nn.Module):
    """ClipCap-style mapper: ``num_queries`` learned tokens attend over the projected image tokens."""

    def __init__(self, cfg: ProjectorConfig, in_dim: int, out_dim: int, grid: tuple[int, int] | None):
        super().__init__()
        if out_dim % cfg.mapper_heads:
            raise ValueError(f"model.projector.mapper_heads={cfg.mapper_heads} must divide the decoder width {out_dim}")
        self.proj = nn.Linear(in_dim, out_dim)
        self.queries = nn.Parameter(torch.randn(cfg.num_queries, out_dim) / math.sqrt(out_dim))
        layer = nn.TransformerEncoderLayer(
            out_dim,
            cfg.mapper_heads,
            dim_feedforward=4 * out_dim,
            dropout=cfg.dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.transformer = nn.TransformerEncoder(layer, cfg.mapper_layers, enable_nested_tensor=False)
        self.num_queries = cfg.num_queries

    def num_tokens(self, n: int) -> int:
        return self.num_queries

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        q = self.queries.unsqueeze(0).expand(b, -1, -1)  # (B, Q, D)
        h = self.transformer(torch.cat([self.proj(x), q], dim=1))  # (B, N + Q, D)
        return h[:, -self.num_queries :]  # (B, Q, D)


def _head(cfg: ProjectorConfig, in_dim: int, out_dim: int, grid: tuple[int, int] | None) -> nn.Module:
    """The map after a grid reduction: ``model.projector.head`` ('mlp' or 'linear'). The projectors keep it
    as ``self.mlp`` whichever it is, so checkpoints saved before the option load unchanged."""
    return (MLPProjector if cfg.head == "mlp" else LinearProjector)(cfg, in_dim, out_dim, grid)


def _check_grid(grid: tuple[int, int] | None, cfg: ProjectorConfig) -> None:
    """A projector that works on the patch grid needs one (only patch tokens), divisible by its factor."""
    if grid is None:
        raise ValueError(
            f"model.projector.kind={cfg.kind} needs the patch grid: set model.encoder.keep_prefix_tokens: false"
        )
    if grid[0] % cfg.factor or grid[1] % cfg.factor:
        raise ValueError(f"model.projector.factor={cfg.factor} must divide the patch grid {grid[0]}x{grid[1]}")


PROJECTORS: dict[str, type[nn.Module]] = {
    "linear": LinearProjector,
    "mlp": MLPProjector,
    "pool": PoolProjector,
    "pixel_shuffle": PixelShuffleProjector,
    "mapper": MapperProjector,
}


def build_projector(cfg: ProjectorConfig, in_dim: int, out_dim: int, grid: tuple[int, int] | None) -> nn.Module:
    """Build the projector ``cfg.kind`` mapping width ``in_dim`` to the decoder width ``out_dim``."""
    return PROJECTORS[cfg.kind](cfg, in_dim, out_dim, grid)
