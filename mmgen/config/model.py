"""The ``model`` section: encoder, projector, decoder (with LoRA), tokenizer.

The ``model`` section of :class:`mmgen.config.Config` (and of the ``config.json`` of a saved model); validated
in ``__post_init__`` like every section, each error naming its dotted key.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mmgen.config.io import check, choice, collecting


@dataclass
class EncoderConfig:
    name: str = "vit_base_patch16_224.augreg2_in21k_ft_in1k"
    """timm model name (hub-pretrained names work when ``pretrained`` is true)."""
    pretrained: bool = False
    """Load hub weights through ``timm.create_model(pretrained=True)``."""
    weights: str | None = None
    """Local weights file (.safetensors, or a timm-loadable checkpoint) loaded after creation."""
    img_size: int | None = None
    """Architecture overrides passed to timm (None keeps the model's default)."""
    patch_size: int | None = None
    embed_dim: int | None = None
    depth: int | None = None
    num_heads: int | None = None
    keep_prefix_tokens: bool = False
    """Keep class/register tokens in the output; by default only patch tokens are returned."""
    freeze: str = "none"
    """'none' | 'all' | 'last_k' (all blocks but the last ``unfrozen_blocks`` frozen)."""
    unfrozen_blocks: int = 0
    """With freeze='last_k': how many final blocks (and the final norm) stay trainable."""
    gradient_checkpointing: bool = False
    stem: str = "patch"
    """'patch' (the model's own patch embedding) | 'conv' (stride-2 3x3 convolutions down to the same patch
    grid: learns small shapes much faster from scratch) | 'hybrid' (those convolutions plus the linear patch
    projection, summed: colours reach the tokens from the first step). 'conv' and 'hybrid': random init only."""
    stem_norm: str = "none"
    """With stem 'conv' / 'hybrid': 'none' | 'group' (a GroupNorm after each stride-2 convolution, over groups
    of 16 channels of one image: no batch statistics, but each image's mean colour per group is taken away) |
    'ws' (weight-standardised convolutions: the filters are normalised, every image keeps its colours; see
    BENCHMARKS.md, "Quality that carries")."""
    stem_width: int | None = None
    """With stem 'conv' / 'hybrid': the first convolution's width, doubled at every later one up to the token
    width (None: the token width halved at every stride back from the last, at least 8)."""
    pos_embed: str = "learn"
    """'learn' (the model's learned position embeddings) | 'sincos' (fixed 2-D sin-cos: every token knows its
    row and column from the first step; random init only)."""

    @collecting
    def __post_init__(self) -> None:
        check(bool(self.name), "model.encoder.name", "must be a timm model name")
        choice(self.stem, "model.encoder.stem", ("patch", "conv", "hybrid"))
        choice(self.stem_norm, "model.encoder.stem_norm", ("none", "group", "ws"))
        check(self.stem_width is None or self.stem_width >= 1, "model.encoder.stem_width", "must be >= 1")
        check(
            self.stem_norm == "none" or self.stem in ("conv", "hybrid"),
            "model.encoder.stem_norm",
            "normalises the convolutional stem: set model.encoder.stem to conv or hybrid",
        )
        choice(self.pos_embed, "model.encoder.pos_embed", ("learn", "sincos"))
        for key in ("stem", "pos_embed"):
            check(
                getattr(self, key) == ("patch" if key == "stem" else "learn") or not (self.pretrained or self.weights),
                f"model.encoder.{key}",
                "replaces pretrained weights: use it with random init (pretrained: false, no weights)",
            )
        choice(self.freeze, "model.encoder.freeze", ("none", "all", "last_k"))
        check(self.unfrozen_blocks >= 0, "model.encoder.unfrozen_blocks", "must be >= 0")
        for k in ("img_size", "patch_size", "embed_dim", "depth", "num_heads"):
            v = getattr(self, k)
            check(
                v is None or (isinstance(v, int) and v > 0), f"model.encoder.{k}", f"must be a positive int, got {v!r}"
            )
        check(
            not (self.pretrained and self.weights),
            "model.encoder.weights",
            "set either pretrained: true or a local weights file, not both",
        )

    def timm_kwargs(self) -> dict:
        """Architecture overrides for ``timm.create_model``."""
        keys = ("img_size", "patch_size", "embed_dim", "depth", "num_heads")
        return {k: getattr(self, k) for k in keys if getattr(self, k) is not None}


PROJECTOR_KINDS = ("linear", "mlp", "pool", "pixel_shuffle", "mapper")
"""The projectors ``model.projector.kind`` names: the keys of :data:`mmgen.models.projector.PROJECTORS` (a test
holds the two equal; the config cannot import the models it configures)."""


@dataclass
class ProjectorConfig:
    kind: str = "mlp"
    """'linear' | 'mlp' (2 layers, GELU) | 'pool' (2x2 average pooling then ``head``) |
    'pixel_shuffle' (2x2 space-to-depth then ``head``) | 'mapper' (transformer with learned queries)."""
    factor: int = 2
    """Spatial reduction for 'pool' and 'pixel_shuffle': tokens shrink by factor**2."""
    head: str = "mlp"
    """What follows 'pool' and 'pixel_shuffle': 'mlp' (Linear -> GELU -> Linear) | 'linear' (one linear map)."""
    hidden_dim: int | None = None
    """Hidden width of the mlp (default: the decoder's width)."""
    num_queries: int = 10
    """'mapper': number of learned prefix tokens."""
    mapper_layers: int = 2
    mapper_heads: int = 4
    dropout: float = 0.0

    @collecting
    def __post_init__(self) -> None:
        choice(self.kind, "model.projector.kind", PROJECTOR_KINDS)
        choice(self.head, "model.projector.head", ("mlp", "linear"))
        check(self.factor >= 1, "model.projector.factor", "must be >= 1")
        check(self.num_queries >= 1, "model.projector.num_queries", "must be >= 1")
        check(self.mapper_layers >= 1, "model.projector.mapper_layers", "must be >= 1")
        check(self.mapper_heads >= 1, "model.projector.mapper_heads", "must be >= 1")
        check(0.0 <= self.dropout < 1.0, "model.projector.dropout", "must be in [0, 1)")


@dataclass
class LoraConfig:
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    target_modules: list[str] | None = None
    """Module names for peft (None: peft's default for the architecture)."""

    @collecting
    def __post_init__(self) -> None:
        check(self.rank >= 1, "model.decoder.lora.rank", "must be >= 1")
        check(self.alpha > 0, "model.decoder.lora.alpha", "must be > 0")


@dataclass
class DecoderConfig:
    name: str = "gpt2"
    """AutoModelForCausalLM hub name or local directory."""
    pretrained: bool = False
    """Load weights with ``from_pretrained(name)``; otherwise random init from a config."""
    config_overrides: dict = field(default_factory=dict)
    """Fields applied to the decoder's config for random init (e.g. n_layer: 2, n_embd: 64)."""
    model_type: str | None = None
    """With pretrained=false and no local config for ``name``: build ``AutoConfig.for_model(model_type)``."""
    mode: str = "full"
    """'full' | 'frozen' | 'lora'."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    gradient_checkpointing: bool = False
    attn_implementation: str | None = "sdpa"
    """Passed to transformers ('sdpa', 'eager', 'flash_attention_2'); None lets it choose."""

    @collecting
    def __post_init__(self) -> None:
        check(bool(self.name), "model.decoder.name", "must be a hub name or a local directory")
        choice(self.mode, "model.decoder.mode", ("full", "frozen", "lora"))
        check(isinstance(self.config_overrides, dict), "model.decoder.config_overrides", "must be a mapping")
        check(
            not (self.pretrained and self.config_overrides),
            "model.decoder.config_overrides",
            "shapes a random-init decoder (pretrained: false); a pretrained one keeps its hub config",
        )


@dataclass
class TokenizerConfig:
    kind: str = "decoder"
    """'decoder' (the decoder's own tokenizer: ``name`` or the decoder name) | 'wordlevel' | 'bpe'
    (trained on the training captions) | 'path' (a saved tokenizer directory in ``name``)."""
    name: str | None = None
    vocab_size: int = 2000
    """Upper bound for a trained tokenizer's vocabulary."""
    min_frequency: int = 1
    lowercase: bool = True

    @collecting
    def __post_init__(self) -> None:
        choice(self.kind, "model.tokenizer.kind", ("decoder", "wordlevel", "bpe", "path"))
        check(self.vocab_size >= 8, "model.tokenizer.vocab_size", "must be >= 8")
        check(self.kind != "path" or bool(self.name), "model.tokenizer.name", "kind 'path' needs a directory")


@dataclass
class ModelConfig:
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    prompt: str = ""
    """Optional text after the image prefix and BOS (e.g. 'a photo of'); never part of the loss."""
    max_caption_tokens: int = 32
    """Caption tokens kept in training (BOS/prompt not counted, EOS counted)."""
    prefix_attention: str = "causal"
    """How the image tokens attend to each other inside the decoder: 'causal' (like text) | 'full' (both ways,
    a prefix LM; text stays causal). 'full' needs the decoder's default attention (attn_implementation sdpa)."""

    @collecting
    def __post_init__(self) -> None:
        check(self.max_caption_tokens >= 2, "model.max_caption_tokens", "must be >= 2")
        choice(self.prefix_attention, "model.prefix_attention", ("causal", "full"))
        check(
            self.prefix_attention == "causal" or self.decoder.attn_implementation in ("sdpa", None),
            "model.prefix_attention",
            "'full' needs model.decoder.attn_implementation: sdpa (mmgen's prefix-LM attention builds on it)",
        )
