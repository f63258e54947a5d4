"""Logs a person can read: off a terminal, whole progress lines instead of tqdm's carriage returns; warnings as one
line; caption collapse on its own line; settings meant for a GPU named before a CPU run spends time on them."""

from __future__ import annotations

import io
import json
import sys
import warnings
from pathlib import Path

from mmgen.commands.cli import main
from mmgen.progress import PlainProgress, step_lines
from mmgen.scenes.writer import make_scenes
from mmgen.training.levers import gpu_settings_on_cpu

ROOT = Path(__file__).resolve().parents[1]


def test_plain_progress_writes_a_line_every_n_steps_with_that_steps_values():
    out = io.StringIO()
    bar = PlainProgress(total=10, desc="train", every=4, file=out)
    for step in range(1, 11):
        bar.update(1)
        if step % 2 == 0:  # the trainer's logging interval
            bar.set_postfix(loss=f"{1 / step:.3f}")
    bar.close()
    lines = out.getvalue().splitlines()
    assert [line.split(" [")[0] for line in lines] == [
        "train: 4/10 (40%) loss=0.250",
        "train: 8/10 (80%) loss=0.125",
        "train: 10/10 (100%) loss=0.100",
    ]
    assert "\r" not in out.getvalue() and all(line.endswith("]") for line in lines)
    assert step_lines(800, 10) == 40 and step_lines(60, 1) == 3 and step_lines(5, 10) == 10


def test_gpu_settings_on_the_cpu_are_named():
    import torch

    from mmgen.config import load_config

    cfg = load_config(ROOT / "configs" / "scenes_gpu.yaml")
    note = gpu_settings_on_cpu(cfg.train, torch.device("cpu"))
    assert note.startswith("note: this run is on the CPU") and "train.compile=true" in note and "67 s" in note
    assert gpu_settings_on_cpu(cfg.train, torch.device("cuda")) is None
    assert gpu_settings_on_cpu(load_config(ROOT / "configs" / "tiny_cpu.yaml").train, torch.device("cpu")) is None


def show_as_python_does(message, category, filename, lineno, file=None, line=None):
    """Python's own way of showing a warning (pytest records them instead): its formatwarning, on stderr."""
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def test_a_redirected_train_log_is_whole_lines(tmp_path, capsys, monkeypatch):
    make_scenes(tmp_path / "scenes", 16, seed=0, image_size=32)
    scenes = tmp_path / "scenes" / "captions_train.json"
    argv = ["train", "--config", str(ROOT / "configs" / "tiny_cpu.yaml"), f"train.out_dir={tmp_path / 'run'}"]
    argv += [f"data.train={scenes}", f"data.val={scenes}", "data.allow_overlap=true", "data.synth=null"]
    argv += ["model.encoder.img_size=32", "model.encoder.embed_dim=32", "model.encoder.depth=1"]
    argv += ["model.decoder.config_overrides={n_layer: 1, n_embd: 32, n_head: 2, n_positions: 64}"]
    argv += ["data.num_workers=0", "train.batch_size=8", "train.max_steps=2", "train.log_every=1", "eval.every=0"]
    argv += ["train.lr=1e-6", "train.precision=bf16", "train.tensorboard=false", "eval.generation={num_beams: 1}"]
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        monkeypatch.setattr(warnings, "showwarning", show_as_python_does)
        assert main(argv) == 0
    out, err = capsys.readouterr()
    assert "\r" not in err and "\r" not in out
    assert "train: 1/2 (50%) loss=" in err and "train: 2/2 (100%) loss=" in err
    warned = [line for line in err.splitlines() if "warning" in line]
    assert "mmgen train: warning: train.max_steps (2) <= train.warmup_steps (50)" in warned[0]
    assert all(line.startswith("mmgen train: warning: ") for line in warned)  # one line each, no source line
    assert "warnings.warn(" not in err and "UserWarning" not in err
    assert out.splitlines()[0].startswith("note: this run is on the CPU, with settings meant for a GPU")
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    share = [r["eval"] for r in rows if "eval" in r][-1]["collapse_most_common_share"]
    assert share == 1.0  # an untrained model says one thing for every image
    assert "step 2: warning: caption collapse: 100% of the 16 captions are the same caption" in out
