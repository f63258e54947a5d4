"""Captions from a :class:`~mmgen.models.CaptionModel`: image prefix + BOS/prompt -> search -> text."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mmgen.config import GenerationConfig
from mmgen.generation.search import search


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
    """The decoder's prompt for each image, ``(B, N' + P, D)``: image prefix, then BOS and the text prompt.

    Args:
        model: A ``CaptionModel``.
        pixel_values: Preprocessed images ``(B, 3, H, W)`` (moved to the encoder's device and dtype); uint8
            images (a ``uint8=True`` transform) are normalised there with the encoder's mean and std.
        features: Encoder tokens ``(B, N, C)`` instead of images (frozen-encoder feature cache).
        prompt: Text after BOS in place of the model's own ``model.prompt`` (``""``: none); None keeps it.
    """
    if pixel_values is not None:
        from mmgen.data.transforms import normalize_on_device

        param = next(model.encoder.parameters())
        cfg = model.data_config
        pixel_values = normalize_on_device(pixel_values.to(param.device), cfg["mean"], cfg["std"], dtype=param.dtype)
    prefix = model.encode_images(pixel_values, features)  # (B, N', D)
    if prompt is None:
        start = model.start_embeds(prefix.shape[0])  # (B, P, D)
    else:
        from mmgen.models.tokenizer import start_ids

        ids = torch.tensor(start_ids(model.tokenizer, prompt), device=model.start_ids.device)  # (P,)
        start = model.embed_tokens(ids).unsqueeze(0).expand(prefix.shape[0], -1, -1)  # (B, P, D)
    return torch.cat([prefix.to(start.dtype), start], dim=1)  # (B, N'+P, D)


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


@torch.inference_mode()
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
    """Caption a batch of preprocessed images.

    Args:
        model: A ``CaptionModel`` (its decoder, tokenizer and prompt are used).
        pixel_values: ``(B, 3, H, W)`` images preprocessed with the model's data config.
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
    gen = gen or model.generation_config
    tok = model.tokenizer
    out = search(
        model.decoder,
        prompt_embeds(model, pixel_values, features, prompt),
        gen,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        generator=generator,
        static_cache=static_cache,
        cuda_graph=cuda_graph,
        full_prefix=model.full_prefix,
        bad_words_ids=bad_words_ids(tok, gen.bad_words) if gen.bad_words else None,
        cache=model.decode_cache,
    )
    b, r, _ = out.sequences.shape
    texts = decode_sequences(tok, out.sequences.reshape(b * r, -1), out.lengths.reshape(-1))
    scores = out.scores.float().reshape(-1).tolist()
    result = GeneratedCaptions([], [])
    for i in range(b):  # best first: samples come out in drawing order (beams already are sorted; a stable sort)
        pairs = sorted(zip(texts[i * r : (i + 1) * r], scores[i * r : (i + 1) * r]), key=lambda p: -p[1])
        result.texts.append([t for t, _ in pairs])
        result.scores.append([s for _, s in pairs])
    return result
