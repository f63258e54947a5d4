"""Image encoder: any timm model, returning patch tokens from ``forward_features``."""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from torch import nn

from mmgen.config import EncoderConfig


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
        pretrained = cfg.pretrained and load_weights
        if cfg.weights and load_weights and not str(cfg.weights).endswith(".safetensors"):
            # timm reads .pth/.bin through its own loader (weights_only) when given a file overlay
            kwargs["pretrained_cfg_overlay"] = {"file": str(cfg.weights)}
            pretrained = True
        if cfg.stem == "conv":
            from mmgen.models.stems import ConvStem

            kwargs["embed_layer"] = ConvStem
        self.model = timm.create_model(cfg.name, pretrained=pretrained, num_classes=0, **kwargs)
        if cfg.weights and load_weights and str(cfg.weights).endswith(".safetensors"):
            self._load_safetensors(Path(cfg.weights))
        self.num_prefix_tokens = int(getattr(self.model, "num_prefix_tokens", 0))
        self.embed_dim = int(self.model.num_features)
        patch_embed = getattr(self.model, "patch_embed", None)
        grid = getattr(patch_embed, "grid_size", None)
        self.grid_size: tuple[int, int] | None = tuple(int(g) for g in grid) if grid is not None else None
        if cfg.pos_embed == "sincos":
            from mmgen.models.stems import fix_sincos_positions

            fix_sincos_positions(self.model, self.grid_size)
        self.apply_freeze()

    def _load_safetensors(self, path: Path) -> None:
        from safetensors.torch import load_file

        if not path.exists():
            raise FileNotFoundError(f"model.encoder.weights: no such file {path}")
        state = load_file(str(path))
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
        if x.ndim == 4:  # convolutional trunks give (B, C, H, W)
            x = x.flatten(2).transpose(1, 2)
        elif not self.cfg.keep_prefix_tokens and self.num_prefix_tokens:
            x = x[:, self.num_prefix_tokens :]  # (B, N, C)
        return x
