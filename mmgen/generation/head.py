"""Decoding logits through a copy of the LM head padded to a multiple of 64 tokens.

GPT-2's vocabulary (50257) is not a multiple of 8, and the LM-head matmul
``(N, D) @ (D, V)`` then falls back to a slow misaligned GEMM on the GPU; on the CPU the
misaligned output rows cost 5-30% more (fp32, 40-160 rows, one thread). While decoding, the
head's ``forward`` is swapped for one that multiplies by a zero-padded copy of the weight
``(V', D)``, ``V' = ceil(V / 64) * 64``, and returns the first V columns (a strided view). The rest
of the causal LM's forward (logit scaling or soft-capping, peft wrappers, ``logits_to_keep``) runs
unchanged, so the logits are those of the model.

The fast path is only taken when the output embedding is a plain bias-free ``nn.Linear`` holding
a dense floating-point weight, with no ``forward`` of its own already patched in (accelerate hooks);
otherwise the model runs as is. The padded copy is kept outside the module (no parameter or buffer,
``state_dict`` is unaffected), one per head, dtype and device, and is refreshed *in place* whenever
the weight's address or version counter changes, and at every prompt (prefill): a CUDA graph
captured over it stays valid after an optimizer step, since every search refreshes it in its eager
prefill before any replay.

``GenerationConfig.padded_head`` (true, false, null for auto) chooses: auto pads on CUDA and on the CPU
when the vocabulary is not already a multiple of 64. The padded copies live in a dictionary owned by the
caller (:class:`~mmgen.generation.graphs.DecodeCache`), not in this module.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from mmgen.transformers_glue import base_model

PAD_TO = 64  # rows of the padded weight: a multiple of this
# head -> {(dtype, device, shape): [padded weight (V', D), (data_ptr, version) it was copied from]}
PaddedCopies = weakref.WeakKeyDictionary  # [nn.Linear, dict[tuple, list]]


def plain_head(decoder: nn.Module) -> nn.Linear | None:
    """The decoder's output projection if it is a plain bias-free ``nn.Linear`` with a dense weight, else None."""
    try:
        head = base_model(decoder).get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return None
    if type(head) is not nn.Linear or head.bias is not None or "forward" in vars(head):
        return None  # subclasses (quantized, LoRA) and patched modules keep their own forward
    weight = head.weight
    if type(weight) not in (torch.Tensor, nn.Parameter) or not weight.is_floating_point() or weight.is_meta:
        return None  # sharded (DTensor), quantized or offloaded weights
    if tuple(weight.shape) != (head.out_features, head.in_features):
        return None  # e.g. a flattened, sharded parameter
    return head


def wants_padding(head: nn.Linear, mode: bool | None = None) -> bool:
    """Whether ``mode`` (True, False, None for auto) asks for the padded head for this one."""
    if mode is not None:
        return mode
    return head.weight.device.type in ("cuda", "cpu") and head.out_features % PAD_TO != 0


def _stamp(weight: torch.Tensor) -> tuple[int, int | None]:
    """(address, version counter) of the weight; inference tensors have no version counter (None)."""
    try:
        version = weight._version
    except RuntimeError:
        version = None
    return weight.data_ptr(), version


def padded_weight(head: nn.Linear, refresh: bool = False, copies: PaddedCopies | None = None) -> torch.Tensor:
    """``(V', D)`` copy of ``head.weight`` followed by zero rows, V' a multiple of :data:`PAD_TO`.

    The same tensor is returned for the same head, dtype, device and shape; its first V rows are
    copied again (in place) when the weight has moved or been modified since the last call (its
    version counter; edits through ``weight.data`` escape it), or always with ``refresh``. The copies
    are kept in ``copies`` (a weak dictionary keyed by head; None: a new one, nothing kept).
    """
    v, d = head.weight.shape
    entries = (PaddedCopies() if copies is None else copies).setdefault(head, {})
    key = (head.weight.dtype, head.weight.device, (v, d))
    stamp = _stamp(head.weight)
    # a normal tensor even inside inference_mode, so that it can be refreshed outside of it too
    with torch.inference_mode(False), torch.no_grad():
        weight = head.weight.detach()  # (V, D)
        if key not in entries:
            rows = -(-v // PAD_TO) * PAD_TO
            entries[key] = [torch.zeros(rows, d, dtype=weight.dtype, device=weight.device), None]
        entry = entries[key]
        if refresh or entry[1] != stamp:
            entry[0][:v].copy_(weight)
            entry[1] = stamp
    return entry[0]


@contextlib.contextmanager
def padded_logits(
    decoder: nn.Module, mode: bool | None = None, refresh: bool = False, copies: PaddedCopies | None = None
) -> Iterator[bool]:
    """Within the block, the decoder's LM head multiplies by its padded weight (when eligible).

    Args:
        decoder: A causal LM, possibly peft-wrapped.
        mode: Pad (True), do not (False), or auto (None): ``GenerationConfig.padded_head``.
        refresh: Copy the weight into the padded one even if it looks unchanged (done once per
            search, at the prompt, outside any CUDA graph).
        copies: Where the padded weights are kept between calls (None: nowhere).

    Yields:
        Whether the padded head is in use.
    """
    head = plain_head(decoder)
    if head is None or not wants_padding(head, mode):
        yield False
        return
    weight, v = padded_weight(head, refresh, copies), head.out_features

    def forward(hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(hidden, weight)[..., :v]  # (..., D) -> (..., V'), then a view (..., V)

    head.forward = forward  # an instance attribute shadows nn.Linear.forward for this head only
    try:
        yield True
    finally:
        del head.forward


@dataclass
class HeadPadding:
    """How one decoding run pads the LM head: the mode and where the padded copies are kept.

    Attributes:
        mode: True, False or None for auto (``GenerationConfig.padded_head``).
        copies: The padded weights, reused by every step (by default this run's own; a
            :class:`~mmgen.generation.graphs.DecodeCache` passes its own to keep them between runs).
    """

    mode: bool | None = None
    copies: PaddedCopies = field(default_factory=PaddedCopies)

    def __call__(self, decoder: nn.Module, refresh: bool = False) -> contextlib.AbstractContextManager[bool]:
        """:func:`padded_logits` with these settings."""
        return padded_logits(decoder, self.mode, refresh, self.copies)
