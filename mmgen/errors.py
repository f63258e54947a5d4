"""Errors about the files of a saved model or a run, and runs that fail, light to import (the CLI catches them
to print one line)."""

from __future__ import annotations


class CheckpointError(ValueError):
    """A saved model or checkpoint file is unreadable, corrupt or inconsistent; the message names the file."""


class MissingCheckpointFileError(CheckpointError, FileNotFoundError):
    """A file or directory a saved model or checkpoint needs is absent; the message names it.

    Also a ``FileNotFoundError``, so code that catches a missing file keeps working.
    """


class RunDirError(ValueError):
    """A run directory cannot be used as asked (another run's files, unrelated files, a trainer holding it)."""


class RunFailed(RuntimeError):
    """A run that failed while running, for a reason its message gives (a diverging loss, too many undecodable
    images): ``mmgen`` prints the message in one line and exits with 1."""
