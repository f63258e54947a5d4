"""The model card of a training run's saved models (``best/``, ``final/``, checkpoints): what trained, on what, how
long, and its last evaluation (:mod:`mmgen.model_card` renders it)."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import Any

from mmgen.config import Config
from mmgen.model_card import Evaluation, TrainingBudget, TrainingData, model_card

SCENE_KINDS = {
    "simple": "one or two upright shapes (6 colours, 5 shapes, 2 sizes) on one of 4 backgrounds (striped, dotted, "
    "checkered, gradient), with their left/right/above/below relation",
    "hard": "up to four rotated shapes (8 colours, 8 shapes, 3 sizes) on a 3x3 grid on one of 5 backgrounds, with "
    "counts, positions and relations",
}
"""What the images of each ``mmgen data synth --difficulty`` show."""


def command_line() -> str:
    """This process's command line, the way a user would type it (``mmgen train ...`` for the console script)."""
    argv = list(sys.argv) or ["python"]
    head = Path(argv[0]).name
    if head == "mmgen" or argv[0].endswith(os.path.join("mmgen", "__main__.py")):
        argv[0] = "mmgen"
    return shlex.join(argv)


def training_data(cfg: Config, train_records: Any) -> TrainingData:
    """The training data of a run, as the card names it."""
    size = len(train_records) if hasattr(train_records, "__len__") else None
    captions = sum(len(r.captions) for r in train_records) if size is not None else None
    synth = cfg.data.synth
    if synth:
        difficulty = synth.get("difficulty", "simple")
        side = synth.get("image_size", 64)
        name = f"synthetic scenes (mmgen data synth: {difficulty}, seed {synth.get('seed', 0)}, {side}x{side} pixels)"
        return TrainingData(name, size, captions, synthetic=True, description=SCENE_KINDS.get(difficulty, ""))
    name = str(cfg.data.train) + (f" (split {cfg.data.train_split})" if cfg.data.train_split else "")
    return TrainingData(name, size, captions)


def run_card(trainer, name: str, scores: dict | None, model=None) -> str:
    """The card text of a model the trainer saves now (``name``: the folder's), with ``scores`` (its evaluation on the
    validation records, or None)."""
    cfg, state = trainer.cfg, trainer.state
    hardware = str(trainer.device)
    if trainer.device.type == "cuda":
        import torch

        hardware = f"{trainer.dist.world_size} x {torch.cuda.get_device_name(trainer.device)}"
    budget = TrainingBudget(state.step, state.step * cfg.train.batch_size, state.train_seconds, hardware)
    evaluation = None
    val = trainer.data.val_records
    if scores and val:
        gen = cfg.eval.generation
        search = f"beam search, {gen.num_beams} beams" if gen.num_beams > 1 else "greedy search"
        where = "held-out synthetic scenes" if cfg.data.synth else f"validation images of {cfg.data.val}"
        evaluation = Evaluation(
            {k: v for k, v in scores.items() if isinstance(v, float)},
            f"{len(val)} {where} ({search}, at step {state.step})",
            command_line(),
            notes=["The scores come from the evaluation inside that training run."],
        )
    data = trainer.card_data  # training_data(cfg, records), read once per run
    return model_card(model or trainer.model, name, data=data, budget=budget, evaluation=evaluation).render()
