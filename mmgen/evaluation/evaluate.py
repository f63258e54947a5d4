"""A model over a dataset: caption every image in batches, score against the references, write outputs."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mmgen.config import GenerationConfig
from mmgen.runtime import bf16_autocast


@dataclass
class EvalResult:
    """Scores of one evaluation.

    Attributes:
        scores: Corpus metrics (Bleu_1..4, METEOR, ROUGE_L, CIDEr) over the images that decoded.
        collapse: Caption-collapse monitor (distinct captions, vocabulary, most common caption).
        entries: One dict per image: image_id, image (source), candidate, references, CIDEr, failed.
        failed: (image_id, reason) of images that could not be decoded; they are listed, not scored.
        counts: Images scored, failed images, empty captions.
    """

    scores: dict[str, float]
    collapse: dict[str, Any]
    entries: list[dict] = field(default_factory=list)
    failed: list[tuple[Any, str]] = field(default_factory=list)
    counts: dict[str, float] = field(default_factory=dict)

    @property
    def captions(self) -> dict[Any, str]:
        """Image id -> generated caption, for every image that decoded."""
        return {e["image_id"]: e["candidate"] for e in self.entries if not e.get("error")}

    def summary(self) -> dict:
        return {
            "scores": self.scores,
            "collapse": self.collapse,
            **self.counts,
            "failed": [{"image_id": i, "reason": r} for i, r in self.failed],
        }


def caption_records(
    model,
    records,
    gen: GenerationConfig,
    batch_size: int = 32,
    device: torch.device | str | None = None,
    num_workers: int = 0,
    precision: str = "auto",
    progress: bool | str = True,
) -> tuple[dict[Any, str], dict[Any, list[str]], list[tuple[Any, str]]]:
    """Caption every record: (candidates by image id, references by image id, failed images)."""
    from mmgen.data.collate import EvalCollator
    from mmgen.data.datasets import CaptionEvalDataset, make_loader
    from mmgen.data.transforms import build_transform, image_size
    from mmgen.progress import progress as progress_bar

    device = torch.device(device) if device is not None else next(model.parameters()).device
    # uint8 images (4x less to move to the device): the model normalises them
    ds = CaptionEvalDataset(records, build_transform(model.data_config, train=False, uint8=True))
    loader = make_loader(
        ds,
        batch_size,
        EvalCollator(image_size(model.data_config)),
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
    )
    # no autocast weight cache: decode steps replayed from CUDA graphs must not read cached casts that are
    # freed when the context exits
    ctx = bf16_autocast(precision, device, cache=False)
    candidates: dict[Any, str] = {}
    references: dict[Any, list[str]] = {}
    failed: list[tuple[Any, str]] = []
    was_training = model.training
    model.eval()
    every = max(1, len(loader) // 10) if hasattr(loader, "__len__") else 10  # plain lines off a terminal: ~10
    transient = progress == "transient"  # inside a training run: a bar on a terminal, no lines elsewhere
    bar = progress_bar(
        loader, desc="caption", disable=not progress, leave=not transient, every=every, plain=not transient
    )
    for batch in bar:
        failed.extend(batch["failed"])
        if not batch["image_ids"]:
            continue
        with ctx:
            out = model.generate(batch["pixel_values"].to(device, non_blocking=True), gen)
        for image_id, caption, refs in zip(batch["image_ids"], out.best, batch["references"]):
            candidates[image_id] = caption
            references[image_id] = refs
    model.train(was_training)
    return candidates, references, failed


def evaluate_model(
    model,
    records,
    gen: GenerationConfig,
    batch_size: int = 32,
    device: torch.device | str | None = None,
    num_workers: int = 0,
    precision: str = "auto",
    progress: bool | str = True,
    metrics=None,
    tokenizer: str = "auto",
) -> EvalResult:
    """Caption ``records`` with ``model`` and score the captions (COCO metrics + collapse monitor).

    ``progress``: a progress bar (True), none (False), or ``"transient"``: one that disappears when done (an
    evaluation inside a training run, under the training bar).
    """
    from mmgen.evaluation import collapse_stats, score_captions_detailed

    candidates, references, failed = caption_records(
        model, records, gen, batch_size, device, num_workers, precision, progress
    )
    detailed = score_captions_detailed(references, candidates, metrics, tokenizer) if candidates else None
    scores = dict(detailed.overall) if detailed else {}
    sources = {r.image_id: r.image for r in records}
    entries = []
    for i, caption in candidates.items():
        own = detailed.per_image.get(i, {}) if detailed else {}
        entries.append(
            {
                "image_id": i,
                "image": _source(sources.get(i)),
                "candidate": caption,
                "references": references[i],
                "cider": own.get("CIDEr"),
                "scores": own,
            }
        )
    entries += [
        {"image_id": i, "image": _source(sources.get(i)), "candidate": "", "references": [], "error": reason}
        for i, reason in failed
    ]
    counts = {
        "images": float(len(candidates)),
        "failed_images": float(len(failed)),
        "empty_captions": float(len(detailed.empty_candidates) if detailed else 0),
    }
    return EvalResult(
        scores=scores, collapse=collapse_stats(list(candidates.values())), entries=entries, failed=failed, counts=counts
    )


def _source(image: Any) -> Any:
    return str(image) if isinstance(image, (str, Path)) else image


def write_evaluation(
    out_dir: str | Path,
    result: EvalResult,
    title: str = "mmgen evaluation",
    scenes: dict | None = None,
    curves: list[dict] | None = None,
    baseline: dict | None = None,
) -> dict[str, Path]:
    """Write the COCO results json, scores json, per-image table (TSV) and the HTML report; with ``scenes``
    (attribute accuracies on synthetic scenes) also ``scene_accuracy.json``, and the report shows them; ``curves``
    (the model's run's metrics.jsonl rows) and ``baseline`` go into the report (see
    :func:`~mmgen.evaluation.report.write_report`)."""
    from mmgen.evaluation.report import write_report

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"results": out / "results.json", "scores": out / "scores.json"}
    paths["results"].write_text(json.dumps([{"image_id": i, "caption": c} for i, c in result.captions.items()]))
    paths["scores"].write_text(json.dumps(result.summary(), indent=2, default=str))
    # the report counts images, failed images and empty captions from the entries itself
    paths["report"] = write_report(
        out, result.entries, result.scores, result.collapse, title, scenes=scenes, curves=curves, baseline=baseline
    )
    if scenes:
        paths["scene_accuracy"] = out / "scene_accuracy.json"
        paths["scene_accuracy"].write_text(json.dumps(scenes, indent=2))
    paths["table"] = out / "per_image.tsv"
    return paths
