"""Process-wide runtime settings: how many CPU threads torch uses."""

from __future__ import annotations

import torch


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
