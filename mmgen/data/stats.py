"""Dataset statistics: images, captions, vocabulary, caption lengths and images that fail to decode."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from mmgen.data.formats import Record
from mmgen.data.images import DEFAULT_MAX_PIXELS, BadImageError, decode_image, source_name

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def caption_words(text: str) -> list[str]:
    """Lower-cased words without punctuation (roughly what COCO's PTB tokenisation keeps)."""
    return _WORD.findall(text.lower())


@dataclass
class DatasetStats:
    """Summary of a caption dataset."""

    images: int = 0
    captions: int = 0
    images_without_captions: int = 0
    vocabulary: Counter = field(default_factory=Counter)
    """Word counts over all captions."""
    lengths: Counter = field(default_factory=Counter)
    """Caption length in words -> number of captions."""
    captions_per_image: Counter = field(default_factory=Counter)
    failed: list[tuple[Any, str]] = field(default_factory=list)
    """(image_id, 'source: reason') of every image that failed to decode (when images were checked)."""
    checked_images: int = 0

    @property
    def vocab_size(self) -> int:
        return len(self.vocabulary)


def _check(rec: Record, max_pixels: int | None) -> tuple[Any, str] | None:
    try:
        decode_image(rec.image, max_pixels, name=source_name(rec.image, rec.image_id))
    except BadImageError as e:
        return rec.image_id, str(e)
    return None


def dataset_stats(
    records: Iterable[Record],
    decode: bool = True,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    workers: int = 4,
    max_images: int | None = None,
) -> DatasetStats:
    """Count images, captions and words, and (optionally) try to decode every image.

    Args:
        records: The dataset.
        decode: Decode every image to find the ones that fail.
        max_pixels: The pixel limit used when decoding.
        workers: Decoding threads (PIL releases the GIL while decoding).
        max_images: Stop after this many records.
    """
    st = DatasetStats()
    to_check: list[Record] = []
    for i, rec in enumerate(records):
        if max_images is not None and i >= max_images:
            break
        st.images += 1
        st.captions += len(rec.captions)
        st.captions_per_image[len(rec.captions)] += 1
        st.images_without_captions += not rec.captions
        for c in rec.captions:
            words = caption_words(c)
            st.vocabulary.update(words)
            st.lengths[len(words)] += 1
        if decode:
            to_check.append(rec)
    if to_check:
        with ThreadPoolExecutor(max(1, workers)) as pool:
            results = pool.map(lambda r: _check(r, max_pixels), to_check)
            st.failed = [r for r in results if r is not None]
        st.checked_images = len(to_check)
    return st


def _histogram(counts: Counter, width: int = 40) -> list[str]:
    if not counts:
        return ["  (none)"]
    top = max(counts.values())
    return [f"  {k:>4} {n:>8}  " + "#" * max(1, round(width * n / top)) for k, n in sorted(counts.items())]


def format_stats(st: DatasetStats, top_words: int = 20) -> str:
    """A human-readable report of :func:`dataset_stats`."""
    lines = [
        f"images: {st.images}",
        f"captions: {st.captions} ({st.captions / max(st.images, 1):.2f} per image)",
        f"images without captions: {st.images_without_captions}",
        "captions per image: " + ", ".join(f"{k}: {v}" for k, v in sorted(st.captions_per_image.items())),
        f"vocabulary size: {st.vocab_size} words",
        "most frequent words: " + ", ".join(f"{w} ({n})" for w, n in st.vocabulary.most_common(top_words)),
        "caption length (words) histogram:",
        *_histogram(st.lengths),
    ]
    if st.checked_images:
        lines.append(f"images that fail to decode: {len(st.failed)} of {st.checked_images}")
        lines += [f"  {image_id}: {why}" for image_id, why in st.failed]
    else:
        lines.append("images not decoded")
    return "\n".join(lines)


def stats_dict(st: DatasetStats) -> dict:
    """The statistics as plain JSON-ready data."""
    return {
        "images": st.images,
        "captions": st.captions,
        "images_without_captions": st.images_without_captions,
        "vocab_size": st.vocab_size,
        "caption_lengths": {str(k): v for k, v in sorted(st.lengths.items())},
        "captions_per_image": {str(k): v for k, v in sorted(st.captions_per_image.items())},
        "checked_images": st.checked_images,
        "failed": [[str(i), why] for i, why in st.failed],
    }
