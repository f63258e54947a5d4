"""Typed configuration: nested dataclasses, YAML load/save, dotted overrides, validation.

A run is described by one :class:`Config` holding :class:`ModelConfig` (encoder / projector / decoder /
tokenizer), :class:`DataConfig`, :class:`TrainConfig`, :class:`EvalConfig` (with the run's
:class:`GenerationConfig`) and :class:`ScstConfig`. Every field is validated in ``__post_init__`` so that a
bad value fails before any model is built, with an error naming the dotted key.

One module per concept:

- :mod:`mmgen.config.model` -- the ``model`` section (also the ``config.json`` of a saved model);
- :mod:`mmgen.config.run` -- ``data``, ``train``, ``eval``, ``scst`` and the whole :class:`Config`;
- :mod:`mmgen.config.generation` -- the generation settings and the ``generation.KEY=VALUE`` overrides;
- :mod:`mmgen.config.io` -- the schema-free machinery: checks, dicts, overrides, files.
"""

from mmgen.config.generation import SDPA_BACKENDS, GenerationConfig, generation_overrides, sdpa_names
from mmgen.config.io import (
    ConfigError,
    collecting,
    describe_config,
    flat_dict,
    from_dict,
    looks_like_local_path,
    path_exists,
    save_config,
    to_dict,
)
from mmgen.config.model import (
    PROJECTOR_KINDS,
    DecoderConfig,
    EncoderConfig,
    LoraConfig,
    ModelConfig,
    ProjectorConfig,
    TokenizerConfig,
)
from mmgen.config.run import (
    OBJECTIVES,
    Config,
    DataConfig,
    EvalConfig,
    ScstConfig,
    TrainConfig,
    apply_overrides,
    load_config,
    load_preset,
)

__all__ = [
    "OBJECTIVES",
    "PROJECTOR_KINDS",
    "SDPA_BACKENDS",
    "Config",
    "ConfigError",
    "DataConfig",
    "DecoderConfig",
    "EncoderConfig",
    "EvalConfig",
    "GenerationConfig",
    "LoraConfig",
    "ModelConfig",
    "ProjectorConfig",
    "ScstConfig",
    "TokenizerConfig",
    "TrainConfig",
    "apply_overrides",
    "collecting",
    "describe_config",
    "flat_dict",
    "from_dict",
    "generation_overrides",
    "load_config",
    "load_preset",
    "looks_like_local_path",
    "path_exists",
    "save_config",
    "sdpa_names",
    "to_dict",
]
