"""Model parts: encoder (timm), projector registry, decoder (transformers), CaptionModel."""

from mmgen.models.caption_model import CaptionModel, CaptionOutput, build_model
from mmgen.models.presets import tiny_model_config
from mmgen.models.tokenizer import load_tokenizer, start_ids, train_caption_tokenizer

__all__ = [
    "CaptionModel",
    "CaptionOutput",
    "build_model",
    "load_tokenizer",
    "start_ids",
    "tiny_model_config",
    "train_caption_tokenizer",
]
