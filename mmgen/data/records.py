"""The record every reader returns (:class:`Record`: an image, its reference captions, its id and split) and
what every reader reports (:class:`DataFormatError` for malformed input, :func:`warn_dropped` for dropped
captions).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


class DataFormatError(ValueError):
    """Malformed dataset input; the message names the file and, where it applies, the line or key."""


class DerivedId(str):
    """An image_id made from the image's file name or row position because the data gives none.

    It equals the plain string (results files and reports are unchanged); it only tells the train/val
    overlap check (:func:`mmgen.data.sources.overlapping_images`) not to take it for an identity.
    """

    __slots__ = ()


def warn_dropped(path: Any, where: Sequence[str], what: str = "empty caption(s)") -> None:
    """Say how many captions of a file were dropped (empty or whitespace only), naming a few places."""
    if not where:
        return
    shown = ", ".join(where[:5]) + (", ..." if len(where) > 5 else "")
    warnings.warn(f"{path}: dropped {len(where)} {what} ({shown})", stacklevel=3)


@dataclass
class Record:
    """One image with its reference captions.

    Attributes:
        image: A path (str or Path), the encoded bytes, or a PIL image.
        captions: Reference captions (at least one for training; may be empty for caption-only use).
        image_id: The dataset's id for the image (COCO id, file stem, ...); unique within a dataset.
        split: 'train' / 'val' / 'test' / 'restval' when the source says, else None.
    """

    image: Any
    captions: list[str] = field(default_factory=list)
    image_id: Any = None
    split: str | None = None

    def __repr__(self) -> str:
        image = f"<{len(self.image)} bytes>" if isinstance(self.image, (bytes, bytearray)) else repr(self.image)
        return f"Record(image={image}, captions={self.captions!r}, image_id={self.image_id!r}, split={self.split!r})"
