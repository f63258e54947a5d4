"""The static-cache path and the step functions that CUDA graphs capture, checked on the CPU.

A captured graph replays the kernels recorded at capture, on the same buffers. So the step
functions must (1) give the results of the dynamic path and of transformers' generate (see the
equality tests of test_generation.py, which run both caches), (2) never read a device value back
to the host, (3) issue the very same operations with the same shapes at every step, and (4) keep
writing into the tensors that exist before the first step. (2)-(4) are checked here by recording
the dispatched operations of eager CPU runs.
"""

from __future__ import annotations

import json

import pytest
import torch
from test_generation import EOS, PAD, assert_same_as_hf, hf_generate, prompts, tiny_decoder
from torch.utils._python_dispatch import TorchDispatchMode

from mmgen.config import GenerationConfig
from mmgen.generation import DecodeCache, search
from mmgen.generation.beam import BeamState
from mmgen.generation.graphs import MAX_SESSIONS, DecodeSession
from mmgen.generation.greedy import PathState
from mmgen.generation.search import _plan
from mmgen.generation.static import StaticStepDecoder, static_cache_unsupported

# operations that make the host wait for the device (or whose output shape depends on values)
HOST_READS = {"_local_scalar_dense", "item", "is_nonzero", "nonzero", "masked_select", "equal", "allclose"}
HOST_READS |= {"unique", "_unique", "_unique2", "unique_consecutive", "unique_dim", "repeat_interleave"}


def _describe(x):
    if isinstance(x, torch.Tensor):
        return ("tensor", tuple(x.shape), x.dtype)
    if isinstance(x, (list, tuple)):
        return tuple(_describe(y) for y in x)
    return repr(x)


