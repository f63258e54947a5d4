"""The text side of a search: banned words as token ids going in, the sequences coming out as captions with
their scores (:meth:`mmgen.models.CaptionModel.generate` puts image prefix + BOS/prompt -> search -> text
together)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from mmgen.generation.outputs import SearchOutput
from mmgen.tokenizer import decode_captions


@dataclass
class GeneratedCaptions:
    """N-best captions of a batch of images.

    Attributes:
        texts: One list per image of ``num_return_sequences`` captions, best first.
        scores: The matching sequence scores (see :class:`~mmgen.generation.SearchOutput`).
        truncated: The matching flags: True for a caption that ended at ``max_new_tokens`` without its
            end-of-sequence token (cut short, not finished by the model).
    """

    texts: list[list[str]]
    scores: list[list[float]]
    truncated: list[list[bool]] = field(default_factory=list)

    @property
    def best(self) -> list[str]:
        """The best caption of each image."""
        return [options[0] for options in self.texts]


def decode_sequences(tokenizer, sequences: torch.Tensor, lengths: torch.Tensor) -> list[str]:
    """Caption texts of ``(N, L)`` generated ids cut at ``(N,)`` lengths: special tokens skipped, stripped,
    the spacing of the training captions kept (see :func:`~mmgen.tokenizer.decode_captions`)."""
    seqs, lens = sequences.tolist(), lengths.tolist()
    return decode_captions(tokenizer, [s[:n] for s, n in zip(seqs, lens)])


def bad_words_ids(tokenizer, words: tuple[str, ...] | list[str]) -> list[list[int]]:
    """The token sequences of banned words: each word as written and with a leading space (byte-level BPE
    spells the two differently), without special tokens. A word that tokenises to the unknown token cannot
    be generated and is left out."""
    unk = tokenizer.unk_token_id
    out: list[list[int]] = []
    for word in words:
        for text in (word.strip(), " " + word.strip()):
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            if ids and (unk is None or unk not in ids) and ids not in out:
                out.append(ids)
    return out


def captions_of(tokenizer, out: SearchOutput) -> GeneratedCaptions:
    """The texts and scores of a search's ``(B, R, L)`` sequences, each image's best first."""
    b, r, _ = out.sequences.shape
    texts = decode_sequences(tokenizer, out.sequences.reshape(b * r, -1), out.lengths.reshape(-1))
    scores = out.scores.float().reshape(-1).tolist()
    cut = truncated_sequences(out, tokenizer.eos_token_id).reshape(-1).tolist()
    result = GeneratedCaptions([], [], [])
    for i in range(b):  # best first: samples come out in drawing order (beams already are sorted; a stable sort)
        rows = range(i * r, (i + 1) * r)
        triples = sorted(((texts[j], scores[j], cut[j]) for j in rows), key=lambda p: -p[1])
        result.texts.append([t for t, _, _ in triples])
        result.scores.append([s for _, s, _ in triples])
        result.truncated.append([c for _, _, c in triples])
    return result


def truncated_sequences(out: SearchOutput, eos_token_id: int | None) -> torch.Tensor:
    """``(B, R)`` bool: the sequences whose last token is not the end-of-sequence token (the search stopped them at
    ``max_new_tokens``); unfilled slots (length 0) are not."""
    if eos_token_id is None or out.sequences.shape[-1] == 0:
        return torch.zeros(out.lengths.shape, dtype=torch.bool)
    last = out.sequences.gather(-1, (out.lengths - 1).clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (B, R)
    return ((last != eos_token_id) & (out.lengths > 0)).cpu()
