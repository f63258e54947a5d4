"""Lock files: one process at a time holds a directory or an output file (a trainer its run directory, a bulk
captioning run its results file).

The lock is a small JSON file (pid, host, start time, a token) created with ``O_EXCL``. A lock left by a dead
process of this host (a ``kill -9``) is taken over with a warning; a live holder, or one on another host (whose
pid cannot be checked), refuses the start and says who holds it and what to do.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import uuid
import warnings
from pathlib import Path


class LockFile:
    """A lock file held by this process (``token`` set) or a stand-in for one it does not hold (``token`` None);
    :meth:`release` removes the file only while it is still this lock."""

    def __init__(self, path: Path, token: str | None) -> None:
        self.path, self.token = path, token

    @classmethod
    def take(
        cls, path: Path, holder: str, place: str, error: type[Exception] = RuntimeError, verb: str = "is running in"
    ) -> LockFile:
        """Create the lock ``path`` atomically; take over a stale one of a dead process on this host.

        Args:
            path: The lock file.
            holder: What holds such a lock, for messages ("trainer").
            place: What the lock guards, for messages ("this run directory").
            error: The exception raised when the lock is held.
            verb: What a live holder does to ``place``: "another trainer is running in this run directory".

        Raises:
            error: Another live process (or one on another host, or one whose lock cannot be read) holds it.
        """
        info = {"pid": os.getpid(), "host": socket.gethostname(), "token": uuid.uuid4().hex}
        info["started"] = time.strftime("%Y-%m-%d %H:%M:%S")
        for _ in range(3):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = read_lock(path)
                if owner is not None:  # None: it went away meanwhile
                    _take_over_if_stale(path, owner, f"another {holder}", f"{verb} {place}", error)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(info, f)
            return cls(path, info["token"])
        raise error(f"{path}: could not take the lock (other {holder}s are starting at the same time)")

    def release(self) -> None:
        """Remove the lock file if it is still this lock (idempotent)."""
        owner = read_lock(self.path) if self.token is not None else None
        if owner is not None and owner.get("token") == self.token:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


def read_lock(path: Path) -> dict | None:
    """The holder recorded in a lock file; None when the file is gone; {} when it cannot be read."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _take_over_if_stale(path: Path, owner: dict, other: str, doing: str, error: type[Exception]) -> None:
    """Move ``path`` aside when its owner is a dead process of this host (or this very process).

    Raises:
        error: The owner is alive, on another host, or unknown ("{other} {doing}: ...").
    """
    pid, host = owner.get("pid"), owner.get("host")
    who = f"pid {pid} on {host} (since {owner.get('started', '?')})"
    if not isinstance(pid, int) or not host:
        raise error(f"{path} exists but cannot be read: {other} may be starting; if none is, delete the file")
    if host != socket.gethostname():
        raise error(f"{other} {doing}: {who} ({path}); if it is no longer running, delete the file")
    if pid != os.getpid() and _alive(pid):
        raise error(f"{other} {doing}: {who} ({path})")
    if pid != os.getpid():  # this process's own earlier holder is simply superseded
        warnings.warn(f"{path}: taking over the lock of {who}, which is no longer running", stacklevel=4)
    _take_over(path, owner)


def _take_over(path: Path, owner: dict) -> None:
    """Move the stale lock aside; put back a fresh one that another process created in the meantime."""
    aside = path.with_name(f"{path.name}.{os.getpid()}")
    try:
        os.replace(path, aside)
    except FileNotFoundError:
        return
    if read_lock(aside) != owner:  # not the stale lock we judged: a live holder's, restore it
        with contextlib.suppress(FileExistsError):
            os.link(aside, path)
    aside.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, under another user
        return True
    return True
