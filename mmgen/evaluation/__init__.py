"""Caption evaluation with the official COCO numbers: PTB tokenisation, BLEU, METEOR, ROUGE-L, CIDEr-D.

Scores equal pycocoevalcap's on the same inputs. BLEU, ROUGE-L, CIDEr-D and the PTB tokenizer have
pure-Python implementations (no Java needed); METEOR and SPICE use pycocoevalcap's Java scorers when
java and pycocoevalcap are installed.
"""

from mmgen.evaluation._java import ScorerUnavailableError
from mmgen.evaluation.cider import CiderD
from mmgen.evaluation.coco import load_coco_references, load_coco_results, results_to_candidates
from mmgen.evaluation.collapse import collapse_stats
from mmgen.evaluation.metrics import (
    DEFAULT_METRICS,
    METRICS,
    CaptionScores,
    score_captions,
    score_captions_detailed,
)
from mmgen.evaluation.ptb import ptb_tokenize
from mmgen.evaluation.report import ReportEntry, write_report

__all__ = [
    "DEFAULT_METRICS",
    "METRICS",
    "CaptionScores",
    "CiderD",
    "ReportEntry",
    "ScorerUnavailableError",
    "collapse_stats",
    "load_coco_references",
    "load_coco_results",
    "ptb_tokenize",
    "results_to_candidates",
    "score_captions",
    "score_captions_detailed",
    "write_report",
]
