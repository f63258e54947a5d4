"""A run's records: ``metrics.jsonl``, TensorBoard events and PNG curves."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

from mmgen.config import Config


class RunLogger:
    """metrics.jsonl, TensorBoard events (when tensorboard is installed) and PNG curves (rank 0 only)."""

    def __init__(self, run_dir: Path, cfg: Config, enabled: bool):
        self.run_dir, self.enabled, self.tb = run_dir, enabled, None
        if enabled and cfg.train.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:
                warnings.warn(
                    "tensorboard is not installed: no TensorBoard events (pip install tensorboard)", stacklevel=2
                )

    def log(self, entry: dict) -> None:
        if not self.enabled:
            return
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(entry) + "\n")
        if self.tb is not None:
            step = entry["step"]
            for k, v in entry.items():
                if isinstance(v, (int, float)) and k not in ("step",) and math.isfinite(v):
                    self.tb.add_scalar(f"train/{k}", v, step)
            for k, v in entry.get("eval", {}).items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(f"eval/{k}", v, step)

    def plot(self) -> None:
        """Loss and eval-metric curves as ``curves.png``."""
        if self.enabled:
            plot_curves(self.run_dir, ("loss",), "training loss", log_scale=True)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def plot_curves(run_dir: str | Path, series: tuple[str, ...], title: str, log_scale: bool = False) -> None:
    """``curves.png`` of a run: the training ``series`` of metrics.jsonl on the left, eval CIDEr / BLEU-4 on the
    right (skipped when matplotlib is missing)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    rows = [json.loads(line) for line in path.read_text().splitlines() if line]
    train = [r for r in rows if series[0] in r]
    evals = [r for r in rows if "eval" in r]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for key in series:
        axes[0].plot([r["step"] for r in train], [r[key] for r in train], label=key)
    axes[0].set(title=title, xlabel="step", yscale="log" if log_scale else "linear")
    if len(series) > 1:
        axes[0].legend()
    for metric in ("CIDEr", "Bleu_4"):
        pts = [(r["step"], r["eval"][metric]) for r in evals if metric in r["eval"]]
        if pts:
            axes[1].plot(*zip(*pts), marker="o", label=metric)
    axes[1].set(title="validation", xlabel="step")
    if evals:
        axes[1].legend()
    fig.tight_layout()
    fig.savefig(Path(run_dir) / "curves.png", dpi=100)
    plt.close(fig)
