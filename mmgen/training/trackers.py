"""Experiment trackers a run reports to beside ``metrics.jsonl`` (``train.report_to``): TensorBoard, MLflow, W&B.

Each gets the resolved config (once, when its run starts), every row of ``metrics.jsonl`` (``train/<key>`` and
``eval/<metric>`` at the row's step), the loss curves (``curves.png``) and the final model card (``README.md``).

* ``tensorboard``: event files in ``RUN/tensorboard`` (``torch.utils.tensorboard``).
* ``mlflow``: the tracking server or store ``MLFLOW_TRACKING_URI`` names; without it a file store in ``RUN/mlruns``
  (``mlflow ui --backend-store-uri RUN/mlruns``); the experiment ``train.tracking_project``, one MLflow run per mmgen
  run. Needs ``mlflow-skinny`` (or ``mlflow``).
* ``wandb``: the project ``train.tracking_project``, files in ``RUN/wandb``; ``WANDB_MODE=offline`` keeps it on the
  machine (``wandb sync`` uploads it later). Needs ``wandb``.

A resumed run reports into the same MLflow / W&B run: their ids are kept in ``RUN/tracking.json``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

TRACKING_FILE = "tracking.json"
PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow-skinny", "wandb": "wandb"}
"""The pip package each tracker needs."""


class MissingTrackerError(ImportError):
    """A tracker of ``train.report_to`` whose package is not installed (the message names it; ``tracker``: which)."""

    def __init__(self, tracker: str, message: str) -> None:
        super().__init__(message)
        self.tracker = tracker


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1}}`` -> ``{"train.lr": 1}`` (lists kept as values)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


class Tracker:
    """What a run tells a tracker; every method may be called on rank 0 only."""

    def log_config(self, config: dict) -> None: ...

    def log_metrics(self, values: dict[str, float], step: int) -> None: ...

    def log_file(self, path: Path) -> None: ...

    def close(self) -> None: ...


class TensorBoardTracker(Tracker):
    def __init__(self, run_dir: Path, project: str, ids: dict, resumed_at: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # a resumed run trains the steps after its checkpoint again: the killed run's events for them are purged
        purge = {} if resumed_at is None else {"purge_step": resumed_at + 1}
        self.writer = SummaryWriter(str(run_dir / "tensorboard"), **purge)

    def log_config(self, config: dict) -> None:
        import yaml

        self.writer.add_text("config", "```\n" + yaml.safe_dump(config, sort_keys=False) + "```")

    def log_metrics(self, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)

    def log_file(self, path: Path) -> None:
        if path.suffix == ".png":
            import numpy as np
            from PIL import Image

            self.writer.add_image(path.stem, np.asarray(Image.open(path).convert("RGB")), dataformats="HWC")
        else:
            self.writer.add_text(path.name, path.read_text(encoding="utf-8"))

    def close(self) -> None:
        self.writer.close()


class MLflowTracker(Tracker):
    def __init__(self, run_dir: Path, project: str, ids: dict) -> None:
        from mlflow import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:  # a file store in the run directory, which MLflow 3 serves only when asked to
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            uri = (run_dir / "mlruns").resolve().as_uri()
        self.client = MlflowClient(uri)
        self.new = "mlflow" not in ids
        if self.new:
            found = self.client.get_experiment_by_name(project)
            experiment = found.experiment_id if found else self.client.create_experiment(project)
            ids["mlflow"] = self.client.create_run(experiment, run_name=run_dir.resolve().name).info.run_id
        self.run_id = ids["mlflow"]

    def log_config(self, config: dict) -> None:
        from mlflow.entities import Param

        if self.new:  # a resumed run logged them already (MLflow refuses to change a parameter)
            params = [Param(k, json.dumps(v) if not isinstance(v, str) else v) for k, v in flatten(config).items()]
            for i in range(0, len(params), 100):  # MLflow takes at most 100 parameters a call
                self.client.log_batch(self.run_id, params=params[i : i + 100])

    def log_metrics(self, values: dict[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])

    def log_file(self, path: Path) -> None:
        self.client.log_artifact(self.run_id, str(path))

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


class WandbTracker(Tracker):
    def __init__(self, run_dir: Path, project: str, ids: dict) -> None:
        import wandb

        resumed, self.run_dir = ids.get("wandb"), run_dir
        self.run = wandb.init(
            project=project,
            name=run_dir.resolve().name,
            dir=str(run_dir),
            id=resumed,
            resume="allow" if resumed else None,
            reinit="create_new",
        )
        ids["wandb"] = self.run.id

    def log_config(self, config: dict) -> None:
        self.run.config.update(config, allow_val_change=True)

    def log_metrics(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def log_file(self, path: Path) -> None:
        base = self.run_dir if self.run_dir in path.parents else path.parent  # saved as its path in the run
        self.run.save(str(path), base_path=str(base), policy="now")

    def close(self) -> None:
        self.run.finish()


TRACKERS = {"tensorboard": TensorBoardTracker, "mlflow": MLflowTracker, "wandb": WandbTracker}
"""``train.report_to`` names -> trackers (the keys of :data:`mmgen.config.run.TRACKER_NAMES`; a test holds the two
equal)."""


def open_trackers(names: list[str], run_dir: Path, project: str, resumed_at: int | None = None) -> list[Tracker]:
    """The trackers ``names`` asks for, started (or resumed: ``RUN/tracking.json``; ``resumed_at``, the step a
    resumed run continues from, lets TensorBoard drop the killed run's later events).

    Raises:
        MissingTrackerError: A tracker's package is not installed (the message names the pip package).
    """
    from mmgen.atomic_files import atomic_write_text

    file = run_dir / TRACKING_FILE
    ids = json.loads(file.read_text()) if file.is_file() else {}
    trackers = []
    for name in names:
        try:
            if name == "tensorboard":
                trackers.append(TensorBoardTracker(run_dir, project, ids, resumed_at))
            else:
                trackers.append(TRACKERS[name](run_dir, project, ids))
        except ImportError as e:
            raise MissingTrackerError(
                name,
                f"train.report_to names {name}, but {PACKAGES[name]} is not installed ({e}): pip install "
                f"{PACKAGES[name]} (or: pip install 'mmgen[tracking]')",
            ) from e
    if ids:
        atomic_write_text(file, json.dumps(ids, indent=1))
    return trackers
