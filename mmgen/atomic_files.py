"""Files written atomically: into a temporary sibling, then renamed over the target (``os.replace``), so that a
reader sees the old file or the new one, never half of one, and a process killed mid-write leaves the target as
it was. (Directories: :mod:`mmgen.training.atomic_dirs`.)"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary path to write ``path``'s new content to (``path`` + ``suffix``); when the block ends without
    an error it replaces ``path``.

    >>> with atomic_path(out) as tmp:
    ...     save_model(model, str(tmp))
    """
    path = Path(path)
    tmp = path.with_name(path.name + suffix)
    yield tmp
    os.replace(tmp, path)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str | None = None) -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding=encoding)