class OpLog(TorchDispatchMode):
    """Records every dispatched operation with the shapes and non-tensor values of its arguments."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.ops.append((func.__name__, _describe(args), _describe(sorted(kwargs.items()))))
        return func(*args, **kwargs)

    def host_reads(self):
        return [op[0] for op in self.ops if op[0].split(".")[0] in HOST_READS]


def _buffers(obj, prefix=""):
    """Every tensor reachable through plain attributes (one level of nesting), by name."""
    found = {}
    for name, value in vars(obj).items():
        if isinstance(value, torch.Tensor):
            found[prefix + name] = value
        elif hasattr(value, "__dict__") and not isinstance(value, torch.nn.Module) and not prefix:
            found.update(_buffers(value, prefix=f"{name}."))
    return found


def _static_session(model, embeds, gen, mask=None):
    eos_ids = torch.tensor([EOS])
    b, k = embeds.shape[0], gen.num_beams
    state = BeamState(b, gen, eos_ids, PAD) if k > 1 else PathState(b, gen, eos_ids, PAD)
    session = DecodeSession(StaticStepDecoder(model, gen.max_new_tokens), state, graphs=False)
    session.dec.prefill(embeds, mask, gen.max_new_tokens)
    session.dec.expand(k)
    state.reset()
    return session


@pytest.mark.parametrize(
    "kind,settings",
    [
        ("gpt2", dict(num_beams=3, no_repeat_ngram_size=2, repetition_penalty=1.3, min_new_tokens=3)),
        ("llama", dict(num_beams=1, repetition_penalty=1.2, no_repeat_ngram_size=3, min_new_tokens=2)),
        ("llama", dict(num_beams=2, early_stopping="never", length_penalty=0.7)),
    ],
)
def test_steps_are_replayable(kind, settings):
    """No host read, identical operations at every step, and state kept in the same tensors."""
    model = tiny_decoder(kind, seed=50)
    embeds = prompts(3, 4, 32, 50)
    mask = torch.ones(3, 4, dtype=torch.long)
    mask[1, :1] = 0
    gen = GenerationConfig(max_new_tokens=7, **settings)
    with torch.inference_mode():
        session = _static_session(model, embeds, gen, mask)
        before = {**_buffers(session.state), **_buffers(session.dec)}
        pointers = {name: t.data_ptr() for name, t in before.items()}
        updates, advances = [], []
        for _ in range(gen.max_new_tokens - 1):
            for step, logs in ((session.update, updates), (session.advance, advances)):
                with OpLog() as log:
                    step()
                assert log.host_reads() == [], f"{step.fn} reads device values on the host"
                logs.append(log.ops)
        after = {**_buffers(session.state), **_buffers(session.dec)}
    assert all(ops == updates[0] for ops in updates[1:]), "the search update differs between steps"
    assert all(ops == advances[0] for ops in advances[1:]), "the decoder step differs between steps"
    assert after.keys() == before.keys()
    assert {name: t.data_ptr() for name, t in after.items()} == pointers, "a step replaced a buffer"


def test_eager_attention_matches_transformers():
    model = tiny_decoder("gpt2", seed=51, attn="eager")
    embeds = prompts(4, 5, 32, 51)
    mask = torch.ones(4, 5, dtype=torch.long)
    mask[0, :2] = 0
    assert_same_as_hf(model, embeds, GenerationConfig(num_beams=3, max_new_tokens=8), mask)
    assert_same_as_hf(model, embeds, GenerationConfig(num_beams=1, max_new_tokens=8, repetition_penalty=1.2))


def test_buffers_are_reused_across_calls_with_the_same_shape():
    """A second batch reuses the first one's buffers (stale positions must stay masked)."""
    model = tiny_decoder("llama", seed=52)
    gen = GenerationConfig(num_beams=3, max_new_tokens=9)
    cache = DecodeCache()
    sessions = []
    for seed in (52, 53, 54):
        embeds = prompts(4, 5, 32, seed)
        mask = torch.ones(4, 5, dtype=torch.long)
        mask[seed % 4, : seed % 3 + 1] = 0
        ref = search(model, embeds, gen, EOS, PAD, attention_mask=mask, static_cache=False)
        ours = search(model, embeds, gen, EOS, PAD, attention_mask=mask, static_cache=True, cache=cache)
        assert torch.equal(ours.sequences, ref.sequences)
        torch.testing.assert_close(ours.scores, ref.scores, atol=1e-5, rtol=1e-5)
        sessions.append(next(reversed(cache.sessions[model].values())))
    assert sessions[0] is sessions[1] is sessions[2] and len(cache.sessions[model]) == 1
    for b in range(5, 5 + MAX_SESSIONS):  # other shapes: the least recently used sessions go
        search(model, prompts(b, 5, 32, 55), gen, EOS, PAD, static_cache=True, cache=cache)
    assert len(cache.sessions[model]) == MAX_SESSIONS and sessions[0] not in cache.sessions[model].values()
    other = DecodeCache()  # another owner's cache is untouched
    search(model, prompts(4, 5, 32, 52), gen, EOS, PAD, static_cache=True, cache=other)
    assert len(other.sessions[model]) == 1 and len(cache.sessions[model]) == MAX_SESSIONS
    cache.clear(model)
    assert model not in cache.sessions and model in other.sessions
    search(model, prompts(4, 5, 32, 52), gen, EOS, PAD, static_cache=True)  # no cache: nothing kept anywhere
    assert model not in cache.sessions and len(other.sessions[model]) == 1


def test_static_sampling_equals_dynamic_sampling():
    model = tiny_decoder("gpt2", seed=56, eos_bias=0.1)
    embeds = prompts(3, 4, 32, 56)
    gen = GenerationConfig(num_beams=1, do_sample=True, top_k=10, seed=3, num_return_sequences=2, max_new_tokens=8)
    a = search(model, embeds, gen, EOS, PAD, static_cache=False)
    b = search(model, embeds, gen, EOS, PAD, static_cache=True)
    assert torch.equal(a.sequences, b.sequences) and torch.equal(a.lengths, b.lengths)
    beams = GenerationConfig(**{**gen.__dict__, "num_beams": 3})  # beam sampling
    a = search(model, embeds, beams, EOS, PAD, static_cache=False)
    b = search(model, embeds, beams, EOS, PAD, static_cache=True)
    assert torch.equal(a.sequences, b.sequences)


def test_options_are_checked():
    model = tiny_decoder("gpt2", seed=57)
    embeds = prompts(2, 3, 32, 57)
    gen = GenerationConfig(num_beams=2, max_new_tokens=4)
    with pytest.raises(ValueError, match="CUDA"):
        search(model, embeds, gen, EOS, PAD, static_cache=True, cuda_graph=True)
    with pytest.raises(ValueError, match="static cache"):
        search(model, embeds, gen, EOS, PAD, static_cache=False, cuda_graph=True)
    with pytest.raises(ValueError, match="use_cache"):
        search(model, embeds, gen, EOS, PAD, use_cache=False, static_cache=True)
    with pytest.raises(ValueError, match="static_cache must be"):
        search(model, embeds, gen, EOS, PAD, static_cache="yes")
    assert static_cache_unsupported(model) is None
    model.config._attn_implementation = "flash_attention_2"
    assert "flash_attention_2" in static_cache_unsupported(model)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
