"""Safe image decoding: any file or bytes to an RGB PIL image, or a :class:`BadImageError` saying why not.

Decoding never touches PIL's global settings (``Image.MAX_IMAGE_PIXELS``,
``ImageFile.LOAD_TRUNCATED_IMAGES``) that other code in the process would see: the pixel limit is
checked on the header before any pixel is decoded, and truncated files are reported, not padded.

In training, a bad image is skipped and counted: the dataset yields a :class:`BadItem`, the collate
moves it to the batch's ``bad`` list and a :class:`BadImageTracker` on the main process adds the
lists up (this works with DataLoader worker processes, whose own counters the main process never
sees) and fails once more than ``max_bad_fraction`` of an epoch's items were bad.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mmgen.errors import RunFailed

logger = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 89_478_485
"""PIL's own default limit (about 0.25 GB of RGB data)."""

MAX_ASPECT_RATIO = 100
"""Longest side over shortest side beyond which an image is refused: the encoder's transform scales the short
side to the input size, so a 100000x1 image (within any pixel limit) would become 6.4M x 64 pixels. Up to this
ratio the resized image holds at most ``MAX_ASPECT_RATIO`` squares of the input size."""


class BadImageError(Exception):
    """An image that cannot be used; ``source`` names the file (or the record) and ``reason`` says why;
    ``too_large`` is true when it was refused for its size (too many pixels: a server answers 413)."""

    def __init__(self, source: str, reason: str, too_large: bool = False) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason
        self.too_large = too_large


class TooManyBadImagesError(RunFailed):
    """More than the allowed fraction of a training epoch's images could not be decoded."""


@dataclass
class BadItem:
    """What a dataset returns in place of an item whose image could not be decoded."""

    source: str
    reason: str
    image_id: Any = None


def source_name(image: Any, image_id: Any = None) -> str:
    """A short human-readable name for an image source (a path, or the record's id for in-memory data)."""
    if isinstance(image, (str, Path)):
        return str(image)
    kind = f"{len(image)} bytes" if isinstance(image, (bytes, bytearray)) else type(image).__name__
    return f"image_id={image_id} ({kind})" if image_id is not None else f"<{kind}>"


def _open(source: Any, name: str) -> Image.Image:
    """Open (header only) a path, bytes or PIL image; raises BadImageError for missing/empty/non-image data."""
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise BadImageError(name, _not_a_file(path))
        if path.stat().st_size == 0:
            raise BadImageError(name, "empty file (0 bytes)")
        fp: Any = path
    elif isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise BadImageError(name, "empty image data (0 bytes)")
        fp = io.BytesIO(source)
    else:
        raise BadImageError(name, f"unsupported image source type {type(source).__name__}")
    try:
        with warnings.catch_warnings():
            # our own limit is checked below; PIL's warning would only duplicate it
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(fp)
    except UnidentifiedImageError:
        raise BadImageError(name, "not an image (unrecognised or damaged header)") from None
    except Image.DecompressionBombError as e:
        raise BadImageError(name, f"too many pixels ({e})", too_large=True) from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        reason = "truncated image data" if "truncat" in str(e).lower() else "corrupt image header"
        raise BadImageError(name, f"{reason} ({e})") from None


def _not_a_file(path: Path) -> str:
    """Why a path that is not a regular file cannot be an image (a device such as /dev/zero is never read)."""
    if not path.exists():
        return "file not found" if not path.is_symlink() else "file not found (a broken symbolic link)"
    if path.is_dir():
        return "a directory, not an image file"
    kinds = (("is_char_device", "a character device"), ("is_block_device", "a block device"), ("is_fifo", "a pipe"))
    kind = next((what for test, what in kinds if getattr(path, test)()), "a special file")
    return f"not a regular file ({kind})"


def _check_size(im: Image.Image, name: str, max_pixels: int | None, max_aspect: float | None) -> None:
    """Refuse, from the header, an image whose decoding or resizing would take unbounded work."""
    w, h = im.size
    if w <= 0 or h <= 0:
        raise BadImageError(name, f"invalid size {w}x{h}")
    if max_pixels is not None and w * h > max_pixels:
        raise BadImageError(name, f"too many pixels: {w}x{h} = {w * h} > max_pixels {max_pixels}", too_large=True)
    if max_aspect is not None and max(w, h) > max_aspect * min(w, h):
        raise BadImageError(
            name,
            f"extreme aspect ratio: {w}x{h} is more than {max_aspect:g} times as long as it is wide (resized for "
            "the model its long side would grow without bound)",
        )


def _high_depth_to_rgb(im: Image.Image) -> Image.Image:
    """Scale 16-bit / 32-bit integer and float grey images to 8 bits.

    PIL's own ``convert('RGB')`` clips such values at 255, turning most 16-bit images white.
    I;16 data is scaled from 0..65535; I and F data keep 0..255 when they fit, are scaled from
    0..1 (float) or 0..65535 when they fit those ranges, and are min-max scaled otherwise.
    """
    a = np.asarray(im, dtype=np.float64)  # (H, W)
    if im.mode.startswith("I;16"):
        a = a / 257.0
    else:
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        if im.mode == "F" and lo >= 0.0 and hi <= 1.0:
            a = a * 255.0
        elif lo >= 0.0 and hi <= 255.0:
            pass
        elif lo >= 0.0 and hi <= 65535.0:
            a = a / 257.0
        else:
            a = (a - lo) / max(hi - lo, 1e-12) * 255.0
    grey = np.clip(np.rint(a), 0, 255).astype(np.uint8)
    return Image.fromarray(np.repeat(grey[:, :, None], 3, axis=2), mode="RGB")


