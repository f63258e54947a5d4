"""Figures of an evaluation (matplotlib, drawn off-screen): training curves, scene-attribute accuracies and their
confusion matrices, as PNG bytes to embed in the HTML report or write to a file. Without matplotlib every function
returns None (the report then shows tables only)."""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

COLORS = {"bar": "#3b6fb6", "good": "#2e8b57", "bad": "#c0392b", "grid": "#dddddd"}


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _png(fig, plt) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def curves_png(rows: Sequence[Mapping], series: tuple[str, ...] = ("loss",), title: str = "training loss",
               log_scale: bool = True) -> bytes | None:  # fmt: skip
    """A run's curves from its metrics.jsonl ``rows``: the training ``series`` on the left (a null value, a skipped
    step, leaves a gap), validation CIDEr / BLEU-4 (and the validation loss, dashed, beside the training loss) on
    the right. None without rows or matplotlib."""
    plt = _pyplot()
    train = [r for r in rows if series[0] in r]
    evals = [r for r in rows if isinstance(r.get("eval"), dict)]
    if plt is None or not (train or evals):
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for key in series:
        pts = [(r["step"], r[key] if _finite(r.get(key)) else math.nan) for r in train]
        if pts:
            axes[0].plot(*zip(*pts), label=key, color=COLORS["bar"])
    val = [(r["step"], r["eval"]["loss"]) for r in evals if series[0] == "loss" and _finite(r["eval"].get("loss"))]
    if val:
        axes[0].plot(*zip(*val), "--o", label="validation loss", color=COLORS["bad"], markersize=4)
    axes[0].set(title=title, xlabel="step", yscale="log" if log_scale else "linear")
    axes[0].legend(frameon=False)
    for metric in ("CIDEr", "Bleu_4"):
        pts = [(r["step"], r["eval"][metric]) for r in evals if _finite(r["eval"].get(metric))]
        if pts:
            axes[1].plot(*zip(*pts), marker="o", label=metric)
    axes[1].set(title="validation", xlabel="step")
    if evals:
        axes[1].legend(frameon=False)
    for ax in axes:
        ax.grid(color=COLORS["grid"], linewidth=0.6)
        ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return _png(fig, plt)


ATTRIBUTE_ORDER = ("background", "count", "number", "position", "color", "size", "shape", "shape_small",
                   "shape_medium", "shape_large", "relation", "relation_stated", "exact")  # fmt: skip


def attributes_png(acc: Mapping[str, Any]) -> bytes | None:
    """Horizontal bars: the share of images (objects, relations) whose caption gets each scene attribute right."""
    plt = _pyplot()
    names = [k for k in ATTRIBUTE_ORDER if _finite(acc.get(k))]
    if plt is None or not names:
        return None
    values = [float(acc[k]) for k in names]
    fig, ax = plt.subplots(figsize=(6.4, 0.34 * len(names) + 0.8))
    colors = [COLORS["good"] if v >= 0.9 else COLORS["bar"] if v >= 0.5 else COLORS["bad"] for v in values]
    ax.barh(range(len(names)), values, color=colors)
    for i, v in enumerate(values):
        ax.text(min(v + 0.01, 0.93), i, f"{v:.0%}", va="center", fontsize=9)
    ax.set_yticks(range(len(names)), [n.replace("_", " ") for n in names])
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("share right")
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(axis="x", color=COLORS["grid"], linewidth=0.6)
    return _png(fig, plt)


def confusion_png(matrix: Sequence[Mapping[str, Any]], attributes=("shape", "color", "size", "background", "relation")):
    """One heat map per attribute: rows the truth, columns what the caption says ("none": nothing), each row's
    share, with the counts written in; None without data or matplotlib."""
    plt = _pyplot()
    shown = [a for a in attributes if any(c["attribute"] == a for c in matrix)]
    if plt is None or not shown:
        return None
    cols = min(3, len(shown))
    rows = -(-len(shown) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 4.0 * rows), squeeze=False)
    for ax in axes.flat[len(shown) :]:
        ax.axis("off")
    for ax, attribute in zip(axes.flat, shown):
        cells = [c for c in matrix if c["attribute"] == attribute]
        truths = sorted({str(c["truth"]) for c in cells})
        said = truths + sorted({str(c["caption"]) for c in cells} - set(truths) - {"None"})
        said += ["None"] if any(c["caption"] is None for c in cells) else []
        counts = [[0] * len(said) for _ in truths]
        for c in cells:
            counts[truths.index(str(c["truth"]))][said.index(str(c["caption"]))] += int(c["count"])
        shares = [[v / max(sum(row), 1) for v in row] for row in counts]
        ax.imshow(shares, cmap="Blues", vmin=0, vmax=1, aspect="auto")
        for i, row in enumerate(counts):
            for j, v in enumerate(row):
                if v:
                    ax.text(j, i, str(v), ha="center", va="center", fontsize=8,
                            color="white" if shares[i][j] > 0.6 else "#222")  # fmt: skip
        ax.set_xticks(range(len(said)), ["none" if s == "None" else s for s in said], rotation=60, ha="right")
        ax.set_yticks(range(len(truths)), truths)
        ax.set_title(attribute)
        ax.set_xlabel("caption says")
    for row in axes:
        row[0].set_ylabel("truth")
    fig.tight_layout()
    return _png(fig, plt)
