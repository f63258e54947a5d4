"""Encoder variants for Vision Transformers trained from scratch: a convolutional stem, 2-D sin-cos positions.

A ViT trained from scratch on little data learns two things slowly: what a small shape looks like (one
linear map of a flat 8x8 patch) and where a patch is (learned position embeddings start as noise).
- :class:`ConvStem` replaces the patch embedding with a stack of stride-2 3x3 convolutions and a 1x1
  projection (Xiao et al., 2021, "Early convolutions help transformers see better"): the same patch grid
  and token width, so every timm ViT and every projector work unchanged. :class:`HybridStem` adds the
  linear patch projection beside it, so colours reach the tokens from the first step.
- :func:`sincos_2d` gives fixed 2-D sin-cos position embeddings (MAE): a token's row and column are
  readable from the first step on.
"""

from __future__ import annotations

import math

import torch
from timm.layers import PatchEmbed, ScaledStdConv2d
from torch import nn


class ConvStem(PatchEmbed):
    """A timm ``PatchEmbed`` whose projection is ``log2(patch)`` stride-2 3x3 convolutions, then a 1x1 one.

    Widths double at every stride up to ``embed_dim`` (for 128 and patch 8: 32, 64, 128; ``width`` sets the
    first, ``model.encoder.stem_width``); each conv is
    followed by a GELU, and with ``norm="group"`` a GroupNorm before it (``model.encoder.stem_norm``). Never a
    norm over the channels of one pixel (it would erase most of its colour: 3 degrees of freedom, 2 of them
    taken by the mean and the scale) nor batch statistics (one process and N processes would train
    differently): a GroupNorm normalises each group of 16 channels over the whole image, one image at a time,
    so a pixel's colour against the rest of its image survives -- but not the image's own mean colour (the
    mean of each group is taken away), which on coloured backgrounds is what a caption names. ``norm="ws"``
    normalises the filters instead of the image (weight standardisation, NF-Nets' ``ScaledStdConv2d``): each
    filter has zero mean and unit norm, so the activations keep their scale through the stack while every
    image keeps its colours. He-normal initialisation keeps the scale of the plain stack. Accepted wherever
    timm takes ``embed_layer`` (``functools.partial(ConvStem, norm="ws")``).
    """

    def __init__(self, *args, norm: str = "none", width: int | None = None, **kwargs):
        if norm not in STEM_NORMS:
            raise ValueError(f"model.encoder.stem_norm must be one of {STEM_NORMS}, got {norm!r}")
        super().__init__(*args, **kwargs)
        p = self.patch_size[0]
        if self.patch_size[0] != self.patch_size[1] or p < 2 or p & (p - 1):
            raise ValueError(f"model.encoder.stem=conv needs a square power-of-two patch size, got {self.patch_size}")
        conv = self.proj
        in_chans, dim = conv.in_channels, conv.out_channels
        n = int(math.log2(p))
        if width is None:
            widths = [max(dim >> (n - i), 8) for i in range(1, n + 1)]
        else:  # the first width given, doubled at every stride, never above the token width
            widths = [min(width << i, max(width, dim)) for i in range(n)]
        layers: list[nn.Module] = []
        for w in widths:
            if norm == "ws":  # weight-standardised (NF-Net): the filters are normalised, not the image
                layers.append(ScaledStdConv2d(in_chans, w, 3, stride=2, padding=1, gamma=GELU_GAMMA))
            else:
                layers.append(nn.Conv2d(in_chans, w, 3, stride=2, padding=1))
            if norm == "group":
                layers.append(nn.GroupNorm(max(1, w // 16), w))  # groups of 16 channels, per image
            layers.append(nn.GELU())
            in_chans = w
        layers.append(nn.Conv2d(in_chans, dim, 1, bias=conv.bias is not None))
        for m in layers:
            if isinstance(m, nn.Conv2d) and not isinstance(m, ScaledStdConv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        self.proj = nn.Sequential(*layers)  # (B, 3, H, W) -> (B, C, H/p, W/p)


STEM_NORMS = ("none", "group", "ws")
"""``model.encoder.stem_norm``: none; a GroupNorm after each stride-2 convolution (per image); weight-standardised
convolutions."""
GELU_GAMMA = 1.7015
"""The gain that keeps a GELU's output at unit variance for unit-variance input (NF-Nets' gamma for GELU)."""


class HybridStem(ConvStem):
    """:class:`ConvStem` plus the plain linear patch projection of the raw pixels, summed.

    The convolutions see texture and small shapes; the linear path hands every token its patch's colours
    directly from the first step (through the ReLU-free path a colour is one linear read-out), which the deep
    stack alone learns slowly. ``patch_size**2 * 3 * embed_dim`` more parameters.
    """

    def __init__(self, *args, norm: str = "none", width: int | None = None, **kwargs):
        super().__init__(*args, norm=norm, width=width, **kwargs)
        conv = self.proj
        dim, p = conv[-1].out_channels, self.patch_size
        self.proj = _Sum(conv, nn.Conv2d(conv[0].in_channels, dim, p, stride=p))


class _Sum(nn.Module):
    """``conv(x) + linear(x)``: the two paths of :class:`HybridStem`."""

    def __init__(self, conv: nn.Module, linear: nn.Conv2d):
        super().__init__()
        self.conv, self.linear = conv, linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + self.linear(x)  # (B, C, H/p, W/p)


def sincos_2d(grid: tuple[int, int], dim: int) -> torch.Tensor:
    """Fixed 2-D sin-cos position embeddings ``(h * w, dim)``: half the channels encode the row, half the
    column, each at geometrically spaced frequencies (``dim`` must be a multiple of 4)."""
    if dim % 4:
        raise ValueError(f"model.encoder.pos_embed=sincos needs a width divisible by 4, got {dim}")
    h, w = grid
    freqs = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))  # (D/4,)
    rows = torch.arange(h, dtype=torch.float64)[:, None] * freqs  # (h, D/4)
    cols = torch.arange(w, dtype=torch.float64)[:, None] * freqs  # (w, D/4)
    row = torch.cat([rows.sin(), rows.cos()], dim=1)[:, None, :].expand(h, w, dim // 2)  # (h, w, D/2)
    col = torch.cat([cols.sin(), cols.cos()], dim=1)[None, :, :].expand(h, w, dim // 2)  # (h, w, D/2)
    return torch.cat([row, col], dim=-1).reshape(h * w, dim).float()  # (h*w, D)


def fix_sincos_positions(model: nn.Module, grid: tuple[int, int]) -> None:
    """Overwrite a timm ViT's learned ``pos_embed`` with 2-D sin-cos values (zeros on class/register
    tokens) and freeze it."""
    pos = getattr(model, "pos_embed", None)
    if not isinstance(pos, nn.Parameter):
        raise ValueError("model.encoder.pos_embed=sincos needs a ViT with learned position embeddings (pos_embed)")
    n = grid[0] * grid[1]
    with torch.no_grad():
        pos.zero_()
        pos[0, pos.shape[1] - n :] = sincos_2d(grid, pos.shape[-1]).to(pos.dtype)  # patch positions come last
    pos.requires_grad_(False)
