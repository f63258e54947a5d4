import warnings
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
        ("eval.generation.top_p=0", "generation.top_p"),
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
    from mmgen.config import SDPA_BACKENDS
    from mmgen.transformers_glue import SDPA_NAMES

    assert tuple(SDPA_NAMES) == SDPA_BACKENDS  # config.py stays free of torch, so it keeps its own copy


def test_every_bad_value_is_reported_at_once():
    overrides = ["train.lr=-1", "train.batch_size=0", "train.grad_accum=0", "model.projector.kind=conv"]
    overrides += ["train.lrr=1", "eval.generation.top_p=2", "eval.metric=BLEU", "model.decoder.mode=half", "nonsense"]
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides)
    starts = ["train.lr:", "train.batch_size:", "train.grad_accum:", "model.projector.kind:", "unknown key 'train.lrr'"]
    starts += ["eval.generation.top_p:", "eval.metric:", "model.decoder.mode:", "override 'nonsense'"]  # its full key
    assert sorted(error.startswith(tuple(starts)) for error in e.value.errors) == [True] * len(starts)
    for start in starts:
        assert sum(error.startswith(start) for error in e.value.errors) == 1, start
    assert "train.lr: must be a finite number > 0, got -1.0" in e.value.errors  # each message as it reads alone
    assert str(e.value).startswith("9 errors:")


def test_a_dataclass_built_directly_reports_all_its_bad_fields():
    from mmgen.config import TrainConfig

    with pytest.raises(ConfigError) as e:
        TrainConfig(lr=0, batch_size=0, keep_last=0)
    assert [m.split(":")[0] for m in e.value.errors] == ["train.batch_size", "train.lr", "train.keep_last"]
    with pytest.raises(ConfigError, match=r"^train\.lr: must be a finite number > 0, got 0$"):  # the message alone
        TrainConfig(lr=0)


def test_missing_paths_are_errors_naming_their_keys(tmp_path):
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "part-0.parquet").write_bytes(b"")
    fine = [
        "model.decoder.name=openai-community/gpt2",  # a hub id, not a path
        f"data.train={tmp_path}/shards/*.parquet",  # a glob that matches
        "data.val=HuggingFaceM4/COCO",
        f"data.train_images={tmp_path}",
    ]
    assert load_config(None, fine, check_paths=True).model.decoder.name == "openai-community/gpt2"
    missing = {
        "model.decoder.name": "/nonexistent/dir",
        "model.encoder.weights": str(tmp_path / "vit.safetensors"),
        "model.tokenizer.name": "tokenizer_dir",  # kind 'path': a directory, however it is spelt
        "train.init_from": "runs/stage1/best",
        "data.train": "./captions_train.jsonl",
        "data.val": "val.json",  # a data file, not a hub dataset
        "data.train_images": "~/no-such-images-folder",
        "data.val_images": str(tmp_path / "val2014"),
    }
    bad = [f"{k}={v}" for k, v in missing.items()] + ["model.tokenizer.kind=path", "train.lr=0"]
    load_config(None, bad[:-1])  # without check_paths (reading a config) the paths are not looked up
    with pytest.raises(ConfigError) as e:
        load_config(None, bad, check_paths=True)
    assert len(e.value.errors) == len(missing) + 1
    assert "train.lr: must be a finite number > 0, got 0.0" in e.value.errors
    for key, value in missing.items():
        assert f"{key}: {value}: no such file or directory" in str(e.value)
    # data.synth writes the data: its paths are not checked
    synth = ["data.synth={n_train: 8, n_val: 4}", "data.train=./captions_train.jsonl", "data.train_images=gone"]
    assert load_config(None, synth, check_paths=True).data.synth


def test_train_refuses_a_missing_decoder_directory_before_any_work(tmp_path, capsys):
    from mmgen.commands.cli import main

    argv = ["train", "--config", str(ROOT / "configs" / "tiny_cpu.yaml"), f"train.out_dir={tmp_path / 'run'}"]
    code = main([*argv, "model.decoder.name=/nonexistent/dir", "model.decoder.pretrained=false"])
    err = capsys.readouterr().err
    assert code == 2 and "model.decoder.name: /nonexistent/dir: no such file or directory" in err
    assert not (tmp_path / "run").exists()  # no data synthesised, no tokenizer trained


