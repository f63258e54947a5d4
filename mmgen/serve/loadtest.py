"""A bounded load test of a running ``mmgen serve``: N requests from C client threads, latencies and answers.

Only the standard library is used on the client side (``http.client``, one keep-alive connection per
thread), so the client costs little next to the server. The number of requests is fixed and every
request has a timeout: the test always ends.
"""

from __future__ import annotations

import http.client
import json
import statistics
import threading
import time
import uuid
from dataclasses import dataclass, field
from urllib.parse import urlsplit


def multipart(image: bytes, filename: str, options: dict | None = None) -> tuple[bytes, str]:
    """A multipart/form-data body with the file as field ``image`` and the options as text fields."""
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n".encode()
        + image
        + b"\r\n"
    ]
    for key, value in (options or {}).items():
        text = ",".join(value) if isinstance(value, (list, tuple)) else str(value)
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{text}\r\n'.encode())
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


@dataclass
class LoadReport:
    """Outcome of :func:`run_load`.

    Attributes:
        requests: Requests sent.
        concurrency: Client threads.
        seconds: Wall time from the first request to the last answer.
        latencies: Seconds per request, in request order.
        statuses: HTTP status per request.
        answers: The JSON answer per request (None when it was not JSON).
    """

    requests: int
    concurrency: int
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    answers: list[dict | None] = field(default_factory=list)

    @property
    def throughput(self) -> float:
        """Requests per second."""
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        """Latency percentile ``q`` (0..100) in milliseconds (nearest rank)."""
        ordered = sorted(self.latencies)
        rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
        return ordered[rank] * 1000

    @property
    def mean_batch(self) -> float:
        sizes = [a["batch_size"] for a in self.answers if a and "batch_size" in a]
        return statistics.fmean(sizes) if sizes else 0.0

    def summary(self) -> str:
        return (
            f"{self.requests} requests, {self.concurrency} clients: {self.throughput:.1f} req/s, "
            f"p50 {self.percentile(50):.1f} ms, p99 {self.percentile(99):.1f} ms, mean batch {self.mean_batch:.1f}"
        )


def run_load(
    url: str,
    images: list[tuple[str, bytes]],
    requests: int,
    concurrency: int,
    options: dict | None = None,
    timeout: float = 120.0,
) -> LoadReport:
    """Send ``requests`` captioning requests from ``concurrency`` threads; request i uploads ``images[i % len]``.

    Args:
        url: The server, ``http://host:port``.
        images: ``(file name, encoded bytes)`` pairs.
        requests: How many requests in all.
        concurrency: Client threads, each with one keep-alive connection.
        options: Form fields sent with every request (``beams``, ...).
        timeout: Seconds a single request may take.
    """
    parts = urlsplit(url)
    report = LoadReport(requests, concurrency)
    report.latencies, report.statuses, report.answers = [0.0] * requests, [0] * requests, [None] * requests
    bodies = [multipart(data, name, options) for name, data in images]
    counter = iter(range(requests))
    lock = threading.Lock()

    def client() -> None:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
        try:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                body, kind = bodies[i % len(bodies)]
                start = time.perf_counter()
                conn.request("POST", "/v1/caption", body=body, headers={"Content-Type": kind})
                response = conn.getresponse()
                raw = response.read()
                report.latencies[i] = time.perf_counter() - start
                report.statuses[i] = response.status
                try:
                    report.answers[i] = json.loads(raw)
                except ValueError:
                    report.answers[i] = None
        finally:
            conn.close()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout * requests)
    report.seconds = time.perf_counter() - start
    return report
