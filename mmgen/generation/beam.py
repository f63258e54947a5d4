"""Batched beam search, one fixed-shape :meth:`BeamState.update` per generated token.

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
from mmgen.generation.outputs import SearchOutput
from mmgen.generation.processors import NEG_INF, BadWords, is_eos, process, warp_for_sampling

UNFILLED = -1.0e9  # score of an empty hypothesis slot: beaten by any real hypothesis, beats a forbidden one


def best_continuations(
    logp: torch.Tensor, running: torch.Tensor, c: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``c`` best continuations of every image, as a top-``c`` over all its beams x tokens would give.

    Two stages: the top ``c`` tokens of each beam's row, then the top ``c`` of the ``K * c``
    gathered candidates. Adding a beam's score keeps its row's order, so every entry of the
    image's top ``c`` is among its row's top ``c``: the scores are exactly those of the flat
    top-k; among exactly equal scores the pick is as arbitrary as ``torch.topk``'s.

    Args:
        logp: Processed next-token log-probabilities, ``(B, K, V)``.
        running: Summed log-probabilities of the beams, ``(B, K)``.
        c: Number of continuations kept per image (``c <= K * V``).

    Returns:
        Scores ``(B, C)`` sorted best first, source beam ``(B, C)`` and token ``(B, C)``.
    """
    b, k, v = logp.shape
    per_row = min(c, v)
    top, tokens = torch.topk(logp, per_row, dim=-1)  # (B, K, c')
    total = (top + running[..., None]).view(b, k * per_row)  # (B, K*c')
    scores, pick = torch.topk(total, c, dim=-1)  # (B, C), sorted
    return scores, pick // per_row, tokens.view(b, k * per_row).gather(1, pick)


