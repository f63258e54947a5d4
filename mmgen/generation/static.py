"""Static KV cache: every decoding step over buffers of one fixed shape, written in place.

:class:`StaticStepDecoder` has the interface of :class:`~mmgen.generation.step_decoder.StepDecoder`
(``prefill`` / ``expand`` / ``advance`` / ``logits``) over preallocated keys and values. The ``K``
rows of one prompt (its beams or samples) share a single buffer row: the prompt's ``L0`` positions
are stored once, followed by ``T x K`` slots, one per generated step and row::

    [ prompt (L0) | step 0: rows 0..K-1 | step 1: rows 0..K-1 | ... | step T-1 ]

A step feeds the K newest tokens of a prompt as K queries of that buffer row, writes their keys
and values into the step's K slots, and lets row ``j`` attend to the prompt and to the slots of its
own ancestors only (a 4-D attention mask). Beam reordering therefore moves no key or value: it
gathers the small ancestry table ``(B, K, T)``, and attention reads the prompt once per prompt
rather than once per beam. Positions, mask and write slots are device tensors, so a step never
reads a value back to the host and can be captured in a CUDA graph.
"""

from __future__ import annotations

import contextlib
import weakref

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from mmgen.config import GenerationConfig, sdpa_names
from mmgen.generation.head import HeadPadding
from mmgen.generation.step_decoder import StepDecoder
from mmgen.transformers_glue import CAUSAL_SDPA, SDPA_NAMES, base_model, cache_argument, forward_params

try:
    from transformers.cache_utils import Cache, CacheLayerMixin, DynamicLayer
except ImportError:  # transformers before cache layers: only the dynamic path
    Cache = CacheLayerMixin = DynamicLayer = object

ATTENTION = ("sdpa", CAUSAL_SDPA, "eager")  # implementations that take a 4-D mask over the whole buffer


def parse_sdpa_backends(text: str) -> list[SDPBackend] | None:
    """``"efficient,math"`` -> ``[EFFICIENT_ATTENTION, MATH]``, in priority order; MATH is appended
    when missing (it runs everywhere). ``"default"`` or ``""``: None, torch's own choice."""
    names = sdpa_names(text)
    if not names or names == ["default"]:
        return None
    unknown = [name for name in names if name not in SDPA_NAMES]
    if unknown:
        raise ValueError(f"unknown SDPA backend(s) {unknown}: use {', '.join(SDPA_NAMES)} or default")
    backends = list(dict.fromkeys(SDPA_NAMES[name] for name in names))
    return backends if SDPBackend.MATH in backends else [*backends, SDPBackend.MATH]


DEFAULT_DECODE_SDPA = GenerationConfig.decode_sdpa
"""Attention kernels tried, in this order, by the decoding steps on CUDA (``GenerationConfig.decode_sdpa``).
With K queries per prompt against a short masked buffer, cuDNN (torch's first pick) is several times slower
than the memory-efficient kernel. Graph capture records whichever kernel this selects."""


def decode_attention(device: torch.device, backends: list[SDPBackend] | None) -> contextlib.AbstractContextManager:
    """The SDPA backend choice of a decoding step: ``backends`` (from :func:`parse_sdpa_backends`; None: torch's
    choice) on CUDA, nothing else on other devices (the CPU keeps its default kernel, the one the dynamic path
    uses)."""
    if device.type != "cuda" or backends is None:
        return contextlib.nullcontext()
    return sdpa_kernel(backends, set_priority=True)


def static_cache_unsupported(decoder: nn.Module) -> str | None:
    """Why ``decoder`` cannot decode over a static cache, or None when it can."""
    if CacheLayerMixin is object:
        return "this transformers release has no cache layers"
    config = getattr(base_model(decoder), "config", None)
    if config is None:
        return "the decoder has no transformers config"
    if getattr(config, "is_encoder_decoder", False) or getattr(config, "add_cross_attention", False):
        return "cross-attention decoders are not supported"
    impl = getattr(config, "_attn_implementation", None)
    if impl not in ATTENTION:
        return f"attention implementation {impl!r} is not one of {', '.join(ATTENTION)}"
    kinds = getattr(config, "layer_types", None)
    if kinds is not None:
        if any(kind != "full_attention" for kind in kinds):
            return "only full-attention layers are supported"
    elif getattr(config, "sliding_window", None) is not None or getattr(config, "attention_chunk_size", None):
        return "sliding-window attention is not supported"
    return None


