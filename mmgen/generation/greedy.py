"""Greedy decoding and sampling: one token per row and step, in fixed-shape state updated in place."""

from __future__ import annotations

import torch

from mmgen.config import GenerationConfig
from mmgen.generation.outputs import SearchOutput
from mmgen.generation.processors import BadWords, edits_scores, is_eos, process, warp_for_sampling


class PathState:
    """Greedy decoding, or ``num_return_sequences`` independent samples per prompt, over ``N`` rows.

    Like :class:`~mmgen.generation.beam.BeamState`, :meth:`update` keeps every shape fixed and
    the step number on the device (greedy steps can be captured in a CUDA graph). After an update,
    ``last`` (N,) holds the newest token of each row; ``rows`` is None (rows never move); ``done``
    is set once every row has ended.

    Args:
        b: Number of prompts.
        gen: Generation settings; ``num_return_sequences`` rows per prompt when sampling.
        eos_ids: End-of-sequence ids, ``(E,)``.
        pad_id: Filler written after a sequence's end.
        bad_words: Token sequences never to be generated.
    """

    rows = None

    def __init__(
        self, b: int, gen: GenerationConfig, eos_ids: torch.Tensor, pad_id: int, bad_words: BadWords | None = None
    ) -> None:
        device = eos_ids.device
        self.bad_words = bad_words
        self.b, self.r = b, gen.num_return_sequences if gen.do_sample else 1
        n = b * self.r
        self.gen, self.eos_ids, self.pad_id = gen, eos_ids, pad_id
        self.generator: torch.Generator | None = None
        self.t = torch.zeros((), dtype=torch.long, device=device)
        self.tokens = torch.empty(n, gen.max_new_tokens, dtype=torch.long, device=device)
        self.alive = torch.empty(n, dtype=torch.bool, device=device)
        self.lengths = torch.empty(n, dtype=torch.long, device=device)
        self.logp_sum = torch.empty(n, device=device)  # summed unprocessed log-probabilities
        self.done = torch.empty((), dtype=torch.bool, device=device)
        self.last = torch.empty(n, dtype=torch.long, device=device)

    def reset(self, generator: torch.Generator | None = None) -> None:
        """Start again from freshly prefilled prompts."""
        self.generator = generator
        self.t.zero_()
        self.tokens.fill_(self.pad_id)
        self.alive.fill_(True)
        self.lengths.zero_()
        self.logp_sum.zero_()
        self.done.fill_(False)

    def update(self, logits: torch.Tensor) -> None:
        """Choose every row's next token from next-token ``logits`` (N, V)."""
        gen, n = self.gen, self.tokens.shape[0]
        logp = torch.log_softmax(logits, dim=-1, dtype=torch.float32)  # (N, V) unprocessed, one fused pass
        if gen.do_sample or edits_scores(gen, self.tokens.shape[1], self.bad_words):
            raw = logits.float()  # (N, V); a fresh copy unless the logits are fp32 already
            scores = process(raw, self.tokens, self.t, gen, self.eos_ids, raw is not logits, self.bad_words)
        else:
            scores = logits  # the argmax of the model's dtype is the argmax in fp32 (exact conversion)
        if gen.do_sample:
            probs = torch.softmax(warp_for_sampling(scores, gen), dim=-1)
            nxt = torch.multinomial(probs, 1, generator=self.generator).squeeze(1)  # (N,)
        else:
            nxt = scores.argmax(dim=-1)  # (N,)
        nxt = torch.where(self.alive, nxt, self.pad_id)
        logp = logp.gather(1, nxt[:, None]).squeeze(1)  # (N,)
        self.logp_sum += torch.where(self.alive, logp, 0.0)
        self.lengths += self.alive
        self.tokens.scatter_(1, self.t.expand(n, 1), nxt[:, None])
        self.alive &= ~is_eos(nxt, self.eos_ids)
        self.done.copy_(~self.alive.any())
        self.last.copy_(nxt)
        self.t += 1

    def output(self) -> SearchOutput:
        """Sequences ``(B, R, T')`` trimmed to the longest, lengths and length-penalised scores (new tensors)."""
        b, r = self.b, self.r
        longest = int(self.lengths.max())
        scores = self.logp_sum / self.lengths.clamp(min=1).float() ** self.gen.length_penalty
        return SearchOutput(
            self.tokens[:, :longest].reshape(b, r, longest).clone(), self.lengths.view(b, r).clone(), scores.view(b, r)
        )
