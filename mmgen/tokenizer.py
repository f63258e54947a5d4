"""Tokenizers: the decoder's own (hub or local) or one trained on caption text.

A trained tokenizer (word-level or byte-level BPE, HF ``tokenizers``) always has ``<bos>``,
``<eos>``, ``<pad>`` and ``<unk>`` and is saved as a ``PreTrainedTokenizerFast``. Special ids are
always read from the tokenizer, never written as literals.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from mmgen.config import TokenizerConfig

SPECIAL_TOKENS = {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"}


def train_caption_tokenizer(
    captions: Iterable[str],
    kind: str = "wordlevel",
    vocab_size: int = 2000,
    min_frequency: int = 1,
    lowercase: bool = True,
) -> PreTrainedTokenizerFast:
    """Train a word-level or BPE tokenizer on caption text.

    Args:
        captions: Training captions.
        kind: 'wordlevel' (one token per word/punctuation mark) or 'bpe' (byte-level BPE).
        vocab_size: Upper bound on the vocabulary, special tokens included.
        min_frequency: Minimum count for a word / merge to be kept.
        lowercase: Lower-case text before tokenising (captions are scored lower-cased anyway).

    Returns:
        A ``PreTrainedTokenizerFast`` with BOS/EOS/PAD/UNK set; it adds no special tokens by itself.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    specials = list(SPECIAL_TOKENS.values())
    norm = [normalizers.NFKC(), normalizers.Strip()] + ([normalizers.Lowercase()] if lowercase else [])
    if kind == "wordlevel":
        tok = Tokenizer(models.WordLevel(unk_token=SPECIAL_TOKENS["unk_token"]))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()  # words and punctuation runs
        trainer = trainers.WordLevelTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=specials)
        decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins with spaces; " ," stays " ,"
    elif kind == "bpe":
        tok = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
        decoder = decoders.ByteLevel()
    else:
        raise ValueError(f"tokenizer kind must be 'wordlevel' or 'bpe', got {kind!r}")
    tok.normalizer = normalizers.Sequence(norm)
    tok.decoder = decoder
    tok.train_from_iterator((c for c in captions), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, clean_up_tokenization_spaces=False, **SPECIAL_TOKENS)


def load_tokenizer(cfg: TokenizerConfig, decoder_name: str | None = None) -> PreTrainedTokenizerBase:
    """The decoder's own tokenizer (hub name or local directory) or a saved one (kind='path').

    A tokenizer without a pad token (GPT-2) gets ``pad = eos``; padding positions are excluded from
    the loss by the attention mask, never by comparing ids with the pad id.
    """
    if cfg.kind not in ("decoder", "path"):
        raise ValueError(f"tokenizer kind {cfg.kind!r} is trained from captions; use train_caption_tokenizer")
    name = cfg.name or decoder_name
    if name is None:
        raise ValueError("model.tokenizer.name or model.decoder.name must give the tokenizer")
    tok = AutoTokenizer.from_pretrained(name)
    return ensure_special_tokens(tok)


def ensure_special_tokens(tok: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Give a tokenizer the BOS/EOS/PAD it needs for captioning (PAD falls back to EOS)."""
    if tok.eos_token is None:
        raise ValueError(f"tokenizer {type(tok).__name__} has no EOS token; captions could never end")
    if tok.bos_token is None:
        tok.bos_token = tok.eos_token
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def start_ids(tokenizer: PreTrainedTokenizerBase, prompt: str = "") -> list[int]:
    """Token ids that follow the image prefix: BOS, then the optional text prompt."""
    ids = [tokenizer.bos_token_id]
    if prompt:
        ids += tokenizer(prompt, add_special_tokens=False)["input_ids"]
    return ids


def decode_captions(tokenizer: PreTrainedTokenizerBase, sequences: list[list[int]]) -> list[str]:
    """Caption texts of token id lists, in the tokenisation of the training captions.

    Special tokens are skipped and surrounding whitespace is stripped, nothing else: no
    ``clean_up_tokenization_spaces`` (which glues punctuation to the previous word, "square , a" ->
    "square, a", and so changes the text that BLEU/CIDEr score), and a byte-level BPE (GPT-2) gives back
    exactly the text it encoded. Word-level tokenizers saved before this rule decode with the
    ``tokenizers`` WordPiece clean-up on; it is switched off here (a change of the decoding only).
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    decoder = getattr(backend, "decoder", None)
    if getattr(decoder, "cleanup", False):
        decoder.cleanup = False
        backend.decoder = decoder
    texts = tokenizer.batch_decode(sequences, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    return [t.strip() for t in texts]


def save_tokenizer(tokenizer: PreTrainedTokenizerBase, path: str | Path) -> None:
    tokenizer.save_pretrained(str(path))
