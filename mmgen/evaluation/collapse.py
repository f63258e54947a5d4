"""Caption-collapse monitor: is the model saying the same thing for every image?"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping
from typing import Any

__all__ = ["collapse_stats", "collapse_warning", "normalize_caption"]

COLLAPSE_SHARE = 0.5
"""A model collapses when at least this share of its captions is one caption."""

_TRAILING_PUNCT = re.compile(r"[\s.!?,;:]+$")


def normalize_caption(caption: str) -> str:
    """Lower case, single spaces, no trailing punctuation: ``"A dog ."`` and ``"a dog"`` count as one."""
    return _TRAILING_PUNCT.sub("", " ".join(caption.lower().split()))


def collapse_stats(candidates: Mapping[Hashable, str] | Iterable[str]) -> dict[str, Any]:
    """Diversity statistics of generated captions.

    Args:
        candidates: Captions, or a mapping from image id to caption.

    Returns:
        ``num_captions``; ``num_empty``; ``distinct_fraction`` (distinct normalised captions over
        captions: near 0 means collapse); ``vocab_size`` (distinct lower-cased words);
        ``most_common_caption`` and ``most_common_share`` (its fraction of all captions);
        ``mean_length`` (words per caption).
    """
    captions = list(candidates.values()) if isinstance(candidates, Mapping) else list(candidates)
    normalized = [normalize_caption(c) for c in captions]
    counts = Counter(normalized)
    words = [c.lower().split() for c in captions]
    most_common, top = counts.most_common(1)[0] if counts else ("", 0)
    total = len(captions)
    return {
        "num_captions": total,
        "num_empty": sum(1 for c in normalized if not c),
        "distinct_fraction": len(counts) / total if total else 0.0,
        "vocab_size": len({w for ws in words for w in ws}),
        "most_common_caption": most_common,
        "most_common_share": top / total if total else 0.0,
        "mean_length": sum(len(ws) for ws in words) / total if total else 0.0,
    }


def collapse_warning(stats: Mapping[str, Any]) -> str | None:
    """One line when :func:`collapse_stats` shows caption collapse (:data:`COLLAPSE_SHARE` or more of the captions
    are one caption), else None."""
    share, total = stats.get("most_common_share", 0.0), stats.get("num_captions", 0)
    if not isinstance(share, float) or share < COLLAPSE_SHARE or not total or round(share * total) <= 1:
        return None  # collapse is one caption said at least twice
    said = stats.get("most_common_caption")
    which = f" ('{said}')" if isinstance(said, str) else ""
    return (
        f"caption collapse: {share:.0%} of the {int(total)} captions are the same caption{which}; "
        f"distinct captions {stats.get('distinct_fraction', 0.0):.3f}"
    )
