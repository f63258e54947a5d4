"""A run's records: ``metrics.jsonl``, the trackers of ``train.report_to`` (TensorBoard, MLflow, W&B:
:mod:`mmgen.training.trackers`) and PNG curves.

``metrics.jsonl`` is strict JSON, one object a line: a NaN or infinite value (the loss of a skipped
step) is written as ``null``. Readers go through :func:`read_metrics`, which skips a torn last line (a
process killed mid-write) with a warning.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

from mmgen.atomic_files import atomic_write_text
from mmgen.config import Config
from mmgen.training.state_codec import json_safe, json_scalar

METRICS_FILE = "metrics.jsonl"


class RunLogger:
    """metrics.jsonl, the trackers of ``train.report_to`` and PNG curves (rank 0 only).

    ``resumed_at``: the step a resumed run continues from; what was logged after it (by the run that was killed)
    is removed from metrics.jsonl and from TensorBoard, since those steps are trained again.

    Raises:
        mmgen.training.trackers.MissingTrackerError: A tracker's package is missing (MLflow, W&B); a missing
            TensorBoard is a warning (it is the default).
    """

    def __init__(self, run_dir: Path, cfg: Config, enabled: bool, resumed_at: int | None = None):
        from mmgen.config import to_dict
        from mmgen.training.trackers import MissingTrackerError, open_trackers

        self.run_dir, self.enabled, self.trackers = run_dir, enabled, []
        if not enabled:
            return
        _repair_torn_tail(run_dir / METRICS_FILE)  # a resumed run appends after whole lines only
        if resumed_at is not None:
            truncate_metrics(run_dir / METRICS_FILE, resumed_at)
        names, project = cfg.train.trackers, cfg.train.tracking_project
        try:
            self.trackers = open_trackers(names, run_dir, project, resumed_at)
        except MissingTrackerError as e:
            if e.tracker != "tensorboard":
                raise
            warnings.warn("tensorboard is not installed: no TensorBoard events (pip install tensorboard)", stacklevel=2)
            self.trackers = open_trackers([n for n in names if n != "tensorboard"], run_dir, project, resumed_at)
        for tracker in self.trackers:
            tracker.log_config(to_dict(cfg))

    def log(self, entry: dict) -> None:
        """Append ``entry`` to metrics.jsonl (non-finite numbers as null) and its numbers to the trackers."""
        if not self.enabled:
            return
        line = json.dumps(json_safe(entry), allow_nan=False, default=json_scalar)
        with open(self.run_dir / METRICS_FILE, "a") as f:
            f.write(line + "\n")
        values = {f"train/{k}": v for k, v in entry.items() if _finite_number(v) and k != "step"}
        values.update({f"eval/{k}": v for k, v in entry.get("eval", {}).items() if _finite_number(v)})
        if values:
            for tracker in self.trackers:
                tracker.log_metrics(values, entry["step"])

    def plot(self, card: Path | None = None) -> None:
        """Loss and eval-metric curves as ``curves.png``; both, and the final model ``card``, go to the trackers."""
        if not self.enabled:
            return
        plot_curves(self.run_dir, ("loss",), "training loss", log_scale=True)
        files = [f for f in (self.run_dir / "curves.png", card) if f is not None and f.is_file()]
        for tracker in self.trackers:
            for f in files:
                tracker.log_file(f)

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.close()


def _finite_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def read_metrics(path: str | Path) -> list[dict]:
    """The rows of a run's ``metrics.jsonl`` (or of the file itself); [] when there is none.

    A torn last line (a process killed in the middle of writing it) is skipped with a warning; so is any
    other line that is not a JSON object, named by its number. Non-finite numbers were written as None.
    """
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    if not path.is_file():
        return []
    text = path.read_text(errors="replace")
    lines = text.split("\n")
    rows, bad = [], []
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if isinstance(row, dict):
            rows.append(row)
        elif i == len(lines):  # no newline after it: the write was cut short
            warnings.warn(f"{path}: skipped a torn last line (line {i}, {len(line)} characters)", stacklevel=2)
        else:
            bad.append(i)
    if bad:
        warnings.warn(f"{path}: skipped {len(bad)} line(s) that are not JSON objects: {bad[:10]}", stacklevel=2)
    return rows


def _repair_torn_tail(path: Path) -> None:
    """End ``path`` with a whole line: a torn last line is cut off (with a warning) before more is appended."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return
    cut = data.rfind(b"\n") + 1
    try:
        json.loads(data[cut:])
        whole = True
    except ValueError:
        whole = False
    with open(path, "r+b") as f:
        if whole:  # only the newline is missing
            f.seek(0, 2)
            f.write(b"\n")
        else:
            f.truncate(cut)
            warnings.warn(f"{path}: removed a torn last line ({len(data) - cut} bytes) before appending", stacklevel=3)


def truncate_metrics(path: Path, step: int) -> int:
    """Keep the rows of ``path`` (a metrics.jsonl) up to ``step``: a resumed run trains the later steps again.

    Returns:
        The number of lines removed (said in a warning when there are any).
    """
    if not path.is_file():
        return 0
    lines = path.read_text(errors="replace").splitlines()
    kept = []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
            kept.append(line)
    if len(kept) == len(lines):
        return 0
    atomic_write_text(path, "".join(f"{line}\n" for line in kept))
    warnings.warn(
        f"{path}: removed {len(lines) - len(kept)} line(s) after step {step}, the step the run resumes from",
        stacklevel=3,
    )
    return len(lines) - len(kept)


def plot_curves(run_dir: str | Path, series: tuple[str, ...], title: str, log_scale: bool = False) -> None:
    """``curves.png`` of a run: the training ``series`` of metrics.jsonl on the left, eval CIDEr / BLEU-4 on the
    right (:func:`mmgen.evaluation.charts.curves_png`; skipped when matplotlib is missing)."""
    from mmgen.evaluation.charts import curves_png

    png = curves_png(read_metrics(run_dir), series, title, log_scale)
    if png is not None:
        (Path(run_dir) / "curves.png").write_bytes(png)
