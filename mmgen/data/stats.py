"""Dataset statistics: images, captions, vocabulary, caption lengths and images that fail to decode."""

from __future__ import annotations

import functools
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from mmgen.data.images import DEFAULT_MAX_PIXELS, BadImageError, decode_image, source_name
from mmgen.data.records import Record

# Scripts written without spaces between words: each character (with its vowel signs and tone marks)
# counts as a word there.
_NO_SPACE = (
    "\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff"  # Thai, Lao, Myanmar, Khmer
    "\u3040-\u30ff\u31f0-\u31ff\uff66-\uff9f"  # kana
    "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"  # CJK ideographs
)
_PIECE = re.compile(f"[{_NO_SPACE}]|[^{_NO_SPACE}]+")
_APOSTROPHES = "'\u2019"


@functools.cache
def _separators() -> dict[int, str]:
    """str.translate table: punctuation and symbols (Unicode categories P*, S*) become spaces, apostrophes stay."""
    return {
        c: " "
        for c in range(0x20000)  # the planes that hold punctuation, symbols and emoji
        if unicodedata.category(chr(c))[0] in "PS" and chr(c) not in _APOSTROPHES
    }


def caption_words(text: str) -> list[str]:
    """Lower-cased words without punctuation, in any script.

    Words are what whitespace and punctuation separate (accents and vowel signs stay in their word:
    'café', Arabic, Devanagari); in scripts written without spaces (Chinese, Japanese, Thai, ...) every
    character counts as one word. An apostrophe inside a word keeps it whole ("dog's").
    """
    words = []
    for token in text.lower().translate(_separators()).split():
        pieces: list[str] = []
        for piece in _PIECE.findall(token):
            if pieces and len(piece) == 1 and unicodedata.category(piece)[0] == "M":
                pieces[-1] += piece  # a combining sign (Thai vowel, tone mark) stays with its character
            else:
                pieces.append(piece)
        words += [w for w in (p.strip(_APOSTROPHES) for p in pieces) if w]
    return words


@dataclass
class DatasetStats:
    """Summary of a caption dataset."""

    images: int = 0
    captions: int = 0
    images_without_captions: int = 0
    vocabulary: Counter = field(default_factory=Counter)
    """Word counts over all captions."""
    lengths: Counter = field(default_factory=Counter)
    """Caption length in words (:func:`caption_words`) -> number of captions."""
    captions_per_image: Counter = field(default_factory=Counter)
    """Captions of an image -> number of images, over the images that have captions."""
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
        if rec.captions:
            st.captions_per_image[len(rec.captions)] += 1
        else:
            st.images_without_captions += 1
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
    captioned = st.images - st.images_without_captions
    lines = [
        f"images: {st.images} ({captioned} with captions, {st.images_without_captions} without)",
        f"captions: {st.captions} ({st.captions / max(captioned, 1):.2f} per image with captions)",
        f"images without captions: {st.images_without_captions}"
        + (" (not trained on; left out of the per-image counts)" if st.images_without_captions else ""),
        "captions per image (images with captions): "
        + ", ".join(f"{k}: {v}" for k, v in sorted(st.captions_per_image.items())),
        f"vocabulary size: {st.vocab_size} words",
        "most frequent words: " + ", ".join(f"{w} ({n})" for w, n in st.vocabulary.most_common(top_words)),
        "caption length histogram (words; characters in scripts written without spaces):",
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
        "images_with_captions": st.images - st.images_without_captions,
        "images_without_captions": st.images_without_captions,
        "captions": st.captions,
        "vocab_size": st.vocab_size,
        "caption_lengths": {str(k): v for k, v in sorted(st.lengths.items())},
        "captions_per_image": {str(k): v for k, v in sorted(st.captions_per_image.items())},
        "checked_images": st.checked_images,
        "failed": [[str(i), why] for i, why in st.failed],
    }
