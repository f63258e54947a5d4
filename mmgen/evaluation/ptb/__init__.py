"""PTB tokenisation of captions exactly as the official COCO caption evaluation does it.

pycocoevalcap lower-cases and tokenises every caption with Stanford's PTBTokenizer (Java, CoreNLP
3.4.1) and then drops punctuation tokens. Two interchangeable backends give the same strings:

- ``"java"`` runs that jar with pycocoevalcap's command line (needs ``java`` and pycocoevalcap);
- ``"python"`` is a pure-Python port of the same lexer (:mod:`mmgen.evaluation.ptb.lexer`), for
  machines without Java. It reproduces the jar's quirks: brackets become ``-lrb-`` and survive the
  punctuation filter (whose list is upper-case), ``can't`` becomes ``ca n't``, ``1 1/2`` is one token
  with a non-breaking space inside, and so on.

One deliberate difference from pycocoevalcap: it replaces only ``"\\n"`` inside captions, so a
caption holding another line break (``\\r``, U+2028, ...) shifts every later caption by a line. Here
those characters become spaces too, for both backends.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from collections.abc import Sequence

from mmgen.evaluation._java import java_tools_available, require_java_tools
from mmgen.evaluation.ptb.lexer import tokenize_lines

__all__ = ["PUNCTUATIONS", "ptb_tokenize", "resolve_backend"]

# Tokens removed after tokenisation (pycocoevalcap's list, including its upper-case bracket names).
PUNCTUATIONS = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"]
)
BACKENDS = ("auto", "java", "python")
_LINE_BREAKS = re.compile("[\n\r\u2028\u2029\x0b\x0c]")
_JAR = "stanford-corenlp-3.4.1.jar"


def resolve_backend(backend: str = "auto") -> str:
    """Map ``"auto"`` to ``"java"`` when java and pycocoevalcap are present, else ``"python"``.

    Args:
        backend: ``"auto"``, ``"java"`` or ``"python"``.

    Raises:
        ValueError: For an unknown backend name.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown PTB tokenizer backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    if backend == "auto":
        return "java" if java_tools_available() else "python"
    return backend


def ptb_tokenize(captions: Sequence[str], backend: str = "auto") -> list[str]:
    """Tokenise captions like the COCO caption evaluation: PTB tokens, lower case, punctuation removed.

    All captions are tokenised in one pass, as pycocoevalcap does, because the tokenizer looks across
    caption boundaries (``etc.`` before a capitalised word keeps its period). Pass the captions in the
    order pycocoevalcap would (references image by image) to get its exact output.

    Args:
        captions: Raw captions.
        backend: ``"java"`` (the Stanford jar), ``"python"`` (the port) or ``"auto"`` (java when
            available, else python).

    Returns:
        One space-separated token string per caption, in order.

    Raises:
        ScorerUnavailableError: ``backend="java"`` but java or pycocoevalcap is missing.
        TypeError: A caption is not a string.
    """
    for i, caption in enumerate(captions):
        if not isinstance(caption, str):
            raise TypeError(f"caption {i} is {type(caption).__name__}, expected str")
    if not captions:
        return []
    text = "\n".join(_LINE_BREAKS.sub(" ", c) for c in captions)
    if resolve_backend(backend) == "java":
        lines = _java_lines(text)
    else:
        lines = tokenize_lines(text)
    if len(lines) < len(captions):
        raise RuntimeError(f"PTB tokenizer returned {len(lines)} lines for {len(captions)} captions")
    return [_drop_punctuation(line) for line in lines[: len(captions)]]


def _drop_punctuation(line: str) -> str:
    return " ".join(w for w in line.rstrip().split(" ") if w not in PUNCTUATIONS)


def _java_lines(text: str) -> list[str]:
    """Run the Stanford PTBTokenizer on newline-joined captions; one output line per caption."""
    jar = require_java_tools("the java PTB tokenizer") / "tokenizer" / _JAR
    if not jar.is_file():
        raise FileNotFoundError(f"pycocoevalcap is installed but {jar} is missing")
    # pycocoevalcap writes this file inside its own package directory, which may be read-only; the
    # command line is otherwise the same.
    fd, path = tempfile.mkstemp(suffix=".txt", prefix="mmgen-ptb-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(text.encode("utf-8"))
        cmd = ["java", "-cp", str(jar), "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines", "-lowerCase", path]
        proc = subprocess.run(cmd, capture_output=True, check=False)
    finally:
        os.remove(path)
    if proc.returncode != 0:
        err = proc.stderr.decode("utf-8", "replace").strip()
        raise RuntimeError(f"the java PTB tokenizer failed (exit {proc.returncode}): {err[-2000:]}")
    return proc.stdout.decode("utf-8").split("\n")
