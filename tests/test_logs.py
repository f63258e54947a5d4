"""Logs a person can read: off a terminal, whole progress lines instead of tqdm's carriage returns; settings meant
for a GPU named before a CPU run spends time on them (a whole redirected run: tests/test_trackers.py)."""

from __future__ import annotations

import io
from pathlib import Path

from mmgen.progress import PlainProgress, step_lines
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
