"""Typed dataclasses from YAML/JSON files, nested dicts and dotted overrides (schema-free).

The machinery under every section of :mod:`mmgen.config`: the checks a section's ``__post_init__``
makes (:func:`check`, :func:`choice`, collected by :func:`collecting` so that every bad value is
reported at once), converting a nested dataclass to and from plain dicts, coercing YAML values to
the field types (:func:`coerce`), applying ``a.b.c=value`` overrides with suggestions for misspelt
keys, and reading and atomically writing config files. Every error is a :class:`ConfigError` that
names the dotted key.
"""

from __future__ import annotations

import ast
import contextlib
import contextvars
import copy
import dataclasses
import difflib
import functools
import glob
import inspect
import json
import math
import os
import re
import textwrap
import types
import typing
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from mmgen.atomic_files import atomic_write_text


class ConfigError(ValueError):
    """One or more configuration values or keys are invalid; each message names its dotted key.

    Attributes:
        errors: The individual messages (one for a single error).
    """

    def __init__(self, message: str, errors: list[str] | None = None) -> None:
        super().__init__(message)
        self.errors = list(errors) if errors else [message]

    @classmethod
    def listing(cls, errors: list[str]) -> ConfigError:
        """One error for several messages: the message itself when there is one, else a numbered list."""
        if len(errors) == 1:
            return cls(errors[0])
        return cls(f"{len(errors)} errors:\n" + "\n".join(f"  {e}" for e in errors), errors)


_COLLECTED: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("mmgen_config_errors", default=None)


@contextlib.contextmanager
def collect_errors() -> Iterator[list[str]]:
    """Record failing checks instead of raising at the first; on exit raise one ConfigError listing them all.

    Nested blocks (a dataclass's ``__post_init__`` inside the build of its parent) add to the
    outermost block, so a whole config reports every bad value at once.
    """
    outer = _COLLECTED.get()
    if outer is not None:
        yield outer
        return
    errors: list[str] = []
    token = _COLLECTED.set(errors)
    try:
        yield errors
    finally:
        _COLLECTED.reset(token)
    if errors:
        raise ConfigError.listing(errors)


def collecting(post_init: Callable[[Any], None]) -> Callable[[Any], None]:
    """Decorator for ``__post_init__``: every failing :func:`check` of it is reported, not only the first."""

    @functools.wraps(post_init)
    def wrapper(self: Any) -> None:
        with collect_errors():
            post_init(self)

    return wrapper


def report(error: str | ConfigError) -> None:
    """Record an error in the active :func:`collect_errors` block, or raise it when there is none."""
    errors = _COLLECTED.get()
    if errors is None:
        raise error if isinstance(error, ConfigError) else ConfigError(error)
    errors.extend(error.errors if isinstance(error, ConfigError) else [error])


def check(cond: bool, key: str, msg: str) -> None:
    """Report ``key: msg`` (see :func:`report`) unless ``cond`` holds."""
    if not cond:
        report(f"{key}: {msg}")


def choice(value: Any, key: str, choices: tuple) -> None:
    """Report ``key`` unless ``value`` is one of ``choices`` (the message lists them)."""
    check(value in choices, key, f"got {value!r}, expected one of {', '.join(map(repr, choices))}")


_DATA_SUFFIXES = (".json", ".jsonl", ".csv", ".tsv", ".parquet", ".arrow", ".tar", ".txt")


def looks_like_local_path(value: str, data: bool = False) -> bool:
    """Whether a name is meant as a local file or directory rather than a hub id or a URL.

    It is when it starts with ``/``, ``./``, ``../`` or ``~``, contains the platform's own separator
    (where that is not ``/``), or has two or more ``/`` (a hub id is ``name`` or ``namespace/name``);
    with ``data``, also when it ends in a data-file suffix (``.json``, ``.jsonl``, ``.csv``, ``.parquet``, ...).
    """
    if "://" in value:
        return False
    if value in (".", "..") or value.startswith(("/", "./", "../", "~")):
        return True
    if os.sep != "/" and (os.sep in value or value.startswith(("." + os.sep, ".." + os.sep))):
        return True
    if value.count("/") >= 2:
        return True
    return data and value.lower().endswith(_DATA_SUFFIXES)


