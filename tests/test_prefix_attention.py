"""Prefix-LM attention (model.prefix_attention: full): the image tokens see each other both ways, text stays
causal; checked against transformers' eager attention given the explicit mask, in training and in search."""

from __future__ import annotations

import pytest
import torch
from test_generation import EOS, PAD, prompts, tiny_decoder

from mmgen.config import ConfigError, DecoderConfig, GenerationConfig, ModelConfig
from mmgen.generation import search
from mmgen.models import CaptionModel, tiny_model_config
from mmgen.tokenizer import train_caption_tokenizer
from mmgen.transformers_glue import register_causal_sdpa


def prefix_mask(length: int, prefix: int) -> torch.Tensor:
    """Additive (1, 1, L, L) mask written out by hand: causal, plus the prefix block."""
    m = torch.full((length, length), torch.finfo(torch.float32).min)
    for i in range(length):
        for j in range(length):
            if j <= i or (i < prefix and j < prefix):
                m[i, j] = 0.0
    return m[None, None]


def eager_greedy(decoder, embeds: torch.Tensor, prefix: int, steps: int) -> list[list[int]]:
    """Greedy decoding by brute force (EOS banned): the whole sequence through eager attention with the
    explicit mask."""
    decoder.set_attn_implementation("eager")
    try:
        seq = embeds
        out = []
        for _ in range(steps):
            mask = prefix_mask(seq.shape[1], prefix).expand(seq.shape[0], 1, -1, -1)
            logits = decoder(inputs_embeds=seq, attention_mask=mask).logits[:, -1]
            logits[:, EOS] = float("-inf")
            token = logits.argmax(-1)  # (B,)
            out.append(token.tolist())
            seq = torch.cat([seq, decoder.get_input_embeddings()(token)[:, None]], dim=1)
        return [list(t) for t in zip(*out)]
    finally:
        decoder.set_attn_implementation(register_causal_sdpa())


@pytest.fixture(scope="module")
def tokenizer():
    return train_caption_tokenizer(["a red circle above a blue square", "two small stars"], "wordlevel", 100)


def test_training_forward_equals_eager_attention_with_the_prefix_mask(tokenizer):
    cfg = tiny_model_config()
    cfg.prefix_attention = "full"
    torch.manual_seed(0)
    model = CaptionModel(cfg, tokenizer).eval()
    pixels = torch.randn(2, 3, 32, 32)
    ids = torch.tensor([[tokenizer.bos_token_id, 5, 6, 7]] * 2)
    with torch.no_grad():
        got = model(pixel_values=pixels, input_ids=ids).logits  # (B, T, V)
        embeds = torch.cat([model.encode_images(pixels), model.embed_tokens(ids)], dim=1)
        n = model.num_prefix_tokens
        model.decoder.set_attn_implementation("eager")
        want = model.decoder(inputs_embeds=embeds, attention_mask=prefix_mask(embeds.shape[1], n)).logits[:, n:]
        model.decoder.set_attn_implementation(register_causal_sdpa())
        causal = CaptionModel(tiny_model_config(), tokenizer).eval()
        causal.load_state_dict(model.state_dict())
        plain = causal(pixel_values=pixels, input_ids=ids).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert (got - plain).abs().max() > 1e-3  # the option changes what the text sees


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_greedy_search_equals_brute_force_with_the_prefix_mask(kind):
    decoder = tiny_decoder(kind, seed=3)
    decoder.set_attn_implementation(register_causal_sdpa())
    embeds = prompts(3, 7, 32, seed=4)
    gen = GenerationConfig(num_beams=1, max_new_tokens=6, min_new_tokens=6)
    out = search(decoder, embeds, gen, EOS, PAD, full_prefix=5)
    want = eager_greedy(decoder, embeds, 5, 6)
    assert out.sequences[:, 0].tolist() == want
    causal = search(decoder, embeds, gen, EOS, PAD)
    assert causal.sequences.tolist() != out.sequences.tolist()  # the prefix block matters for these prompts


@pytest.mark.parametrize("static_cache", [False, True])
def test_beam_search_with_the_prefix_cached_equals_uncached(static_cache):
    decoder = tiny_decoder("gpt2", seed=5)
    decoder.set_attn_implementation(register_causal_sdpa())
    embeds = prompts(2, 6, 32, seed=6)
    gen = GenerationConfig(num_beams=3, num_return_sequences=3, max_new_tokens=7)
    fast = search(decoder, embeds, gen, EOS, PAD, full_prefix=4, static_cache=static_cache)
    slow = search(decoder, embeds, gen, EOS, PAD, full_prefix=4, use_cache=False)
    assert fast.sequences.tolist() == slow.sequences.tolist()
    torch.testing.assert_close(fast.scores, slow.scores, rtol=1e-4, atol=1e-5)


def test_prefix_attention_needs_mmgen_attention():
    decoder = tiny_decoder("gpt2", seed=1, attn="eager")
    with pytest.raises(ValueError, match="mmgen_sdpa"):
        search(decoder, prompts(1, 4, 32, 0), GenerationConfig(num_beams=1), EOS, PAD, full_prefix=2)
    with pytest.raises(ConfigError, match="model.prefix_attention"):
        ModelConfig(prefix_attention="full", decoder=DecoderConfig(attn_implementation="eager"))
    with pytest.raises(ConfigError, match="model.prefix_attention"):
        ModelConfig(prefix_attention="both")


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
@pytest.mark.parametrize("prefix_attention", ["causal", "full"])
def test_captions_sharing_an_image_prefix_equal_separate_sequences(tokenizer, kind, prefix_attention):
    """K captions per image run after one pass over the image prefix: the loss and every gradient equal
    those of K separate [prefix ; caption] sequences (the image repeated)."""
    from mmgen.data.collate import tokenize_captions

    cfg = tiny_model_config()
    cfg.prefix_attention = prefix_attention
    if kind == "llama":
        cfg.decoder.name, cfg.decoder.model_type = "llama", "llama"
        cfg.decoder.config_overrides = dict(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64,
        )  # fmt: skip
    torch.manual_seed(0)
    model = CaptionModel(cfg, tokenizer).eval()  # no dropout: the two paths must see the same network
    pixels = torch.randn(2, 3, 32, 32)
    captions = ["a red circle", "two small stars above a blue square", "a blue square", "two stars"]
    t = tokenize_captions(tokenizer, captions, "", 12)  # rows 0-1: image 0, rows 2-3: image 1
    shared = model(pixel_values=pixels, input_ids=t["input_ids"], labels=t["labels"])
    separate = model(pixel_values=pixels.repeat_interleave(2, dim=0), input_ids=t["input_ids"], labels=t["labels"])
    torch.testing.assert_close(shared.logits, separate.logits, rtol=1e-5, atol=1e-5)
    params = [p for p in model.parameters() if p.requires_grad]
    g_shared = torch.autograd.grad(shared.loss, params, allow_unused=True)
    g_separate = torch.autograd.grad(separate.loss, params, allow_unused=True)
    for a, b in zip(g_shared, g_separate):
        if a is None or b is None:
            assert a is None and b is None
        else:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="K captions per image"):
        model(pixel_values=pixels, input_ids=t["input_ids"][:3], labels=t["labels"][:3])
