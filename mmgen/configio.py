"""Typed dataclasses from YAML/JSON files, nested dicts and dotted overrides (schema-free).

The generic half of :mod:`mmgen.config`: converting a nested dataclass to and from plain dicts,
coercing and checking YAML values against the field types, applying ``a.b.c=value`` overrides
with suggestions for misspelt keys, and reading and atomically writing config files. Every error
is a :class:`ConfigError` that names the dotted key.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message names the dotted key."""


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {msg}")


def _choice(value: Any, key: str, choices: tuple) -> None:
    _check(value in choices, key, f"got {value!r}, expected one of {', '.join(map(repr, choices))}")


def to_dict(obj: Any) -> Any:
    """Plain nested dict/list of a (nested) dataclass, suitable for JSON and YAML."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def _unknown_key(key: str, valid: list[str]) -> ConfigError:
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], valid, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; valid keys: {', '.join(valid)}"
    return ConfigError(f"unknown key '{key}'{hint}")


def _strip_optional(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check/convert a YAML value to the field type ``tp``; errors name ``key``."""
    if value is None:
        return None
    tp = _strip_optional(tp)
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        inner = args[0] if args else Any
        out = [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    return value


def from_dict(cls: type, d: dict | None, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a nested dict, rejecting unknown keys with suggestions."""
    d = {} if d is None else d
    if not isinstance(d, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {d!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if k not in fields:
            raise _unknown_key(key, sorted(fields))
        tp = _strip_optional(hints[k])
        if dataclasses.is_dataclass(tp):
            kwargs[k] = from_dict(tp, v, prefix=f"{key}.")
        else:
            kwargs[k] = _coerce(v, hints[k], key)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except TypeError as e:  # pragma: no cover - defensive
        raise ConfigError(f"{prefix or 'config'}: {e}") from e


_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def _parse_value(text: str) -> Any:
    """A CLI override value in YAML syntax (``true``, ``[a, b]``, ``null``); ``3e-4`` is a float."""
    if _FLOAT.match(text.strip()):
        return int(text) if re.fullmatch(r"[-+]?\d+", text.strip()) else float(text)
    return yaml.safe_load(text) if text != "" else ""


def apply_overrides(d: dict, overrides: list[str] | None, cls: type) -> dict:
    """Apply ``a.b.c=value`` overrides to a nested dict (returns a new dict); ``cls`` is its schema."""
    d = copy.deepcopy(d)
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key.sub=value")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        # walk the dataclass schema to validate the path and give suggestions
        schema = cls
        node = d
        for i, p in enumerate(parts):
            dotted = ".".join(parts[: i + 1])
            if schema is not None:
                fields = {f.name: f for f in dataclasses.fields(schema)}
                if p not in fields:
                    raise _unknown_key(dotted, sorted(fields))
                tp = _strip_optional(typing.get_type_hints(schema)[p])
                schema = tp if dataclasses.is_dataclass(tp) else None
            if i == len(parts) - 1:
                node[p] = _parse_value(text)
            else:
                if not isinstance(node.get(p), dict):
                    node[p] = {}
                node = node[p]
    return d


def load_config(path: str | Path | None, overrides: list[str] | None, cls: type) -> Any:
    """Load a YAML (or JSON) config file, apply dotted overrides, validate."""
    d: dict = {}
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise ConfigError(f"config file not found: {p}")
        try:
            d = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: invalid YAML: {e}") from e
        if not isinstance(d, dict):
            raise ConfigError(f"{p}: the top level must be a mapping")
    d = apply_overrides(d, overrides, cls)
    return from_dict(cls, d)


def save_config(cfg: Any, path: str | Path) -> None:
    """Write a config as YAML (``.yaml``/``.yml``) or JSON (anything else)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    d = to_dict(cfg)
    text = yaml.safe_dump(d, sort_keys=False) if p.suffix in (".yaml", ".yml") else json.dumps(d, indent=2)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(p)
