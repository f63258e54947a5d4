"""The GPU-oriented shortcuts of decoding, checked on the CPU against the plain computations.

Padded LM head (aligned matmul), two-stage beam candidate selection, in-place score processors
and the SDPA backend choice of decoding steps.
"""

from __future__ import annotations

import contextlib
import dataclasses

import pytest
import torch
from test_generation import EOS, PAD, assert_same_as_hf, prompts, tiny_decoder
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from mmgen.config import GenerationConfig
from mmgen.generation import head as head_module
from mmgen.generation import search, static
from mmgen.generation.beam import best_continuations
from mmgen.generation.head import padded_logits, padded_weight, plain_head
from mmgen.generation.processors import process

VOCAB = 61  # not a multiple of 64: the padded head really pads


# ---------------------------------------------------------------------------------------------
# padded LM head
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["gpt2", "llama"])  # tied and untied output embeddings
def test_padded_head_gives_the_decoders_logits(kind):
    model = tiny_decoder(kind, vocab=VOCAB, seed=60)
    embeds = prompts(3, 5, 32, 60)
    keys = set(model.state_dict())
    with torch.inference_mode():
        ref = model(inputs_embeds=embeds).logits  # (3, 5, V)
        with padded_logits(model, mode=True) as used:
            ours = model(inputs_embeds=embeds).logits
    assert used and ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)
    head = model.get_output_embeddings()
    assert "forward" not in vars(head), "the head's own forward is back"
    assert set(model.state_dict()) == keys
    weight = padded_weight(head)  # (64, D)
    assert weight.shape == (64, 32) and not weight[VOCAB:].any()
    assert torch.equal(weight[:VOCAB], head.weight)


def test_padded_head_follows_in_place_weight_updates():
    model = tiny_decoder("llama", vocab=VOCAB, seed=61)
    embeds = prompts(2, 4, 32, 61)
    copies = head_module.PaddedCopies()  # kept by the caller between calls (a DecodeCache's padded_heads)
    with torch.no_grad():
        with padded_logits(model, mode=True, copies=copies):
            model(inputs_embeds=embeds)
        before = padded_weight(model.lm_head, copies=copies)
        model.lm_head.weight.mul_(1.5)  # an optimizer step: same memory, new version
        with padded_logits(model, mode=True, copies=copies):
            ours = model(inputs_embeds=embeds).logits
    with torch.no_grad():
        torch.testing.assert_close(ours, model(inputs_embeds=embeds).logits, rtol=1e-6, atol=1e-6)
    assert padded_weight(model.lm_head, copies=copies) is before  # refreshed in place (a captured graph stays valid)


def test_head_with_a_bias_or_a_subclass_is_left_alone():
    model = tiny_decoder("gpt2", vocab=VOCAB, seed=62)
    embeds = prompts(2, 4, 32, 62)
    for replacement in (nn.Linear(32, VOCAB, bias=True), type("Custom", (nn.Linear,), {})(32, VOCAB, bias=False)):
        model.set_output_embeddings(replacement)
        assert plain_head(model) is None
        with torch.inference_mode():
            ref = model(inputs_embeds=embeds).logits
            with padded_logits(model, mode=True) as used:
                ours = model(inputs_embeds=embeds).logits
        assert not used and torch.equal(ours, ref)


