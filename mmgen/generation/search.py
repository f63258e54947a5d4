"""Decoding entry point: greedy, sampling and beam search from prompt embeddings with a KV cache.

The prompt (image prefix tokens, then the embeddings of BOS and of an optional text prompt) is run
once per image; its cache is then shared by that image's beams or samples. Every step decodes all
rows of the batch together. Penalties, n-gram bans and the minimum length only look at generated
tokens, as transformers' ``generate`` does when given ``inputs_embeds`` alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mmgen.config import GenerationConfig
from mmgen.generation.beam import beam_search
from mmgen.generation.decoder import StepDecoder
from mmgen.generation.outputs import SearchOutput, StopCheck
from mmgen.generation.processors import process, warp_for_sampling


def _one_path(
    dec: StepDecoder,
    logits: torch.Tensor,
    gen: GenerationConfig,
    eos_ids: torch.Tensor,
    pad_id: int,
    generator: torch.Generator | None,
) -> SearchOutput:
    """Greedy decoding, or ``num_return_sequences`` independent samples per image."""
    b = logits.shape[0]
    r = gen.num_return_sequences if gen.do_sample else 1
    device, t_max = logits.device, gen.max_new_tokens
    if r > 1:
        dec.reorder(torch.arange(b, device=device).repeat_interleave(r))  # samples share the prefix
        logits = logits.repeat_interleave(r, dim=0)
    n = b * r
    tokens = torch.full((n, t_max), pad_id, dtype=torch.long, device=device)
    alive = torch.ones(n, dtype=torch.bool, device=device)
    lengths = torch.zeros(n, dtype=torch.long, device=device)
    logp_sum = torch.zeros(n, device=device)
    stop = StopCheck(device)

    for t in range(t_max):
        raw = logits.float()  # (N, V)
        scores = process(raw, tokens[:, :t], gen, eos_ids)
        if gen.do_sample:
            probs = torch.softmax(warp_for_sampling(scores, gen), dim=-1)
            nxt = torch.multinomial(probs, 1, generator=generator).squeeze(1)  # (N,)
        else:
            nxt = scores.argmax(dim=-1)  # (N,)
        nxt = torch.where(alive, nxt, pad_id)
        logp = torch.log_softmax(raw, dim=-1).gather(1, nxt[:, None]).squeeze(1)  # (N,)
        logp_sum += torch.where(alive, logp, 0.0)
        lengths += alive
        tokens[:, t] = nxt
        alive = alive & ~torch.isin(nxt, eos_ids)
        if t + 1 == t_max or stop(~alive.any()):
            break
        logits = dec.step(nxt)

    longest = int(lengths.max())
    scores = logp_sum / lengths.clamp(min=1).float() ** gen.length_penalty
    return SearchOutput(tokens[:, :longest].view(b, r, longest), lengths.view(b, r), scores.view(b, r))


@torch.inference_mode()
def search(
    decoder: nn.Module,
    inputs_embeds: torch.Tensor,
    gen: GenerationConfig,
    eos_token_id: int | Sequence[int],
    pad_token_id: int,
    attention_mask: torch.Tensor | None = None,
    *,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
) -> SearchOutput:
    """Generate continuations of prompt embeddings with a causal LM.

    Greedy when ``num_beams == 1`` and not ``do_sample``; sampling (temperature, top-k, top-p)
    when ``do_sample``; beam search when ``num_beams > 1`` (beam sampling with ``do_sample``).

    Args:
        decoder: A transformers causal LM (GPT-2, Llama-like, ...; peft-wrapped or not).
        inputs_embeds: Prompt embeddings ``(B, L0, D)`` in the decoder's dtype: image prefix, then
            the embeddings of BOS and of the optional text prompt.
        gen: Generation settings.
        eos_token_id: End-of-sequence id, or several.
        pad_token_id: Filler written after a sequence's end.
        attention_mask: ``(B, L0)``, zeros on left padding; None when no row is padded.
        generator: Random source for sampling; by default one seeded with ``gen.seed`` when set,
            else torch's global generator.
        use_cache: Reuse keys and values between steps (False recomputes everything; for tests).

    Returns:
        :class:`SearchOutput` with ``R = num_return_sequences`` sequences per prompt, best first.
    """
    if gen.num_beams > 1 and gen.num_return_sequences > gen.num_beams:
        raise ValueError(f"num_return_sequences ({gen.num_return_sequences}) cannot exceed num_beams ({gen.num_beams})")
    if gen.early_stopping not in (True, False, "never"):
        raise ValueError(f"early_stopping must be true, false or 'never', got {gen.early_stopping!r}")
    device = inputs_embeds.device
    eos = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    eos_ids = torch.tensor(eos, dtype=torch.long, device=device)
    if generator is None and gen.do_sample and gen.seed is not None:
        generator = torch.Generator(device=device).manual_seed(gen.seed)

    dec = StepDecoder(decoder, use_cache=use_cache)
    logits = dec.prefill(inputs_embeds, attention_mask, gen.max_new_tokens)  # (B, V)
    if gen.num_beams > 1:
        return beam_search(dec, logits, gen, eos_ids, pad_token_id, generator)
    return _one_path(dec, logits, gen, eos_ids, pad_token_id, generator)
