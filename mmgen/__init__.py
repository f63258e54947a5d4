"""mmgen: image captioning with a timm ViT encoder, a projector and a transformers causal LM.

Public API: ``Captioner`` (caption images with a saved model), ``CaptionModel`` (the model),
``Config`` and its parts, ``score_captions`` (COCO metrics). Imports are lazy so that
``import mmgen`` stays cheap.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "Captioner": "mmgen.captioner",
    "CaptionModel": "mmgen.models.caption_model",
    "Config": "mmgen.config",
    "ModelConfig": "mmgen.config",
    "DataConfig": "mmgen.config",
    "TrainConfig": "mmgen.config",
    "GenerationConfig": "mmgen.config",
    "EvalConfig": "mmgen.config",
    "load_config": "mmgen.config",
    "score_captions": "mmgen.evaluation",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mmgen' has no attribute {name!r}")