def test_padded_head_auto_mode_pads_odd_vocabularies_on_the_cpu():
    """The CPU's GEMM is faster with aligned output rows too (see mmgen.generation.head), with the same logits."""
    model = tiny_decoder("gpt2", vocab=VOCAB, seed=63)
    embeds = prompts(3, 5, 32, 3)
    with torch.no_grad():
        ref = model(inputs_embeds=embeds).logits
        with padded_logits(model, mode=None) as used:
            assert used and torch.equal(model(inputs_embeds=embeds).logits, ref)
    with padded_logits(model, mode=False) as used:
        assert not used
    aligned = tiny_decoder("gpt2", vocab=64, seed=63)  # already a multiple of 64: nothing to gain
    with padded_logits(aligned, mode=None) as used:
        assert not used


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_search_with_the_padded_head_matches_transformers(kind, monkeypatch):
    calls = []
    original = head_module.padded_weight
    monkeypatch.setattr(head_module, "padded_weight", lambda *args: calls.append(args) or original(*args))
    model = tiny_decoder(kind, vocab=VOCAB, seed=64)
    embeds = prompts(4, 4, 32, 64)
    for settings in (dict(num_beams=1), dict(num_beams=3, length_penalty=0.7, repetition_penalty=1.3)):
        assert_same_as_hf(model, embeds, GenerationConfig(max_new_tokens=8, padded_head=True, **settings))
    assert len(calls) >= 4 * 8  # prompts and steps, dynamic and static caches, went through the padded head
    calls.clear()
    search(model, embeds, GenerationConfig(max_new_tokens=8, num_beams=3, padded_head=False), EOS, PAD)
    assert calls == []  # the setting reaches every step: nothing padded


