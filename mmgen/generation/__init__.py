"""Caption generation: greedy, sampling and beam search over a causal LM with a KV cache."""

from mmgen.generation.captions import GeneratedCaptions
from mmgen.generation.graphs import DecodeCache
from mmgen.generation.outputs import SearchOutput
from mmgen.generation.search import search

__all__ = [
    "DecodeCache",
    "GeneratedCaptions",
    "SearchOutput",
    "search",
]
