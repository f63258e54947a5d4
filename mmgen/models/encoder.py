"""Image encoder: any timm model, returning patch tokens from ``forward_features``; and the normalisation of
its input images (:func:`normalize_on_device`)."""

from __future__ import annotations

import functools
import pickle
from collections.abc import Sequence
from pathlib import Path

import timm
import torch
from torch import nn

from mmgen.config import EncoderConfig
from mmgen.errors import CheckpointError
from mmgen.models.files import one_line


class Encoder(nn.Module):
    """A timm trunk: ``forward(pixel_values) -> (B, N, C)`` patch tokens.

    Args:
        cfg: Encoder configuration (name, pretrained / local weights / random init, overrides).
        load_weights: When false, hub and local weights are skipped (the caller loads a full
            checkpoint afterwards, as ``CaptionModel.from_pretrained`` does).
    """

    def __init__(self, cfg: EncoderConfig, load_weights: bool = True):
        super().__init__()
        self.cfg = cfg
        kwargs = cfg.timm_kwargs()
        checked = _meta_token_layout(cfg.name, kwargs)  # refuses a non-ViT layout before any weights load
        pretrained = cfg.pretrained and load_weights
        if cfg.weights and load_weights and not str(cfg.weights).endswith(".safetensors"):
            # timm reads .pth/.bin through its own loader (weights_only) when given a file overlay
            kwargs["pretrained_cfg_overlay"] = {"file": str(cfg.weights)}
            pretrained = True
        if cfg.stem in ("conv", "hybrid"):
            from mmgen.models.stems import ConvStem, HybridStem

            stem = ConvStem if cfg.stem == "conv" else HybridStem
            kwargs["embed_layer"] = functools.partial(stem, norm=cfg.stem_norm, width=cfg.stem_width)
        try:
            self.model = timm.create_model(cfg.name, pretrained=pretrained, num_classes=0, **kwargs)
        except (pickle.UnpicklingError, RuntimeError, OSError, ValueError, KeyError, EOFError) as e:
            if "pretrained_cfg_overlay" not in kwargs:
                raise
            raise CheckpointError(f"model.encoder.weights={cfg.weights}: cannot be loaded ({one_line(e)[:300]})") from e
        if cfg.weights and load_weights and str(cfg.weights).endswith(".safetensors"):
            self._load_safetensors(Path(cfg.weights))
        self.num_prefix_tokens, self.grid_size = checked or token_layout(self.model, cfg.name)
        self.embed_dim = int(self.model.num_features)
        if cfg.pos_embed == "sincos":
            from mmgen.models.stems import fix_sincos_positions

            fix_sincos_positions(self.model, self.grid_size)
        self.apply_freeze()

    def _load_safetensors(self, path: Path) -> None:
        from mmgen.models.files import load_tensors

        if not path.exists():
            raise FileNotFoundError(f"model.encoder.weights: no such file {path}")
        state = load_tensors(path)  # a pickle or a damaged file: a CheckpointError naming it
        state = {k: v for k, v in state.items() if not k.startswith(("head.", "fc."))}
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith(("head", "fc"))]
        if missing or unexpected:
            raise ValueError(
                f"{path}: weights do not match {self.cfg.name}: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )

    @property
    def num_tokens(self) -> int:
        """Tokens per image in the output."""
        n = self.grid_size[0] * self.grid_size[1] if self.grid_size else None
        if n is None:
            raise ValueError(f"{self.cfg.name}: cannot infer the token count (no patch grid)")
        return n + (self.num_prefix_tokens if self.cfg.keep_prefix_tokens else 0)

    @property
    def data_config(self) -> dict:
        """timm's data config (input size, interpolation, mean, std, crop) for preprocessing."""
        cfg = dict(timm.data.resolve_model_data_config(self.model))
        img_size = getattr(getattr(self.model, "patch_embed", None), "img_size", None)
        if img_size is not None:  # architecture overrides change the input size the hub config names
            cfg["input_size"] = (3, int(img_size[0]), int(img_size[1]))
        if not (self.cfg.pretrained or self.cfg.weights):
            # a model trained from scratch here sees whole images: no eval-time centre crop
            cfg["crop_pct"] = 1.0
        return cfg

    def apply_freeze(self) -> None:
        """Freeze per ``cfg.freeze``: 'none', 'all', or all but the last ``unfrozen_blocks`` blocks."""
        mode = self.cfg.freeze
        if mode == "none":
            return
        self.model.requires_grad_(False)
        if mode == "last_k" and self.cfg.unfrozen_blocks > 0:
            blocks = getattr(self.model, "blocks", None)
            if blocks is None:
                raise ValueError(f"model.encoder.freeze=last_k: {self.cfg.name} has no 'blocks' to unfreeze")
            for block in list(blocks)[-self.cfg.unfrozen_blocks :]:
                block.requires_grad_(True)
            for name in ("norm", "fc_norm"):
                mod = getattr(self.model, name, None)
                if isinstance(mod, nn.Module):
                    mod.requires_grad_(True)

    @property
    def fully_frozen(self) -> bool:
        return not any(p.requires_grad for p in self.parameters())

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        if hasattr(self.model, "set_grad_checkpointing"):
            self.model.set_grad_checkpointing(enable)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.model.forward_features(pixel_values)  # (B, n_prefix + N, C)
        if not self.cfg.keep_prefix_tokens and self.num_prefix_tokens:
            x = x[:, self.num_prefix_tokens :]  # (B, N, C)
        return x


WORKING_FAMILIES = (
    "ViT (vit_*), DeiT (deit_*, deit3_*), BEiT, EVA / EVA-02, CaiT, FlexiViT, DINOv2, SigLIP and CLIP ViTs"
)
"""timm families whose tokens are a patch grid (the README lists the ones checked)."""


def token_layout(model: nn.Module, name: str, shape: tuple[int, ...] | None = None) -> tuple[int, tuple[int, int]]:
    """(prefix tokens, patch grid) of a timm model, from its structure and the shape of its features.

    mmgen hands the decoder the encoder's patch tokens, so ``forward_features`` must return
    ``(B, prefix + gh * gw, C)`` for the ``(gh, gw)`` grid of the model's ``patch_embed``: the layout of
    ViT-style models. Hierarchical or convolutional trunks (Swin's ``(B, H, W, C)`` map of merged windows,
    ConvNeXt's ``(B, C, H, W)``) and pooled token sets (PiT, LeViT, MViT, Hiera) do not have it.

    Args:
        model: The timm model.
        name: Its name, for the message.
        shape: The shape of ``forward_features`` of one image (default: run it).

    Raises:
        ValueError: the tokens are not a patch grid; the message names the model and its output shape.
    """
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    prefix = int(getattr(model, "num_prefix_tokens", 0) or 0)
    shape = shape or _feature_shape(model)
    if grid is not None and len(shape) == 3 and shape[1] == prefix + int(grid[0]) * int(grid[1]):
        return prefix, (int(grid[0]), int(grid[1]))
    if grid is None:
        why = "it has no patch_embed grid"
    elif len(shape) != 3:
        why = f"a {len(shape)}-D feature map, not a token sequence"
    else:
        why = f"{shape[1]} tokens, not its {grid[0]}x{grid[1]} patch grid plus {prefix} prefix tokens"
    size = _input_size(model)
    raise ValueError(
        f"model.encoder.name={name}: not a ViT-style encoder; mmgen feeds the decoder the patch tokens, so "
        f"forward_features must return (batch, prefix + patches, channels) on the patch grid of its "
        f"patch_embed, and {name} returns {shape} for a {size[0]}x{size[1]} image ({why}). Encoders that work: "
        f"{WORKING_FAMILIES} (see the README)"
    )


def _input_size(model: nn.Module) -> tuple[int, int]:
    img_size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if img_size is not None:
        return int(img_size[0]), int(img_size[1])
    return tuple(int(v) for v in timm.data.resolve_model_data_config(model)["input_size"][1:])


def _feature_shape(model: nn.Module) -> tuple[int, ...]:
    """The shape of ``forward_features`` of one blank image at the model's input size (in eval mode)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return tuple(model.forward_features(torch.zeros(1, 3, *_input_size(model), device=device)).shape)
    finally:
        model.train(was_training)


def _meta_token_layout(name: str, kwargs: dict) -> tuple[int, tuple[int, int]] | None:
    """:func:`token_layout` of the architecture built on the meta device: shapes only, no memory or compute.

    None when the architecture cannot be built or run there; the real model is then checked instead.
    """
    try:
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
        shape = _feature_shape(model)
    except Exception:  # noqa: BLE001 - an op without a meta kernel, or an unknown name: the real build decides
        return None
    return token_layout(model, name, shape)


def normalize_on_device(
    pixels: torch.Tensor, mean: Sequence[float], std: Sequence[float], dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Normalise uint8 images (already on the target device) like the float transform would.

    Args:
        pixels: (B, 3, H, W) uint8 in 0..255 (float input is taken as already normalised and returned as is).
        mean: Per-channel mean in 0..1 units (the timm data config's ``mean``).
        std: Per-channel std in 0..1 units.
        dtype: Output dtype.

    Returns:
        (B, 3, H, W) ``(pixels / 255 - mean) / std`` in ``dtype``.
    """
    if pixels.is_floating_point():
        return pixels.to(dtype)
    m = torch.tensor(mean, device=pixels.device, dtype=torch.float32).view(1, -1, 1, 1) * 255.0
    s = torch.tensor(std, device=pixels.device, dtype=torch.float32).view(1, -1, 1, 1) * 255.0
    return ((pixels.float() - m) / s).to(dtype)  # (B, 3, H, W)
