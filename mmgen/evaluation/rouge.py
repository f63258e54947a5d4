"""ROUGE-L as pycocoevalcap computes it for COCO captions (pure Python).

Per image: the longest common subsequence with each reference gives a precision and a recall; the
best precision and the best recall (taken independently) combine into an F-measure with
``beta = 1.2``. The corpus score is the mean over images. Captions are split on single spaces, as in
pycocoevalcap, so an empty caption is one empty token.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np

__all__ = ["rouge_l"]

BETA = 1.2


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    if len(a) < len(b):
        a, b = b, a
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if x == y else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def rouge_l_image(candidate: str, references: Sequence[str]) -> float:
    """ROUGE-L of one tokenised candidate against its tokenised references."""
    cand = candidate.split(" ")
    precisions, recalls = [], []
    for reference in references:
        ref = reference.split(" ")
        lcs = _lcs_length(ref, cand)
        precisions.append(lcs / float(len(cand)))
        recalls.append(lcs / float(len(ref)))
    prec, rec = max(precisions), max(recalls)
    if prec == 0 or rec == 0:
        return 0.0
    return ((1 + BETA**2) * prec * rec) / float(rec + BETA**2 * prec)


def rouge_l(
    references: Mapping[Hashable, Sequence[str]], candidates: Mapping[Hashable, str]
) -> tuple[float, list[float]]:
    """Corpus (mean) and per-image ROUGE-L, per image in the order of ``references``."""
    scores = [rouge_l_image(candidates[image_id], refs) for image_id, refs in references.items()]
    mean = float(np.mean(scores)) if scores else 0.0
    return mean, scores
