"""Dynamic batching: requests from many threads are gathered into one batched search on one worker thread.

A request is one preprocessed image plus the settings that shape its search (generation settings and
prompt). The worker takes the oldest queued request and, for at most ``max_wait`` seconds after that
request arrived, gathers the queued requests with the same settings, up to ``max_batch`` images; then
it captions them in one call of the model's ``generate``. Requests queued while a
batch runs have already waited, so the next batch leaves at once. Requests with other settings wait
for a later batch (oldest first). A lone request while the last batch was a single one too (one client at
a time) leaves at once: waiting could gather nothing and would only add latency. The queue is bounded:
:meth:`Batcher.submit` raises :class:`QueueFull` rather than letting latency grow without limit.

One thread runs every search, so the model is never used from two threads at once. A batch whose search fails
fails its requests with the error (logged in one line) and the worker goes on with the next; :attr:`Batcher.state`
says whether it is running (what ``/health`` reports).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from mmgen.config import GenerationConfig

if TYPE_CHECKING:
    from mmgen.generation import GeneratedCaptions

logger = logging.getLogger("mmgen.serve")

Generate = Callable[..., "GeneratedCaptions"]
"""``generate(pixels, gen, prompt=...)``: the captions of a batch of images (``CaptionModel.generate``)."""


class QueueFull(RuntimeError):
    """The queue holds ``max_queue`` requests already; the caller should retry later (HTTP 429)."""


@dataclass
class Job:
    """One image waiting for its captions."""

    pixels: torch.Tensor  # (3, H, W), preprocessed
    gen: GenerationConfig
    prompt: str | None
    future: Future = field(default_factory=Future)
    arrived: float = field(default_factory=time.monotonic)

    @property
    def key(self) -> Hashable:
        """Jobs with equal keys can share a batch."""
        return self.gen, self.prompt


@dataclass
class BatchResult:
    """What a job's future resolves to."""

    captions: list[str]
    scores: list[float]
    batch_size: int
    queued_ms: float
    truncated: list[bool] = field(default_factory=list)
    """Per caption: it stopped at ``max_new_tokens`` (no end-of-sequence token)."""


