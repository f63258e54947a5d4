"""Decoder: any transformers ``AutoModelForCausalLM`` (hub name, local directory or random init)."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

from mmgen.config import ConfigError, DecoderConfig
from mmgen.errors import CheckpointError
from mmgen.models.files import one_line
from mmgen.transformers_glue import register_causal_sdpa


def decoder_config(
    cfg: DecoderConfig, vocab_size: int | None = None, special_ids: dict | None = None
) -> PretrainedConfig:
    """The HF config for a random-init decoder: a local/cached config of ``cfg.name`` or ``model_type``.

    ``config_overrides`` are applied; with a trained tokenizer the vocabulary is sized to it.
    """
    model_type = cfg.model_type
    if model_type is None and Path(cfg.name).is_dir():
        hf_cfg = AutoConfig.from_pretrained(cfg.name)
    elif model_type is None and cfg.name in CONFIG_MAPPING:
        # architecture names that are also hub names ('gpt2'): the library defaults are the hub sizes
        hf_cfg = AutoConfig.for_model(cfg.name)
    elif model_type is not None:
        hf_cfg = AutoConfig.for_model(model_type)
    else:
        hf_cfg = AutoConfig.from_pretrained(cfg.name)  # hub name: needs the network or the HF cache
    for k, v in cfg.config_overrides.items():
        _check_override(hf_cfg, k, v)
        setattr(hf_cfg, k, v)
    if vocab_size is not None:
        hf_cfg.vocab_size = vocab_size
    for k, v in (special_ids or {}).items():
        setattr(hf_cfg, k, v)
    return hf_cfg


def _check_override(hf_cfg: PretrainedConfig, key: str, value) -> None:
    """Refuse a ``config_overrides`` key the decoder's config does not have, or a value of another type than the
    field's (an integer field given text would fail deep inside the model's constructor)."""
    import difflib

    name, fields = f"model.decoder.config_overrides.{key}", sorted(hf_cfg.to_dict())
    if not hasattr(hf_cfg, key) and key not in getattr(hf_cfg, "attribute_map", {}):
        close = difflib.get_close_matches(key, fields, n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"{name}: not a field of {type(hf_cfg).__name__}{hint}")
    current = getattr(hf_cfg, key, None)
    kinds = ((bool, (bool,), "true/false"), (int, (int,), "an integer"), (float, (int, float), "a number"))
    for kind, accepted, what in kinds:
        if isinstance(current, kind):
            if isinstance(value, bool) != (kind is bool) or not isinstance(value, accepted):
                raise ConfigError(f"{name}: expected {what} (like its default {current!r}), got {value!r}")
            return
    if isinstance(current, str) and not isinstance(value, str):
        raise ConfigError(f"{name}: expected a string (like its default {current!r}), got {value!r}")


def check_decoder_config(cfg: DecoderConfig) -> None:
    """Build a random-init decoder's transformers config (not the model): a misspelt or mistyped
    ``config_overrides`` key fails before any work, naming it (a ``ConfigError``)."""
    if not cfg.pretrained:
        decoder_config(cfg)


def build_decoder(
    cfg: DecoderConfig, vocab_size: int, special_ids: dict, hf_config: PretrainedConfig | None = None
) -> PreTrainedModel:
    """Build the language model.

    Args:
        cfg: Decoder configuration.
        vocab_size: The tokenizer's length; a random-init decoder gets exactly this vocabulary, a
            pretrained one is resized when the tokenizer has more tokens.
        special_ids: ``bos_token_id`` / ``eos_token_id`` / ``pad_token_id`` from the tokenizer.
        hf_config: A saved HF config (from a checkpoint); builds a random-init model of it.
    """
    if hf_config is None and not cfg.pretrained:
        hf_config = decoder_config(cfg, vocab_size, special_ids)
    impl = attention_implementation(cfg.attn_implementation, hf_config or AutoConfig.from_pretrained(cfg.name))
    attn = {"attn_implementation": impl} if impl else {}
    if hf_config is not None:
        model = AutoModelForCausalLM.from_config(hf_config, **attn)
    else:
        try:
            model = AutoModelForCausalLM.from_pretrained(cfg.name, **attn)
        except (pickle.UnpicklingError, OSError, ValueError, RuntimeError, EOFError) as e:
            raise CheckpointError(f"model.decoder.name={cfg.name}: cannot be loaded ({one_line(e)[:300]})") from e
        if vocab_size > model.get_input_embeddings().num_embeddings:
            model.resize_token_embeddings(vocab_size)
        for k, v in special_ids.items():
            setattr(model.config, k, v)
    if model.generation_config is not None:
        for k, v in special_ids.items():
            setattr(model.generation_config, k, v)
    if cfg.attn_implementation in ("sdpa", None) and model.config._attn_implementation == "sdpa":
        model.set_attn_implementation(register_causal_sdpa())  # 'sdpa' that can skip the mask (mmgen.transformers_glue)
    if cfg.gradient_checkpointing:
        enable_checkpointing(model)
        model.config.use_cache = False
    return apply_mode(model, cfg)


_SUPPORT_FLAGS = {
    "sdpa": "_supports_sdpa",
    "flash_attention": "_supports_flash_attn",
    "flex_attention": "_supports_flex_attn",
}
"""The transformers model-class flag that says whether an attention implementation (by prefix) is supported."""


def attention_implementation(requested: str | None, hf_config: PretrainedConfig) -> str | None:
    """The attention implementation to build the decoder with: ``requested`` when the architecture supports it.

    The architecture's class (``AutoModelForCausalLM``'s choice for ``hf_config``) says what it supports
    through its capability flags (``_supports_sdpa``, ``_supports_flash_attn``, ``_supports_flex_attn``).
    An unsupported request (Gemma-2 and 'sdpa', the default) falls back to 'eager' with a warning that
    names ``model.decoder.attn_implementation``. None (transformers' own choice) and 'eager' are kept.
    """
    if requested in (None, "eager"):
        return requested
    cls = MODEL_FOR_CAUSAL_LM_MAPPING[type(hf_config)] if type(hf_config) in MODEL_FOR_CAUSAL_LM_MAPPING else None
    flag = next((f for prefix, f in _SUPPORT_FLAGS.items() if requested.startswith(prefix)), None)
    if cls is None or flag is None:
        return requested  # a model class transformers does not map (remote code), or an unknown kind
    if getattr(cls, flag, True) or (flag == "_supports_flash_attn" and getattr(cls, "_supports_flash_attn_2", False)):
        return requested  # ('_supports_flash_attn_2': the flag's name in older transformers)
    warnings.warn(
        f"model.decoder.attn_implementation={requested!r}: {cls.__name__} does not support it; using 'eager' "
        "(set model.decoder.attn_implementation: eager to silence this)",
        UserWarning,
        stacklevel=3,
    )
    return "eager"


def enable_checkpointing(model: PreTrainedModel) -> None:
    """Non-reentrant activation checkpointing of every layer, by the name the installed transformers uses
    (``activation_checkpointing_enable`` where transformers has it, as 5.23 does; ``gradient_checkpointing_enable``,
    deprecated there, in older versions such as 5.17)."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def apply_mode(model: PreTrainedModel, cfg: DecoderConfig) -> nn.Module:
    """'full': everything trains; 'frozen': nothing does; 'lora': peft adapters only."""
    if cfg.mode == "frozen":
        model.requires_grad_(False)
    elif cfg.mode == "lora":
        try:
            import peft
        except ImportError as e:  # pragma: no cover - peft is a declared dependency
            raise ImportError("model.decoder.mode=lora needs the 'peft' package (pip install peft)") from e
        lora = peft.LoraConfig(
            r=cfg.lora.rank,
            lora_alpha=cfg.lora.alpha,
            lora_dropout=cfg.lora.dropout,
            target_modules=lora_targets(model, cfg.lora.target_modules),
            task_type="CAUSAL_LM",
        )
        model = peft.get_peft_model(model, lora)
    return model


def lora_targets(model: PreTrainedModel, configured: list[str] | None) -> list[str] | None:
    """LoRA target modules: the configured ones, peft's default for the architecture (None), or else the
    linear projections of the model's attention blocks (found by walking its modules).

    Raises:
        ValueError: peft has no default and no attention projection was found; the message lists the
            linear layers to choose ``model.decoder.lora.target_modules`` from.
    """
    if configured is not None:
        return configured
    try:
        from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as defaults
    except ImportError:  # pragma: no cover - older/newer peft layouts: let peft decide
        return None
    model_type = getattr(model.config, "model_type", None)
    if model_type in defaults:
        return None
    found = attention_projections(model)
    if not found:
        candidates = sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if _is_linear(m)})
        raise ValueError(
            f"model.decoder.mode=lora: peft has no default target modules for {model_type!r} and no linear layer "
            f"was found in its attention blocks; set model.decoder.lora.target_modules, e.g. to some of {candidates}"
        )
    warnings.warn(
        f"model.decoder.lora.target_modules not set and peft has no default for {model_type!r}: using the "
        f"attention projections {found}",
        UserWarning,
        stacklevel=3,
    )
    return found


def attention_projections(model: nn.Module) -> list[str]:
    """Names (last component, sorted) of the linear layers directly inside the model's attention modules."""
    names = set()
    for module in model.modules():
        if type(module).__name__.endswith("Attention"):
            names.update(name for name, child in module.named_children() if _is_linear(child))
    return sorted(names)


def _is_linear(module: nn.Module) -> bool:
    from transformers.pytorch_utils import Conv1D  # GPT-2's linear layers

    return isinstance(module, (nn.Linear, Conv1D))


def checkpointing_enabled(model: nn.Module) -> bool:
    """Whether activation checkpointing is on (by the name this transformers release uses)."""
    for name in ("is_activation_checkpointing", "is_gradient_checkpointing"):
        if hasattr(type(model), name):
            return bool(getattr(model, name))
    return False
