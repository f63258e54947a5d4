"""Where a training run is (:class:`TrainState`): saved as JSON in every checkpoint, restored on resume."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TrainState:
    """Where the run is; saved in every checkpoint (json)."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best: float | None = None
    evals_without_improvement: int = 0
    bad_steps_in_a_row: int = 0
    skipped_steps: int = 0
    history: list = field(default_factory=list)
    train_seconds: float = 0.0  # wall-clock seconds in Trainer.fit, over every session of the run (model cards)
    finished_max_steps: int | None = None
    """Set in the last checkpoint of a finished run: the ``train.max_steps`` it finished under (or its last step,
    when it was resumed past it); resuming trains further only when ``train.max_steps`` is raised above it."""

    def record_eval(self, metric: str, scores: dict) -> bool:
        """Count an evaluation against the best so far (``metric``: lower is better for ``loss``, higher for the
        others); returns whether it is the new best. Scores without ``metric`` change nothing."""
        value = scores.get(metric)
        if value is None:
            return False
        if self.best is None or (value < self.best if metric == "loss" else value > self.best):
            self.best, self.evals_without_improvement = value, 0
            return True
        self.evals_without_improvement += 1
        return False
