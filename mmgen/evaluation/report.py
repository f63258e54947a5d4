"""A self-contained HTML report of a caption evaluation, worst images first, plus a per-image TSV.

At the top the headline scores (and a baseline's, when one is given), the training curves of the model's run when
it has them, and on synthetic scenes a bar chart of what the captions get right and the confusion matrices of
their attributes (:mod:`mmgen.evaluation.charts`); then the tables and every image. The HTML file embeds its
figures (PNG) and thumbnails (JPEG) as base64 and its style inline, so it opens offline and can be copied anywhere
on its own.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import math
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

from mmgen.data.images import DEFAULT_MAX_PIXELS
from mmgen.evaluation.collapse import collapse_warning

__all__ = ["ReportEntry", "write_report"]

THUMB_SIZE = 160
_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 72em; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; margin-bottom: .2em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; }
.cards { display: flex; flex-wrap: wrap; gap: .8em; margin: 1em 0; }
.card { border: 1px solid #ddd; border-radius: 8px; padding: .6em 1em; min-width: 8em; background: #fafbfc; }
.card .value { font-size: 1.7em; font-weight: 600; font-variant-numeric: tabular-nums; }
.card .label { color: #666; font-size: .85em; } .card .vs { color: #666; font-size: .8em; }
figure { margin: 1em 0; } figure img { max-width: 100%; } figcaption { color: #666; font-size: .9em; }
table { border-collapse: collapse; margin-bottom: 1.5em; }
th, td { border: 1px solid #ccc; padding: 4px 8px; vertical-align: top; text-align: left; }
th { background: #f0f0f0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.placeholder { width: 160px; height: 100px; background: #eee; color: #a00; font-size: 12px;
  display: flex; align-items: center; justify-content: center; text-align: center; }
ul { margin: 0; padding-left: 1.2em; }
.warn { color: #a00; font-weight: bold; }
"""


@dataclass
class ReportEntry:
    """One image of the report.

    Attributes:
        image_id: The image id.
        image: A path to the image, a PIL image, or None when it could not be loaded.
        candidate: The generated caption.
        references: The reference captions.
        cider: This image's CIDEr-D, or None.
        error: Why the image (or its caption) failed, shown in place of the thumbnail.
    """

    image_id: Hashable
    image: Any = None
    candidate: str = ""
    references: Sequence[str] = field(default_factory=list)
    cider: float | None = None
    error: str | None = None


def _as_entry(entry: ReportEntry | Mapping[str, Any]) -> ReportEntry:
    if isinstance(entry, ReportEntry):
        return entry
    known = {k: entry[k] for k in ("image_id", "image", "candidate", "references", "cider", "error") if k in entry}
    return ReportEntry(**known)


def _thumbnail(entry: ReportEntry, size: int, max_pixels: int | None) -> tuple[str | None, str | None]:
    """(base64 JPEG, None) or (None, reason it could not be made).

    An entry with an ``error`` (an image evaluation rejected: undecodable, or a decompression bomb) is
    never decoded here; the others go through the same safe decoder and pixel limit as evaluation.
    """
    if entry.image is None or entry.error is not None:
        return None, entry.error or "image unavailable"
    from mmgen.data.images import BadImageError, decode_image

    try:
        img = decode_image(entry.image, max_pixels, min_size=size, name=str(entry.image_id))
        img.thumbnail((size, size))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=85)
    except BadImageError as e:
        return None, f"could not load image: {e.reason}"
    except Exception as e:  # any unreadable image becomes a placeholder, never a failed report
        return None, f"could not load image: {type(e).__name__}: {e}"
    return base64.b64encode(buf.getvalue()).decode("ascii"), None


def _sort_key(row: tuple[ReportEntry, str | None, str | None]) -> tuple[int, float]:
    # Failed images first, then ascending CIDEr (worst first); unscored entries after failures.
    entry, thumb, _ = row
    if thumb is None or entry.error is not None:
        return (0, 0.0)
    if entry.cider is None or math.isnan(float(entry.cider)):
        return (1, 0.0)
    return (2, float(entry.cider))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return html.escape(str(value))


