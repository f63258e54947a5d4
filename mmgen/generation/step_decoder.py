"""Step-wise access to a transformers causal LM: prefill a prompt once, then one token per step.

:class:`StepDecoder` hides what differs between models and transformers versions (which forward
arguments exist, the cache object, legacy tuple caches) behind ``prefill`` / ``step`` /
``expand`` / ``advance``; the search algorithms only ever see next-token logits (``logits``). With
``use_cache=False`` it recomputes the whole sequence at every step, which is the reference the
cached path is tested against. :class:`~mmgen.generation.static.StaticStepDecoder` offers the same
interface over preallocated buffers.
"""

from __future__ import annotations

import torch
from torch import nn

from mmgen.generation.head import HeadPadding
from mmgen.transformers_glue import CAUSAL_SDPA, PREFIX, base_model, cache_argument, forward_params, returned_cache


class StepDecoder:
    """A causal LM decoding ``N`` rows in lockstep, with or without a KV cache.

    Args:
        decoder: Any transformers causal LM (possibly peft-wrapped) that accepts ``inputs_embeds``.
        use_cache: Keep ``past_key_values`` between steps (otherwise recompute everything).
        padding: The padded LM head's mode and copies (default: auto, copies kept by this object).
    """

    def __init__(self, decoder: nn.Module, use_cache: bool = True, padding: HeadPadding | None = None) -> None:
        self.decoder = decoder
        self.use_cache = use_cache
        self.padding = padding or HeadPadding()
        params = forward_params(decoder)
        self._takes_positions = "position_ids" in params
        self._takes_cache_position = "cache_position" in params  # transformers 4.x
        self._keep_arg = next((k for k in ("logits_to_keep", "num_logits_to_keep") if k in params), None)
        self._cache_arg = cache_argument(params)
        self.cache = None
        self._embeds: torch.Tensor | None = None  # (N, L, D): the whole sequence, uncached mode only
        self._mask: torch.Tensor | None = None  # (N, L0 + steps) attention mask buffer, None: no padding
        self._first_pos: torch.Tensor | None = None  # (N, 1) position of the first generated token
        self._full_prefix = 0  # leading prompt positions that attend both ways (a prefix LM)
        self._length = 0  # tokens seen so far (prompt included)
        self._prompt_length = 0
        self.logits: torch.Tensor | None = None  # (N, V) next-token logits after the latest call

    @property
    def prompt_mask(self) -> torch.Tensor | None:
        """``(N, L0)`` attention mask of the prompt (zeros on left padding), None when nothing is padded."""
        return None if self._mask is None else self._mask[:, : self._prompt_length]

    @property
    def first_positions(self) -> torch.Tensor | None:
        """``(N, 1)`` position id of the first generated token of each row."""
        return self._first_pos

    def _run(self, inputs: dict, positions: torch.Tensor, past: int, refresh: bool = False) -> torch.Tensor:
        """One forward over ``inputs`` (``inputs_embeds`` (N, L, D)) after ``past`` cached positions;
        returns the last position's logits (N, V). ``refresh``: recopy the padded LM head's weight."""
        new = positions.shape[1]
        kwargs = {**inputs, "use_cache": self.use_cache, "return_dict": True}
        if self.use_cache:
            kwargs[self._cache_arg] = self.cache
        if self._mask is not None:
            kwargs["attention_mask"] = self._mask[:, : past + new]
        if self._takes_positions:
            kwargs["position_ids"] = positions
        if self._takes_cache_position:
            kwargs["cache_position"] = torch.arange(past, past + new, device=positions.device)
        if self._keep_arg is not None:
            kwargs[self._keep_arg] = 1
        if self._full_prefix and past < self._full_prefix:  # later positions are causal anyway
            kwargs[PREFIX] = self._full_prefix
        with self.padding(self.decoder, refresh=refresh):  # an aligned LM-head matmul (same logits)
            out = self.decoder(**kwargs)
        if self.use_cache:
            self.cache = returned_cache(out)
            if isinstance(self.cache, tuple):  # legacy format of old transformers releases
                from transformers import DynamicCache

                self.cache = DynamicCache.from_legacy_cache(self.cache)
        return out.logits[:, -1, :]

    def prefill(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None,
        max_new_tokens: int,
        full_prefix: int = 0,
    ) -> torch.Tensor:
        """Run the prompt and return the logits for the first generated token.

        Args:
            inputs_embeds: Prompt embeddings, ``(N, L0, D)``.
            attention_mask: ``(N, L0)`` with zeros on (left) padding, or None when nothing is padded.
            max_new_tokens: Upper bound on the number of ``step`` calls (sizes the mask buffer).
            full_prefix: The first this many positions attend to each other both ways (mmgen's attention only).

        Returns:
            Next-token logits, ``(N, V)``, in the model's dtype.
        """
        n, length, _ = inputs_embeds.shape
        device = inputs_embeds.device
        if full_prefix and base_model(self.decoder).config._attn_implementation != CAUSAL_SDPA:
            raise ValueError("full_prefix needs the decoder's attention to be mmgen's (attn_implementation mmgen_sdpa)")
        self._full_prefix = full_prefix
        self.cache, self._length, self._prompt_length = None, length, length
        if attention_mask is None:
            self._mask = None
            positions = torch.arange(length, device=device).expand(n, length)  # (N, L0)
            self._first_pos = torch.full((n, 1), length, dtype=torch.long, device=device)
        else:
            mask = attention_mask.to(device=device, dtype=torch.long)
            self._mask = torch.ones(n, length + max_new_tokens, dtype=torch.long, device=device)
            self._mask[:, :length] = mask
            positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)  # (N, L0), padding skipped
            self._first_pos = mask.sum(-1, keepdim=True)  # (N, 1)
        if not self.use_cache:
            self._embeds = inputs_embeds
        self.logits = self._run({"inputs_embeds": inputs_embeds}, positions, 0, refresh=True)
        return self.logits

    def expand(self, repeats: int) -> None:
        """Give every row ``repeats`` consecutive copies (the beams or samples of one prompt)."""
        if repeats > 1:
            rows = torch.arange(self.logits.shape[0], device=self.logits.device).repeat_interleave(repeats)
            self.reorder(rows)
            self.logits = self.logits.index_select(0, rows)

    def advance(self, rows: torch.Tensor | None, tokens: torch.Tensor) -> None:
        """Reorder the rows (``rows`` (N,), None keeps them), append ``tokens`` (N,); updates ``logits``."""
        if rows is not None:
            self.reorder(rows)
        self.logits = self.step(tokens)

    def reorder(self, rows: torch.Tensor) -> None:
        """Make row ``i`` continue from former row ``rows[i]`` (beam reordering, or expansion N -> N')."""
        if self.use_cache:
            self.cache.reorder_cache(rows)
        else:
            self._embeds = self._embeds.index_select(0, rows)
        if self._mask is not None:
            self._mask = self._mask.index_select(0, rows)
        self._first_pos = self._first_pos.index_select(0, rows)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Append one token per row and return the logits for the next one.

        Args:
            tokens: ``(N,)`` token ids.

        Returns:
            Next-token logits, ``(N, V)``.
        """
        generated = self._length - self._prompt_length
        self._length += 1
        # embeddings rather than ids: the same path as the prompt, and no padding heuristics on ids
        new = self.decoder.get_input_embeddings()(tokens[:, None])  # (N, 1, D)
        if self.use_cache:
            return self._run({"inputs_embeds": new}, self._first_pos + generated, self._length - 1)
        self._embeds = torch.cat([self._embeds, new.to(self._embeds.dtype)], dim=1)  # (N, L, D)
        if self._mask is None:
            positions = torch.arange(self._length, device=tokens.device).expand(tokens.shape[0], -1)
        else:
            mask = self._mask[:, : self._length]
            positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
        return self._run({"inputs_embeds": self._embeds}, positions, 0)
