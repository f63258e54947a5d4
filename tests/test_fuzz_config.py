"""Property tests of the config loader (hypothesis): dotted overrides of every key, misspelt keys, and values of
every type and shape. Each loads into a config that holds exactly the value given, or is refused with a
ConfigError naming the key; never a traceback of another kind."""

from __future__ import annotations

import dataclasses
import math
import re
import typing
import warnings
from pathlib import Path

import pytest
import yaml
from conftest import fuzz_settings
from hypothesis import given, note
from hypothesis import strategies as st

from mmgen.config import Config, ConfigError, load_config, to_dict

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny_cpu.yaml"


def _leaves(cls: type, prefix: str = "") -> dict[str, typing.Any]:
    """Dotted key -> field type of every leaf of a config dataclass."""
    out = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        inner = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
        if dataclasses.is_dataclass(inner[0]):
            out.update(_leaves(inner[0], f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = tp
    return out


LEAVES = _leaves(Config)
KEYS = sorted(LEAVES) + [
    "data.synth.n_train", "data.synth.n_val", "data.synth.image_size", "data.synth.difficulty", "data.synth.n_trian",
    "model.decoder.config_overrides.n_layer", "model.decoder.config_overrides.n_layr", "generation.num_beams",
    "train", "model.encoder", "train.lr.x", "nosuch.key", "eval.generation.bad_words",
]  # fmt: skip
TEXTS = st.one_of(
    st.integers(-(10**20), 10**20).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["nan", ".nan", ".inf", "-.inf", "1e400", "-0", "0", "1", "2", "3e-4", "true", "false", "yes",
                     "null", "~", "", "[]", "[1, a]", "{}", "{a: 1}", "[unclosed", "{x: [1, {y: z}]}", "'quoted'",
                     "a: b", "- 1", "!!python/object:os.system ls", "pool", "sdpa", "&a [*a]"]),
    st.text(max_size=10),
)  # fmt: skip


def _mutate(key: str, data) -> str:
    """A misspelling of ``key`` now and then (a dropped or repeated character)."""
    if not data.draw(st.integers(0, 5)) == 0:
        return key
    i = data.draw(st.integers(0, len(key) - 1))
    return key[:i] + key[i + 1 :] if data.draw(st.booleans()) else key[: i + 1] + key[i:]


def _expected(text: str):
    """The value an override's text means: YAML, but a number written as one is a number (``3e-4`` included)."""
    if re.fullmatch(r"[-+]?\d+", text.strip()):
        return int(text)
    if re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", text.strip()):
        return float(text)
    return yaml.safe_load(text) if text != "" else ""


def _get(d: dict, key: str):
    for part in key.split("."):
        d = d[part]
    return d


@fuzz_settings(250)
@given(data=st.data())
def test_overrides_load_exactly_or_are_refused_naming_the_key(data):
    key = _mutate(data.draw(st.sampled_from(KEYS)), data)
    text = data.draw(TEXTS)
    override = f"{key}={text}"
    note(override)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            cfg = load_config(TINY, [override])
        except ConfigError as e:
            message = str(e)
            named = key in message or key.split(".")[0] in message or "must look like key.sub=value" in message
            assert named, message
            return
    assert isinstance(cfg, Config)
    got, want = _get(to_dict(cfg), key), _expected(text)
    if isinstance(got, dict) and want in (None, {}):  # a section given as null or {}: its defaults, as in YAML
        return
    if key not in LEAVES:  # a key inside a mapping (data.synth, config_overrides): there, as given
        assert got == want or got != got and want != want  # (NaN is not equal to itself)
        return
    if isinstance(want, float) and isinstance(got, float):
        assert got == want or (math.isnan(got) and math.isnan(want))
    elif isinstance(want, list) and isinstance(got, (list, tuple)):
        assert list(got) == want
    else:
        assert got == want or (isinstance(want, int) and got == float(want)), (got, want)


@fuzz_settings(60)
@given(text=st.text(max_size=60))
def test_any_config_file_loads_or_is_refused_in_one_line(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("config") / "c.yaml"
    path.write_text(text, encoding="utf-8")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            assert isinstance(load_config(path, []), Config)
        except ConfigError as e:
            assert str(path) in str(e) or "\n" in str(e) or ":" in str(e)


@pytest.mark.parametrize("text", ["nan", ".inf", "-.inf", "1e400"])
def test_non_finite_numbers_are_refused_for_every_number_key(text):
    numbers = [k for k, tp in LEAVES.items() if float in (tp, *typing.get_args(tp))]
    assert "train.lr" in numbers and "train.max_time" in numbers
    for key in numbers:
        with pytest.raises(ConfigError, match=re.escape(key)):
            load_config(TINY, [f"{key}={text}"])