def _summary(scores: Mapping[str, float], collapse: Mapping[str, Any] | None, counts: Mapping[str, int]) -> list[str]:
    out = ["<h2>Summary</h2>", "<table><tr><th>metric</th><th>value</th></tr>"]
    for name, value in scores.items():
        out.append(f"<tr><td>{html.escape(name)}</td><td class='num' title='{value!r}'>{_fmt(value)}</td></tr>")
    for name, value in counts.items():
        out.append(f"<tr><td>{html.escape(name)}</td><td class='num'>{value}</td></tr>")
    out.append("</table>")
    if collapse:
        out.append("<h3>Collapse monitor</h3><table><tr><th>statistic</th><th>value</th></tr>")
        for name, value in collapse.items():
            out.append(f"<tr><td>{html.escape(name)}</td><td>{_fmt(value)}</td></tr>")
        out.append("</table>")
        warning = collapse_warning(collapse)
        if warning:
            out.append(f"<p class='warn'>{html.escape(warning[0].upper() + warning[1:])}.</p>")
    return out


def _scenes(acc: Mapping[str, Any]) -> list[str]:
    """Attribute accuracies on synthetic scenes (``scene_accuracy``) and the commonest errors."""
    out = ["<h3>Scene attributes (what the captions get right)</h3><table><tr><th>attribute</th><th>accuracy</th></tr>"]
    for name, value in acc.items():
        if isinstance(value, float):
            out.append(f"<tr><td>{html.escape(name)}</td><td class='num'>{_fmt(value)}</td></tr>")
    out.append("</table>")
    confusions = acc.get("confusions") or []
    if confusions:
        out.append("<table><tr><th>attribute</th><th>truth</th><th>caption says</th><th>count</th></tr>")
        for c in confusions:
            cells = (c["attribute"], c["truth"], "(nothing)" if c["caption"] is None else c["caption"])
            out.append("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in cells))
            out.append(f"<td class='num'>{int(c['count'])}</td></tr>")
        out.append("</table>")
    return out


HEADLINE = {"CIDEr": "CIDEr-D", "Bleu_4": "BLEU-4", "METEOR": "METEOR", "ROUGE_L": "ROUGE-L"}


def _card(value: str, label: str, extra: str = "") -> str:
    return f"<div class='card'><div class='value'>{value}</div><div class='label'>{label}</div>{extra}</div>"


def _headline(scores: Mapping[str, float], counts: Mapping[str, int], baseline: Mapping[str, Any] | None) -> list[str]:
    """Cards with the main scores (and the baseline's beside them), then the baseline's caption."""
    base = (baseline or {}).get("scores", {})
    cards = []
    for key, label in HEADLINE.items():
        if isinstance(scores.get(key), (int, float)):
            vs = f"<div class='vs'>baseline {base[key]:.3f}</div>" if isinstance(base.get(key), (int, float)) else ""
            cards.append(_card(f"{scores[key]:.3f}", label, vs))
    out = ["<div class='cards'>", *cards, _card(str(counts["images"]), "images"), "</div>"]
    if baseline:
        name, caption = (html.escape(str(baseline.get(k, ""))) for k in ("name", "caption"))
        out.append(f"<p>Baseline: {name or 'baseline'}, <q>{caption}</q> for every image.")
        if base.get("CIDEr"):
            ratio = scores.get("CIDEr", 0.0) / base["CIDEr"]
            out[-1] += f" This model's CIDEr-D is <b>{ratio:.1f}x</b> the baseline's."
        out[-1] += "</p>"
    return out


def _figure(png: bytes | None, caption: str) -> list[str]:
    if png is None:
        return []
    data = base64.b64encode(png).decode("ascii")
    return [f"<figure><img src='data:image/png;base64,{data}' alt='{html.escape(caption)}'>",
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"]  # fmt: skip


def _charts(curves: Sequence[Mapping] | None, scenes: Mapping[str, Any] | None) -> list[str]:
    from mmgen.evaluation.charts import attributes_png, confusion_png, curves_png

    out = []
    if curves:
        out += ["<h2>Training</h2>", *_figure(curves_png(curves), "the model's run: training loss and validation")]
    if scenes:
        out += ["<h2>What the captions get right</h2>"]
        out += _figure(attributes_png(scenes), "each attribute of the scenes, read back from the captions")
        out += _figure(confusion_png(scenes.get("matrix") or []), "truth (rows) against what the caption says")
    return out


def _row(rank: int, entry: ReportEntry, thumb: str | None, reason: str | None) -> str:
    if thumb is not None:
        cell = f"<img src='data:image/jpeg;base64,{thumb}' alt='{html.escape(str(entry.image_id))}'>"
    else:
        cell = f"<div class='placeholder'>{html.escape(reason or '')}</div>"
    refs = "".join(f"<li>{html.escape(r)}</li>" for r in entry.references)
    cider = "" if entry.cider is None else _fmt(float(entry.cider))
    return (
        f"<tr><td class='num'>{rank}</td><td>{html.escape(str(entry.image_id))}</td><td>{cell}</td>"
        f"<td class='num'>{cider}</td><td>{html.escape(entry.candidate)}</td><td><ul>{refs}</ul></td></tr>"
    )


def write_report(
    out_dir: str | PathLike[str],
    entries: Iterable[ReportEntry | Mapping[str, Any]],
    scores: Mapping[str, float],
    collapse: Mapping[str, Any] | None = None,
    title: str = "Caption evaluation",
    thumb_size: int = THUMB_SIZE,
    scenes: Mapping[str, Any] | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    curves: Sequence[Mapping] | None = None,
    baseline: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``report.html`` and ``per_image.tsv`` into ``out_dir``.

    Args:
        out_dir: Output directory (created if needed).
        entries: One :class:`ReportEntry` (or mapping with its fields) per image.
        scores: Corpus metrics, shown in the summary table.
        collapse: :func:`~mmgen.evaluation.collapse_stats` output, shown under the metrics.
        title: Page title.
        thumb_size: Longest side of the embedded thumbnails, in pixels.
        scenes: Attribute accuracies on synthetic scenes, shown under the collapse monitor.
        max_pixels: Images with more pixels get a placeholder instead of a thumbnail (the decompression-bomb
            limit of evaluation, :data:`~mmgen.data.images.DEFAULT_MAX_PIXELS`; checked before decoding).
        curves: The rows of the model's run's ``metrics.jsonl``: its training curves are drawn.
        baseline: ``{"name", "caption", "scores"}`` of a baseline to compare with (the demo's most frequent caption).

    Returns:
        The path of ``report.html``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = sorted(((e, *_thumbnail(e, thumb_size, max_pixels)) for e in map(_as_entry, entries)), key=_sort_key)
    failed = [e.error is not None for e, _, _ in rows]  # images evaluation could not caption (as in scores.json)
    counts = {
        "images": failed.count(False),
        "failed images": failed.count(True),
        "empty captions": sum(1 for (e, _, _), bad in zip(rows, failed) if not bad and not e.candidate.strip()),
    }
    parts = [
        "<!DOCTYPE html>",
        "<html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        *_headline(scores, counts, baseline),
        *_charts(curves, scenes),
        *_summary(scores, collapse, counts),
        *(_scenes(scenes) if scenes else []),
        "<h2>Images, worst CIDEr first</h2>",
        "<table><tr><th>#</th><th>image id</th><th>image</th><th>CIDEr</th><th>candidate</th><th>references</th></tr>",
        *(_row(rank, *row) for rank, row in enumerate(rows, start=1)),
        "</table></body></html>",
    ]
    report = out / "report.html"
    report.write_text("\n".join(parts), encoding="utf-8")
    with open(out / "per_image.tsv", "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(["rank", "image_id", "cider", "candidate", "references", "error"])
        for rank, (e, _, reason) in enumerate(rows, start=1):
            cider = "" if e.cider is None else repr(float(e.cider))
            writer.writerow([rank, e.image_id, cider, e.candidate, " | ".join(e.references), e.error or reason or ""])
    return report