def path_exists(value: str) -> bool:
    """Whether a local path (``~`` expanded) exists, or for a glob pattern, whether it matches anything."""
    path = os.path.expanduser(value)
    if os.path.exists(path):
        return True
    return any(c in path for c in "*?[") and bool(glob.glob(path))


def to_dict(obj: Any) -> Any:
    """Plain nested dict/list of a (nested) dataclass, suitable for JSON and YAML."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def unknown_key(key: str, valid: list[str]) -> ConfigError:
    """The error for a misspelt ``key``: the closest valid keys, or all of them."""
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


def coerce(value: Any, tp: Any, key: str) -> Any:
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
    if tp is float:  # NaN or an infinity never means what it says (a NaN budget never ends, a NaN rate diverges)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        raise ConfigError(f"{key}: expected a finite number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        inner = args[0] if args else Any
        out = [coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    return value


def from_dict(cls: type, d: dict | None, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a nested dict, rejecting unknown keys with suggestions.

    Every bad key and value is reported, in one :class:`ConfigError` that lists them all.
    """
    d = {} if d is None else d
    if not isinstance(d, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {d!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    moved = getattr(cls, "MOVED_KEYS", {})
    with collect_errors() as errors:
        kwargs = {}
        for k, v in d.items():
            key = f"{prefix}{k}"
            if k in moved:
                if _holds_defaults(getattr(cls, "MOVED_DEFAULTS", {}).get(k), v):  # a run saved before the move
                    warnings.warn(
                        f"{key}: left out (default settings, no longer a key here; see {moved[k]})", stacklevel=2
                    )
                else:
                    report(f"{key}: no longer a key here; its settings are {moved[k]}")
                continue
            if k not in fields:
                report(unknown_key(key, sorted(fields)))
                continue
            tp = _strip_optional(hints[k])
            try:
                kwargs[k] = (
                    from_dict(tp, v, prefix=f"{key}.") if dataclasses.is_dataclass(tp) else coerce(v, hints[k], key)
                )
            except ConfigError as e:  # a wrong type: reported, the field keeps its default
                report(e)
        start = len(errors)
        try:
            obj = cls(**kwargs)
        except TypeError as e:  # a value of the wrong kind reached a check (e.g. null for a number)
            report(f"{prefix or 'config'}: {e}")
            obj = cls()
        section = getattr(cls, "SECTION", None)  # a section that lives in several places names its keys by one
        if section and prefix and prefix != f"{section}.":
            errors[start:] = [
                prefix + e[len(section) + 1 :] if e.startswith(f"{section}.") else e for e in errors[start:]
            ]
    return obj


def _holds_defaults(cls: type | None, section: Any) -> bool:
    """Whether ``section`` (a mapping) sets only fields of dataclass ``cls`` to their default values."""
    if cls is None or not isinstance(section, dict):
        return False
    fields = {f.name: f for f in dataclasses.fields(cls)}
    default = cls()
    return all(k in fields and getattr(default, k) == _plain(v) for k, v in section.items())


def _plain(value: Any) -> Any:
    """YAML lists compare equal to the tuples a dataclass may hold."""
    return tuple(value) if isinstance(value, list) else value


_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def _parse_value(text: str) -> Any:
    """A CLI override value in YAML syntax (``true``, ``[a, b]``, ``null``); ``3e-4`` is a float."""
    if _FLOAT.match(text.strip()):
        return int(text) if re.fullmatch(r"[-+]?\d+", text.strip()) else float(text)
    return yaml.safe_load(text) if text != "" else ""


def apply_overrides(d: dict, overrides: list[str] | None, cls: type) -> dict:
    """Apply ``a.b.c=value`` overrides to a nested dict (returns a new dict); ``cls`` is its schema.

    A malformed override or an unknown key is reported (all of them, in one :class:`ConfigError`) and skipped.
    """
    d = copy.deepcopy(d)
    with collect_errors():
        for item in overrides or []:
            if "=" not in item:
                report(f"override '{item}' must look like key.sub=value")
                continue
            key, text = item.split("=", 1)
            try:
                _apply_override(d, key.strip().split("."), text, cls)
            except ConfigError as e:
                report(e)
    return d


def _apply_override(d: dict, parts: list[str], text: str, cls: type) -> None:
    # walk the dataclass schema to validate the path and give suggestions
    schema = cls
    node = d
    for i, p in enumerate(parts):
        dotted = ".".join(parts[: i + 1])
        if schema is not None:
            fields = {f.name: f for f in dataclasses.fields(schema)}
            if p in getattr(schema, "MOVED_KEYS", {}):
                raise ConfigError(f"{dotted}: no longer a key here; its settings are {schema.MOVED_KEYS[p]}")
            if p not in fields:
                raise unknown_key(dotted, sorted(fields))
            tp = _strip_optional(typing.get_type_hints(schema)[p])
            schema = tp if dataclasses.is_dataclass(tp) else None
        if i == len(parts) - 1:
            try:
                node[p] = _parse_value(text)
            except yaml.YAMLError as e:  # unbalanced brackets, a control character, a python tag
                problem = " ".join(str(getattr(e, "problem", None) or e).split())
                raise ConfigError(f"{dotted}: {text!r} is not a YAML value ({problem})") from None
        else:
            if not isinstance(node.get(p), dict):
                node[p] = {}
            node = node[p]


def load_config(
    path: str | Path | None, overrides: list[str] | None, cls: type, check: Callable[[Any], None] | None = None
) -> Any:
    """Load a YAML (or JSON) config file, apply dotted overrides, validate.

    Args:
        path: The file (None: the schema's defaults).
        overrides: ``a.b.c=value`` items.
        cls: The schema (a dataclass).
        check: Further checks of the built config (e.g. that named paths exist), run even when values
            failed, so that one :class:`ConfigError` lists every problem.
    """
    d: dict = {}
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise ConfigError(f"config file not found: {p}")
        try:
            d = yaml.safe_load(p.read_text(encoding="utf-8-sig")) or {}
        except UnicodeDecodeError as e:
            raise ConfigError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        except yaml.YAMLError as e:
            raise ConfigError(_yaml_error(p, e)) from None
        if not isinstance(d, dict):
            raise ConfigError(f"{p}: the top level must be a mapping")
    with collect_errors():
        cfg = from_dict(cls, apply_overrides(d, overrides, cls))
        if check is not None:
            check(cfg)
    return cfg


def _yaml_error(path: Path, e: yaml.YAMLError) -> str:
    """A YAML error in one line, naming the file, line and column."""
    mark = getattr(e, "problem_mark", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else f"{path}"
    problem = getattr(e, "problem", None) or str(e)
    context = getattr(e, "context", None)
    return " ".join(f"{where}: invalid YAML: {problem}{f' ({context})' if context else ''}".split())


def save_config(cfg: Any, path: str | Path) -> None:
    """Write a config as YAML (``.yaml``/``.yml``) or JSON (anything else)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    d = to_dict(cfg)
    text = yaml.safe_dump(d, sort_keys=False) if p.suffix in (".yaml", ".yml") else json.dumps(d, indent=2)
    atomic_write_text(p, text)


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The attribute docstrings of a dataclass (the string literal under each field), by field name."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError, SyntaxError):  # no source (a frozen application): no help
        return {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    docs = {}
    for node, after in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr):
            if isinstance(after.value, ast.Constant) and isinstance(after.value.value, str):
                docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def _inline(value: Any) -> str:
    """One YAML flow value (``3``, ``'a b'``, ``[x, y]``, ``null``)."""
    text = yaml.safe_dump(to_dict(value), default_flow_style=True, width=10**9, sort_keys=False)
    return text[: -len("...\n")].strip() if text.endswith("...\n") else text.strip()


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else None


def describe_config(cfg: Any, indent: int = 0) -> str:
    """The config as YAML that loads back to the same values, every key with its help and default as comments.

    Args:
        cfg: A (nested) config dataclass.
        indent: Spaces before the top-level keys.
    """
    pad, lines = " " * indent, []
    docs = field_docs(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        for line in textwrap.wrap(docs.get(f.name, ""), 100):
            lines.append(f"{pad}# {line}")
        if dataclasses.is_dataclass(value):
            lines.append(f"{pad}{f.name}:")
            lines.append(describe_config(value, indent + 2))
        else:
            lines.append(f"{pad}{f.name}: {_inline(value)}  # default: {_inline(_default(f))}")
    return "\n".join(lines)