def to_rgb(im: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Convert any PIL mode to RGB; transparent pixels are composited over ``background``.

    Alpha is composited rather than dropped because fully transparent pixels often hold
    arbitrary colours (black, or leftovers from editing).
    """
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in ("I", "F") or mode.startswith("I;16"):
        return _high_depth_to_rgb(im)
    if mode == "P" and "transparency" in im.info:
        im, mode = im.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        base = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(base, rgba).convert("RGB")
    return im.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


def decode_image(
    source: Any,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    min_size: int | None = None,
    name: str | None = None,
    max_aspect: float | None = MAX_ASPECT_RATIO,
) -> Image.Image:
    """Decode an image into an RGB PIL image with its EXIF orientation applied.

    Args:
        source: A path (str or Path), the encoded bytes, or an already opened PIL image.
        max_pixels: Reject images with more pixels than this (checked on the header, before decoding).
            ``None`` disables the check; PIL's own hard limit (twice its default) still applies.
        min_size: When set, JPEGs may be decoded at a reduced scale (1/2, 1/4, 1/8) as long as both
            sides stay >= ``min_size``; a large speed-up for big photos resized to a small input.
        name: How to name the source in errors (default: the path, or a description of the data).
        max_aspect: Reject images whose long side is more than this many times their short side (checked on
            the header; see :data:`MAX_ASPECT_RATIO`). ``None`` disables the check.

    Returns:
        A fully loaded RGB image.

    Raises:
        BadImageError: missing, empty, non-image, corrupt or truncated data, not a regular file, too many
            pixels or an extreme aspect ratio.
    """
    name = name or source_name(source)
    im = _open(source, name)
    _check_size(im, name, max_pixels, max_aspect)
    try:
        if min_size and im.format == "JPEG":
            im.draft(None, (min_size, min_size))  # keeps both sides >= min_size
        im.load()
    except OSError as e:
        msg = str(e)
        reason = "truncated image data" if "truncat" in msg.lower() else "corrupt image data"
        raise BadImageError(name, f"{reason} ({msg})") from None
    except (SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
        raise BadImageError(name, f"corrupt image data ({type(e).__name__}: {e})") from None
    try:
        im = ImageOps.exif_transpose(im)
    except Exception as e:  # noqa: BLE001 - a damaged EXIF block should not cost the image
        logger.debug("%s: EXIF orientation ignored (%s)", name, e)
    return to_rgb(im)


class BadImageTracker:
    """Adds up the ``bad`` lists of collated training batches on the main process.

    Args:
        max_bad_fraction: The largest allowed fraction of bad items per epoch.
        epoch_size: Items per epoch when known; the error is then raised as soon as the epoch can no
            longer stay under the limit, instead of at its end.
        log: Where the end-of-epoch summary goes (default: this module's logger at WARNING level).
    """

    def __init__(self, max_bad_fraction: float = 0.01, epoch_size: int | None = None, log: Any = None) -> None:
        self.max_bad_fraction = max_bad_fraction
        self.epoch_size = epoch_size
        self.log = log or logger.warning
        self.reset()

    def reset(self) -> None:
        """Start a new epoch."""
        self.seen = 0
        self.bad: list[tuple[str, str]] = []

    def update(self, batch: dict) -> None:
        """Count one collated batch (its good items and its ``bad`` list); raises past the limit."""
        bad = list(batch.get("bad", []))
        self.seen += len(batch.get("image_ids", [])) + len(bad)
        self.bad.extend(bad)
        if self.epoch_size and len(self.bad) > self.max_bad_fraction * self.epoch_size:
            raise TooManyBadImagesError(self._message(self.epoch_size))

    def _message(self, total: int) -> str:
        files = Counter(self.bad)
        listed = "; ".join(f"{src}: {why}" + (f" (x{n})" if n > 1 else "") for (src, why), n in files.most_common(20))
        more = f"; ... and {len(files) - 20} more" if len(files) > 20 else ""
        return (
            f"{len(self.bad)} of {total} training items had undecodable images "
            f"(more than max_bad_fraction={self.max_bad_fraction}): {listed}{more}"
        )

    def end_epoch(self, epoch: int | None = None) -> str:
        """Log a summary naming the bad files, raise if the fraction was exceeded, then reset.

        Returns:
            The summary ('' when every image decoded).
        """
        total = self.epoch_size or self.seen
        if total and len(self.bad) > self.max_bad_fraction * total:
            raise TooManyBadImagesError(self._message(total))
        summary = ""
        if self.bad:
            files = sorted(set(self.bad))
            head = f"epoch {epoch}: " if epoch is not None else ""
            summary = f"{head}skipped {len(self.bad)} of {self.seen} items with undecodable images: " + "; ".join(
                f"{src}: {why}" for src, why in files
            )
            self.log(summary)
        self.reset()
        return summary
