"""Progress of long loops: tqdm's bar on a terminal; elsewhere (a log file, a pipe, CI) a plain line now and then.

tqdm redraws its bar with carriage returns, which a redirected log keeps as one endless line (130 KB of them for a
demo). :func:`progress` gives the bar when stderr is a terminal, and otherwise a :class:`PlainProgress` that writes
a whole line every ``every`` updates (and at the end), or nothing at all for a ``plain=False`` loop.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any


def stderr_is_terminal() -> bool:
    return hasattr(sys.stderr, "isatty") and sys.stderr.isatty()


class PlainProgress:
    """tqdm's ``update`` / ``set_postfix`` / ``close`` / iteration, writing ``desc: n/total (p%) key=value ...
    [elapsed, left]`` lines to stderr every ``every`` updates and at the end. A due line waits for the
    ``set_postfix`` that follows its update (the values of that step), and is written at the latest on the next
    update or at ``close``."""

    def __init__(
        self, iterable=None, total=None, desc="", initial=0, every=1, disable=False, file=None, **_: Any
    ) -> None:
        self.iterable, self.desc, self.n, self.every = iterable, desc, initial, max(1, every)
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.disable, self.file = disable, file
        self.postfix: dict[str, Any] = {}
        self.start, self.first, self.due, self.written = time.monotonic(), initial, False, initial

    def __iter__(self) -> Iterator:
        for item in self.iterable:
            yield item
            self.update(1)

    def update(self, n: int = 1) -> None:
        if self.due:
            self._write()
        self.n += n
        self.due = self.n % self.every == 0 or self.n == self.total

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **values: Any) -> None:
        self.postfix = {**(ordered_dict or {}), **values}
        if self.due:
            self._write()

    def close(self) -> None:
        if self.due or self.n != self.written:
            self._write()

    def _write(self) -> None:
        self.due, self.written = False, self.n
        if self.disable:
            return
        elapsed = time.monotonic() - self.start
        done = f"{self.n}/{self.total} ({100 * self.n / self.total:.0f}%)" if self.total else str(self.n)
        rate = (self.n - self.first) / elapsed if elapsed > 0 else 0.0
        left = ""
        if self.total and rate > 0:
            left = f", {_clock((self.total - self.n) / rate)} left"
        values = "".join(f" {k}={v}" for k, v in self.postfix.items())
        print(f"{self.desc}: {done}{values} [{_clock(elapsed)}{left}]", file=self.file or sys.stderr, flush=True)


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def step_lines(total: int, unit: int, lines: int = 20) -> int:
    """Every how many steps a plain line is written: a multiple of ``unit`` (the logging interval, whose values the
    line shows), about ``lines`` lines in all."""
    return unit * max(1, round(total / lines / unit))


def progress(
    iterable: Iterable | None = None, *, every: int = 1, plain: bool = True, disable: bool = False, **options: Any
):
    """A progress bar over ``iterable`` (or updated by hand, with ``total``): tqdm on a terminal, else a
    :class:`PlainProgress` line every ``every`` updates (none with ``plain=False``). ``options``: tqdm's."""
    if stderr_is_terminal():
        from tqdm import tqdm

        return tqdm(iterable, disable=disable, dynamic_ncols=True, **options)
    return PlainProgress(iterable, every=every, disable=disable or not plain, **options)
