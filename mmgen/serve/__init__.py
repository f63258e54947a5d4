"""Serving a captioner over HTTP: ``mmgen serve`` (needs the ``serve`` extra: FastAPI, uvicorn, python-multipart).

* :mod:`mmgen.serve.batcher` -- dynamic batching of concurrent requests into one search (no web imports);
* :mod:`mmgen.serve.app` -- the FastAPI app: ``POST /v1/caption``, ``GET /v1/model``, ``GET /health``, the page at
  ``/``;
* :mod:`mmgen.serve.prometheus_metrics` -- Prometheus metrics at ``GET /metrics`` (``prometheus-client``);
* :mod:`mmgen.serve.server` -- running the app with uvicorn, in the foreground or on a background thread;
* :mod:`mmgen.serve.loadtest` -- a bounded load test against a running server.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, fields

SERVE_PACKAGES = {"fastapi": "fastapi", "uvicorn": "uvicorn", "multipart": "python-multipart"}


def missing_packages() -> list[str]:
    """The pip names of the serving packages that are not installed."""
    return [pip for module, pip in SERVE_PACKAGES.items() if importlib.util.find_spec(module) is None]


@dataclass
class ServeSettings:
    """Limits and batching of the server (``mmgen serve --help`` has the same names)."""

    max_batch: int = 32
    """Most images per batched search."""
    max_wait_ms: float = 5.0
    """Longest a request waits for others to join its batch."""
    max_queue: int = 256
    """Most requests waiting; beyond it a request gets 429."""
    max_body_bytes: int = 10 * 2**20
    """Largest request body (the encoded image plus options); beyond it 413."""
    max_pixels: int = 40_000_000
    """Largest image (width x height, read from the header before decoding); beyond it 413."""
    max_beams: int = 8
    """Largest ``beams`` a request may ask for."""
    max_new_tokens: int = 64
    """Largest ``max_new_tokens`` a request may ask for."""
    model_name: str = ""
    """How ``/health`` names the model."""
    max_images: int = 32
    """Most images in one request (``images`` or several ``image`` fields); beyond it 413."""

    def __post_init__(self) -> None:
        """Refuse settings the server cannot run with (a NaN wait would hang every request, an infinite one kill
        the worker); all problems in one ``ValueError``, each naming its field."""
        problems = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "int" and (type(value) is not int or value < 1):
                problems.append(f"{f.name} must be an integer >= 1, got {value!r}")
        wait = self.max_wait_ms
        if isinstance(wait, bool) or not isinstance(wait, (int, float)) or not (0 <= wait <= MAX_WAIT_MS):
            problems.append(f"max_wait_ms must be a number in [0, {MAX_WAIT_MS:g}], got {wait!r}")
        if problems:
            raise ValueError("; ".join(problems))


MAX_WAIT_MS = 60_000.0
"""The longest batch gathering window ``max_wait_ms`` may set (a NaN or an infinity is refused too)."""
