"""The ``generation`` settings: how captions are searched for (beam width, lengths, sampling, banned words, the
decoding kernels), and the ``generation.KEY=VALUE`` overrides of ``mmgen caption`` / ``evaluate`` / ``serve``.

A training run holds them as ``eval.generation`` (:class:`~mmgen.config.EvalConfig`); a saved model as the
``generation`` section of its ``config.json``.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar

from mmgen.config.io import ConfigError, apply_overrides, check, coerce, collect_errors, collecting, report

SDPA_BACKENDS = ("flash", "efficient", "cudnn", "math")
"""Names of the scaled-dot-product attention kernels (``train.sdpa_backends``, ``generation.decode_sdpa``)."""


def sdpa_names(text: str) -> list[str]:
    """A comma-separated list of attention kernel names as written (``generation.decode_sdpa``): ``" Efficient,
    math"`` -> ``["efficient", "math"]`` (lower case, blanks dropped; checked by the caller)."""
    return [name.strip().lower() for name in str(text).split(",") if name.strip()]


@dataclass
class GenerationConfig:
    SECTION: ClassVar[str] = "generation"
    """How the checks name the keys (``generation.num_beams``); a training config's are ``eval.generation.*``."""

    num_beams: int = 3
    """Beam width (1: greedy, or plain sampling with ``do_sample``)."""
    max_new_tokens: int = 20
    """Longest caption, in tokens after the prompt."""
    min_new_tokens: int = 0
    """EOS is banned before this many tokens."""
    length_penalty: float = 1.0
    """Beam scores are log-probabilities divided by length ** length_penalty (transformers' rule)."""
    early_stopping: bool = True
    """Beam search: an image is done with num_beams finished captions (true), when no running beam can beat the
    worst at its current length (false), or judged at max_new_tokens ('never')."""
    no_repeat_ngram_size: int = 0
    """No n-gram of this size is generated twice in a caption (0: off)."""
    repetition_penalty: float = 1.0
    """Logits of already generated tokens are divided (positive) or multiplied (negative) by this (1: off)."""
    do_sample: bool = False
    """Draw tokens at random (temperature, top_k, top_p) instead of taking the best."""
    temperature: float = 1.0
    top_k: int = 0
    """Sample among the k most likely tokens (0: all)."""
    top_p: float = 1.0
    """Sample among the most likely tokens whose probabilities sum to top_p (1: all)."""
    num_return_sequences: int = 1
    """Captions returned per image, best first (at most num_beams for beam search)."""
    seed: int | None = None
    """Seed of the sampling generator (null: torch's global one)."""
    bad_words: tuple[str, ...] = ()
    """Words or phrases never to be generated, by any search: each is tokenised as written and with a
    leading space; a phrase's last token is banned after the rest of it. Words the tokenizer cannot
    spell (unknown to a word-level vocabulary) can never be generated and are ignored."""
    padded_head: bool | None = None
    """Decode through a copy of the LM head padded to a multiple of 64 rows (same logits, an aligned
    matmul): true, false, or null (auto: on CUDA, and on the CPU when the vocabulary is not a multiple of 64)."""
    decode_sdpa: str = "efficient,math"
    """Attention kernels of the static-cache decoding steps on CUDA, in priority order (flash, efficient,
    cudnn, math; math is always appended), or ``default`` for torch's own choice."""

    @collecting
    def __post_init__(self) -> None:
        names = sdpa_names(self.decode_sdpa)
        check(
            names in ([], ["default"]) or all(n in SDPA_BACKENDS for n in names),
            "generation.decode_sdpa",
            f"unknown attention kernel in {self.decode_sdpa!r}: use flash, efficient, cudnn, math or default",
        )
        if isinstance(self.bad_words, list):  # a list from Python code; YAML gives a tuple already
            self.bad_words = tuple(self.bad_words)
        check(
            isinstance(self.bad_words, tuple) and all(isinstance(w, str) and w.strip() for w in self.bad_words),
            "generation.bad_words",
            f"must be a list of non-empty strings, got {self.bad_words!r}",
        )
        check(self.num_beams >= 1, "generation.num_beams", "must be >= 1")
        check(self.max_new_tokens >= 1, "generation.max_new_tokens", "must be >= 1")
        check(
            0 <= self.min_new_tokens <= self.max_new_tokens,
            "generation.min_new_tokens",
            "must be in [0, max_new_tokens]",
        )
        check(self.no_repeat_ngram_size >= 0, "generation.no_repeat_ngram_size", "must be >= 0")
        check(self.repetition_penalty > 0, "generation.repetition_penalty", "must be > 0")
        check(self.temperature > 0, "generation.temperature", "must be > 0")
        check(self.top_k >= 0, "generation.top_k", "must be >= 0")
        check(0 < self.top_p <= 1, "generation.top_p", "must be in (0, 1]")
        check(
            1 <= self.num_return_sequences <= max(self.num_beams, 1 if not self.do_sample else 10**6),
            "generation.num_return_sequences",
            "must be between 1 and num_beams",
        )


@dataclass
class GenerationSection:
    """The schema of the overrides of ``mmgen caption`` / ``evaluate`` / ``serve``: ``generation.KEY=VALUE``, the
    ``generation`` section of a saved model's config.json (a training config holds it as ``eval.generation``)."""

    generation: GenerationConfig = field(default_factory=GenerationConfig)


def generation_overrides(overrides: list[str] | None) -> dict[str, Any]:
    """``generation.KEY=VALUE`` items as typed :class:`GenerationConfig` values, by field name.

    Misspelt keys and values of the wrong type are reported (one :class:`ConfigError`); the values are checked
    together when applied to a model's settings (``dataclasses.replace`` runs the validation).
    """
    hints, out = typing.get_type_hints(GenerationConfig), {}
    with collect_errors():
        section = apply_overrides({}, overrides, GenerationSection).get("generation", {})
        if not isinstance(section, dict):
            report("generation: give single settings, e.g. generation.num_beams=5")
            section = {}
        for key, value in section.items():
            try:
                out[key] = coerce(value, hints[key], f"generation.{key}")
            except ConfigError as e:
                report(e)
    return out
