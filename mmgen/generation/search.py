"""Decoding entry point: greedy, sampling and beam search from prompt embeddings with a KV cache.

The prompt (image prefix tokens, then the embeddings of BOS and of an optional text prompt) is run
once per image; its cache is then shared by that image's beams or samples. Every step decodes all
rows of the batch together. Penalties, n-gram bans and the minimum length only look at generated
tokens, as transformers' ``generate`` does when given ``inputs_embeds`` alone.

A step is two functions of fixed shapes: the search's ``update`` (token choice from the logits)
and the decoder's ``advance`` (reorder rows, run one token). With a static cache
(:mod:`mmgen.generation.static`) both read and write preallocated tensors only, so on CUDA they
are captured once in CUDA graphs and replayed (:mod:`mmgen.generation.graphs`); the only value
read back per step is the "all done" flag, one step late.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from functools import partial

import torch
from torch import nn

from mmgen.config import GenerationConfig
from mmgen.generation.beam import BeamState
from mmgen.generation.graphs import DecodeCache, DecodeSession, decoder_fingerprint, uncapturable
from mmgen.generation.greedy import PathState
from mmgen.generation.head import HeadPadding
from mmgen.generation.outputs import SearchOutput, StopCheck
from mmgen.generation.processors import BadWords
from mmgen.generation.static import StaticStepDecoder, static_cache_unsupported
from mmgen.generation.step_decoder import StepDecoder

AUTO = "auto"


def _static_by_default(device: torch.device, gen: GenerationConfig) -> bool:
    """Where ``static_cache="auto"`` takes the static cache (when the decoder supports it).

    On CUDA always: it is what makes CUDA graphs possible. On the CPU when every prompt goes on as
    several rows (beams, or several samples): they share the prompt's keys and values rather than
    copying them for each row and reordering them at each step: 1.04-2.2x less CPU time for beams 3
    and 5 at batch 8 and 32, 1.05-1.14x for 5 samples (BENCHMARKS.md). Greedy decoding gains nothing
    there (within 2% either way), and the dynamic cache keeps no buffers between calls.
    """
    if device.type == "cuda":
        return True
    rows = gen.num_beams if gen.num_beams > 1 else gen.num_return_sequences if gen.do_sample else 1
    return device.type == "cpu" and rows > 1


def _plan(
    decoder: nn.Module, device: torch.device, gen: GenerationConfig, use_cache: bool, static_cache, cuda_graph
) -> tuple[bool, bool]:
    """Resolve the ``static_cache`` / ``cuda_graph`` options ("auto", True, False) to two booleans."""
    for name, value in (("static_cache", static_cache), ("cuda_graph", cuda_graph)):
        if value not in (AUTO, True, False):
            raise ValueError(f"{name} must be 'auto', True or False, got {value!r}")
    reason = "it needs use_cache=True" if not use_cache else static_cache_unsupported(decoder)
    if static_cache is True and reason:
        raise ValueError(f"static_cache=True is not possible: {reason}")
    static = static_cache is True or (static_cache == AUTO and reason is None and _static_by_default(device, gen))
    problems = {
        "it needs a static cache": not static,
        "it needs a CUDA device": device.type != "cuda",
        "sampling draws its random numbers outside the graph": gen.do_sample,
    }
    problem = next((text for text, holds in problems.items() if holds), None) or uncapturable(decoder)
    if cuda_graph is True and problem:
        raise ValueError(f"cuda_graph=True is not possible: {problem}")
    graphs = cuda_graph is True or (cuda_graph == AUTO and problem is None and not decoder.training)
    return static, graphs


def _new_state(
    b: int, gen: GenerationConfig, eos_ids: torch.Tensor, pad_id: int, bad_words: BadWords | None
) -> BeamState | PathState:
    state = BeamState if gen.num_beams > 1 else PathState
    return state(b, gen, eos_ids, pad_id, bad_words)


def _static_session(decoder: nn.Module, state: tuple, padding: HeadPadding, graphs: bool, cuda_graph) -> DecodeSession:
    """A new static-cache session: buffers for ``state`` (``_new_state``'s arguments), steps captured in CUDA
    graphs with ``graphs`` (a failed capture raises when ``cuda_graph`` is True, else falls back to eager)."""
    settings = state[1]
    dec = StaticStepDecoder(decoder, settings.max_new_tokens, graphs, padding, settings.decode_sdpa)
    return DecodeSession(dec, _new_state(*state), graphs, strict=cuda_graph is True)


def _decode(session: DecodeSession, steps: int) -> SearchOutput:
    """Run up to ``steps`` update/advance rounds on a prefilled, expanded session."""
    stop = StopCheck(session.state.done.device)
    may_end_early = session.state.gen.min_new_tokens < steps  # otherwise EOS is banned until the last step
    for i in range(steps):
        session.update()
        if i + 1 == steps or (may_end_early and stop(session.state.done)):
            break
        session.advance()
    return session.state.output()


@torch.inference_mode()
def search(
    decoder: nn.Module,
    inputs_embeds: torch.Tensor,
    gen: GenerationConfig,
    eos_token_id: int | Sequence[int],
    pad_token_id: int,
    attention_mask: torch.Tensor | None = None,
    *,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    static_cache: bool | str = AUTO,
    cuda_graph: bool | str = AUTO,
    full_prefix: int = 0,
    bad_words_ids: Sequence[Sequence[int]] | None = None,
    cache: DecodeCache | None = None,
) -> SearchOutput:
    """Generate continuations of prompt embeddings with a causal LM.

    Greedy when ``num_beams == 1`` and not ``do_sample``; sampling (temperature, top-k, top-p)
    when ``do_sample``; beam search when ``num_beams > 1`` (beam sampling with ``do_sample``).
    The static cache and CUDA graphs change the speed, not the result.

    Args:
        decoder: A transformers causal LM (GPT-2, Llama-like, ...; peft-wrapped or not).
        inputs_embeds: Prompt embeddings ``(B, L0, D)`` in the decoder's dtype: image prefix, then
            the embeddings of BOS and of the optional text prompt.
        gen: Generation settings.
        eos_token_id: End-of-sequence id, or several.
        pad_token_id: Filler written after a sequence's end.
        attention_mask: ``(B, L0)``, zeros on left padding; None when no row is padded.
        generator: Random source for sampling; by default one seeded with ``gen.seed`` when set,
            else torch's global generator.
        use_cache: Reuse keys and values between steps (False recomputes everything; for tests).
        static_cache: Decode over preallocated keys and values of fixed shape (``"auto"``: when the
            decoder supports it (full attention, sdpa or eager), on CUDA, and on the CPU for beam
            search or several samples per prompt). Its buffers stay in ``cache`` for the next call of
            the same shape.
        cuda_graph: Capture each decoding step in a CUDA graph and replay it (``"auto"``: with a
            static cache on CUDA, except for sampling and for a decoder in training mode).
        full_prefix: The first this many prompt positions attend to each other in both directions (a
            prefix LM, ``model.prefix_attention: full``); needs mmgen's attention (``mmgen_sdpa``).
        bad_words_ids: Token sequences never to be generated, by every search (transformers'
            ``bad_words_ids``: a sequence's last token is banned after the rest of it). ``gen.bad_words``
            (text) is not read here: :meth:`~mmgen.models.CaptionModel.search` turns it into these.
        cache: Where static-cache sessions (CUDA graphs) and padded LM heads are kept between calls
            (``CaptionModel.decode_cache``); None: nothing is kept after this call.

    Returns:
        :class:`SearchOutput` with ``R = num_return_sequences`` sequences per prompt, best first.
    """
    if gen.num_beams > 1 and gen.num_return_sequences > gen.num_beams:
        raise ValueError(f"num_return_sequences ({gen.num_return_sequences}) cannot exceed num_beams ({gen.num_beams})")
    if gen.early_stopping not in (True, False, "never"):
        raise ValueError(f"early_stopping must be true, false or 'never', got {gen.early_stopping!r}")
    device = inputs_embeds.device
    eos = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    eos_ids = torch.tensor(eos, dtype=torch.long, device=device)
    if generator is None and gen.do_sample and gen.seed is not None:
        generator = torch.Generator(device=device).manual_seed(gen.seed)
    bad_words = BadWords(bad_words_ids, device) if bad_words_ids and any(map(len, bad_words_ids)) else None
    static, graphs = _plan(decoder, device, gen, use_cache, static_cache, cuda_graph)
    cache = DecodeCache() if cache is None else cache
    padding = HeadPadding(gen.padded_head, cache.padded_heads)
    b, t_max = inputs_embeds.shape[0], gen.max_new_tokens
    repeats = gen.num_beams if gen.num_beams > 1 else gen.num_return_sequences if gen.do_sample else 1

    if static:
        settings = dataclasses.replace(gen, seed=None)  # the seed only matters through ``generator``
        key = (inputs_embeds.shape, inputs_embeds.dtype, device, dataclasses.astuple(settings), tuple(eos))
        key += (pad_token_id, cuda_graph, graphs, bad_words and bad_words.ids, *decoder_fingerprint(decoder))
        state = (b, settings, eos_ids, pad_token_id, bad_words)
        session = cache.session(decoder, key, partial(_static_session, decoder, state, padding, graphs, cuda_graph))
    else:
        state = _new_state(b, gen, eos_ids, pad_token_id, bad_words)
        session = DecodeSession(StepDecoder(decoder, use_cache, padding), state, False)
    session.dec.prefill(inputs_embeds, attention_mask, t_max, full_prefix=full_prefix)
    session.dec.expand(repeats)
    session.state.reset(generator)
    return _decode(session, t_max)
