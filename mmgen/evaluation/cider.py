"""CIDEr-D exactly as pycocoevalcap's ``Cider`` computes it, built once and scored fast.

For each image the candidate and every reference become tf-idf vectors over 1..4-grams, with
``idf = log(N) - log(max(1, df))`` where ``df`` counts the images whose references contain the
n-gram and ``N`` is the number of images. The similarity per n-gram order is a cosine in which the
candidate's weights are clipped by the reference's (``min(c, r) * r``), multiplied by a Gaussian
penalty on the difference in length (``sigma = 6``; pycocoevalcap measures length in bigrams). The
image score is the mean over orders, averaged over references, times 10.

:class:`CiderD` precomputes document frequencies and all reference vectors as arrays, so scoring a
batch of candidates (e.g. SCST rewards, several samples per image) costs one pass over the candidates'
n-grams plus a few vectorised numpy operations.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence

import numpy as np

__all__ = ["CiderD"]

Ngram = tuple[str, ...]
# Keys pack (image index, n-gram id) into one int64; n-gram ids stay below this stride.
_KEY_STRIDE = 1 << 32


def _ngrams(words: Sequence[str], n: int) -> Counter[Ngram]:
    return Counter(tuple(words[i : i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1))


class CiderD:
    """CIDEr-D scorer over a fixed reference corpus.

    Args:
        references: Image id to its tokenised reference captions (``ptb_tokenize`` output).
        df_corpus: Where document frequencies (and ``N``) come from: another tokenised reference
            corpus such as the training captions; None uses ``references`` themselves, which is what
            the COCO evaluation does.
        n: Highest n-gram order.
        sigma: Width of the Gaussian length penalty.

    Memory grows with the number of distinct (image, n-gram) pairs times the largest number of
    references per image.
    """

    def __init__(
        self,
        references: Mapping[Hashable, Sequence[str]],
        df_corpus: Mapping[Hashable, Sequence[str]] | None = None,
        n: int = 4,
        sigma: float = 6.0,
    ) -> None:
        if not references:
            raise ValueError("CiderD needs at least one image with references")
        empty = [i for i, refs in references.items() if isinstance(refs, str) or len(refs) == 0]
        if empty:
            raise ValueError(f"CiderD needs a non-empty list of references per image; images {empty[:5]} have none")
        self.n, self.sigma = n, sigma
        ref_counts = {i: [_ngrams(r.split(), n) for r in refs] for i, refs in references.items()}
        if df_corpus is None:
            source = ref_counts.values()
            num_docs = len(ref_counts)
        else:
            source = ([_ngrams(r.split(), n) for r in refs] for refs in df_corpus.values())
            num_docs = len(df_corpus)
        self._df: Counter[Ngram] = Counter()
        for counts in source:
            self._df.update(set().union(*counts) if counts else set())
        self.log_num_docs = math.log(float(num_docs))
        # With document frequencies from the references, an n-gram they lack has df 0 (idf log N).
        self._external_df = df_corpus is not None
        self._build_reference_arrays(ref_counts)

    def _idf(self, gram: Ngram) -> float:
        return self.log_num_docs - math.log(max(1.0, self._df.get(gram, 0)))

    def _build_reference_arrays(self, ref_counts: Mapping[Hashable, list[Counter[Ngram]]]) -> None:
        self.image_index = {image_id: i for i, image_id in enumerate(ref_counts)}
        self._vocab: dict[Ngram, int] = {}
        self._vocab_idf: list[float] = []
        max_refs = max(len(refs) for refs in ref_counts.values())
        self._num_refs = np.array([len(refs) for refs in ref_counts.values()], dtype=np.float64)
        self._ref_len = np.zeros((len(ref_counts), max_refs))  # length in bigrams, (I, R)
        keys, slots, weights = [], [], []  # one entry per (image, reference, n-gram)
        for i, refs in enumerate(ref_counts.values()):
            for j, counts in enumerate(refs):
                for gram, tf in counts.items():
                    gid = self._vocab.get(gram)
                    if gid is None:
                        gid = self._vocab[gram] = len(self._vocab)
                        self._vocab_idf.append(self._idf(gram))
                    keys.append(i * _KEY_STRIDE + gid)
                    slots.append((i * max_refs + j) * self.n + len(gram) - 1)
                    weights.append(float(tf) * self._vocab_idf[gid])
                    if len(gram) == 2:
                        self._ref_len[i, j] += tf
        w = np.asarray(weights, dtype=np.float64)
        norm2 = np.bincount(
            np.asarray(slots, dtype=np.int64), weights=w * w, minlength=len(ref_counts) * max_refs * self.n
        )
        self._ref_norm = np.sqrt(norm2).reshape(len(ref_counts), max_refs, self.n)  # (I, R, n)
        # One row of reference weights per distinct (image, n-gram), rows sorted by key for lookups.
        self._keys, row = np.unique(np.asarray(keys, dtype=np.int64), return_inverse=True)
        ref_index = np.asarray(slots, dtype=np.int64) // self.n % max_refs
        self._weights = np.zeros((len(self._keys), max_refs))  # (K, R)
        self._weights[row.reshape(-1), ref_index] = w

    def score(self, image_ids: Sequence[Hashable], candidates: Sequence[str]) -> np.ndarray:
        """CIDEr-D of each candidate against the references of its image.

        Args:
            image_ids: Image of each candidate (repeats allowed, e.g. several samples per image).
            candidates: Tokenised candidate captions, same length as ``image_ids``.

        Returns:
            Float64 array of per-candidate scores.
        """
        if len(image_ids) != len(candidates):
            raise ValueError(f"{len(image_ids)} image ids but {len(candidates)} candidates")
        unknown = [i for i in image_ids if i not in self.image_index]
        if unknown:
            raise KeyError(f"no references for image ids {unknown[:5]}")
        num = len(candidates)
        img = np.fromiter((self.image_index[i] for i in image_ids), dtype=np.int64, count=num)
        cache: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, list[float], int]] = {}
        feats = []
        for caption in candidates:
            feat = cache.get(caption)
            if feat is None:  # identical captions (common among SCST samples) are analysed once
                feat = cache[caption] = self._features(caption.split())
            feats.append(feat)
        norm2 = np.array([f[3] for f in feats], dtype=np.float64).reshape(num, self.n)
        length = np.array([f[4] for f in feats], dtype=np.float64)
        counts = np.array([len(f[0]) for f in feats], dtype=np.int64)
        cand = np.repeat(np.arange(num, dtype=np.int64), counts)
        gids = np.concatenate([f[0] for f in feats]) if num else np.zeros(0, dtype=np.int64)
        orders = np.concatenate([f[1] for f in feats]) if num else np.zeros(0, dtype=np.int64)
        weights = np.concatenate([f[2] for f in feats]) if num else np.zeros(0)
        sims = self._similarities(num, cand, orders, img[cand] * _KEY_STRIDE + gids, weights)  # (C, n, R)
        denom = np.sqrt(norm2)[:, :, None] * self._ref_norm[img].transpose(0, 2, 1)
        np.divide(sims, denom, out=sims, where=denom != 0)
        delta = length[:, None] - self._ref_len[img]  # (C, R)
        sims *= np.exp(-(delta**2) / (2 * self.sigma**2))[:, None, :]
        return sims.mean(axis=1).sum(axis=1) / self._num_refs[img] * 10.0

    def _features(self, words: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[float], int]:
        """(n-gram ids known to the references, their orders, tf-idf weights, squared norm per order,
        length in bigrams) of one candidate."""
        vocab_get, vocab_idf = self._vocab.get, self._vocab_idf
        gids: list[int] = []
        orders: list[int] = []
        weights: list[float] = []
        norm2 = []
        for k in range(self.n):
            total = 0.0
            for gram, tf in Counter(zip(*[words[i:] for i in range(k + 1)])).items():
                gid = vocab_get(gram)
                if gid is None:  # an n-gram no reference has cannot match, but it counts in the norm
                    weight = float(tf) * (self._idf(gram) if self._external_df else self.log_num_docs)
                else:
                    weight = float(tf) * vocab_idf[gid]
                    gids.append(gid)
                    orders.append(k)
                    weights.append(weight)
                total += weight * weight
            norm2.append(total)
        return (
            np.array(gids, dtype=np.int64),
            np.array(orders, dtype=np.int64),
            np.array(weights, dtype=np.float64),
            norm2,
            max(len(words) - 1, 0),
        )

    def _similarities(
        self, num: int, cand: np.ndarray, order: np.ndarray, keys: np.ndarray, weight: np.ndarray
    ) -> np.ndarray:
        """Sum over shared n-grams of ``min(c, r) * r`` per candidate, order and reference: (C, n, R)."""
        refs = self._weights.shape[1]
        out = np.zeros((num * self.n, refs))
        if len(keys) == 0 or len(self._keys) == 0:
            return out.reshape(num, self.n, refs)
        pos = np.minimum(np.searchsorted(self._keys, keys), len(self._keys) - 1)
        found = self._keys[pos] == keys
        ref_w = self._weights[pos[found]]  # (E, R)
        contrib = np.minimum(weight[found][:, None], ref_w) * ref_w
        slot = cand[found] * self.n + order[found]
        for r in range(refs):
            out[:, r] = np.bincount(slot, weights=contrib[:, r], minlength=num * self.n)
        return out.reshape(num, self.n, refs)

    def corpus_score(self, candidates: Mapping[Hashable, str]) -> tuple[float, np.ndarray]:
        """Mean and per-image CIDEr-D for one candidate per reference image, in reference order."""
        ids = list(self.image_index)
        scores = self.score(ids, [candidates[i] for i in ids])
        return float(np.mean(scores)), scores
