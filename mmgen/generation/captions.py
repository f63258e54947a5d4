"""Captions from a :class:`~mmgen.models.CaptionModel`: image prefix + BOS/prompt -> search -> text."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mmgen.config import GenerationConfig
from mmgen.generation.outputs import SearchOutput


@dataclass
class GeneratedCaptions:
    """N-best captions of a batch of images.

    Attributes:
        texts: One list per image of ``num_return_sequences`` captions, best first.
        scores: The matching sequence scores (see :class:`~mmgen.generation.SearchOutput`).
    """

    texts: list[list[str]]
    scores: list[list[float]]

    @property
    def best(self) -> list[str]:
        """The best caption of each image."""
        return [options[0] for options in self.texts]


def prompt_embeds(
    model,
    pixel_values: torch.Tensor | None = None,
    features: torch.Tensor | None = None,
    prompt: str | None = None,
):
    """``model.prompt_embeds(...)``: the decoder's prompt for each image, ``(B, N' + P, D)`` (see
    :meth:`~mmgen.models.CaptionModel.prompt_embeds`)."""
    return model.prompt_embeds(pixel_values, features, prompt)


def decode_sequences(tokenizer, sequences: torch.Tensor, lengths: torch.Tensor) -> list[str]:
    """Caption texts of ``(N, L)`` generated ids cut at ``(N,)`` lengths: special tokens skipped, stripped,
    the spacing of the training captions kept (see :func:`~mmgen.models.tokenizer.decode_captions`)."""
    from mmgen.models.tokenizer import decode_captions

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
    result = GeneratedCaptions([], [])
    for i in range(b):  # best first: samples come out in drawing order (beams already are sorted; a stable sort)
        pairs = sorted(zip(texts[i * r : (i + 1) * r], scores[i * r : (i + 1) * r]), key=lambda p: -p[1])
        result.texts.append([t for t, _ in pairs])
        result.scores.append([s for _, s in pairs])
    return result


def generate_captions(
    model,
    pixel_values: torch.Tensor | None = None,
    gen: GenerationConfig | None = None,
    *,
    features: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    static_cache: bool | str = "auto",
    cuda_graph: bool | str = "auto",
    prompt: str | None = None,
) -> GeneratedCaptions:
    """Caption a batch of images: ``model.generate(...)`` (see :meth:`~mmgen.models.CaptionModel.generate`).

    Args:
        model: A ``CaptionModel``.
        pixel_values: ``(B, 3, H, W)`` images, uint8 or normalised with the model's data config.
        gen: Generation settings (default: the ones saved with the model).
        features: Encoder tokens ``(B, N, C)`` in place of ``pixel_values``.
        generator: Random source for sampling (default: seeded with ``gen.seed`` when set).
        static_cache: Preallocated keys and values (see :func:`~mmgen.generation.search`).
        cuda_graph: Replay decoding steps from CUDA graphs (see :func:`~mmgen.generation.search`).
        prompt: Text the captions continue (e.g. ``"a photo of"``) in place of the model's own
            ``model.prompt``; None keeps the model's. The captions returned do not repeat it.

    Returns:
        Decoded captions (special tokens skipped, whitespace stripped) and their scores, best first.
    """
    options = {"generator": generator, "static_cache": static_cache, "cuda_graph": cuda_graph}
    return model.generate(pixel_values, gen, features=features, prompt=prompt, **options)
