"""CPU threads: ``mmgen.runtime.set_threads``, the ``--threads`` option of the commands and ``train.threads``."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from mmgen.commands import UsageError
from mmgen.commands.cli import main
from mmgen.config import Config, ConfigError
from mmgen.runtime import set_threads


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_set_threads_sets_torch_threads_and_none_leaves_them(restore_threads):
    torch.set_num_threads(2)
    assert set_threads(None) is False
    assert torch.get_num_threads() == 2
    set_threads(1)
    assert torch.get_num_threads() == 1


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True])
def test_set_threads_refuses_what_is_not_a_positive_integer(bad):
    with pytest.raises(ValueError, match="threads must be a positive integer"):
        set_threads(bad)


def test_inter_op_threads_are_set_in_a_fresh_process_and_left_once_set():
    """Inter-op threads can be set once per process: the first call sets them, a later one changes only the
    intra-op threads and says so, without failing."""
    code = (
        "import torch; from mmgen.runtime import set_threads; "
        "a = set_threads(3); i1 = torch.get_num_interop_threads(); "
        "b = set_threads(2); print(a, i1, b, torch.get_num_threads(), torch.get_num_interop_threads())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "3", "False", "2", "3"]


def _threads_seen_by(monkeypatch, target: str):
    """Replace ``target`` (module:attribute) by a stand-in that records torch's threads and stops the command."""
    seen = []

    def stand_in(*args, **kwargs):
        seen.append(torch.get_num_threads())
        raise UsageError("stopped by the test")

    module, attribute = target.split(":")
    monkeypatch.setattr(f"{module}.{attribute}", stand_in)
    return seen


def test_caption_evaluate_demo_and_features_apply_threads_before_the_work(
    monkeypatch, tmp_path, restore_threads, capsys
):
    image = tmp_path / "a.png"
    image.write_bytes(b"")
    data = tmp_path / "captions.json"
    data.write_text("[]")
    commands = {
        "mmgen.captioner:Captioner.from_pretrained": ["caption", str(image), "--model", str(tmp_path)],
        "mmgen.commands.evaluate_command:load_inputs": ["evaluate", "--model", str(tmp_path), "--data", str(data)],
        "mmgen.commands.demo_command:run_demo": ["demo", "--out", str(tmp_path / "demo")],
        "mmgen.commands.data_command:build_feature_cache_cli": ["data", "features", "--config", str(data)],
    }
    for target, argv in commands.items():
        torch.set_num_threads(2)
        seen = _threads_seen_by(monkeypatch, target)
        assert main([*argv, "--threads", "1"]) == 2, target
        assert seen == [1], target
        torch.set_num_threads(2)
        seen = _threads_seen_by(monkeypatch, target)
        main(argv)  # without --threads nothing changes
        assert seen == [2], target
    capsys.readouterr()


@pytest.mark.parametrize("command", ["caption", "evaluate", "train", "demo"])
def test_bad_thread_counts_are_usage_errors(command, capsys):
    assert main([command, "--threads", "0"]) == 2
    assert "--threads: must be >= 1, got 0" in capsys.readouterr().err


def test_train_threads_is_the_config_key_and_the_trainer_applies_it(monkeypatch, tmp_path, restore_threads):
    config = tmp_path / "c.yaml"
    cfg = Config()
    cfg.data.train = str(config)  # a file that exists (the trainer never reads it here)
    cfg.save(config)
    got = []
    monkeypatch.setattr("mmgen.training.objectives.build_trainer", lambda cfg, **_: got.append(cfg) or 1 / 0)
    with pytest.raises(ZeroDivisionError):
        main(["train", "--config", str(config), "--threads", "3"])
    assert got[0].train.threads == 3

    from mmgen.training.trainer import Trainer

    seen = []

    def first_work():
        seen.append(torch.get_num_threads())
        raise RuntimeError("stopped by the test")

    monkeypatch.setattr("mmgen.distributed.init_distributed", first_work)
    torch.set_num_threads(2)
    with pytest.raises(RuntimeError, match="stopped by the test"):
        Trainer(Config.from_dict({"train": {"threads": 1}}))
    assert seen == [1]


@pytest.mark.parametrize("value", [0, "two", 1.5])
def test_train_threads_must_be_a_positive_integer(value):
    with pytest.raises(ConfigError, match="train.threads"):
        Config.from_dict({"train": {"threads": value}})
