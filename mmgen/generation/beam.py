"""Batched beam search over a :class:`~mmgen.generation.decoder.StepDecoder`.

All images and beams advance together as ``B * K`` rows; nothing loops over images or beams.
Semantics follow transformers' beam search for decoder-only models fed ``inputs_embeds``:

* each step keeps the best ``C = max(2, E + 1) * K`` continuations of every image (E: number of
  end-of-sequence ids), so at least K of them are unfinished;
* a continuation ending in EOS (or reaching ``max_new_tokens``) becomes a finished hypothesis only
  if it ranks among the first K of the C, with score ``sum_logprobs / new_len ** length_penalty``,
  where ``new_len`` counts the generated tokens, EOS included (the prompt is not counted);
* an image keeps K finished hypotheses, the best ones so far; it stops accepting new ones when no
  running beam can beat its worst (``early_stopping=False``: judged at the current length;
  ``"never"``: at ``max_new_tokens`` when the penalty is positive, which makes the bound exact), or
  with ``early_stopping=True`` as soon as it holds K hypotheses;
* the loop ends when no image can improve, or (``early_stopping=True``) when every image is full.
"""

from __future__ import annotations

import torch

from mmgen.config import GenerationConfig
from mmgen.generation.decoder import StepDecoder
from mmgen.generation.outputs import SearchOutput, StopCheck
from mmgen.generation.processors import NEG_INF, process, warp_for_sampling

UNFILLED = -1.0e9  # score of an empty hypothesis slot: beaten by any real hypothesis, beats a forbidden one


