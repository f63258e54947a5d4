"""The training objectives, each with its trainer: ``train.objective`` picks one from :data:`TRAINERS`, whose keys
are the objectives the config accepts (:data:`mmgen.config.OBJECTIVES`).

``xe``: teacher-forced cross-entropy (:class:`~mmgen.training.trainer.Trainer`); ``scst``: self-critical
sequence training with a CIDEr-D reward (:class:`~mmgen.training.scst.ScstTrainer`, the same loop with its
own optimizer step). A new objective is one entry here and its name in :data:`mmgen.config.OBJECTIVES`.
"""

from __future__ import annotations

from pathlib import Path

from mmgen.config import Config
from mmgen.training.scst import ScstTrainer
from mmgen.training.trainer import NonFiniteLossError, Trainer

TRAINERS: dict[str, type[Trainer]] = {"xe": Trainer, "scst": ScstTrainer}

__all__ = ["TRAINERS", "NonFiniteLossError", "build_trainer"]


def build_trainer(cfg: Config, resume: str | Path | None = None, overwrite: bool = False) -> Trainer:
    """The trainer of ``cfg.train.objective`` (see :data:`TRAINERS`)."""
    return TRAINERS[cfg.train.objective](cfg, resume=resume, overwrite=overwrite)
