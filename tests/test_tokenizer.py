"""Caption tokenizers: decoded captions keep the tokenisation of the training text (no space clean-up)."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoTokenizer, GPT2Tokenizer

from mmgen.generation.captions import decode_sequences
from mmgen.tokenizer import train_caption_tokenizer

CAPTIONS = [
    "a red square , a blue circle .",
    "there is a dog , it 's running .",
    "two green stars on a striped background",
]
TEXT = "a red square , a blue circle ."


def _decode(tok, text: str) -> str:
    """tokenize -> ids (with EOS and padding after it, as the search returns them) -> decode_sequences."""
    ids = tok(text, add_special_tokens=False)["input_ids"]
    row = [*ids, tok.eos_token_id, tok.pad_token_id, tok.pad_token_id]
    return decode_sequences(tok, torch.tensor([row]), torch.tensor([len(ids) + 1]))[0]


@pytest.mark.parametrize("kind", ["wordlevel", "bpe"])
def test_trained_tokenizers_keep_spaces_before_punctuation(kind, tmp_path):
    tok = train_caption_tokenizer(CAPTIONS, kind=kind, vocab_size=300)
    assert _decode(tok, TEXT) == TEXT  # not "a red square, a blue circle."
    assert _decode(tok, "a dog , running .") == "a dog , running ."
    tok.save_pretrained(str(tmp_path))  # and so does the saved tokenizer, read back by anyone
    again = AutoTokenizer.from_pretrained(str(tmp_path))
    ids = again(TEXT, add_special_tokens=False)["input_ids"]
    assert again.decode(ids, skip_special_tokens=True).strip() == TEXT


def test_wordlevel_tokenizer_saved_with_the_old_clean_up_decodes_faithfully(tmp_path):
    """Checkpoints written before the fix carry the WordPiece clean-up; captions from them keep " ," too."""
    tok = train_caption_tokenizer(CAPTIONS, kind="wordlevel", vocab_size=300)
    tok.save_pretrained(str(tmp_path))
    path = tmp_path / "tokenizer.json"
    state = json.loads(path.read_text())
    state["decoder"]["cleanup"] = True  # what earlier versions wrote
    path.write_text(json.dumps(state))
    cfg_path = tmp_path / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["clean_up_tokenization_spaces"] = True
    cfg_path.write_text(json.dumps(cfg))
    old = AutoTokenizer.from_pretrained(str(tmp_path))
    ids = old(TEXT, add_special_tokens=False)["input_ids"]
    assert old.decode(ids, skip_special_tokens=True) == "a red square, a blue circle."  # the reported problem
    assert _decode(old, TEXT) == TEXT


def test_gpt2_byte_level_decoding_gives_back_the_encoded_text(tmp_path):
    """A GPT-2 tokenizer (byte-level BPE) configured to clean up spaces still decodes to exactly its input."""
    from tokenizers import ByteLevelBPETokenizer

    trainer = ByteLevelBPETokenizer()
    trainer.train_from_iterator(CAPTIONS, vocab_size=300, min_frequency=1, special_tokens=["<|endoftext|>"])
    trainer.save_model(str(tmp_path))
    vocab = json.loads((tmp_path / "vocab.json").read_text())
    lines = (tmp_path / "merges.txt").read_text().splitlines()
    merges = [tuple(m.split(" ")) for m in lines if m and not m.startswith("#")]
    tok = GPT2Tokenizer(
        vocab=vocab,
        merges=merges,
        pad_token="<|endoftext|>",
        clean_up_tokenization_spaces=True,
        clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output=True,
    )
    ids = tok(TEXT, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) != TEXT  # this tokenizer's own default would glue the punctuation
    for text in (TEXT, "there is a dog , it 's running ."):
        assert _decode(tok, text) == text
