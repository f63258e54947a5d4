"""Validation inside a training run: the caption scores and the teacher-forced loss on the validation records.

:func:`evaluate` is what the trainer calls every ``eval.every`` steps and at the end; it captions with
``eval.generation`` (the run's one generation config) through ``CaptionModel.generate``.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from mmgen.config import Config


def validation_loss(model, records: Sequence, cfg: Config, device, progress: bool = True) -> float:
    """Teacher-forced cross-entropy per caption token over every (validation image, reference) pair.

    The same loss as training (evaluation transform, no augmentation, the run's autocast and attention kernels),
    so it sits next to the training loss in ``metrics.jsonl``: the gap between the two is the overfitting.
    Undecodable images are left out (:func:`evaluate` counts and names them).

    Args:
        model: The model to score (the trainer's, or its weight average).
        records: The validation records.
        cfg: The run's config (``model``, ``data``, ``eval``, ``train.precision`` and ``train.sdpa_backends``).
        device: Where the model is.
        progress: Show a progress bar.
    """
    import torch

    from mmgen.data.collate import CaptionCollator
    from mmgen.data.datasets import CaptionTrainDataset, make_loader
    from mmgen.data.transforms import build_transform, image_size
    from mmgen.progress import progress as progress_bar
    from mmgen.training.levers import forward_context
    from mmgen.training.run_data import batch_inputs

    transform = build_transform(model.data_config, train=False, uint8=True)
    ds = CaptionTrainDataset(records, transform, "all", max_pixels=cfg.data.max_pixels)
    collate = CaptionCollator(
        model.tokenizer, cfg.model.prompt, cfg.model.max_caption_tokens, image_size=image_size(model.data_config)
    )
    total = torch.zeros((), dtype=torch.float64, device=device)
    tokens = 0
    with torch.no_grad():
        loader = make_loader(ds, cfg.eval.batch_size, collate, num_workers=cfg.data.num_workers)
        bar = progress_bar(loader, desc="val loss", disable=not progress, leave=False, plain=False)
        for b in bar:
            n = int((b["labels"][:, 1:] != -100).sum())
            if n == 0:
                continue
            with forward_context(cfg.train, device):
                out = model(**batch_inputs(b, device))
            total += out.loss.double() * n
            tokens += n
    return float(total / max(tokens, 1))


def evaluate(
    model,
    records: Sequence,
    cfg: Config,
    device,
    scenes: Mapping[Any, dict] | None = None,
    progress: bool = True,
) -> dict:
    """Caption the validation records with the in-loop generation settings (``eval.generation``) and score them;
    the validation loss beside the scores, and with ``scenes`` (synthetic validation data: image_id -> scene)
    the attribute accuracies ``scene_*``.

    Args:
        model: The model to evaluate (the trainer's, or its weight average).
        records: The validation records.
        cfg: The run's config.
        device: Where the model is.
        scenes: The scene of every validation image, when the data is synthetic.
        progress: Show progress bars.
    """
    from mmgen.evaluation.evaluate import evaluate_model

    result = evaluate_model(
        model,
        records,
        cfg.eval.generation,
        batch_size=cfg.eval.batch_size,
        device=device,
        num_workers=cfg.data.num_workers,
        precision=cfg.train.precision,
        progress="transient" if progress else False,  # the training bar would look frozen meanwhile
    )
    model.decode_cache.clear()  # decoding buffers are not needed while training
    collapse = {f"collapse_{k}": v for k, v in result.collapse.items() if isinstance(v, (int, float))}
    scores = {"loss": validation_loss(model, records, cfg, device, progress), **result.scores, **collapse}
    if result.failed:  # left out of the scores and of the loss: said, and counted in metrics.jsonl
        scores["failed_images"] = float(len(result.failed))
        named = "; ".join(f"{i}: {reason}" for i, reason in result.failed[:5])
        warnings.warn(
            f"{len(result.failed)} validation image(s) could not be decoded and are left out of the evaluation "
            f"({named}{'; ...' if len(result.failed) > 5 else ''})",
            stacklevel=2,
        )
    if scenes:
        from mmgen.scenes.accuracy import scene_accuracy

        acc = scene_accuracy(result.captions, scenes)
        scores.update({f"scene_{k}": v for k, v in acc.items() if isinstance(v, float)})
    return scores
