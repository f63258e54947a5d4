"""Search algorithms against independent references: transformers' generate, brute force, no cache."""

from __future__ import annotations

import itertools
import warnings

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig
from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

from mmgen.config import GenerationConfig
from mmgen.generation import search
from mmgen.generation.processors import top_k_filter, top_p_filter

BOS, EOS, PAD = 2, 3, 1


def tiny_decoder(
    kind: str = "gpt2", vocab: int = 64, dim: int = 32, seed: int = 0, eos_bias: float = 0.4, attn: str = "sdpa"
):
    """A random 2-layer causal LM whose EOS logit varies strongly with the context, so that
    sequences end at different steps."""
    torch.manual_seed(seed)
    common = dict(vocab_size=vocab, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD, initializer_range=0.1)
    if kind == "gpt2":
        cfg = GPT2Config(n_positions=64, n_embd=dim, n_layer=2, n_head=2, **common)
    else:
        cfg = LlamaConfig(
            hidden_size=dim,
            intermediate_size=2 * dim,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
            **common,
        )
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation=attn).eval()
    with torch.no_grad():
        head = model.get_output_embeddings().weight
        head[EOS] = eos_bias * torch.randn(dim)
    return model


def prompts(batch: int, length: int, dim: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, length, dim, generator=g)


def hf_generate(model, embeds: torch.Tensor, gen: GenerationConfig, mask: torch.Tensor | None = None):
    """transformers' own generate with the same settings: (sequences (B*R, T), scores or None)."""
    if mask is None:
        mask = torch.ones(embeds.shape[:2], dtype=torch.long)
    kwargs = dict(
        do_sample=gen.do_sample,
        num_beams=gen.num_beams,
        max_new_tokens=gen.max_new_tokens,
        min_new_tokens=gen.min_new_tokens,
        length_penalty=gen.length_penalty,
        no_repeat_ngram_size=gen.no_repeat_ngram_size or None,
        repetition_penalty=gen.repetition_penalty,
        num_return_sequences=gen.num_return_sequences,
        eos_token_id=EOS,
        pad_token_id=PAD,
        return_dict_in_generate=True,
        output_scores=True,
    )
    if gen.num_beams > 1:
        kwargs["early_stopping"] = gen.early_stopping
    if gen.do_sample:
        kwargs.update(temperature=gen.temperature, top_k=gen.top_k, top_p=gen.top_p)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = model.generate(inputs_embeds=embeds, attention_mask=mask, **kwargs)
    return out.sequences, getattr(out, "sequences_scores", None)


def assert_same_as_hf(model, embeds, gen, mask=None):
    """Our search, with the dynamic and with the static cache, against transformers' generate."""
    ref_seq, ref_scores = hf_generate(model, embeds, gen, mask)
    for static in (False, True):
        ours = search(model, embeds, gen, EOS, PAD, attention_mask=mask, static_cache=static)
        b, r, t = ours.sequences.shape
        assert ref_seq.shape == (b * r, t), f"static_cache={static}"
        assert torch.equal(ours.sequences.reshape(b * r, t), ref_seq), f"static_cache={static}"
        # lengths: up to and including the first EOS (HF pads with PAD after it)
        ends = (ref_seq == EOS).int()
        ref_len = torch.where(ends.any(1), ends.argmax(1) + 1, torch.full((b * r,), t))
        assert torch.equal(ours.lengths.reshape(-1), ref_len), f"static_cache={static}"
        if ref_scores is not None:
            torch.testing.assert_close(ours.scores.reshape(-1), ref_scores, atol=1e-5, rtol=1e-5)
    return ours


# (model kind, seed, generation settings)
HF_CASES = [
    ("gpt2", 0, dict(num_beams=1)),
    ("gpt2", 1, dict(num_beams=1, repetition_penalty=1.5, no_repeat_ngram_size=2, min_new_tokens=3)),
    ("llama", 2, dict(num_beams=1, repetition_penalty=0.7)),
    ("gpt2", 3, dict(num_beams=3)),
    ("gpt2", 4, dict(num_beams=4, length_penalty=0.6, num_return_sequences=3)),
    ("gpt2", 5, dict(num_beams=3, length_penalty=2.0, early_stopping=False)),
    ("gpt2", 6, dict(num_beams=4, length_penalty=-0.5, early_stopping="never", num_return_sequences=2)),
    ("gpt2", 7, dict(num_beams=3, no_repeat_ngram_size=2, repetition_penalty=1.3, min_new_tokens=4)),
    ("gpt2", 8, dict(num_beams=5, early_stopping=False, no_repeat_ngram_size=1, num_return_sequences=5)),
    ("llama", 9, dict(num_beams=3, length_penalty=0.6)),
    ("llama", 10, dict(num_beams=4, early_stopping=False, repetition_penalty=1.4, num_return_sequences=2)),
    ("llama", 11, dict(num_beams=2, early_stopping="never", length_penalty=2.0, min_new_tokens=2)),
]


