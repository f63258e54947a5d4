"""Banned words and per-call prompts: every search against transformers' ``bad_words_ids`` through ``generate``."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from test_generation import EOS, PAD, hf_generate, prompts, tiny_decoder

from mmgen.captioner import Captioner
from mmgen.config import ConfigError, GenerationConfig
from mmgen.generation import search
from mmgen.generation.captions import bad_words_ids
from mmgen.generation.processors import BadWords
from mmgen.tokenizer import decode_captions, start_ids

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "assets" / "tiny-scenes-model"
IMAGES = sorted((ROOT / "assets" / "images").glob("*.png"))


def hf_with_bad_words(model, embeds, gen, bad):
    """transformers' generate with ``bad_words_ids`` (the reference), sequences (B*R, T)."""
    original = model.generate

    def generate(**kwargs):
        return original(bad_words_ids=bad, **kwargs)

    model.generate = generate
    try:
        return hf_generate(model, embeds, gen)[0]
    finally:
        del model.generate


def banned_from(seqs: torch.Tensor) -> list[list[int]]:
    """Bans that bite: a token the unconstrained search chose at step 1, and a pair it generated at steps 2-3."""
    row = seqs.reshape(-1, seqs.shape[-1])[0].tolist()
    assert EOS not in row[:4], "the test model must generate at least 4 tokens"
    return [[row[1]], [row[2], row[3]]]


def contains(seq: list[int], bad: list[int]) -> bool:
    return any(seq[i : i + len(bad)] == bad for i in range(len(seq) - len(bad) + 1))


CASES = [
    ("gpt2", 50, dict(num_beams=1)),
    ("llama", 51, dict(num_beams=1, repetition_penalty=1.3)),
    ("gpt2", 52, dict(num_beams=3)),
    ("gpt2", 53, dict(num_beams=4, num_return_sequences=2, no_repeat_ngram_size=2)),
    ("llama", 54, dict(num_beams=3, early_stopping=False, length_penalty=0.6)),
]


@pytest.mark.parametrize("kind,seed,settings", CASES)
def test_greedy_and_beam_search_equal_transformers_bad_words_ids(kind, seed, settings):
    model = tiny_decoder(kind, seed=seed, eos_bias=0.05)
    embeds = prompts(4, 4, 32, seed)
    gen = GenerationConfig(max_new_tokens=8, **settings)
    free = search(model, embeds, gen, EOS, PAD).sequences
    bad = banned_from(free)
    ref = hf_with_bad_words(model, embeds, gen, bad)
    for static in (False, True):
        ours = search(model, embeds, gen, EOS, PAD, static_cache=static, bad_words_ids=bad)
        b, r, t = ours.sequences.shape
        assert torch.equal(ours.sequences.reshape(b * r, t), ref), f"static_cache={static}"
    assert not torch.equal(ours.sequences, free)  # the bans changed the result
    for row in ours.sequences.reshape(b * r, t).tolist():
        assert not any(contains(row, w) for w in bad)


def test_sampling_equals_transformers_bad_words_ids_with_the_same_seed():
    model = tiny_decoder("gpt2", seed=55, eos_bias=0.05)
    embeds = prompts(3, 4, 32, 55)
    gen = GenerationConfig(num_beams=1, do_sample=True, temperature=0.7, top_k=10, max_new_tokens=8)
    free = search(model, embeds, gen, EOS, PAD, generator=torch.Generator().manual_seed(3)).sequences
    bad = banned_from(free)
    ours = search(model, embeds, gen, EOS, PAD, generator=torch.Generator().manual_seed(3), bad_words_ids=bad)
    torch.manual_seed(3)
    ref = hf_with_bad_words(model, embeds, gen, bad)
    assert torch.equal(ours.sequences.reshape(3, -1), ref)
    assert not torch.equal(ours.sequences, free)


def test_beam_sampling_never_produces_a_banned_word():
    """No reference draws the same random numbers for beam sampling: check the outcome over many samples."""
    model = tiny_decoder("gpt2", seed=56, eos_bias=0.05)
    embeds = prompts(4, 4, 32, 56)
    gen = GenerationConfig(num_beams=3, do_sample=True, num_return_sequences=3, max_new_tokens=8, seed=0)
    free = search(model, embeds, gen, EOS, PAD).sequences
    counts = torch.bincount(free.flatten(), minlength=64)
    counts[[EOS, PAD]] = 0
    common = int(counts.argmax())  # the token sampled most often without the ban
    ours = search(model, embeds, gen, EOS, PAD, bad_words_ids=[[common]])
    assert counts[common] > 0 and not bool((ours.sequences == common).any())


