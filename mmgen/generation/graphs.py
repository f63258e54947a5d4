"""CUDA-graph replay of decoding steps, and the buffers that let graphs be reused across calls.

A decoding step (decoder forward for one token, or the search's token choice) is a function of
no argument that reads and writes tensors allocated once. :class:`CapturedStep` runs it eagerly the
first time (a warm-up that also does the step's work), captures it into a CUDA graph the second
time and replays the graph afterwards. Disabled, it simply calls the function: that is how the
very same step code runs on the CPU and in tests.

A captured graph refers to its buffers by address, so the buffers, states and graphs of one
decoding shape are kept together in a session and reused by the next call with the same shapes
and settings. Sessions live in a :class:`DecodeCache` owned by the caller (a ``CaptionModel`` owns
one: ``model.decode_cache``), a few per decoder (the most recently used); ``clear()`` frees them.
Two searches must not share one cache at the same time (from two threads): they would share a session.
"""

from __future__ import annotations

import sys
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

import torch
from torch import nn

from mmgen.generation.head import PaddedCopies


class CapturedStep:
    """A no-argument step over persistent tensors: eager once, then captured and replayed.

    Args:
        fn: The step. Everything it reads or writes must outlive it, and its control flow must not
            depend on values that change between calls (a replay repeats the captured kernels).
        enabled: Capture and replay on CUDA; False calls ``fn`` every time.
        pool: Memory pool shared with the other graphs of the same session.
        strict: Raise when the capture fails; otherwise warn and keep running ``fn`` eagerly (a
            decoder that reads device values on the host, for example, cannot be captured).
    """

    def __init__(self, fn: Callable[[], None], enabled: bool, pool: Any = None, strict: bool = False) -> None:
        self.fn = fn
        self.enabled = enabled
        self.pool = pool
        self.strict = strict
        self.graph: torch.cuda.CUDAGraph | None = None
        self._warm = False

    def __call__(self) -> None:
        if not self.enabled:
            self.fn()
        elif self.graph is not None:
            self.graph.replay()
        elif not self._warm:  # first call: eager, on a side stream as capture requires of warm-ups
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self.fn()
            torch.cuda.current_stream().wait_stream(side)
            self._warm = True
        else:
            self._capture()

    def _capture(self) -> None:
        graph = torch.cuda.CUDAGraph()
        try:
            # thread_local: a data loader's pin-memory thread may use CUDA while we capture
            with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
                self.fn()
        except Exception as err:  # whatever failed, the eager step still works
            if self.strict:
                raise
            warnings.warn(f"decoding step not captured in a CUDA graph, running it eagerly: {err}", stacklevel=3)
            self.enabled = False
            torch.cuda.synchronize()
            self.fn()  # capturing records kernels without running them: the step is still to be done
            return
        self.graph = graph
        graph.replay()  # capturing records the kernels without running them


class DecodeSession:
    """The static decoder, search state and step functions of one decoding shape.

    Args:
        dec: A :class:`~mmgen.generation.static.StaticStepDecoder` (or any object with ``logits``
            and ``advance(rows, tokens)``).
        state: A search state (``update(logits)``, ``rows``, ``last``, ``done``).
        graphs: Capture the steps in CUDA graphs.
        strict: A failed capture raises (rather than falling back to eager steps).
    """

    def __init__(self, dec: Any, state: Any, graphs: bool, strict: bool = False) -> None:
        self.dec, self.state = dec, state
        pool = torch.cuda.graph_pool_handle() if graphs else None
        self.update = CapturedStep(lambda: state.update(dec.logits), graphs, pool, strict)
        self.advance = CapturedStep(lambda: dec.advance(state.rows, state.last), graphs, pool, strict)


MAX_SESSIONS = 4  # per decoder: e.g. full and last batch, sampled and greedy (self-critical training)


def decoder_fingerprint(decoder: nn.Module) -> tuple:
    """What a captured graph depends on: parameter and buffer addresses, dtypes and the module mode."""
    tensors = [*decoder.parameters(), *decoder.buffers()]
    return (decoder.training, tuple((p.data_ptr(), p.dtype, p.device) for p in tensors))


def uncapturable(decoder: nn.Module) -> str | None:
    """Why the decoder's forward cannot be replayed from a graph, or None."""
    dtensor = getattr(sys.modules.get("torch.distributed.tensor"), "DTensor", None)  # imported when in use
    if dtensor is not None and any(isinstance(p, dtensor) for p in decoder.parameters()):
        return "its parameters are sharded (FSDP): they are gathered into new memory at every forward"
    return None


class DecodeCache:
    """What searches keep between calls: static-cache sessions (buffers, CUDA graphs) and padded LM heads.

    Owned by whoever runs the searches (``CaptionModel.decode_cache``); keyed weakly by decoder and head, so
    a decoder that is freed or replaced (LoRA wrapping) takes its entries with it. Copying or pickling the
    owner gives an empty cache (buffers and graphs are not state).

    Args:
        max_sessions: Sessions kept per decoder, the least recently used going first.
    """

    def __init__(self, max_sessions: int = MAX_SESSIONS) -> None:
        self.max_sessions = max_sessions
        self.sessions: weakref.WeakKeyDictionary[nn.Module, OrderedDict[Hashable, DecodeSession]]
        self.sessions = weakref.WeakKeyDictionary()
        self.padded_heads: PaddedCopies = PaddedCopies()

    def session(self, decoder: nn.Module, key: Hashable, build: Callable[[], DecodeSession]) -> DecodeSession:
        """The decoder's session for ``key``, built when missing (the least recently used one goes)."""
        sessions = self.sessions.setdefault(decoder, OrderedDict())
        if key in sessions:
            sessions.move_to_end(key)
            return sessions[key]
        while len(sessions) >= self.max_sessions:
            sessions.popitem(last=False)  # free old buffers before allocating new ones
        sessions[key] = session = build()
        return session

    def clear(self, decoder: nn.Module | None = None) -> None:
        """Free the buffers and CUDA graphs kept for ``decoder`` (for every decoder: None)."""
        if decoder is None:
            self.sessions.clear()
            self.padded_heads.clear()
        else:
            self.sessions.pop(decoder, None)

    def __deepcopy__(self, memo: dict) -> DecodeCache:
        return DecodeCache(self.max_sessions)

    def __reduce__(self) -> tuple:
        return (DecodeCache, (self.max_sessions,))
