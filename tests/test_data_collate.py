"""Collate: tokenisation, labels on exactly the caption + EOS positions (also when pad == eos), truncation."""

from __future__ import annotations

import pytest
import torch

from mmgen.data.collate import IGNORE_INDEX, CaptionCollator, normalize_caption, tokenize_captions
from mmgen.data.images import BadItem
from mmgen.tokenizer import train_caption_tokenizer

CAPTIONS = ["a red circle on a striped background", "a dog", "two large blue squares to the left of a small star"]


@pytest.fixture(scope="module")
def gpt2_like():
    """A byte-level BPE tokenizer set up like GPT-2: BOS, EOS and PAD are one and the same token."""
    tok = train_caption_tokenizer(CAPTIONS * 3, kind="bpe", vocab_size=300)
    tok.bos_token = tok.eos_token
    tok.pad_token = tok.eos_token
    assert tok.pad_token_id == tok.eos_token_id == tok.bos_token_id
    return tok


@pytest.fixture(scope="module")
def wordlevel():
    return train_caption_tokenizer(CAPTIONS + ["a photo of"], kind="wordlevel")


def _items(captions):
    return [{"pixel_values": torch.zeros(3, 4, 4), "caption": c, "image_id": i} for i, c in enumerate(captions)]


@pytest.mark.parametrize("prompt", ["", "a photo of"])
def test_labels_cover_caption_and_eos_only(gpt2_like, wordlevel, prompt):
    for tok in (gpt2_like, wordlevel):
        batch = CaptionCollator(tok, prompt=prompt, max_caption_tokens=64)(_items(CAPTIONS))
        prefix = [tok.bos_token_id] + (tok(prompt, add_special_tokens=False)["input_ids"] if prompt else [])
        ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
        assert ids.dtype == mask.dtype == labels.dtype == torch.long
        assert batch["pixel_values"].shape == (3, 3, 4, 4)
        for b, cap in enumerate(CAPTIONS):
            body = tok(cap, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            n = len(prefix) + len(body)
            assert ids[b, :n].tolist() == prefix + body
            assert mask[b].tolist() == [1] * n + [0] * (ids.shape[1] - n)
            assert labels[b].tolist() == [IGNORE_INDEX] * len(prefix) + body + [IGNORE_INDEX] * (ids.shape[1] - n)
            assert (ids[b, n:] == tok.pad_token_id).all()
        # the EOS keeps its label even though, for the GPT-2-like tokenizer, it equals the pad id
        eos_labels = (labels == tok.eos_token_id).sum(dim=1)
        assert eos_labels.tolist() == [1, 1, 1]


def test_truncation_keeps_eos(wordlevel):
    out = tokenize_captions(wordlevel, CAPTIONS, max_caption_tokens=4)
    labels = out["labels"]
    assert out["input_ids"].shape == (3, 5)  # BOS + 4 caption tokens (EOS included)
    first3 = wordlevel(CAPTIONS[0], add_special_tokens=False)["input_ids"][:3]
    assert labels[0].tolist() == [IGNORE_INDEX] + first3 + [wordlevel.eos_token_id]
    assert labels[1].tolist() == [IGNORE_INDEX] + wordlevel("a dog", add_special_tokens=False)["input_ids"] + [
        wordlevel.eos_token_id,
        IGNORE_INDEX,
    ]
    assert tokenize_captions(wordlevel, ["a dog"], pad_to_multiple_of=8)["input_ids"].shape == (1, 8)


def test_caption_normalisation_and_bad_items(wordlevel):
    assert normalize_caption("  a\tred \n\n circle  ") == "a red circle"
    items = _items(["  a   dog\n"]) + [BadItem("x.jpg", "empty file (0 bytes)", 7), None]
    batch = CaptionCollator(wordlevel)(items)
    assert batch["captions"] == ["a dog"] and batch["image_ids"] == [0]
    assert batch["bad"] == [("x.jpg", "empty file (0 bytes)"), ("<unknown>", "dataset returned None")]
    assert set(batch) == {"pixel_values", "input_ids", "attention_mask", "labels", "image_ids", "captions", "bad"}


def test_special_ids_come_from_the_tokenizer():
    tok = train_caption_tokenizer(CAPTIONS, kind="wordlevel")
    tok.add_special_tokens({"bos_token": "<start>", "eos_token": "<end>"})  # new ids, far from 0..3
    out = tokenize_captions(tok, ["a dog"])
    assert out["input_ids"][0, 0].item() == tok.convert_tokens_to_ids("<start>")
    assert out["labels"][0, -1].item() == tok.convert_tokens_to_ids("<end>")
