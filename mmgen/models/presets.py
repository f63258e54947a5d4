"""Named model configurations (plain dict registry): tiny offline models for tests and demos."""

from __future__ import annotations

from mmgen.config import (
    DecoderConfig,
    EncoderConfig,
    ModelConfig,
    ProjectorConfig,
    TokenizerConfig,
)


def tiny_model_config(
    image_size: int = 32,
    projector: str = "mlp",
    decoder_mode: str = "full",
    encoder_freeze: str = "none",
    width: int = 64,
    depth: int = 2,
    tokenizer: str = "wordlevel",
    prompt: str = "",
) -> ModelConfig:
    """A 2-block, 64-wide ViT and a 2-layer GPT-2, random init: builds offline in about a second."""
    return ModelConfig(
        encoder=EncoderConfig(
            name="vit_base_patch16_224",
            pretrained=False,
            img_size=image_size,
            patch_size=8,
            embed_dim=width,
            depth=depth,
            num_heads=2,
            freeze=encoder_freeze,
        ),
        projector=ProjectorConfig(kind=projector, num_queries=4, mapper_layers=1, mapper_heads=2),
        decoder=DecoderConfig(
            name="gpt2",
            pretrained=False,
            mode=decoder_mode,
            config_overrides={"n_layer": depth, "n_embd": width, "n_head": 2, "n_positions": 128},
        ),
        tokenizer=TokenizerConfig(kind=tokenizer, vocab_size=500),
        prompt=prompt,
    )


PRESETS = {"tiny": tiny_model_config}
