"""Vectorised score processors for decoding: penalties, bans and sampling filters.

Every function takes next-token scores ``(N, V)`` (one row per running hypothesis) and returns
scores of the same shape: the penalties and bans (``*_``) rewrite a few entries per row in place,
the sampling filters return new scores. The generated tokens are given as a fixed-size buffer ``tokens``
``(N, T)`` together with the step ``t``, a 0-dim long tensor on the scores' device: only
``tokens[:, :t]`` have been generated. Shapes therefore never change from step to step and no
value is read back to the host, so a decoding step can be captured in a CUDA graph. The prompt
(image prefix, BOS, text prompt) is never part of ``tokens``: penalties and n-gram bans only see
generated tokens.

Greedy decoding and sampling apply the processors to raw logits; beam search applies them to
log-probabilities (the convention of transformers' ``generate``). None of them loops over rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mmgen.config import GenerationConfig

NEG_INF = float("-inf")


def repetition_penalty_(scores: torch.Tensor, tokens: torch.Tensor, t: torch.Tensor, penalty: float) -> torch.Tensor:
    """Make every token already generated in a row less likely (in place; returns ``scores``).

    A negative score is multiplied by ``penalty`` and a positive one divided by it (CTRL's rule),
    once per distinct token whatever its count. Only the ``T`` entries of ``tokens`` are touched.

    Args:
        scores: Next-token scores, ``(N, V)``, modified in place.
        tokens: Generated-token buffer, ``(N, T)``; ``tokens[:, :t]`` are generated.
        t: Number of tokens generated so far (0-dim long tensor).
        penalty: Values above 1 discourage repetition; 1 is a no-op.
    """
    if penalty == 1.0:
        return scores
    written = torch.arange(tokens.shape[1], device=tokens.device) < t  # (T,)
    # (N, T): the token at position j was generated (at some position i < t); same for equal tokens
    seen = ((tokens[:, :, None] == tokens[:, None, :]) & written).any(-1)
    old = scores.gather(1, tokens)  # (N, T)
    new = torch.where(seen, torch.where(old < 0, old * penalty, old / penalty), old)
    return scores.scatter_(1, tokens, new)  # duplicate tokens write the same value


def ban_repeated_ngrams_(scores: torch.Tensor, tokens: torch.Tensor, t: torch.Tensor, n: int) -> torch.Tensor:
    """Forbid any token that would complete an n-gram already present in the row (in place).

    Args:
        scores: Next-token scores, ``(N, V)``, modified in place.
        tokens: Generated-token buffer, ``(N, T)``; ``tokens[:, :t]`` are generated.
        t: Number of tokens generated so far (0-dim long tensor).
        n: N-gram size (0 disables the ban).
    """
    size = tokens.shape[1]
    if n <= 0 or size < n:  # no complete n-gram can ever exist
        return scores
    device = tokens.device
    grams = tokens.unfold(1, n, 1)  # (N, G, n), G = T-n+1: every n-gram of the buffer
    complete = torch.arange(size - n + 1, device=device) <= t - n  # (G,) gram lies in tokens[:, :t]
    where = (t - n + 1 + torch.arange(n - 1, device=device)).clamp(min=0)  # (n-1,) positions of the context
    context = tokens.index_select(1, where)  # (N, n-1): the tokens the next one would extend
    hit = (grams[:, :, : n - 1] == context[:, None, :]).all(-1) & complete  # (N, G); all() of nothing is True
    last = grams[:, :, n - 1].contiguous()  # (N, G): the token each gram would complete
    banned = ((last[:, :, None] == last[:, None, :]) & hit[:, None, :]).any(-1)  # (N, G), same for equal tokens
    return scores.scatter_(1, last, torch.where(banned, NEG_INF, scores.gather(1, last)))


def ban_eos_(scores: torch.Tensor, eos_ids: torch.Tensor, t: torch.Tensor, min_new_tokens: int) -> torch.Tensor:
    """Forbid the end-of-sequence token(s) while fewer than ``min_new_tokens`` have been generated (in place).

    Args:
        scores: Next-token scores, ``(N, V)``, modified in place.
        eos_ids: End-of-sequence ids, ``(E,)``.
        t: Tokens generated so far, the same for every row (0-dim long tensor).
        min_new_tokens: Minimum number of generated tokens, the end-of-sequence token included.
    """
    if min_new_tokens <= 0:
        return scores
    old = scores.index_select(1, eos_ids)  # (N, E)
    return scores.index_copy_(1, eos_ids, torch.where(t < min_new_tokens, NEG_INF, old))


class BadWords:
    """Token sequences never to be generated, as fixed-shape tensors (transformers' ``bad_words_ids`` rule).

    A one-token sequence is banned at every step; a longer one has its last token banned whenever the
    row's generated tokens end with the rest of it. Only generated tokens count (not the prompt).

    Args:
        ids: The banned token sequences (empty ones are ignored, duplicates kept once).
        device: Where the tensors live (the scores' device).
    """

    def __init__(self, ids: Sequence[Sequence[int]], device: torch.device | str) -> None:
        seqs = list(dict.fromkeys(tuple(int(i) for i in s) for s in ids if len(s)))
        if not seqs:
            raise ValueError("BadWords needs at least one non-empty token sequence")
        self.ids = tuple(seqs)
        m = max(len(s) for s in seqs) - 1  # longest context a ban depends on
        # (W, m) the tokens before each banned last token, right-aligned; -1 where a sequence is shorter
        self.context = torch.tensor([[-1] * (m - len(s) + 1) + list(s[:-1]) for s in seqs], device=device)
        self.context = self.context.view(len(seqs), m)
        self.last = torch.tensor([s[-1] for s in seqs], device=device)  # (W,)
        self.same_last = self.last[:, None] == self.last[None, :]  # (W, W)

    def apply_(self, scores: torch.Tensor, tokens: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Set the scores of banned next tokens to ``-inf`` (in place; returns ``scores``).

        Args:
            scores: Next-token scores, ``(N, V)``, modified in place.
            tokens: Generated-token buffer, ``(N, T)``; ``tokens[:, :t]`` are generated.
            t: Number of tokens generated so far (0-dim long tensor).
        """
        n, m = tokens.shape[0], self.context.shape[1]
        where = t - m + torch.arange(m, device=tokens.device)  # (m,) positions of the last m generated tokens
        recent = tokens.index_select(1, where.clamp(0, tokens.shape[1] - 1))  # (N, m)
        recent = torch.where(where >= 0, recent, -2)  # (N, m) before the first token: matches nothing
        wanted = self.context >= 0  # (W, m)
        # (N, W): every context token of the sequence equals the recent token at its place (all() of nothing: True)
        hit = ((recent[:, None, :] == self.context[None]) | ~wanted[None]).all(-1)
        banned = (hit[:, None, :] & self.same_last[None]).any(-1)  # (N, W), the same for sequences sharing a token
        last = self.last.expand(n, -1)  # (N, W)
        return scores.scatter_(1, last, torch.where(banned, NEG_INF, scores.gather(1, last)))


def top_k_filter(scores: torch.Tensor, k: int, keep: int = 1) -> torch.Tensor:
    """Keep the ``max(k, keep)`` best tokens of each row (ties with the last one kept too)."""
    k = min(max(k, keep), scores.shape[-1])
    if k <= 0 or k == scores.shape[-1]:
        return scores
    kth = torch.topk(scores, k, dim=-1).values[:, -1:]  # (N, 1)
    return scores.masked_fill(scores < kth, NEG_INF)


def top_p_filter(scores: torch.Tensor, p: float, keep: int = 1) -> torch.Tensor:
    """Nucleus filter: keep the smallest set of best tokens whose probability reaches ``p``.

    A token is dropped when the probability mass of all tokens ranked below it, itself included,
    is at most ``1 - p``; at least ``keep`` tokens survive.
    """
    if p >= 1.0:
        return scores
    ascending, order = torch.sort(scores, dim=-1)  # (N, V), worst first
    mass_below = ascending.softmax(-1).cumsum(-1)  # (N, V)
    drop = mass_below <= 1.0 - p
    drop[:, -keep:] = False
    return scores.masked_fill(drop.scatter(1, order, drop), NEG_INF)


def warp_for_sampling(scores: torch.Tensor, gen: GenerationConfig, keep: int = 1) -> torch.Tensor:
    """Temperature, then top-k, then top-p: the distribution that sampling draws from.

    Args:
        scores: Processed scores, ``(N, V)``.
        gen: Sampling settings (``temperature``, ``top_k``, ``top_p``).
        keep: Minimum number of tokens each filter keeps (beam sampling keeps one per EOS id + 1).
    """
    if gen.temperature != 1.0:
        scores = scores / gen.temperature
    if gen.top_k > 0:
        scores = top_k_filter(scores, gen.top_k, keep)
    if gen.top_p < 1.0:
        scores = top_p_filter(scores, gen.top_p, keep)
    return scores


def edits_scores(gen: GenerationConfig, size: int, bad_words: BadWords | None = None) -> bool:
    """Whether :func:`process` can change any score for a buffer of ``size`` generated tokens."""
    ngrams = 0 < gen.no_repeat_ngram_size <= size
    return gen.repetition_penalty != 1.0 or ngrams or gen.min_new_tokens > 0 or bad_words is not None


def process(
    scores: torch.Tensor,
    tokens: torch.Tensor,
    t: torch.Tensor,
    gen: GenerationConfig,
    eos_ids: torch.Tensor,
    inplace: bool = False,
    bad_words: BadWords | None = None,
) -> torch.Tensor:
    """Apply repetition penalty, n-gram ban, banned words and minimum length to next-token scores.

    Each of them rewrites a few entries per row (scatters, no pass over the vocabulary).

    Args:
        scores: Next-token scores (logits or log-probabilities), ``(N, V)``, fp32.
        tokens: Generated-token buffer, ``(N, T)``; ``tokens[:, :t]`` are generated.
        t: Number of tokens generated so far (0-dim long tensor).
        gen: Generation settings.
        eos_ids: End-of-sequence ids, ``(E,)``.
        inplace: Modify ``scores`` itself; otherwise a copy is made when something may change.
        bad_words: Token sequences never to be generated.
    """
    if not edits_scores(gen, tokens.shape[1], bad_words):
        return scores
    if not inplace:
        scores = scores.clone()
    repetition_penalty_(scores, tokens, t, gen.repetition_penalty)
    ban_repeated_ngrams_(scores, tokens, t, gen.no_repeat_ngram_size)
    if bad_words is not None:
        bad_words.apply_(scores, tokens, t)
    return ban_eos_(scores, eos_ids, t, gen.min_new_tokens)


def is_eos(tokens: torch.Tensor, eos_ids: torch.Tensor) -> torch.Tensor:
    """Whether each token is an end-of-sequence id: ``tokens`` (...,) -> bool (...,)."""
    return (tokens[..., None] == eos_ids).any(-1)