class Batcher:
    """Gathers :class:`Job` s into batches and captions them on a worker thread.

    Args:
        generate: Captions a batch: ``generate(pixels (B, 3, H, W), gen, prompt=...)``, a model's
            :meth:`~mmgen.models.CaptionModel.generate` (called by the worker thread only).
        max_batch: Most images per search.
        max_wait: Longest a request waits for others to join its batch, in seconds.
        max_queue: Most requests waiting (not counting the batch being captioned).
    """

    def __init__(self, generate: Generate, max_batch: int = 32, max_wait: float = 0.005, max_queue: int = 256) -> None:
        # a NaN wait would never end a batch; one beyond the clock's range kills the worker (OverflowError)
        wait_ok = isinstance(max_wait, (int, float)) and 0 <= max_wait <= threading.TIMEOUT_MAX / 2
        if max_batch < 1 or max_queue < 1 or not wait_ok:
            raise ValueError(
                f"need max_batch >= 1, max_queue >= 1, 0 <= max_wait < {threading.TIMEOUT_MAX / 2:.3g} s; got "
                f"{max_batch}, {max_queue}, {max_wait}"
            )
        self.generate = generate
        self.max_batch, self.max_wait, self.max_queue = max_batch, max_wait, max_queue
        self._queue: deque[Job] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.batches = 0  # searches run so far
        self.images = 0  # images captioned so far
        self.failed_batches = 0  # searches (or batch assemblies) that failed; their requests got the error
        self.last_error: str | None = None  # the last failure, one line
        self._died: str | None = None  # why the worker thread ended unexpectedly
        self._last_size = 0  # images in the last batch

    def start(self) -> Batcher:
        """Start the worker thread (idempotent)."""
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="mmgen-batcher", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float | None = 10.0) -> None:
        """Finish the queued jobs, then stop the worker thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def state(self) -> str:
        """'running', 'stopped' (not started, or stopped), or 'dead: <why>' (the worker thread ended by itself)."""
        if self._died is not None:
            return f"dead: {self._died}"
        alive = self._thread is not None and self._thread.is_alive() and not self._stopping
        return "running" if alive else "stopped"

    def submit(self, job: Job) -> Future:
        """Queue a job; its future resolves to a :class:`BatchResult` (or the search's exception).

        Raises:
            QueueFull: ``max_queue`` jobs are waiting already.
            RuntimeError: the batcher is not running.
        """
        with self._cond:
            if self.state != "running":
                raise RuntimeError(f"the captioning worker is not running ({self.state})")
            if len(self._queue) >= self.max_queue:
                raise QueueFull(f"{len(self._queue)} requests are queued already (the limit); retry shortly")
            self._queue.append(job)
            self._cond.notify_all()
        return job.future

    def _next_batch(self) -> list[Job] | None:
        """Wait for the oldest job, gather the jobs that can share its batch; None when stopping and empty."""
        with self._cond:
            while not self._queue:
                if self._stopping:
                    return None
                self._cond.wait()
            first = self._queue[0]
            while True:
                same = [j for j in self._queue if j.key == first.key]
                left = first.arrived + self.max_wait - time.monotonic()
                alone = len(self._queue) == 1 and self._last_size <= 1  # nobody else around: no use waiting
                if len(same) >= self.max_batch or left <= 0 or alone or self._stopping:
                    break
                self._cond.wait(left)
            batch = same[: self.max_batch]
            self._last_size = len(batch)
            taken = {id(j) for j in batch}
            self._queue = deque(j for j in self._queue if id(j) not in taken)
            return batch

    def _run(self) -> None:
        try:
            while True:
                try:
                    batch = self._next_batch()
                    if batch is None:
                        return
                    self._caption(batch)
                except Exception as e:  # noqa: BLE001 - a fault of the worker itself: fail what waits, go on
                    self._failed(e, self._take_all())
        except BaseException as e:  # the thread ends (logged): say why (/health), fail what waits
            self._died = f"{type(e).__name__}: {e}"
            self._failed(e, self._take_all())

    def _caption(self, batch: list[Job]) -> None:
        """Caption one batch; a failing search fails its jobs (logged) and the worker goes on."""
        batch = [j for j in batch if j.future.set_running_or_notify_cancel()]  # skip cancelled requests
        if not batch:
            return
        started = time.monotonic()
        try:
            pixels = torch.stack([j.pixels for j in batch])  # (B, 3, H, W)
            out = self.generate(pixels, batch[0].gen, prompt=batch[0].prompt)
            cut = out.truncated or [[] for _ in batch]
            results = [
                BatchResult(texts, scores, len(batch), (started - j.arrived) * 1000, flags)
                for j, texts, scores, flags in zip(batch, out.texts, out.scores, cut)
            ]
            if len(results) != len(batch):
                raise RuntimeError(f"the search returned captions for {len(results)} of {len(batch)} images")
        except BaseException as e:  # the requests get the error; the worker keeps serving (unless it must stop)
            self._failed(e, batch)
            if not isinstance(e, Exception):
                raise
            return
        self.batches += 1
        self.images += len(batch)
        for j, result in zip(batch, results):
            j.future.set_result(result)

    def _take_all(self) -> list[Job]:
        """Empty the queue; its jobs are returned (to be failed)."""
        with self._cond:
            jobs, self._queue = list(self._queue), deque()
        return jobs

    def _failed(self, error: BaseException, jobs: list[Job]) -> None:
        """Record and log a failure in one line, and give its ``jobs`` the error."""
        self.failed_batches += 1
        self.last_error = " ".join(f"{type(error).__name__}: {error}".split())
        logger.error("captioning %d request(s) failed: %s", len(jobs), self.last_error)
        if not isinstance(error, Exception):  # SystemExit, KeyboardInterrupt: not for the requests to re-raise
            error = RuntimeError(f"the captioning worker stopped ({self.last_error})")
        for j in jobs:
            if not j.future.done() and (j.future.running() or j.future.set_running_or_notify_cancel()):
                j.future.set_exception(error)
