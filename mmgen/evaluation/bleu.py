"""BLEU-1..4 exactly as pycocoevalcap computes it (pure Python).

Corpus BLEU sums clipped n-gram matches and guesses over all images; the brevity penalty uses, for
each image, the reference length closest to the candidate length (ties to the shorter one). The
smoothing constants ``tiny`` and ``small`` and the order of floating-point operations follow
pycocoevalcap's ``BleuScorer`` so the numbers match to the last bit.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence

__all__ = ["bleu"]

_TINY = 1e-15  # so that a zero match count still gives 0 and not 0/0
_SMALL = 1e-9


def _ngram_counts(words: Sequence[str], n: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(words[i : i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1))


def _image_stats(candidate: str, references: Sequence[str], n: int) -> tuple[int, int, list[int], list[int]]:
    """(candidate length, closest reference length, guesses per order, clipped matches per order)."""
    max_ref: dict[tuple[str, ...], int] = {}
    ref_lens = []
    for ref in references:
        words = ref.split()
        ref_lens.append(len(words))
        for gram, count in _ngram_counts(words, n).items():
            if count > max_ref.get(gram, 0):
                max_ref[gram] = count
    words = candidate.split()
    test_len = len(words)
    correct = [0] * n
    for gram, count in _ngram_counts(words, n).items():
        correct[len(gram) - 1] += min(max_ref.get(gram, 0), count)
    guess = [max(0, test_len - k + 1) for k in range(1, n + 1)]
    ref_len = min((abs(length - test_len), length) for length in ref_lens)[1]
    return test_len, ref_len, guess, correct


def _bleu_from_stats(test_len: float, ref_len: float, guess: Sequence[int], correct: Sequence[int]) -> list[float]:
    scores = []
    product = 1.0
    for k in range(len(guess)):
        product *= (float(correct[k]) + _TINY) / (float(guess[k]) + _SMALL)
        scores.append(product ** (1.0 / (k + 1)))
    ratio = (test_len + _TINY) / (ref_len + _SMALL)
    if ratio < 1:
        scores = [s * math.exp(1 - 1 / ratio) for s in scores]
    return scores


def bleu(
    references: Mapping[Hashable, Sequence[str]], candidates: Mapping[Hashable, str], n: int = 4
) -> tuple[list[float], list[list[float]]]:
    """Corpus and per-image BLEU-1..n on tokenised captions.

    Args:
        references: Image id to its tokenised reference captions (at least one each).
        candidates: Image id to its tokenised candidate caption; same ids as ``references``.
        n: Highest n-gram order.

    Returns:
        ``(corpus, per_image)``: ``corpus[k]`` is BLEU-(k+1) of the corpus and ``per_image[k]`` lists
        BLEU-(k+1) of each image in the order of ``references``.
    """
    total_test, total_ref = 0, 0
    total_guess, total_correct = [0] * n, [0] * n
    per_image: list[list[float]] = [[] for _ in range(n)]
    for image_id, refs in references.items():
        test_len, ref_len, guess, correct = _image_stats(candidates[image_id], refs, n)
        total_test += test_len
        total_ref += ref_len
        for k in range(n):
            total_guess[k] += guess[k]
            total_correct[k] += correct[k]
        for k, score in enumerate(_bleu_from_stats(test_len, ref_len, guess, correct)):
            per_image[k].append(score)
    return _bleu_from_stats(total_test, total_ref, total_guess, total_correct), per_image
