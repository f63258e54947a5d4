"""Scaled-dot-product attention kernels chosen by name: 'flash', 'efficient', 'cudnn', 'math'."""

from __future__ import annotations

from collections.abc import Sequence

from torch.nn.attention import SDPBackend, sdpa_kernel

SDPA_NAMES = {
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "math": SDPBackend.MATH,
}


def sdpa_context(names: Sequence[str], set_priority: bool = False):
    """Restrict ``F.scaled_dot_product_attention`` to the named kernels (in this order with ``set_priority``)."""
    unknown = [n for n in names if n not in SDPA_NAMES]
    if unknown:
        raise ValueError(f"unknown attention kernel(s) {unknown}: use {', '.join(SDPA_NAMES)}")
    return sdpa_kernel([SDPA_NAMES[n] for n in names], set_priority=set_priority)