def test_padded_head_with_peft():
    peft = pytest.importorskip("peft")
    model = tiny_decoder("llama", vocab=VOCAB, seed=65)
    lora = peft.get_peft_model(
        model, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    embeds = prompts(2, 4, 32, 65)
    with torch.inference_mode():
        ref = lora(inputs_embeds=embeds).logits
        with padded_logits(lora, mode=True) as used:
            ours = lora(inputs_embeds=embeds).logits
    assert used
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# two-stage beam candidate selection
# ---------------------------------------------------------------------------------------------


def _check_selection(logp: torch.Tensor, running: torch.Tensor, c: int, distinct_values: bool) -> None:
    """best_continuations against torch.topk over the flattened (B, K*V) totals."""
    b, k, v = logp.shape
    total = (logp + running[..., None]).view(b, k * v)  # (B, K*V)
    ref_scores, ref_idx = torch.topk(total, c, dim=-1)
    scores, src, tok = best_continuations(logp, running, c)
    assert torch.equal(scores, ref_scores)  # the same values, sorted the same way
    flat = src * v + tok  # (B, C)
    assert torch.equal(total.gather(1, flat), scores), "each pick has its score"
    assert all(len(set(row)) == c for row in flat.tolist()), "no continuation picked twice"
    if distinct_values:
        assert torch.equal(flat, ref_idx)
    # whatever ranks strictly above the c-th score is picked by both (ties may differ)
    above = total > ref_scores[:, -1:]
    for i in range(b):
        must = set(above[i].nonzero().flatten().tolist())
        assert must <= set(flat[i].tolist()) and must <= set(ref_idx[i].tolist())


@pytest.mark.parametrize("b,k,v,c", [(4, 3, 50, 6), (3, 5, 7, 10), (2, 36, 6, 72), (5, 2, 100, 4)])
def test_two_stage_selection_equals_flat_topk(b, k, v, c):
    g = torch.Generator().manual_seed(b * 100 + k * 10 + v)
    logp = torch.randn(b, k, v, generator=g).log_softmax(-1)
    running = -torch.rand(b, k, generator=g) * 5
    _check_selection(logp, running, c, distinct_values=True)
    # banned tokens, dead beams (the first step: only beam 0 is live) and many exact ties
    ties = (torch.randint(0, 4, (b, k, v), generator=g).float() - 6).masked_fill(
        torch.rand(b, k, v, generator=g) < 0.3, float("-inf")
    )
    dead = running.clone()
    dead[:, 1:] = float("-inf")
    for scores, beams in ((logp, dead), (ties, running), (ties, dead), (ties, running.round())):
        _check_selection(scores, beams, c, distinct_values=False)


# ---------------------------------------------------------------------------------------------
# in-place score processors
# ---------------------------------------------------------------------------------------------


def _reference_process(scores, tokens, t, gen, eos):
    """The processors one row and one token at a time."""
    out = scores.clone()
    for row in range(scores.shape[0]):
        done = tokens[row, :t].tolist()
        for tok in set(done):
            value = out[row, tok]
            out[row, tok] = value * gen.repetition_penalty if value < 0 else value / gen.repetition_penalty
        n = gen.no_repeat_ngram_size
        for i in range(len(done) - n + 1 if n else 0):
            if done[i : i + n - 1] == done[len(done) - n + 1 :]:
                out[row, done[i + n - 1]] = float("-inf")
        if t < gen.min_new_tokens:
            out[row, eos] = float("-inf")
    return out


@pytest.mark.parametrize("t", [0, 1, 3, 6, 8])
def test_in_place_processors_match_a_loop(t):
    g = torch.Generator().manual_seed(t)
    n, size, v = 6, 8, 5  # a small vocabulary: many repeated tokens and n-grams
    tokens = torch.randint(0, v, (n, size), generator=g)
    tokens[:, t:] = PAD  # not generated yet: pad, which may also be a generated token
    scores = torch.randn(n, v, generator=g) * 2
    gen = GenerationConfig(repetition_penalty=1.7, no_repeat_ngram_size=2, min_new_tokens=4)
    ours = process(scores, tokens, torch.tensor(t), gen, torch.tensor([EOS]))
    assert torch.equal(ours, _reference_process(scores, tokens, t, gen, EOS))
    assert ours is not scores
    again = scores.clone()
    assert process(again, tokens, torch.tensor(t), gen, torch.tensor([EOS]), inplace=True) is again


# ---------------------------------------------------------------------------------------------
# SDPA backends of decoding steps
# ---------------------------------------------------------------------------------------------


def test_sdpa_backend_setting_is_parsed():
    eff, math, cudnn = SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH, SDPBackend.CUDNN_ATTENTION
    assert static.parse_sdpa_backends("efficient,math") == [eff, math]
    assert static.parse_sdpa_backends(" cudnn ") == [cudnn, math]  # math always stays possible
    assert static.parse_sdpa_backends("math") == [math]
    assert static.parse_sdpa_backends("default") is None and static.parse_sdpa_backends("") is None
    with pytest.raises(ValueError, match="unknown"):
        static.parse_sdpa_backends("fast")
    assert isinstance(static.decode_attention(torch.device("cpu"), [math]), contextlib.nullcontext)
    assert isinstance(static.decode_attention(torch.device("cuda"), None), contextlib.nullcontext)


def test_static_steps_under_a_restricted_sdpa_choice(monkeypatch):
    """Math attention only (what the CUDA setting falls back to) gives the dynamic path's result."""
    model = tiny_decoder("llama", seed=66)
    embeds = prompts(3, 4, 32, 66)
    gen = GenerationConfig(num_beams=3, max_new_tokens=8)
    ref = search(model, embeds, gen, EOS, PAD, static_cache=False)
    chosen = []
    monkeypatch.setattr(
        static, "decode_attention", lambda device, backends: chosen.append(backends) or sdpa_kernel(backends)
    )
    ours = search(model, embeds, dataclasses.replace(gen, decode_sdpa="math"), EOS, PAD, static_cache=True)
    assert chosen and all(b == [SDPBackend.MATH] for b in chosen)  # the setting reached every step
    assert torch.equal(ours.sequences, ref.sequences)
    torch.testing.assert_close(ours.scores, ref.scores, atol=1e-5, rtol=1e-5)


def test_bad_decoding_kernel_settings_are_config_errors():
    from mmgen.config import Config, ConfigError, load_config

    with pytest.raises(ConfigError, match="generation.decode_sdpa.*'fast'"):
        GenerationConfig(decode_sdpa="fast")
    with pytest.raises(ConfigError, match="eval.generation.padded_head: expected true/false"):
        load_config(None, ["eval.generation.padded_head=maybe"], Config)
    cfg = load_config(None, ["eval.generation.padded_head=false", "eval.generation.decode_sdpa=cudnn,math"], Config)
    assert cfg.eval.generation.padded_head is False and cfg.eval.generation.decode_sdpa == "cudnn,math"
