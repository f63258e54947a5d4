"""Attention kernels: SDPA backends chosen by name, and the decoder's causal SDPA implementation.

transformers materialises a ``(B, 1, L, L)`` causal mask whenever it cannot prove, at trace time, that
the plain causal mask suffices; under ``torch.compile`` it never can, because the position ids might
describe packed sequences. SDPA then gets an explicit mask and cannot use the flash kernel. mmgen's
callers know better: a right-padded training batch needs no mask at all. :data:`CAUSAL_SDPA` is
transformers' own SDPA attention plus one keyword, :data:`UNPADDED`: a forward called with
``mmgen_unpadded=True`` drops the mask and attends with ``is_causal`` (flash-eligible). Without the
keyword it is exactly 'sdpa', so generation, padded batches and ``generate`` are unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

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

        def causal_sdpa(module, query, key, value, attention_mask, mmgen_unpadded: bool = False, **kwargs):
            return sdpa(module, query, key, value, None if mmgen_unpadded else attention_mask, **kwargs)

        AttentionInterface.register(CAUSAL_SDPA, causal_sdpa)
    if CAUSAL_SDPA not in ALL_MASK_ATTENTION_FUNCTIONS:
        AttentionMaskInterface.register(CAUSAL_SDPA, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
    return CAUSAL_SDPA
