"""Model parts: encoder (timm), projector registry, decoder (transformers), CaptionModel."""

from mmgen.models.caption_model import CaptionModel, CaptionOutput, build_model
from mmgen.models.presets import tiny_model_config

__all__ = ["CaptionModel", "CaptionOutput", "build_model", "tiny_model_config"]
