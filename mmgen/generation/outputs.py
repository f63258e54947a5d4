"""What the search algorithms return, and the cheap "everyone finished?" check they share."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SearchOutput:
    """N-best token sequences for a batch of prompts.

    Attributes:
        sequences: Generated ids ``(B, R, T)`` (prompt excluded, end-of-sequence token included),
            padded with the pad id after each sequence's end; R is ``num_return_sequences``.
        lengths: Number of generated tokens of each sequence, ``(B, R)``; 0 marks a slot that no
            hypothesis could fill.
        scores: ``(B, R)`` sequence scores, best first. Beam search: the sum of the processed
            log-probabilities divided by ``length ** length_penalty`` (transformers' beam score).
            Greedy and sampling: the same formula over the model's unprocessed log-probabilities.
            ``-inf`` for an unfilled slot.
    """

    sequences: torch.Tensor
    lengths: torch.Tensor
    scores: torch.Tensor


class StopCheck:
    """Turns a per-step "all done" device flag into a Python bool without stalling the GPU.

    On CUDA the flag is copied to pinned memory asynchronously and read one step later, by which
    time the copy has long finished; the loop then runs at most one needless step, which never
    changes a result (finished rows only receive padding, closed beams accept no hypothesis).
    On the CPU the flag is read at once.
    """

    def __init__(self, device: torch.device) -> None:
        self.deferred = device.type == "cuda"
        self._pending: tuple[torch.Tensor, torch.cuda.Event] | None = None

    def __call__(self, done: torch.Tensor) -> bool:
        """Record this step's flag (0-dim bool tensor); return whether the loop may stop now."""
        if not self.deferred:
            return bool(done)
        host = torch.empty((), dtype=torch.bool, pin_memory=True)
        host.copy_(done, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        previous, self._pending = self._pending, (host, event)
        if previous is None:
            return False
        previous[1].synchronize()
        return bool(previous[0])
