"""Finding the optional Java tools: the ``java`` program and the jars shipped inside pycocoevalcap.

Everything here is lazy: pycocoevalcap is located, never imported, until a Java-backed scorer is
actually requested, so the pure-Python scorers work on machines that have neither.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path


class ScorerUnavailableError(RuntimeError):
    """A requested tokenizer backend or metric needs a program or package that is not installed."""


def java_path() -> str | None:
    """The ``java`` executable on ``PATH``, or None."""
    return shutil.which("java")


def pycocoevalcap_dir() -> Path | None:
    """The installed ``pycocoevalcap`` package directory (found without importing it), or None."""
    try:
        spec = importlib.util.find_spec("pycocoevalcap")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def java_tools_available() -> bool:
    """Whether both ``java`` and pycocoevalcap (with its jars) are present."""
    return java_path() is not None and pycocoevalcap_dir() is not None


def require_java_tools(feature: str) -> Path:
    """Return the pycocoevalcap directory, or raise naming whichever of java / pycocoevalcap is missing.

    Args:
        feature: What needs them, for the error message (e.g. "METEOR").
    """
    missing = []
    if java_path() is None:
        missing.append("the 'java' program (a Java runtime on PATH)")
    package = pycocoevalcap_dir()
    if package is None:
        missing.append("the 'pycocoevalcap' package (pip install pycocoevalcap)")
    if missing:
        raise ScorerUnavailableError(f"{feature} needs {' and '.join(missing)}, which this machine lacks")
    assert package is not None
    return package