@pytest.mark.parametrize("kind,seed,settings", HF_CASES)
def test_matches_transformers_generate(kind, seed, settings):
    model = tiny_decoder(kind, seed=seed)
    embeds = prompts(5, 4, 32, seed)
    ours = assert_same_as_hf(model, embeds, GenerationConfig(max_new_tokens=10, **settings))
    assert ours.sequences.shape[:2] == (5, settings.get("num_return_sequences", 1))


def test_images_finish_at_different_steps():
    model = tiny_decoder("gpt2", seed=3)
    ours = assert_same_as_hf(model, prompts(6, 4, 32, 3), GenerationConfig(num_beams=3, max_new_tokens=10))
    assert len(set(ours.lengths[:, 0].tolist())) > 1  # the test models really do stop at different steps


def test_left_padded_prompts_match_transformers():
    model = tiny_decoder("llama", seed=12)
    embeds = prompts(4, 6, 32, 12)
    mask = torch.ones(4, 6, dtype=torch.long)
    mask[1, :2] = 0
    mask[3, :1] = 0
    for gen in (GenerationConfig(num_beams=1, max_new_tokens=8), GenerationConfig(num_beams=3, max_new_tokens=8)):
        assert_same_as_hf(model, embeds, gen, mask)


def test_peft_wrapped_decoder():
    peft = pytest.importorskip("peft")
    model = tiny_decoder("llama", seed=13)
    lora = peft.get_peft_model(
        model, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    assert_same_as_hf(lora, prompts(3, 4, 32, 13), GenerationConfig(num_beams=3, max_new_tokens=8))


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_cached_equals_uncached(kind):
    model = tiny_decoder(kind, seed=20)
    embeds = prompts(4, 5, 32, 20)
    mask = torch.ones(4, 5, dtype=torch.long)
    mask[2, :2] = 0
    for settings in (dict(num_beams=1), dict(num_beams=4, num_return_sequences=2, no_repeat_ngram_size=2)):
        gen = GenerationConfig(max_new_tokens=9, **settings)
        for m in (None, mask):
            full = search(model, embeds, gen, EOS, PAD, attention_mask=m, use_cache=False)
            for static in (False, True):
                cached = search(model, embeds, gen, EOS, PAD, attention_mask=m, static_cache=static)
                assert torch.equal(cached.sequences, full.sequences)
                torch.testing.assert_close(cached.scores, full.scores, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# brute force
# ---------------------------------------------------------------------------------------------


def processed_logprobs(model, embeds: torch.Tensor, prefix: tuple[int, ...], gen: GenerationConfig) -> torch.Tensor:
    """Next-token log-probabilities after ``prefix`` with penalties applied, by a full forward pass."""
    ids = torch.tensor([prefix], dtype=torch.long)
    seq = torch.cat([embeds[None], model.get_input_embeddings()(ids)], dim=1)
    logp = torch.log_softmax(model(inputs_embeds=seq).logits[0, -1].float(), -1)
    for tok in set(prefix):  # repetition penalty on log-probabilities (all negative)
        logp[tok] = logp[tok] * gen.repetition_penalty
    n = gen.no_repeat_ngram_size
    for i in range(len(prefix) - n + 1 if n else 0):
        if prefix[i : i + n - 1] == prefix[len(prefix) - n + 1 :]:
            logp[prefix[i + n - 1]] = float("-inf")
    if len(prefix) < gen.min_new_tokens:
        logp[EOS] = float("-inf")
    return logp


def exhaustive(model, embeds: torch.Tensor, gen: GenerationConfig, vocab: int) -> list[tuple[float, tuple]]:
    """Every finished sequence (ends with EOS or reaches max_new_tokens) with its beam score, best first."""
    done = []
    frontier = [((), 0.0)]
    for step in range(gen.max_new_tokens):
        nxt = []
        for prefix, total in frontier:
            logp = processed_logprobs(model, embeds, prefix, gen)
            for tok in range(vocab):
                if logp[tok] == float("-inf"):
                    continue
                seq, score = prefix + (tok,), total + logp[tok].item()
                if tok == EOS or step + 1 == gen.max_new_tokens:
                    done.append((score / len(seq) ** gen.length_penalty, seq))
                else:
                    nxt.append((seq, score))
        frontier = nxt
    return sorted(done, reverse=True)


@pytest.mark.parametrize(
    "seed,settings",
    [
        (30, dict(length_penalty=1.0)),
        (31, dict(length_penalty=0.6, min_new_tokens=2)),
        (32, dict(length_penalty=2.0, repetition_penalty=1.5)),
        (33, dict(length_penalty=-1.0, no_repeat_ngram_size=1)),
        (34, dict(length_penalty=0.0)),
    ],
)
def test_beam_search_equals_exhaustive_search(seed, settings):
    vocab, steps, n_best = 6, 3, 4
    model = tiny_decoder("gpt2", vocab=vocab, seed=seed, eos_bias=0.3)
    embeds = prompts(2, 3, 32, seed)
    gen = GenerationConfig(
        num_beams=vocab ** (steps - 1),
        max_new_tokens=steps,
        early_stopping="never",
        num_return_sequences=n_best,
        **settings,
    )
    ours = search(model, embeds, gen, EOS, PAD, static_cache=bool(seed % 2))  # both caches, in turn
    with torch.no_grad():
        for i in range(embeds.shape[0]):
            ref = exhaustive(model, embeds[i], gen, vocab)[:n_best]
            for j, (score, seq) in enumerate(ref):
                assert ours.sequences[i, j, : len(seq)].tolist() == list(seq)
                assert ours.lengths[i, j].item() == len(seq)
                assert ours.scores[i, j].item() == pytest.approx(score, abs=1e-5)


# ---------------------------------------------------------------------------------------------
# sampling
# ---------------------------------------------------------------------------------------------


def test_sampling_is_reproducible_with_a_seed():
    model = tiny_decoder("gpt2", seed=40, eos_bias=0.1)
    embeds = prompts(3, 4, 32, 40)
    gen = GenerationConfig(num_beams=1, do_sample=True, seed=7, num_return_sequences=4, max_new_tokens=8)
    a, b = search(model, embeds, gen, EOS, PAD), search(model, embeds, gen, EOS, PAD)
    assert a.sequences.shape[:2] == (3, 4)
    assert torch.equal(a.sequences, b.sequences) and torch.equal(a.scores, b.scores)
    other = search(model, embeds, GenerationConfig(**{**gen.__dict__, "seed": 8}), EOS, PAD)
    assert not torch.equal(a.sequences, other.sequences)
    assert len({tuple(s) for s in a.sequences[0].tolist()}) > 1  # the 4 samples of an image differ


def test_sampling_matches_transformers_with_the_same_seed():
    model = tiny_decoder("gpt2", seed=41, eos_bias=0.1)
    embeds = prompts(3, 4, 32, 41)
    gen = GenerationConfig(num_beams=1, do_sample=True, temperature=0.8, top_k=20, top_p=0.9, max_new_tokens=8)
    ours = search(model, embeds, gen, EOS, PAD, generator=torch.Generator().manual_seed(5))
    torch.manual_seed(5)
    ref, _ = hf_generate(model, embeds, gen)
    assert torch.equal(ours.sequences.reshape(3, -1), ref)


@pytest.mark.parametrize("settings", [dict(top_k=1), dict(top_p=1e-6), dict(temperature=1e-4)])
def test_degenerate_sampling_is_greedy(settings):
    model = tiny_decoder("llama", seed=42)
    embeds = prompts(4, 4, 32, 42)
    greedy = search(model, embeds, GenerationConfig(num_beams=1, max_new_tokens=8), EOS, PAD)
    sampled = search(
        model, embeds, GenerationConfig(num_beams=1, do_sample=True, seed=0, max_new_tokens=8, **settings), EOS, PAD
    )
    assert torch.equal(greedy.sequences, sampled.sequences)


def test_filters_match_transformers_warpers():
    scores = torch.randn(8, 50, generator=torch.Generator().manual_seed(0)) * 3
    for k, p in itertools.product((1, 5, 49), (0.05, 0.5, 0.95)):
        torch.testing.assert_close(top_k_filter(scores, k), TopKLogitsWarper(k)(None, scores.clone()))
        torch.testing.assert_close(top_p_filter(scores, p), TopPLogitsWarper(p)(None, scores.clone()))


def test_beam_sampling_runs_and_is_reproducible():
    model = tiny_decoder("gpt2", seed=43)
    embeds = prompts(2, 4, 32, 43)
    gen = GenerationConfig(num_beams=3, do_sample=True, top_k=4, seed=1, num_return_sequences=2, max_new_tokens=6)
    a, b = search(model, embeds, gen, EOS, PAD), search(model, embeds, gen, EOS, PAD)
    assert torch.equal(a.sequences, b.sequences)
    assert bool((a.scores[:, 0] >= a.scores[:, 1]).all())
