"""Images that arrive as something other than a file: an http(s) URL (downloaded with a timeout and a size limit)
or a numpy array (HWC uint8, as OpenCV, imageio and ``np.asarray(pil_image)`` give them). Both end up in the same
safe decoder as files (:func:`mmgen.data.images.decode_image`: pixel limit, RGB)."""

from __future__ import annotations

import urllib.error
import urllib.request
from typing import Any

from PIL import Image

from mmgen.data.images import BadImageError

DEFAULT_TIMEOUT = 10.0
"""Seconds a download may wait for the server (to connect, and between reads)."""
DEFAULT_MAX_BYTES = 20 * 2**20
"""The largest image a download may bring (20 MiB); a larger one is refused before it is all read."""


def is_url(source: Any) -> bool:
    """Whether ``source`` is an http(s) URL string."""
    return isinstance(source, str) and source.lower().startswith(("http://", "https://"))


def fetch_url(url: str, timeout: float = DEFAULT_TIMEOUT, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """The body of an http(s) URL, at most ``max_bytes`` long.

    Raises:
        BadImageError: The download failed (HTTP status, network error, timeout) or the body is too large;
            the message names the URL and the reason.
    """
    if not is_url(url):
        raise BadImageError(url, "only http:// and https:// URLs are downloaded")
    request = urllib.request.Request(url, headers={"User-Agent": "mmgen", "Accept": "image/*"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - the scheme is checked
            declared = response.headers.get("Content-Length")
            if declared is not None and declared.isdigit() and int(declared) > max_bytes:
                raise BadImageError(url, f"{int(declared)} bytes is over the download limit of {max_bytes} bytes")
            data = response.read(max_bytes + 1)
    except urllib.error.HTTPError as e:
        raise BadImageError(url, f"download failed: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:  # TimeoutError is an OSError
        reason = getattr(e, "reason", e)
        raise BadImageError(url, f"download failed: {reason}") from None
    if len(data) > max_bytes:
        raise BadImageError(url, f"over the download limit of {max_bytes} bytes")
    return data


def array_to_image(array: Any, name: str) -> Image.Image:
    """A PIL image of a numpy array: ``(H, W)`` grey, ``(H, W, 1)``, ``(H, W, 3)`` RGB or ``(H, W, 4)`` RGBA, uint8.

    Channels are taken as RGB: convert OpenCV's BGR first (``image[..., ::-1]`` or ``cv2.cvtColor``).

    Raises:
        BadImageError: Another shape or dtype (the message says which were expected).
    """
    import numpy as np

    a = np.asarray(array)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    shape_ok = a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))
    if not shape_ok or a.dtype != np.uint8 or 0 in a.shape:
        raise BadImageError(
            name,
            f"array of shape {tuple(a.shape)} and dtype {a.dtype}; expected uint8 (H, W), (H, W, 3) RGB or "
            "(H, W, 4) RGBA (convert floats with (x * 255).round().astype('uint8'))",
        )
    return Image.fromarray(np.ascontiguousarray(a))
