"""Directories written atomically: built in a hidden sibling, flushed to disk, renamed into place.

A reader sees a whole directory or none. The hidden work directories are ``.tmp-NAME-PID`` (being written),
``.old-NAME-PID`` (the previous copy of NAME, moved aside while the new one takes its place) and
``.trash-NAME-PID`` (being deleted); :func:`clean_work_dirs` removes what a killed process left, and puts
back a previous copy that was moved aside but never replaced. The pid keeps two attempts apart.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

WORK_RE = re.compile(r"\.(tmp|old|trash)-(best|step_\d+)-\d+")


def commit_dir(tmp: Path, final: Path) -> None:
    """Flush ``tmp`` to disk and rename it to ``final``, replacing a directory there."""
    fsync_tree(tmp)
    old = None
    if final.exists():
        # a non-empty directory cannot be renamed over: move the old copy aside first; if we die in
        # between, the next save renames it back (see clean_work_dirs)
        old = fresh_work_dir(final.parent, "old", final.name, create=False)
        os.replace(final, old)
    os.replace(tmp, final)
    fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def remove_dir(path: Path) -> None:
    """Delete a directory tree: renamed to a hidden ``.trash-`` name first, then removed."""
    # rename first, so that a kill in the middle of rmtree never leaves a half-deleted step_* behind
    trash = fresh_work_dir(path.parent, "trash", path.name, create=False)
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def clean_work_dirs(parent: Path) -> None:
    """Remove what an interrupted save left in ``parent``; put back a copy that was moved aside."""
    for entry in sorted(parent.iterdir()):
        m = WORK_RE.fullmatch(entry.name)
        if m is None or not entry.is_dir():
            continue
        original = parent / m.group(2)
        if m.group(1) == "old" and not original.exists():
            os.replace(entry, original)  # the save that replaced it died before its copy was in place
        else:
            shutil.rmtree(entry, ignore_errors=True)


def fresh_work_dir(parent: Path, kind: str, name: str, create: bool = True) -> Path:
    """``parent/.KIND-NAME-PID``, emptied (and created when ``create``)."""
    path = parent / f".{kind}-{name}-{os.getpid()}"
    if path.exists():
        shutil.rmtree(path)
    if create:
        path.mkdir()  # not tempfile.mkdtemp: its 0700 mode would follow the directory into place
    return path


def fsync_tree(path: Path) -> None:
    """Flush every file and directory under ``path`` to disk."""
    for p in path.rglob("*"):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    for d in sorted((p for p in path.rglob("*") if p.is_dir()), reverse=True):
        fsync_dir(d)
    fsync_dir(path)


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries (renames into it) to disk; a no-op where directories cannot be opened."""
    if os.name != "posix":  # directories cannot be opened for fsync on Windows
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