def test_ban_matches_the_transformers_processor_step_by_step():
    """The processor itself, on random histories, against transformers' NoBadWordsLogitsProcessor."""
    from transformers.generation.logits_process import NoBadWordsLogitsProcessor

    g = torch.Generator().manual_seed(0)
    bad = [[5], [1, 2], [2, 2, 3], [7, 3], [4, 4]]  # two sequences end in 3
    tokens = torch.randint(1, 8, (64, 6), generator=g)
    tokens[:8, :3] = torch.tensor([2, 2, 1])
    proc = NoBadWordsLogitsProcessor(bad, eos_token_id=EOS + 100)
    ours = BadWords(bad, "cpu")
    for t in range(7):
        scores = torch.randn(64, 10, generator=g)
        expected = proc(tokens[:, :t], scores.clone())
        buffer = torch.where(torch.arange(6) < t, tokens, PAD)  # positions >= t are not generated yet
        got = ours.apply_(scores.clone(), buffer, torch.tensor(t))
        assert torch.equal(got, expected), f"t={t}"


def test_bad_words_are_validated_with_the_key_named():
    with pytest.raises(ConfigError, match="generation.bad_words"):
        GenerationConfig(bad_words=("red", ""))
    with pytest.raises(ConfigError, match="generation.bad_words"):
        GenerationConfig(bad_words="red")
    assert GenerationConfig(bad_words=["red"]).bad_words == ("red",)


# ---------------------------------------------------------------------------------------------
# the shipped model: text in, text out
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scenes():
    return Captioner.from_pretrained(MODEL, device="cpu")


def hf_captions(captioner, images, gen, bad=None, prompt=None) -> list[str]:
    """transformers' generate on the same prompt embeddings, decoded the project's way."""
    model = captioner.model
    pixels = torch.stack([captioner.preprocess(str(p)) for p in images])
    tok = model.tokenizer
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        image_prefix = model.encode_images(pixels)
        ids = torch.tensor(start_ids(tok, prompt if prompt is not None else model.config.prompt))
        start = model.embed_tokens(ids)[None].expand(len(images), -1, -1)
        out = model.decoder.generate(
            inputs_embeds=torch.cat([image_prefix, start], 1),
            attention_mask=torch.ones(len(images), image_prefix.shape[1] + len(ids), dtype=torch.long),
            num_beams=gen.num_beams,
            do_sample=False,
            max_new_tokens=gen.max_new_tokens,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            bad_words_ids=bad,
        )
    return decode_captions(tok, out.tolist())


@pytest.mark.parametrize("beams", [1, 3])
def test_captioner_bad_words_equal_transformers(scenes, beams):
    gen = GenerationConfig(num_beams=beams, max_new_tokens=24)
    free = scenes.caption(IMAGES, num_beams=beams)
    words = ["red", "small"]
    assert any(w in c.split() for c in free for w in words)  # the words really occur without the ban
    ids = bad_words_ids(scenes.model.tokenizer, words)
    assert len(ids) == 2  # word-level vocabulary: " red" and "red" are one token
    banned = scenes.caption(IMAGES, num_beams=beams, bad_words=words)
    assert banned == hf_captions(scenes, IMAGES, gen, bad=ids)
    assert not any(w in c.split() for c in banned for w in words)


def test_a_banned_phrase_bans_its_last_word_after_the_rest(scenes):
    free = scenes.caption(IMAGES, num_beams=1)
    assert any("small red" in c for c in free)
    ids = bad_words_ids(scenes.model.tokenizer, ["small red"])
    assert [len(i) for i in ids] == [2]
    banned = scenes.caption(IMAGES, num_beams=1, bad_words=["small red"])
    assert banned == hf_captions(scenes, IMAGES, GenerationConfig(num_beams=1, max_new_tokens=24), bad=ids)
    assert not any("small red" in c for c in banned)
    assert any("small" in c.split() for c in banned)  # the first word alone is still allowed


def test_unknown_words_are_ignored(scenes):
    assert bad_words_ids(scenes.model.tokenizer, ["xylophone"]) == []
    assert scenes.caption(IMAGES[:2], bad_words=["xylophone"]) == scenes.caption(IMAGES[:2])


@pytest.mark.parametrize("beams", [1, 3])
def test_a_per_call_prompt_is_continued(scenes, beams):
    gen = GenerationConfig(num_beams=beams, max_new_tokens=24)
    prompted = scenes.caption(IMAGES, num_beams=beams, prompt="a picture of a")
    assert prompted == hf_captions(scenes, IMAGES, gen, prompt="a picture of a")
    assert prompted != scenes.caption(IMAGES, num_beams=beams)
    assert not any(c.startswith("a picture of") for c in prompted)  # the prompt is not repeated


def test_an_explicit_empty_prompt_replaces_the_models_own(scenes):
    model = scenes.model
    saved = model.config.prompt, model.start_ids
    model.config.prompt = "a picture of a"
    model.start_ids = torch.tensor(start_ids(model.tokenizer, "a picture of a"))
    try:
        own = scenes.caption(IMAGES, num_beams=1)
        none = scenes.caption(IMAGES, num_beams=1, prompt="")
        embeds = model.prompt_embeds(torch.stack([scenes.preprocess(str(p)) for p in IMAGES]), prompt="")
        assert embeds.shape[1] == model.num_prefix_tokens + 1  # image prefix + BOS only
    finally:
        model.config.prompt, model.start_ids = saved
    assert own == scenes.caption(IMAGES, num_beams=1, prompt="a picture of a")
    assert none == scenes.caption(IMAGES, num_beams=1)
