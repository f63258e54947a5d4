"""Prometheus metrics of ``mmgen serve`` at ``GET /metrics`` (``prometheus-client``, in the ``serve`` extra).

Per app (one registry each, so that several apps in one process do not mix): requests by endpoint and status,
request latency, images per batched search, the queue's depth, failed searches and images captioned. The names
follow Prometheus' conventions (``_total`` counters, ``_seconds`` histograms).
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable

PACKAGE = "prometheus-client"


def available() -> bool:
    """Whether ``prometheus_client`` is installed."""
    return importlib.util.find_spec("prometheus_client") is not None


class ServerMetrics:
    """The metrics of one app: :meth:`observe_request` per HTTP request, :meth:`observed` wraps the search."""

    def __init__(self, queue_depth: Callable[[], float] = lambda: 0) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter(
            "mmgen_requests", "HTTP requests answered", ["endpoint", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "mmgen_request_duration_seconds",
            "Time from a request's arrival to its answer",
            ["endpoint"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "mmgen_batch_size",
            "Images per batched search",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=self.registry,
        )
        self.images = Counter("mmgen_images", "Images captioned", registry=self.registry)
        self.failures = Counter(
            "mmgen_search_failures", "Batched searches that raised an error", registry=self.registry
        )
        self.queue = Gauge("mmgen_queue_depth", "Requests waiting for a batch", registry=self.registry)
        self.queue.set_function(queue_depth)

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def observed(self, generate: Callable) -> Callable:
        """``generate`` counting its batches' sizes, images and failures."""

        def run(pixels, gen, **options):
            self.batch_size.observe(len(pixels))
            try:
                out = generate(pixels, gen, **options)
            except Exception:
                self.failures.inc()
                raise
            self.images.inc(len(pixels))
            return out

        return run

    def exposition(self) -> tuple[bytes, str]:
        """The text format Prometheus scrapes, and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class RequestTimer:
    """ASGI middleware timing every HTTP request (its endpoint path, its status) into :class:`ServerMetrics`."""

    def __init__(self, app, metrics: ServerMetrics, endpoints: tuple[str, ...]) -> None:
        self.app, self.metrics, self.endpoints = app, metrics, endpoints

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        endpoint = path if path in self.endpoints else "other"  # bounded label values
        started, status = time.perf_counter(), 500

        async def record(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record)
        finally:
            self.metrics.observe_request(endpoint, status, time.perf_counter() - started)


def measure(generate: Callable) -> tuple[ServerMetrics | None, Callable]:
    """New metrics and ``generate`` observed by them; ``(None, generate)`` without ``prometheus_client``."""
    if not available():
        return None, generate
    metrics = ServerMetrics()
    return metrics, metrics.observed(generate)


def add_metrics(app, metrics: ServerMetrics | None, endpoints: tuple[str, ...]) -> None:
    """``GET /metrics`` on a FastAPI app, and the timing of every request to ``endpoints``; without
    ``prometheus_client`` (``metrics`` None) ``/metrics`` answers 501 naming the package."""
    from fastapi.responses import JSONResponse, Response

    if metrics is not None:
        app.add_middleware(RequestTimer, metrics=metrics, endpoints=endpoints)

    @app.get("/metrics", include_in_schema=False)
    async def exposition() -> Response:
        """Prometheus metrics (text exposition format)."""
        if metrics is None:
            return JSONResponse({"error": f"metrics need {PACKAGE}: pip install {PACKAGE}"}, status_code=501)
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)
