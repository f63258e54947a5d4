"""How this process computes: how many CPU threads torch uses, and in which precision (the bf16 autocast of a run's
``train.precision``, for training, evaluation and the feature cache alike)."""

from __future__ import annotations

import contextlib

import torch


def bf16_autocast(precision: str, device: torch.device | str, cache: bool = True) -> contextlib.AbstractContextManager:
    """The autocast of a precision setting (``train.precision``): bf16 on CUDA with 'auto', and anywhere with
    'bf16'; nothing (fp32) with 'fp32', or with 'auto' off CUDA.

    Args:
        precision: 'auto', 'bf16' or 'fp32'.
        device: Where the computation runs.
        cache: Keep autocast's casts of the weights for the context's life; off where decoding steps replayed
            from CUDA graphs outlive the context (they must cast the current weights, not read a freed copy).
    """
    device = torch.device(device)
    if (precision == "auto" and device.type == "cuda") or precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16, **({} if cache else {"cache_enabled": False}))
    return contextlib.nullcontext()


def set_threads(threads: int | None) -> bool:
    """Make torch compute with ``threads`` CPU threads (None: leave torch's setting as it is).

    Sets the intra-op threads (``torch.set_num_threads``: matrix multiplies, element-wise kernels)
    and, when torch still allows it, the inter-op threads (``torch.set_num_interop_threads``, which
    can only be set once per process and only before any inter-op work has started).

    On a machine shared with other jobs, torch's default of one thread per core makes the jobs slow
    each other down; a small fixed number keeps each one predictable.

    Args:
        threads: Number of threads (>= 1), or None.

    Returns:
        Whether the inter-op threads were set too (False when ``threads`` is None or torch refused).

    Raises:
        ValueError: ``threads`` is not a positive integer.
    """
    if threads is None:
        return False
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive integer or None, got {threads!r}")
    torch.set_num_threads(threads)
    if torch.get_num_interop_threads() == threads:
        return True
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:  # already set, or inter-op work has started: only the intra-op threads change
        return False
    return True