def _sample(total: torch.Tensor, c: int, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample ``c`` continuations per image from ``softmax(total)`` (B, K*V) without replacement."""
    u = torch.rand(total.shape, generator=generator, device=total.device).clamp_(min=1e-20)
    idx = torch.topk(total - torch.log(-torch.log(u)), c, dim=-1).indices  # (B, C), Gumbel-top-k, in sampling order
    return total.gather(1, idx), idx


class _Finished:
    """The K best finished hypotheses of every image, kept sorted (best first), updated in place."""

    def __init__(self, b: int, k: int, t: int, pad_id: int, device: torch.device) -> None:
        self.pad_id = pad_id
        self.tokens = torch.empty(b, k, t, dtype=torch.long, device=device)
        self.scores = torch.empty(b, k, device=device)
        self.lengths = torch.empty(b, k, dtype=torch.long, device=device)
        self.filled = torch.empty(b, k, dtype=torch.bool, device=device)
        self.reset()

    def reset(self) -> None:
        self.tokens.fill_(self.pad_id)
        self.scores.fill_(UNFILLED)
        self.lengths.zero_()
        self.filled.zero_()

    def merge(self, tokens: torch.Tensor, scores: torch.Tensor, new: torch.Tensor, length: torch.Tensor) -> None:
        """Offer candidates ``tokens`` (B, C, T) with penalised ``scores`` (B, C) where ``new`` (B, C) holds,
        all of ``length`` (0-dim) generated tokens."""
        scores = scores.masked_fill(~new, NEG_INF)
        merged = torch.cat([self.scores, scores], dim=1)  # (B, K+C)
        best, pick = torch.topk(merged, self.scores.shape[1], dim=1)  # (B, K)
        all_tokens = torch.cat([self.tokens, tokens], dim=1)  # (B, K+C, T)
        self.tokens.copy_(all_tokens.gather(1, pick[..., None].expand(-1, -1, all_tokens.shape[-1])))
        self.lengths.copy_(torch.cat([self.lengths, length.expand_as(new)], 1).gather(1, pick))
        self.filled.copy_(torch.cat([self.filled, new], dim=1).gather(1, pick))
        self.scores.copy_(best)

    def best(self, r: int) -> SearchOutput:
        """The ``r`` best hypotheses per image, trimmed to the longest one (new tensors)."""
        scores = self.scores[:, :r].masked_fill(~self.filled[:, :r], NEG_INF)
        lengths = self.lengths[:, :r].masked_fill(~self.filled[:, :r], 0)
        longest = int(lengths.max()) if lengths.numel() else 0
        return SearchOutput(self.tokens[:, :r, :longest].clone(), lengths, scores)


class BeamState:
    """Beam search over ``B`` images x ``K`` beams, one :meth:`update` per generated token.

    Every tensor has a fixed shape and is updated in place, and the step number ``t`` lives on the
    device, so :meth:`update` never reads a value back to the host (it can be captured in a CUDA
    graph and replayed). After an update, ``rows`` (B*K,) says which former row each beam continues
    and ``last`` (B*K,) is its newest token: what the decoder takes next. ``done`` is set once no
    image can improve.

    Args:
        b: Number of images.
        gen: ``num_beams``, ``max_new_tokens``, ``length_penalty``, ``early_stopping`` and processors.
        eos_ids: End-of-sequence ids, ``(E,)``.
        pad_id: Filler after a sequence's end.
        bad_words: Token sequences never to be generated.
    """

    def __init__(
        self, b: int, gen: GenerationConfig, eos_ids: torch.Tensor, pad_id: int, bad_words: BadWords | None = None
    ) -> None:
        k, t_max, device = gen.num_beams, gen.max_new_tokens, eos_ids.device
        self.bad_words = bad_words
        self.gen, self.eos_ids, self.pad_id = gen, eos_ids, pad_id
        self.c = max(2, eos_ids.numel() + 1) * k  # candidates kept per image and step
        self.first_k = torch.arange(self.c, device=device) < k  # (C,) only these may finish at a step
        self.image_row = torch.arange(b, device=device)[:, None] * k  # (B, 1) first flat row of each image
        # (T,) length penalty after t+1 tokens, as float(t + 1) ** length_penalty rounded to fp32
        self.penalty = torch.tensor([float(i + 1) ** gen.length_penalty for i in range(t_max)], device=device)
        self.generator: torch.Generator | None = None
        self.t = torch.zeros((), dtype=torch.long, device=device)
        self.running = torch.empty(b, k, device=device)  # summed log-probabilities of the running beams
        self.tokens = torch.empty(b, k, t_max, dtype=torch.long, device=device)  # running beams
        self.fin = _Finished(b, k, t_max, pad_id, device)
        self.is_open = torch.empty(b, 1, dtype=torch.bool, device=device)  # image may still accept hypotheses
        self.done = torch.empty((), dtype=torch.bool, device=device)
        self.rows = torch.empty(b * k, dtype=torch.long, device=device)
        self.last = torch.empty(b * k, dtype=torch.long, device=device)

    def reset(self, generator: torch.Generator | None = None) -> None:
        """Start again from freshly prefilled prompts (each prompt copied to its K rows)."""
        self.generator = generator
        self.t.zero_()
        self.running.fill_(NEG_INF)
        self.running[:, 0] = 0.0  # the K copies are identical: only the first one is live at the start
        self.tokens.fill_(self.pad_id)
        self.fin.reset()
        self.is_open.fill_(True)
        self.done.fill_(False)

    def _can_improve(self) -> torch.Tensor:
        """(B, 1): whether the best running beam might still beat an image's worst finished hypothesis."""
        if self.gen.early_stopping == "never" and self.gen.length_penalty > 0:
            penalty = self.penalty[-1:]  # a positive penalty favours length: bound at the longest
        else:
            penalty = self.penalty.index_select(0, self.t.view(1))  # (1,) at the current length
        best = self.running[:, :1] / penalty  # (B, 1), running is sorted
        worst = self.fin.scores.min(dim=1, keepdim=True).values  # (B, 1)
        worst = torch.where(self.fin.filled, worst, UNFILLED)  # (B, K): an empty slot can always be filled
        return (best > worst).any(dim=1, keepdim=True)

    def update(self, logits: torch.Tensor) -> None:
        """Extend every beam by one token given next-token ``logits`` (B*K, V)."""
        gen, fin, t = self.gen, self.fin, self.t
        b, k, t_max = self.tokens.shape
        v, c = logits.shape[-1], self.c
        logp = torch.log_softmax(logits, dim=-1, dtype=torch.float32)  # (B*K, V), fp32, one fused pass
        logp = process(logp, self.tokens.view(b * k, t_max), t, gen, self.eos_ids, True, self.bad_words)
        if gen.do_sample:
            logp = warp_for_sampling(logp, gen, keep=self.eos_ids.numel() + 1)
            total = (logp.view(b, k, v) + self.running[..., None]).view(b, k * v)  # (B, K*V)
            cand_scores, cand = _sample(total, c, self.generator)  # (B, C)
            src, tok = cand // v, cand % v  # (B, C) source beam, new token
        else:
            cand_scores, src, tok = best_continuations(logp.view(b, k, v), self.running, c)  # (B, C) each
        cand_tokens = self.tokens.gather(1, src[..., None].expand(b, c, t_max))  # (B, C, T)
        cand_tokens.scatter_(2, t.expand(b, c, 1), tok[..., None])
        ends = is_eos(tok, self.eos_ids) | (t + 1 == t_max)  # (B, C)

        # the K best unfinished continuations run on
        running, keep = torch.topk(cand_scores.masked_fill(ends, NEG_INF), k, dim=1)  # (B, K)
        self.running.copy_(running)
        self.tokens.copy_(cand_tokens.gather(1, keep[..., None].expand(b, k, t_max)))  # (B, K, T)
        self.rows.copy_((self.image_row + src.gather(1, keep)).view(-1))  # (B*K,) cache row each beam continues
        self.last.copy_(tok.gather(1, keep).view(-1))

        # finished continuations among the first K compete for the image's K slots
        closed = ~self.is_open
        if gen.early_stopping is True:
            closed = closed | fin.filled.all(dim=1, keepdim=True)
        penalty = self.penalty.index_select(0, t.view(1))  # (1,)
        fin.merge(cand_tokens, cand_scores / penalty, ends & self.first_k & ~closed, t + 1)

        self.is_open &= self._can_improve()
        done = ~self.is_open.any()
        if gen.early_stopping is True:
            done = done | fin.filled.all()
        self.done.copy_(done)
        self.t += 1

    def output(self) -> SearchOutput:
        """The ``num_return_sequences`` best finished hypotheses of every image."""
        return self.fin.best(self.gen.num_return_sequences)
