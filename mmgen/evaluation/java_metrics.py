"""METEOR and SPICE through pycocoevalcap's Java scorers (imported only when requested).

METEOR 1.5 loads a large paraphrase table when its JVM starts (10 s or more), so one METEOR process
is started on first use and reused by later calls in the same Python process; it is stopped at
exit. SPICE additionally needs Stanford CoreNLP models that pycocoevalcap downloads on first use.
"""

from __future__ import annotations

import atexit
import importlib
import threading
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from mmgen.evaluation._java import ScorerUnavailableError, require_java_tools

__all__ = ["meteor", "spice", "start_meteor"]

_LOCK = threading.Lock()
_METEOR: Any = None


def _close_meteor() -> None:
    global _METEOR
    scorer, _METEOR = _METEOR, None
    if scorer is not None:
        with scorer.lock:
            scorer.meteor_p.stdin.close()
            scorer.meteor_p.kill()
            scorer.meteor_p.wait()


def _meteor_scorer() -> Any:
    global _METEOR
    require_java_tools("METEOR")
    if _METEOR is not None and _METEOR.meteor_p.poll() is None:
        return _METEOR
    module = importlib.import_module("pycocoevalcap.meteor.meteor")
    if _METEOR is None:
        atexit.register(_close_meteor)
    else:  # the previous process died
        _close_meteor()
    _METEOR = module.Meteor()
    return _METEOR


def start_meteor() -> bool:
    """Start the METEOR process in the background if java and pycocoevalcap are present.

    Its JVM spends many seconds loading before it answers, so starting it before the other metrics
    are computed hides most of that time. Returns whether it is (now) running.
    """
    with _LOCK:
        try:
            _meteor_scorer()
        except ScorerUnavailableError:
            return False
    return True


def meteor(
    references: Mapping[Hashable, Sequence[str]], candidates: Mapping[Hashable, str]
) -> tuple[float, list[float]]:
    """Corpus and per-image METEOR 1.5 (``-l en -norm``) as pycocoevalcap computes it.

    Args:
        references: Image id to tokenised references.
        candidates: Image id to tokenised candidate, same ids.

    Returns:
        ``(corpus, per_image)`` with per-image scores in the order of ``references``.

    Raises:
        ScorerUnavailableError: java or pycocoevalcap is missing.
    """
    gts = {i: list(refs) for i, refs in references.items()}
    res = {i: [candidates[i]] for i in references}
    with _LOCK:
        scorer = _meteor_scorer()
        try:
            score, scores = scorer.compute_score(gts, res)
        except (BrokenPipeError, ValueError) as e:
            _close_meteor()
            raise RuntimeError(f"the METEOR java process failed: {e}") from e
    return float(score), [float(s) for s in scores]


def spice(
    references: Mapping[Hashable, Sequence[str]], candidates: Mapping[Hashable, str]
) -> tuple[float, list[float]]:
    """Corpus and per-image SPICE F-score through pycocoevalcap (Java, 8 GB heap, CoreNLP models).

    Raises:
        ScorerUnavailableError: java, pycocoevalcap or the CoreNLP models pycocoevalcap downloads
            on first use are missing.
    """
    package = require_java_tools("SPICE")
    lib = package / "spice" / "lib"
    if not (lib / "stanford-corenlp-3.6.0.jar").is_file():
        raise ScorerUnavailableError(
            f"SPICE needs Stanford CoreNLP 3.6.0 in {lib}; pycocoevalcap downloads it (about 400 MB) with "
            "`python -c 'from pycocoevalcap.spice.get_stanford_models import get_stanford_models as g; g()'`"
        )
    module = importlib.import_module("pycocoevalcap.spice.spice")
    gts = {i: list(refs) for i, refs in references.items()}
    res = {i: [candidates[i]] for i in references}
    score, per_image = module.Spice().compute_score(gts, res)
    # pycocoevalcap returns images sorted by id; put them back in reference order.
    by_id = dict(zip(sorted(gts), (float(p["All"]["f"]) for p in per_image)))
    return float(score), [by_id[i] for i in references]
