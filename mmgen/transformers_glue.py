"""How mmgen reaches into a transformers causal LM, in one place: the base model under a peft wrapper
(:func:`base_model`), the arguments its ``forward`` takes and the name of its KV cache there and in its output
(:func:`forward_params`, :func:`cache_argument`, :func:`returned_cache`: they differ between transformers
releases), SDPA kernels chosen by name (:func:`sdpa_context`), and mmgen's own attention implementation
(:func:`register_causal_sdpa`). Torch only at import: a light import.

transformers materialises a ``(B, 1, L, L)`` causal mask whenever it cannot prove, at trace time, that
the plain causal mask suffices; under ``torch.compile`` it never can, because the position ids might
describe packed sequences. SDPA then gets an explicit mask and cannot use the flash kernel. mmgen's
callers know better: a right-padded training batch needs no mask at all. :data:`CAUSAL_SDPA` is
transformers' own SDPA attention plus one keyword, :data:`UNPADDED`: a forward called with
``mmgen_unpadded=True`` drops the mask and attends with ``is_causal`` (flash-eligible). Without the
keyword it is exactly 'sdpa', so generation, padded batches and ``generate`` are unchanged.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

SDPA_NAMES = {
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "math": SDPBackend.MATH,
}
CAUSAL_SDPA = "mmgen_sdpa"
"""The transformers attention implementation that mmgen's decoders use in place of 'sdpa'."""
UNPADDED = "mmgen_unpadded"
"""Forward keyword of :data:`CAUSAL_SDPA`: True when no query attends to padding (causal mask only)."""
PREFIX = "mmgen_prefix"
"""Forward keyword of :data:`CAUSAL_SDPA`: the first this many positions (the image) attend to each other in
both directions; every later position stays causal (a prefix LM)."""


def base_model(decoder: nn.Module) -> nn.Module:
    """The underlying transformers model (unwraps a peft wrapper)."""
    return decoder.get_base_model() if hasattr(decoder, "get_base_model") else decoder


def forward_params(decoder: nn.Module) -> set[str]:
    """Names accepted by the causal LM's ``forward`` (looking through a peft wrapper)."""
    return set(inspect.signature(base_model(decoder).forward).parameters)


def cache_argument(params: set[str]) -> str:
    """The name under which ``forward`` takes the KV cache: ``cache`` from transformers 5.24 on (which
    deprecates ``past_key_values``, to be removed in 5.40), ``past_key_values`` before."""
    return "cache" if "cache" in params else "past_key_values"


def returned_cache(out):
    """The KV cache of a forward's output, whichever name this transformers release gives it."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else getattr(out, "past_key_values", None)


def sdpa_context(names: Sequence[str], set_priority: bool = False):
    """Restrict ``F.scaled_dot_product_attention`` to the named kernels (in this order with ``set_priority``)."""
    unknown = [n for n in names if n not in SDPA_NAMES]
    if unknown:
        raise ValueError(f"unknown attention kernel(s) {unknown}: use {', '.join(SDPA_NAMES)}")
    return sdpa_kernel([SDPA_NAMES[n] for n in names], set_priority=set_priority)


def register_causal_sdpa() -> str:
    """Register :data:`CAUSAL_SDPA` with transformers (attention and mask functions); returns its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if CAUSAL_SDPA not in ALL_ATTENTION_FUNCTIONS:
        sdpa = ALL_ATTENTION_FUNCTIONS["sdpa"]

        def causal_sdpa(
            module, query, key, value, attention_mask, mmgen_unpadded: bool = False, mmgen_prefix: int = 0, **kwargs
        ):
            mask = None if mmgen_unpadded else attention_mask
            if mmgen_prefix:
                mask = prefix_lm_mask(query.shape[2], key.shape[2], mmgen_prefix, mask, query.device)
            return sdpa(module, query, key, value, mask, **kwargs)

        AttentionInterface.register(CAUSAL_SDPA, causal_sdpa)
    if CAUSAL_SDPA not in ALL_MASK_ATTENTION_FUNCTIONS:
        AttentionMaskInterface.register(CAUSAL_SDPA, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
    return CAUSAL_SDPA


def prefix_lm_mask(q_len: int, k_len: int, prefix: int, mask: torch.Tensor | None, device) -> torch.Tensor:
    """The attention mask of a prefix LM: causal, except that the first ``prefix`` positions see each other.

    Args:
        q_len: Queries, the last ``q_len`` of the ``k_len`` positions (a cached decoding step has one).
        k_len: Keys.
        prefix: Positions that attend bidirectionally among themselves.
        mask: The mask transformers built (boolean, True = attend, or additive), (B, 1, q, k); None for
            causal attention without padding.

    Returns:
        A boolean ``(1, 1, q, k)`` mask, or ``mask`` with the prefix block opened.
    """
    i = torch.arange(k_len - q_len, k_len, device=device)[:, None]  # (q, 1) absolute query positions
    j = torch.arange(k_len, device=device)[None, :]  # (1, k)
    block = (i < prefix) & (j < prefix)  # (q, k)
    if mask is None:
        return ((j <= i) | block)[None, None]
    if mask.dtype == torch.bool:
        return mask | block
    return mask.masked_fill(block, 0.0)