class _StaticLayer(CacheLayerMixin):
    """One decoder layer's keys and values: views ``(B, H, L, d)`` of the shared buffer (L >= L0 + T*K)."""

    is_compileable = True
    is_sliding = False

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, write_pos: torch.Tensor) -> None:
        super().__init__()
        self.keys, self.values = keys, values
        self.write_pos = write_pos  # (K,) long: the slots the current step writes
        self.dtype, self.device = keys.dtype, keys.device
        self.is_initialized = True

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """Nothing to do: the buffers exist before the first step."""

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Write the step's ``(B, H, K, d)`` keys and values in place; return the whole buffers."""
        self.keys.index_copy_(2, self.write_pos, key_states)
        self.values.index_copy_(2, self.write_pos, value_states)
        return self.keys, self.values

    def get_mask_sizes(self, query_length: int, *args) -> tuple[int, int]:
        return self.keys.shape[2], 0

    def get_seq_length(self) -> int:
        # positions are always passed explicitly; report the buffer length rather than read the device
        return self.keys.shape[2]

    def get_max_length(self) -> int:
        return self.keys.shape[2]


class StaticStepDecoder:
    """A causal LM decoding ``B`` prompts x ``K`` rows over preallocated keys and values (fixed shapes).

    The prompt runs once per prompt with the ordinary dynamic cache; :meth:`expand` copies its keys
    and values into the buffers. Buffers are allocated at the first ``expand`` and reused by later
    calls with the same shapes (that is what lets a captured CUDA graph be replayed across batches).

    Args:
        decoder: A causal LM for which :func:`static_cache_unsupported` is None. Only a weak
            reference is kept, so the decoder can be freed while this object is cached.
        max_new_tokens: T, the number of generated steps the buffers hold.
        persistent_logits: Write every step's logits into one preallocated tensor (what a CUDA
            graph needs); False points ``logits`` at the forward's output instead (one copy of
            ``B*K x V`` values less per step).
        padding: The padded LM head's mode and copies (default: auto, copies kept by this object).
        sdpa: Attention kernels of the steps on CUDA, e.g. ``"efficient,math"`` (``"default"``: torch's choice).
    """

    def __init__(
        self,
        decoder: nn.Module,
        max_new_tokens: int,
        persistent_logits: bool = True,
        padding: HeadPadding | None = None,
        sdpa: str = DEFAULT_DECODE_SDPA,
    ) -> None:
        self._decoder = weakref.ref(decoder)
        self.padding = padding or HeadPadding()
        self.sdpa_backends = parse_sdpa_backends(sdpa)
        params = forward_params(decoder)
        self._keep_arg = next((k for k in ("logits_to_keep", "num_logits_to_keep") if k in params), None)
        self._takes_cache_position = "cache_position" in params
        self._cache_arg = cache_argument(params)
        self.max_new_tokens = max_new_tokens
        self.persistent_logits = persistent_logits
        self.kv: torch.Tensor | None = None  # (layers, 2, B, H, L, d), L >= L0 + T*K
        self.logits: torch.Tensor | None = None  # (B*K, V) next-token logits (in place if persistent_logits)
        self._prompt: StepDecoder | None = None

    @property
    def decoder(self) -> nn.Module:
        decoder = self._decoder()
        if decoder is None:
            raise RuntimeError("the decoder of this static cache no longer exists")
        return decoder

    def prefill(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None,
        max_new_tokens: int,
        full_prefix: int = 0,
    ) -> torch.Tensor:
        """Run the prompt ``(B, L0, D)`` with a dynamic cache; returns next-token logits ``(B, V)``."""
        if max_new_tokens != self.max_new_tokens:
            raise ValueError(f"buffers hold {self.max_new_tokens} new tokens, not {max_new_tokens}")
        self._prompt = StepDecoder(self.decoder, padding=self.padding)
        return self._prompt.prefill(inputs_embeds, attention_mask, max_new_tokens, full_prefix=full_prefix)

    def _allocate(self, k: int, layers: list, logits: torch.Tensor) -> None:
        """Buffers for ``K`` rows per prompt, shaped after the prompt's cache layers."""
        shapes = {(tuple(layer.keys.shape), tuple(layer.values.shape)) for layer in layers}
        if len(shapes) != 1 or any(type(layer) is not DynamicLayer for layer in layers):
            raise NotImplementedError("static cache: decoder layers must all hold full keys and values of one shape")
        (b, h, l0, d), _ = shapes.pop()
        t_max, device, dtype = self.max_new_tokens, logits.device, layers[0].keys.dtype
        self.prompt_length, self.rows_per_prompt = l0, k
        length = -(-(l0 + t_max * k) // 16) * 16  # a multiple of 16, which attention kernels want for the mask
        self.kv = torch.zeros(len(layers), 2, b, h, length, d, dtype=dtype, device=device)
        self.t = torch.zeros((), dtype=torch.long, device=device)  # steps appended so far
        self.write_pos = torch.zeros(k, dtype=torch.long, device=device)  # (K,) slots of the current step
        self.row_ids = torch.arange(k, device=device)  # (K,)
        self.step_ids = torch.arange(t_max, device=device)  # (T,)
        self.first_row = torch.arange(b, device=device)[:, None] * k  # (B, 1) flat index of each prompt's row 0
        self.ancestry = torch.zeros(b, k, t_max, dtype=torch.long, device=device)  # row whose slot step s used
        self.prompt_valid = torch.zeros(b, 1, l0, dtype=torch.bool, device=device)
        self.first_pos = torch.zeros(b, 1, dtype=torch.long, device=device)
        if self.persistent_logits:
            self.logits = torch.zeros(b * k, logits.shape[-1], dtype=logits.dtype, device=device)
        self._zero = torch.zeros((), dtype=dtype, device=device)
        self._unused = torch.zeros(b, k, length - l0 - t_max * k, dtype=torch.bool, device=device)  # padding slots
        views = [_StaticLayer(self.kv[i, 0], self.kv[i, 1], self.write_pos) for i in range(len(layers))]
        self.cache = Cache(layers=views)

    def expand(self, repeats: int) -> None:
        """Copy the prefilled prompts into the buffers, to be continued by ``repeats`` rows each."""
        prompt, self._prompt = self._prompt, None
        layers = prompt.cache.layers
        b, _, l0, _ = layers[0].keys.shape
        if self.kv is None:
            self._allocate(repeats, layers, prompt.logits)
        if self.kv.shape[2] != b or self.rows_per_prompt != repeats or self.prompt_length != l0:
            raise ValueError(f"buffers are for {self.kv.shape[2]} x {self.rows_per_prompt} rows and {l0} prompt tokens")
        for i, layer in enumerate(layers):
            self.kv[i, 0, :, :, :l0].copy_(layer.keys)
            self.kv[i, 1, :, :, :l0].copy_(layer.values)
        mask = prompt.prompt_mask
        if mask is None:
            self.prompt_valid.fill_(True)
        else:
            self.prompt_valid.copy_(mask.bool()[:, None, :])
        self.first_pos.copy_(prompt.first_positions)
        self._set_logits(prompt.logits.repeat_interleave(repeats, dim=0))
        self.ancestry.copy_(self.row_ids[:, None].expand_as(self.ancestry[0]))  # samples never move
        self.t.zero_()

    def _mask(self) -> torch.Tensor:
        """Additive mask ``(B, 1, K, L)``: row j sees the prompt and the slots of its ancestors so far."""
        b, k, t_max = self.ancestry.shape
        mine = self.ancestry[..., None] == self.row_ids  # (B, K, T, K): slot (s, i) is on row j's path
        mine &= (self.step_ids <= self.t)[:, None]  # only the steps written so far
        allowed = torch.cat([self.prompt_valid.expand(b, k, -1), mine.view(b, k, t_max * k), self._unused], dim=2)
        # additive rather than boolean: what eager attention needs, and sdpa takes it without a conversion per layer
        return torch.where(allowed, self._zero, torch.finfo(self._zero.dtype).min)[:, None]

    def advance(self, rows: torch.Tensor | None, tokens: torch.Tensor) -> None:
        """Reorder the rows, append one token per row and write the next-token logits to ``logits``.

        Args:
            rows: ``(B*K,)`` flat row each row continues from, always a row of the same prompt (beam
                reordering); None keeps the rows in place.
            tokens: ``(B*K,)`` token ids.
        """
        b, k, t_max = self.ancestry.shape
        if rows is not None:
            parent = rows.view(b, k) - self.first_row  # (B, K) row within the prompt
            self.ancestry.copy_(self.ancestry.gather(1, parent[..., None].expand(b, k, t_max)))
        self.ancestry.scatter_(2, self.t.expand(b, k, 1), self.row_ids.expand(b, k)[..., None])
        self.write_pos.copy_(self.prompt_length + self.t * k + self.row_ids)
        decoder = self.decoder
        kwargs = {
            "inputs_embeds": decoder.get_input_embeddings()(tokens.view(b, k)),  # (B, K, D)
            "attention_mask": self._mask(),
            "position_ids": (self.first_pos + self.t).expand(b, k),  # (B, K): the rows of a prompt are aligned
            self._cache_arg: self.cache,
            "use_cache": True,
            "return_dict": True,
        }
        if self._takes_cache_position:
            kwargs["cache_position"] = self.write_pos
        if self._keep_arg is not None:
            kwargs[self._keep_arg] = k
        with decode_attention(self.logits.device, self.sdpa_backends), self.padding(decoder):
            logits = decoder(**kwargs).logits  # (B, K, V), maybe a view of (B, K, V') (padded head)
        self._set_logits(logits.reshape(b * k, -1))
        self.t += 1

    def _set_logits(self, logits: torch.Tensor) -> None:
        """The next-token logits ``(B*K, V)``: copied into ``logits`` when it must stay in place."""
        if self.persistent_logits:
            self.logits.copy_(logits)
        else:
            self.logits = logits
