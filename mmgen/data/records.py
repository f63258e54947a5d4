"""The record every reader returns (:class:`Record`: an image, its reference captions, its id and split) and
what every reader reports (:class:`DataFormatError` for malformed input, :func:`warn_dropped` for dropped
captions).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
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


def short(v: Any, n: int = 80) -> str:
    """``repr(v)``, cut to ``n`` characters."""
    s = repr(v)
    return s if len(s) <= n else s[: n - 3] + "..."


def checked_id(value: Any, where: str) -> Any:
    """An image id as a file gives it: an integer or a string (a list, an object or null cannot name an image).

    Raises:
        DataFormatError: Naming ``where`` and the value.
    """
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise DataFormatError(f"{where}: an image id must be an integer or a string, got {short(value)}")
    return value


class ImagePaths:
    """The image paths of one caption file, joined to its images folder ``root``.

    A name that leads outside the folder (an absolute path, or one through ``..``) is read from where it leads,
    and said once in a warning (``warn``: for formats whose names are file names in the folder, COCO and
    Karpathy); with ``strict`` it is refused instead. The report of an evaluation embeds every image it reads.

    Args:
        root: The images folder.
        source: The caption file, for messages.
        strict: Refuse names that lead outside ``root``.
        warn: Say once (:meth:`done`) which names led outside ``root``.
    """

    def __init__(self, root: str | os.PathLike, source: Any, strict: bool = False, warn: bool = True) -> None:
        self.root, self.source, self.strict, self.warn = Path(root), source, strict, warn
        self.outside: list[str] = []

    def join(self, name: Any, where: str) -> str:
        """The path of the image ``name`` (``where``: its place in the file, for messages).

        Raises:
            DataFormatError: ``name`` is not a non-empty string, or (strict) it leads outside the folder.
        """
        if not isinstance(name, str) or not name:
            raise DataFormatError(f"{where} must hold an image path, got {short(name)}")
        if os.path.isabs(name) or os.path.normpath(name).split(os.sep)[0] == "..":
            if self.strict:
                raise DataFormatError(
                    f"{where}: {name!r} leads outside the images folder {self.root} (refused: strict paths)"
                )
            self.outside.append(name)
        return name if os.path.isabs(name) else str(self.root / name)

    def done(self) -> None:
        """Warn once about the names that led outside the images folder (when ``warn``)."""
        if self.outside and self.warn:
            shown = ", ".join(map(repr, self.outside[:3])) + (", ..." if len(self.outside) > 3 else "")
            warnings.warn(
                f"{self.source}: {len(self.outside)} image path(s) lead outside the images folder {self.root} "
                f"({shown}) and are read from there; strict paths refuse them (--strict-paths, data.strict_paths)",
                stacklevel=3,
            )


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