def test_warmup_longer_than_training_warns_naming_both_keys():
    with pytest.warns(UserWarning, match=r"train\.max_steps \(50\) <= train\.warmup_steps \(100\)"):
        load_config(None, ["train.max_steps=50"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_config(None, ["train.max_steps=101"])


def test_the_old_top_level_generation_section_is_refused_naming_where_it_went(tmp_path):
    """It was never read (a config that set it changed nothing): now it is an error pointing at eval.generation."""
    (tmp_path / "old.yaml").write_text("train:\n  lr: 0.001\ngeneration:\n  num_beams: 5\n")
    with pytest.raises(ConfigError, match=r"^generation: no longer a key here; its settings are eval\.generation"):
        load_config(tmp_path / "old.yaml")
    with pytest.raises(ConfigError, match=r"generation: no longer a key here; its settings are eval\.generation"):
        load_config(None, ["generation.num_beams=5"])
    assert load_config(None, ["eval.generation.num_beams=5"]).eval.generation.num_beams == 5


OLD_RUN_GENERATION = """
generation:
  num_beams: 3
  max_new_tokens: 20
  min_new_tokens: 0
  length_penalty: 1.0
  early_stopping: true
  no_repeat_ngram_size: 0
  repetition_penalty: 1.0
  do_sample: false
  temperature: 1.0
  top_k: 0
  top_p: 1.0
  num_return_sequences: 1
  seed: null
  bad_words: []
"""  # what every run directory's config.yaml held before the section moved (all defaults, never read)


def test_a_run_saved_before_the_move_still_loads_and_a_set_section_is_still_refused(tmp_path):
    saved = (ROOT / "configs" / "tiny_cpu.yaml").read_text() + OLD_RUN_GENERATION
    (tmp_path / "config.yaml").write_text(saved)
    with pytest.warns(UserWarning, match=r"generation: left out \(default settings"):
        cfg = load_config(tmp_path / "config.yaml")
    assert cfg == load_config(ROOT / "configs" / "tiny_cpu.yaml")
    (tmp_path / "config.yaml").write_text(saved.replace("  num_beams: 3\n  max_new", "  num_beams: 5\n  max_new"))
    with pytest.raises(ConfigError, match=r"generation: no longer a key here; its settings are eval\.generation"):
        load_config(tmp_path / "config.yaml")


@pytest.mark.parametrize("name", ["tiny_cpu.yaml", "vit_b16_gpt2.yaml"])
def test_print_config_lists_every_key_and_loads_back_to_the_same_config(name, capsys):
    import dataclasses

    import yaml

    from mmgen.commands.cli import main
    from mmgen.config import from_dict

    overrides = ["eval.generation.num_beams=5", "train.lr=0.002", "eval.generation.bad_words=[red]"]
    assert main(["train", "--print-config", "--config", str(ROOT / "configs" / name), *overrides]) == 0
    text = capsys.readouterr().out
    expected = load_config(ROOT / "configs" / name, overrides)
    assert from_dict(Config, yaml.safe_load(text)) == expected
    assert expected.eval.generation.num_beams == 5 and expected.eval.generation.bad_words == ("red",)

    def leaves(obj, prefix=""):
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            yield from leaves(value, f"{prefix}{f.name}.") if dataclasses.is_dataclass(value) else [prefix + f.name]

    keys = [line.split(":")[0].strip() for line in text.splitlines() if not line.lstrip().startswith("#")]
    assert len([k for k in keys if k]) >= len(list(leaves(expected)))  # every leaf (and section) has its line
    assert "    num_beams: 5  # default: 3" in text  # the value, then the default
    assert "    # timm model name (hub-pretrained names work when ``pretrained`` is true).\n    name: " in text  # help
