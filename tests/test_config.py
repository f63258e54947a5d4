from pathlib import Path

import pytest

from mmgen.config import Config, ConfigError, load_config, save_config

ROOT = Path(__file__).resolve().parents[1]


def test_yaml_round_trip(tmp_path):
    cfg = load_config(
        None, ["train.lr=3e-4", "model.projector.kind=pool", "model.decoder.config_overrides={n_layer: 2}"]
    )
    assert cfg.train.lr == 3e-4 and isinstance(cfg.train.lr, float)
    assert cfg.model.projector.kind == "pool"
    assert cfg.model.decoder.config_overrides == {"n_layer": 2}
    save_config(cfg, tmp_path / "c.yaml")
    again = load_config(tmp_path / "c.yaml")
    assert again == cfg
    save_config(cfg, tmp_path / "c.json")
    assert Config.from_dict(__import__("json").loads((tmp_path / "c.json").read_text())) == cfg


def test_unknown_key_names_it_and_suggests(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'train.lrr'.*did you mean lr"):
        load_config(None, ["train.lrr=1"])
    (tmp_path / "bad.yaml").write_text("model:\n  projecter:\n    kind: mlp\n")
    with pytest.raises(ConfigError, match=r"model.projecter.*projector"):
        load_config(tmp_path / "bad.yaml")


@pytest.mark.parametrize(
    "override, key",
    [
        ("model.projector.kind=conv", "model.projector.kind"),
        ("train.batch_size=0", "train.batch_size"),
        ("train.lr=fast", "train.lr"),
        ("model.encoder.freeze=half", "model.encoder.freeze"),
        ("generation.top_p=0", "generation.top_p"),
        ("train.compile=yes please", "train.compile"),
        ("train.compile_mode=fastest", "train.compile_mode"),
        ("train.sdpa_backends=[flash, turbo]", "train.sdpa_backends"),
        ("train.schedule=time", "train.schedule"),  # 'time' needs train.max_time
    ],
)
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])


def test_cross_field_validation():
    with pytest.raises(ConfigError, match="train.feature_cache"):
        load_config(None, ["train.feature_cache=true"])
    cfg = load_config(None, ["train.feature_cache=true", "model.encoder.freeze=all"])
    assert cfg.train.feature_cache


def test_given_config_is_not_mutated():
    d = {"train": {"lr": 0.1}}
    load_config(None, None)
    from mmgen.config import apply_overrides

    out = apply_overrides(d, ["train.lr=0.2"])
    assert d == {"train": {"lr": 0.1}} and out["train"]["lr"] == 0.2


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_parses(path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)


def test_config_names_the_same_attention_kernels_as_mmgen_attention():
    from mmgen.attention import SDPA_NAMES
    from mmgen.config import SDPA_BACKENDS

    assert tuple(SDPA_NAMES) == SDPA_BACKENDS  # config.py stays free of torch, so it keeps its own copy
