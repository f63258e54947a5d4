"""COCO caption metrics with pycocoevalcap's numbers: BLEU-1..4, METEOR, ROUGE-L, CIDEr-D (and SPICE).

:func:`score_captions` follows pycocoevalcap's ``COCOEvalCap.evaluate``: PTB-tokenise the references
and the candidates (two separate passes, images in reference order), then run each scorer. BLEU,
ROUGE-L and CIDEr-D are pure Python and run anywhere; METEOR and SPICE need Java and pycocoevalcap.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field

from mmgen.evaluation._java import ScorerUnavailableError
from mmgen.evaluation.bleu import bleu
from mmgen.evaluation.cider import CiderD
from mmgen.evaluation.coco import check_captions
from mmgen.evaluation.java_metrics import meteor, spice, start_meteor
from mmgen.evaluation.ptb import ptb_tokenize, resolve_backend
from mmgen.evaluation.rouge import rouge_l

__all__ = ["DEFAULT_METRICS", "METRICS", "CaptionScores", "score_captions", "score_captions_detailed"]

logger = logging.getLogger(__name__)

METRICS = ("Bleu", "METEOR", "ROUGE_L", "CIDEr", "SPICE")
DEFAULT_METRICS = ("Bleu", "METEOR", "ROUGE_L", "CIDEr")
_KEYS = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr", "SPICE")
_ALIASES = {
    "bleu": "Bleu",
    **{f"bleu_{k}": "Bleu" for k in range(1, 5)},
    "meteor": "METEOR",
    "rouge": "ROUGE_L",
    "rouge_l": "ROUGE_L",
    "rouge-l": "ROUGE_L",
    "cider": "CIDEr",
    "cider-d": "CIDEr",
    "cider_d": "CIDEr",
    "spice": "SPICE",
}


@dataclass
class CaptionScores:
    """Everything :func:`score_captions_detailed` computes.

    Attributes:
        overall: Corpus scores, keys ``Bleu_1``..``Bleu_4``, ``METEOR``, ``ROUGE_L``, ``CIDEr``
            (``SPICE``), in that order, for the metrics computed.
        per_image: Image id to its own scores under the same keys.
        tokenized_references: The PTB-tokenised references that were scored.
        tokenized_candidates: The PTB-tokenised candidates that were scored.
        empty_candidates: Ids whose candidate caption was empty (scored as an empty caption).
        tokenizer: The PTB backend used, ``"java"`` or ``"python"``.
        skipped: Default metrics left out because their Java tools are missing.
    """

    overall: dict[str, float]
    per_image: dict[Hashable, dict[str, float]]
    tokenized_references: dict[Hashable, list[str]]
    tokenized_candidates: dict[Hashable, str]
    empty_candidates: list[Hashable] = field(default_factory=list)
    tokenizer: str = "python"
    skipped: list[str] = field(default_factory=list)


def resolve_metrics(metrics: Sequence[str] | None) -> list[str]:
    """Canonical metric names in evaluation order; None gives :data:`DEFAULT_METRICS`.

    Raises:
        ValueError: An unknown metric name.
    """
    if metrics is None:
        return list(DEFAULT_METRICS)
    if isinstance(metrics, str):
        metrics = [metrics]
    wanted = set()
    for name in metrics:
        canonical = _ALIASES.get(str(name).strip().lower())
        if canonical is None:
            raise ValueError(f"unknown metric {name!r}; choose from {', '.join(METRICS)}")
        wanted.add(canonical)
    return [m for m in METRICS if m in wanted]


def score_captions(
    references: Mapping[Hashable, Sequence[str]],
    candidates: Mapping[Hashable, str],
    metrics: Sequence[str] | None = None,
    tokenizer: str = "auto",
) -> dict[str, float]:
    """Corpus scores of candidate captions, equal to the official COCO caption evaluation.

    Args:
        references: Image id to its raw reference captions.
        candidates: Image id to its raw candidate caption; exactly the ids of ``references``.
        metrics: Any of ``Bleu``, ``METEOR``, ``ROUGE_L``, ``CIDEr``, ``SPICE`` (case-insensitive).
            None means ``Bleu, METEOR, ROUGE_L, CIDEr``, where METEOR is left out with a warning when
            java or pycocoevalcap is missing; a METEOR or SPICE named explicitly is required.
        tokenizer: PTB tokenizer backend: ``"auto"``, ``"java"`` or ``"python"``.

    Returns:
        ``{"Bleu_1": ..., "Bleu_2": ..., "Bleu_3": ..., "Bleu_4": ..., "METEOR": ..., "ROUGE_L": ...,
        "CIDEr": ...}`` for the metrics computed.

    Raises:
        ValueError: Ids differ between references and candidates (the message names some), a caption
            is not a string, or a metric name is unknown.
        ScorerUnavailableError: A Java-only metric or tokenizer was requested explicitly and java or
            pycocoevalcap is missing.
    """
    return score_captions_detailed(references, candidates, metrics, tokenizer).overall


def score_captions_detailed(
    references: Mapping[Hashable, Sequence[str]],
    candidates: Mapping[Hashable, str],
    metrics: Sequence[str] | None = None,
    tokenizer: str = "auto",
) -> CaptionScores:
    """Like :func:`score_captions`, also returning per-image scores and the tokenised captions."""
    empty = check_captions(references, candidates)
    names = resolve_metrics(metrics)
    backend = resolve_backend(tokenizer)
    if "METEOR" in names:
        start_meteor()  # its JVM loads while the tokenizer and the Python metrics run
    ids = list(references)
    flat = ptb_tokenize([c for i in ids for c in references[i]], backend)
    tok_refs: dict[Hashable, list[str]] = {}
    start = 0
    for i in ids:
        tok_refs[i] = flat[start : start + len(references[i])]
        start += len(references[i])
    tok_cands = dict(zip(ids, ptb_tokenize([candidates[i] for i in ids], backend)))
    if empty:
        logger.warning("%d of %d candidate captions are empty; they are scored as empty", len(empty), len(ids))

    result = CaptionScores({}, {i: {} for i in ids}, tok_refs, tok_cands, empty, backend)
    for name in sorted(names, key=lambda m: m in ("METEOR", "SPICE")):  # Java scorers last
        try:
            per_metric = _compute(name, tok_refs, tok_cands)
        except ScorerUnavailableError as e:
            if metrics is not None:
                raise
            warnings.warn(f"{name} left out: {e}", RuntimeWarning, stacklevel=2)
            result.skipped.append(name)
            continue
        for key, (corpus, per_image) in per_metric.items():
            result.overall[key] = corpus
            for image_id, value in zip(ids, per_image):
                result.per_image[image_id][key] = value
    order = {key: k for k, key in enumerate(_KEYS)}
    result.overall = dict(sorted(result.overall.items(), key=lambda kv: order[kv[0]]))
    for image_id, scores in result.per_image.items():
        result.per_image[image_id] = dict(sorted(scores.items(), key=lambda kv: order[kv[0]]))
    return result


def _compute(
    name: str, refs: Mapping[Hashable, list[str]], cands: Mapping[Hashable, str]
) -> dict[str, tuple[float, Sequence[float]]]:
    if name == "Bleu":
        corpus, per_image = bleu(refs, cands, 4)
        return {f"Bleu_{k + 1}": (corpus[k], per_image[k]) for k in range(4)}
    if name == "METEOR":
        return {name: meteor(refs, cands)}
    if name == "ROUGE_L":
        return {name: rouge_l(refs, cands)}
    if name == "CIDEr":
        corpus, scores = CiderD(refs).corpus_score(cands)
        return {name: (corpus, [float(s) for s in scores])}
    if name == "SPICE":
        return {name: spice(refs, cands)}
    raise ValueError(f"unknown metric {name!r}")