@pytest.mark.parametrize("settings", [dict(num_beams=3), dict(num_beams=5, length_penalty=0.6)])
def test_auto_takes_the_static_cache_for_beams_on_the_cpu_with_the_dynamic_paths_tokens(kind, settings):
    """On the CPU "auto" decodes beams over the static cache (faster there too, see BENCHMARKS.md): same tokens
    as the dynamic cache and as transformers' generate."""
    model = tiny_decoder(kind, seed=61)
    embeds = prompts(5, 6, 32, 61)
    mask = torch.ones(5, 6, dtype=torch.long)
    mask[1, :2] = 0
    gen = GenerationConfig(max_new_tokens=10, **settings)
    cache = DecodeCache()
    auto = search(model, embeds, gen, EOS, PAD, attention_mask=mask, cache=cache)
    assert model in cache.sessions  # the static path ran: its buffers are kept in the cache
    dynamic = search(model, embeds, gen, EOS, PAD, attention_mask=mask, static_cache=False)
    assert torch.equal(auto.sequences, dynamic.sequences) and torch.equal(auto.lengths, dynamic.lengths)
    torch.testing.assert_close(auto.scores, dynamic.scores, atol=1e-5, rtol=1e-5)
    ref, _ = hf_generate(model, embeds, gen, mask)
    b, r, t = auto.sequences.shape
    assert ref.shape == (b * r, t) and torch.equal(auto.sequences.reshape(b * r, t), ref)


def test_greedy_on_the_cpu_gives_the_same_tokens_with_both_caches_and_auto_keeps_no_buffers():
    """Greedy decoding gains nothing from the static cache on the CPU: "auto" keeps the dynamic one there."""
    model = tiny_decoder("gpt2", seed=64)
    embeds = prompts(5, 6, 32, 64)
    gen = GenerationConfig(num_beams=1, max_new_tokens=10)
    cache = DecodeCache()
    auto = search(model, embeds, gen, EOS, PAD, cache=cache)
    assert model not in cache.sessions
    static = search(model, embeds, gen, EOS, PAD, static_cache=True)
    assert torch.equal(auto.sequences, static.sequences) and torch.equal(auto.lengths, static.lengths)
    ref, _ = hf_generate(model, embeds, gen)
    b, r, t = auto.sequences.shape
    assert ref.shape == (b * r, t) and torch.equal(auto.sequences.reshape(b * r, t), ref)


def test_where_auto_takes_the_static_cache():
    model = tiny_decoder("gpt2", seed=62)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    beams, greedy = GenerationConfig(num_beams=3), GenerationConfig(num_beams=1)
    settings = {
        "beams": beams,
        "samples": GenerationConfig(num_beams=1, do_sample=True, num_return_sequences=4),
        "greedy": greedy,
        "one sample": GenerationConfig(num_beams=1, do_sample=True),
    }
    chosen = {name: _plan(model, cpu, gen, True, "auto", "auto")[0] for name, gen in settings.items()}
    assert chosen == {"beams": True, "samples": True, "greedy": False, "one sample": False}
    assert _plan(model, cuda, greedy, True, "auto", False) == (True, False)  # on CUDA always (graphs need it)
    assert _plan(model, cpu, beams, False, "auto", "auto") == (False, False)  # no cache at all
    model.config._attn_implementation = "flash_attention_2"  # not one the static cache supports
    assert _plan(model, cpu, beams, True, "auto", "auto") == (False, False)
    assert _plan(model, cuda, beams, True, "auto", False) == (False, False)


def test_selfcheck_runs_on_the_cpu(capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "decode_selfcheck.py"
    spec = importlib.util.spec_from_file_location("decode_selfcheck", path)
    selfcheck = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(selfcheck)
    report = selfcheck.main(["--device", "cpu", "--tiny", "--batch", "3", "--repeats", "1"])
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(json.dumps(report))
    for row in report["runs"]:
        assert row["same_as_dynamic"] == 1.0, row
        assert row["same_as_generate"] == 1.0, row