def _select(
    total: torch.Tensor, c: int, do_sample: bool, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick ``c`` continuations per image from ``total`` (B, K*V): the best, or sampled without replacement."""
    if not do_sample:
        return torch.topk(total, c, dim=-1)  # sorted, best first
    # Gumbel-top-k: sampling c entries without replacement from softmax(total)
    u = torch.rand(total.shape, generator=generator, device=total.device).clamp_(min=1e-20)
    idx = torch.topk(total - torch.log(-torch.log(u)), c, dim=-1).indices  # (B, C), in sampling order
    return total.gather(1, idx), idx


class _Finished:
    """The K best finished hypotheses of every image, kept sorted (best first)."""

    def __init__(self, b: int, k: int, t: int, pad_id: int, device: torch.device) -> None:
        self.tokens = torch.full((b, k, t), pad_id, dtype=torch.long, device=device)
        self.scores = torch.full((b, k), UNFILLED, device=device)
        self.lengths = torch.zeros(b, k, dtype=torch.long, device=device)
        self.filled = torch.zeros(b, k, dtype=torch.bool, device=device)

    def merge(self, tokens: torch.Tensor, scores: torch.Tensor, new: torch.Tensor, length: int) -> None:
        """Offer candidates ``tokens`` (B, C, T) with penalised ``scores`` (B, C) where ``new`` (B, C) holds."""
        b, k = self.scores.shape
        scores = scores.masked_fill(~new, NEG_INF)
        merged = torch.cat([self.scores, scores], dim=1)  # (B, K+C)
        self.scores, pick = torch.topk(merged, k, dim=1)  # (B, K)
        all_tokens = torch.cat([self.tokens, tokens], dim=1)  # (B, K+C, T)
        self.tokens = all_tokens.gather(1, pick[..., None].expand(-1, -1, all_tokens.shape[-1]))
        self.lengths = torch.cat([self.lengths, torch.full_like(new, length, dtype=torch.long)], 1).gather(1, pick)
        self.filled = torch.cat([self.filled, new], dim=1).gather(1, pick)

    def best(self, r: int) -> SearchOutput:
        """The ``r`` best hypotheses per image, trimmed to the longest one."""
        scores = self.scores[:, :r].masked_fill(~self.filled[:, :r], NEG_INF)
        lengths = self.lengths[:, :r].masked_fill(~self.filled[:, :r], 0)
        longest = int(lengths.max()) if lengths.numel() else 0
        return SearchOutput(self.tokens[:, :r, :longest], lengths, scores)


def _can_improve(running: torch.Tensor, fin: _Finished, generated: int, gen: GenerationConfig) -> torch.Tensor:
    """(B, 1): whether the best running beam might still beat an image's worst finished hypothesis."""
    if gen.early_stopping == "never" and gen.length_penalty > 0:
        length = gen.max_new_tokens  # a positive penalty favours length: bound at the longest
    else:
        length = generated
    best = running[:, :1] / float(length) ** gen.length_penalty  # (B, 1), running is sorted
    worst = fin.scores.min(dim=1, keepdim=True).values  # (B, 1)
    worst = torch.where(fin.filled, worst, UNFILLED)  # (B, K): an empty slot can always be filled
    return (best > worst).any(dim=1, keepdim=True)


def beam_search(
    dec: StepDecoder,
    logits: torch.Tensor,
    gen: GenerationConfig,
    eos_ids: torch.Tensor,
    pad_id: int,
    generator: torch.Generator | None = None,
) -> SearchOutput:
    """Beam search (or beam sampling with ``gen.do_sample``) from prefilled prompts.

    Args:
        dec: Decoder holding one prefilled row per image.
        logits: Next-token logits after the prompt, ``(B, V)``.
        gen: ``num_beams``, ``max_new_tokens``, ``length_penalty``, ``early_stopping`` and processors.
        eos_ids: End-of-sequence ids, ``(E,)``.
        pad_id: Filler after a sequence's end.
        generator: Random source for beam sampling.

    Returns:
        The ``num_return_sequences`` best finished hypotheses of every image.
    """
    b, v = logits.shape
    k, t_max, device = gen.num_beams, gen.max_new_tokens, logits.device
    c = max(2, eos_ids.numel() + 1) * k
    first_k = torch.arange(c, device=device) < k  # (C,) only these may finish at a step
    image_row = torch.arange(b, device=device)[:, None] * k  # (B, 1) first flat row of each image

    dec.reorder(torch.arange(b, device=device).repeat_interleave(k))  # each prefix shared by its K beams
    logits = logits.repeat_interleave(k, dim=0)  # (B*K, V)
    running = torch.full((b, k), NEG_INF, device=device)
    running[:, 0] = 0.0  # the K copies are identical: only the first one is live at the start
    tokens = torch.full((b, k, t_max), pad_id, dtype=torch.long, device=device)  # running beams
    fin = _Finished(b, k, t_max, pad_id, device)
    is_open = torch.ones(b, 1, dtype=torch.bool, device=device)  # image may still accept hypotheses
    stop = StopCheck(device)

    for t in range(t_max):
        logp = torch.log_softmax(logits.float(), dim=-1)  # (B*K, V), fp32
        logp = process(logp, tokens.view(b * k, t_max)[:, :t], gen, eos_ids)
        if gen.do_sample:
            logp = warp_for_sampling(logp, gen, keep=eos_ids.numel() + 1)
        total = (logp.view(b, k, v) + running[..., None]).view(b, k * v)  # (B, K*V)
        cand_scores, cand = _select(total, c, gen.do_sample, generator)  # (B, C)
        src, tok = cand // v, cand % v  # (B, C) source beam, new token
        cand_tokens = tokens.gather(1, src[..., None].expand(b, c, t_max))  # (B, C, T)
        cand_tokens[:, :, t] = tok
        ends = torch.isin(tok, eos_ids) | (t + 1 == t_max)  # (B, C)

        # the K best unfinished continuations run on
        running, keep = torch.topk(cand_scores.masked_fill(ends, NEG_INF), k, dim=1)  # (B, K)
        tokens = cand_tokens.gather(1, keep[..., None].expand(b, k, t_max))  # (B, K, T)
        rows = (image_row + src.gather(1, keep)).view(-1)  # (B*K,) cache row each beam continues

        # finished continuations among the first K compete for the image's K slots
        closed = ~is_open
        if gen.early_stopping is True:
            closed = closed | fin.filled.all(dim=1, keepdim=True)
        fin.merge(cand_tokens, cand_scores / float(t + 1) ** gen.length_penalty, ends & first_k & ~closed, t + 1)
        if t + 1 == t_max:
            break

        is_open = is_open & _can_improve(running, fin, t + 1, gen)
        done = ~is_open.any()
        if gen.early_stopping is True:
            done = done | fin.filled.all()
        if stop(done):
            break
        dec.reorder(rows)
        logits = dec.step(tokens[:, :, t].reshape(-1))

    return fin.best(gen.num_return_sequences)
