"""Batching: caption normalisation, tokenisation with loss labels, and removal of undecodable images.

A training sequence is ``start_ids(tokenizer, prompt) + caption_ids + [eos]`` where the caption
part (EOS included) holds at most ``max_caption_tokens`` tokens, right-padded with the tokenizer's
pad id. ``labels`` equal ``input_ids`` except on the BOS/prompt positions and on padding, where
they are -100. Those positions are found from the lengths, never by comparing ids with the pad id:
with GPT-2 style tokenizers pad == eos, and the EOS that ends a caption must keep its label.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from mmgen.data.images import BadItem
from mmgen.tokenizer import start_ids

IGNORE_INDEX = -100
_SPACES = re.compile(r"\s+")


def normalize_caption(text: str) -> str:
    """Strip and collapse every run of whitespace (newlines, tabs, double spaces) to one space."""
    return _SPACES.sub(" ", text).strip()


def tokenize_captions(
    tokenizer: Any,
    captions: list[str],
    prompt: str = "",
    max_caption_tokens: int = 32,
    pad_to_multiple_of: int | None = None,
) -> dict[str, torch.Tensor]:
    """Tokenise captions into decoder inputs with loss labels.

    Args:
        tokenizer: A transformers tokenizer with BOS, EOS and PAD (see ``ensure_special_tokens``).
        captions: B caption strings (normalised here).
        prompt: Text after BOS that conditions the caption; excluded from the loss.
        max_caption_tokens: Caption tokens kept, EOS included (BOS and prompt not counted).
        pad_to_multiple_of: Round the padded length up (helps kernels that like multiples of 8).

    Returns:
        ``input_ids``, ``attention_mask`` and ``labels``, each a (B, T) LongTensor.
    """
    if max_caption_tokens < 1:
        raise ValueError(f"max_caption_tokens must be >= 1, got {max_caption_tokens}")
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    if eos is None or pad is None:
        raise ValueError("the tokenizer needs EOS and PAD tokens (see mmgen.tokenizer.ensure_special_tokens)")
    prefix = start_ids(tokenizer, prompt)
    texts = [normalize_caption(c) for c in captions]
    # after a prompt the caption is a continuation: a leading space keeps "of" + "a dog" two words for
    # byte-level BPE tokenizers (word-level ones split on whitespace anyway)
    joined = [" " + t for t in texts] if prompt else texts
    caption_ids = tokenizer(joined, add_special_tokens=False)["input_ids"] if texts else []
    seqs = [prefix + ids[: max_caption_tokens - 1] + [eos] for ids in caption_ids]
    t = max((len(s) for s in seqs), default=0)
    if pad_to_multiple_of:
        t = -(-t // pad_to_multiple_of) * pad_to_multiple_of
    n = len(seqs)
    input_ids = torch.full((n, t), pad, dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros((n, t), dtype=torch.long)  # (B, T)
    labels = torch.full((n, t), IGNORE_INDEX, dtype=torch.long)  # (B, T)
    p = len(prefix)
    for b, s in enumerate(seqs):
        ids = torch.tensor(s, dtype=torch.long)
        input_ids[b, : len(s)] = ids
        attention_mask[b, : len(s)] = 1
        labels[b, p : len(s)] = ids[p:]  # caption tokens and the final EOS
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def _stack_images(items: list[dict], image_size: tuple[int, int] | None) -> torch.Tensor:
    if items:
        return torch.stack([it["pixel_values"] for it in items])  # (B, 3, H, W)
    h, w = image_size or (0, 0)
    return torch.zeros((0, 3, h, w))  # every image of the batch was bad


def split_bad(items: list[Any]) -> tuple[list[dict], list[BadItem]]:
    """Separate good items from :class:`BadItem` entries (a bare None counts as bad too)."""
    good, bad = [], []
    for it in items:
        if it is None:
            bad.append(BadItem("<unknown>", "dataset returned None"))
        elif isinstance(it, BadItem):
            bad.append(it)
        else:
            good.append(it)
    return good, bad


class CaptionCollator:
    """Collate training items ``{"pixel_values", "caption", "image_id"}`` (or :class:`BadItem`) into a batch.

    The batch holds ``pixel_values`` (B, 3, H, W) (float, or uint8 with a uint8 transform),
    ``input_ids`` / ``attention_mask`` / ``labels`` (B, T), ``image_ids``, ``captions`` and ``bad``: the
    ``(source, reason)`` of every dropped item, for a :class:`~mmgen.data.images.BadImageTracker`.
    B may be 0 when every image of a batch was bad; the training loop skips such batches.

    Args:
        tokenizer: A transformers tokenizer with BOS, EOS and PAD.
        prompt: Text after BOS, excluded from the loss.
        max_caption_tokens: Caption tokens kept, EOS included.
        pad_to_multiple_of: Round the padded length up.
        image_size: (H, W) used for the shape of an all-bad batch.
    """

    def __init__(
        self,
        tokenizer: Any,
        prompt: str = "",
        max_caption_tokens: int = 32,
        pad_to_multiple_of: int | None = None,
        image_size: tuple[int, int] | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.prompt = prompt
        self.max_caption_tokens = max_caption_tokens
        self.pad_to_multiple_of = pad_to_multiple_of
        self.image_size = image_size

    def __call__(self, items: list[Any]) -> dict[str, Any]:
        good, bad = split_bad(items)
        batch: dict[str, Any] = {"pixel_values": _stack_images(good, self.image_size)}
        batch.update(
            caption_fields(good, bad, self.tokenizer, self.prompt, self.max_caption_tokens, self.pad_to_multiple_of)
        )
        return batch


def caption_fields(
    good: list[dict],
    bad: list[BadItem],
    tokenizer: Any,
    prompt: str,
    max_caption_tokens: int,
    pad_to_multiple_of: int | None,
) -> dict[str, Any]:
    """The text part of a training batch (ids, mask, labels, image ids, captions, bad items) of kept items.

    An item with ``captions`` (K references) gives K consecutive rows: the model runs its image once for them.
    """
    captions = [normalize_caption(c) for it in good for c in (it["captions"] if "captions" in it else [it["caption"]])]
    fields: dict[str, Any] = tokenize_captions(tokenizer, captions, prompt, max_caption_tokens, pad_to_multiple_of)
    fields["image_ids"] = [it["image_id"] for it in good]
    fields["captions"] = captions
    fields["bad"] = [(b.source, b.reason) for b in bad]
    return fields


class EvalCollator:
    """Collate evaluation items ``{"pixel_values", "references", "image_id"}`` (or :class:`BadItem`).

    The batch holds ``pixel_values`` (B, 3, H, W), ``image_ids``, ``references`` (all captions of each
    image) and ``failed``: ``(image_id, reason)`` for every image that could not be decoded, so that
    an evaluation reports it instead of silently scoring fewer images.
    """

    def __init__(self, image_size: tuple[int, int] | None = None) -> None:
        self.image_size = image_size

    def __call__(self, items: list[Any]) -> dict[str, Any]:
        good, bad = split_bad(items)
        return {
            "pixel_values": _stack_images(good, self.image_size),
            "image_ids": [it["image_id"] for it in good],
            "references": [list(it["references"]) for it in good],
            "failed": [(b.image_id, f"{b.source}: {b.reason}") for b in bad],
        }
