"""Decoder: any transformers ``AutoModelForCausalLM`` (hub name, local directory or random init)."""

from __future__ import annotations

from pathlib import Path

from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from mmgen.attention import register_causal_sdpa
from mmgen.config import DecoderConfig


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
        if not hasattr(hf_cfg, k) and k not in getattr(hf_cfg, "attribute_map", {}):
            raise ValueError(f"model.decoder.config_overrides.{k}: not a field of {type(hf_cfg).__name__}")
        setattr(hf_cfg, k, v)
    if vocab_size is not None:
        hf_cfg.vocab_size = vocab_size
    for k, v in (special_ids or {}).items():
        setattr(hf_cfg, k, v)
    return hf_cfg


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
    attn = {"attn_implementation": cfg.attn_implementation} if cfg.attn_implementation else {}
    if hf_config is not None:
        model = AutoModelForCausalLM.from_config(hf_config, **attn)
    elif cfg.pretrained:
        model = AutoModelForCausalLM.from_pretrained(cfg.name, **attn)
        if vocab_size > model.get_input_embeddings().num_embeddings:
            model.resize_token_embeddings(vocab_size)
        for k, v in special_ids.items():
            setattr(model.config, k, v)
    else:
        model = AutoModelForCausalLM.from_config(decoder_config(cfg, vocab_size, special_ids), **attn)
    if model.generation_config is not None:
        for k, v in special_ids.items():
            setattr(model.generation_config, k, v)
    if cfg.attn_implementation in ("sdpa", None) and model.config._attn_implementation == "sdpa":
        model.set_attn_implementation(register_causal_sdpa())  # 'sdpa' that can skip the mask (mmgen.attention)
    if cfg.gradient_checkpointing:
        enable_checkpointing(model)
        model.config.use_cache = False
    return apply_mode(model, cfg)


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
            target_modules=cfg.lora.target_modules,
            task_type="CAUSAL_LM",
        )
        model = peft.get_peft_model(model, lora)
    return model
