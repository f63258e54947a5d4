"""Helpers on modules shared by the model code and by decoding (a light import: torch only)."""

from __future__ import annotations

from torch import nn


def base_model(decoder: nn.Module) -> nn.Module:
    """The underlying transformers model (unwraps a peft wrapper)."""
    return decoder.get_base_model() if hasattr(decoder, "get_base_model") else decoder
